"""Where nodes get their transports: a factory they are handed.

A node never builds a server or a client itself; it asks the
:class:`Transports` it was given. :class:`LocalTransports` makes the ones of
this process (an aiohttp server, a websockets client). Another factory can
hand out links to stations held elsewhere, or sessions that observe their
sends (the benchmark's ``hop_trace``), without a change to the nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .backoff import Backoff
from .cs_client import ClientOptions, CsClient, CsmsListener
from .csms_server import Admission, CsmsServer, ServerOptions, StationListener
from .link import LinkOptions
from .session import OcppSession

__all__ = ["LocalTransports", "StationClient", "StationServer", "Transports"]


class StationServer(Protocol):
    """What a CSMS node needs of its server."""

    async def start(self) -> None:
        """Listen. Raises ``OSError`` when the port cannot be had."""

    async def stop(self) -> None:
        """Close every station's link and stop listening."""

    # A redeployed node takes the server over (ocpp_nodes/nodes/redeploy.py):

    options: ServerOptions

    def update(self, options: ServerOptions, listener: StationListener) -> None:
        """Go on with ``options`` and ``listener``, keeping every connection."""

    def connections(self) -> list[tuple[OcppSession, Admission]]:
        """The stations connected now, with what each was admitted with."""


class StationClient(Protocol):
    """What a CS node needs of its client."""

    @property
    def running(self) -> bool: ...

    def start(self) -> None:
        """Start connecting (and reconnecting after a loss)."""

    async def stop(self) -> None:
        """Close the link and stop reconnecting."""

    backoff: Backoff

    def update(self, link: LinkOptions, listener: CsmsListener) -> None:
        """Go on with ``listener`` and ``link``, keeping the connection (a redeploy)."""


class Transports(Protocol):
    """Makes the servers of CSMS nodes and the clients of CS nodes."""

    def server(self, options: ServerOptions, listener: StationListener) -> StationServer: ...

    def client(
        self, options: ClientOptions, backoff: Backoff, listener: CsmsListener
    ) -> StationClient: ...


@dataclass(frozen=True)
class LocalTransports:
    """Sockets of this process; each link an ``session_class``."""

    session_class: type[OcppSession] = OcppSession

    def server(self, options: ServerOptions, listener: StationListener) -> CsmsServer:
        return CsmsServer(options, listener, self.session_class)

    def client(self, options: ClientOptions, backoff: Backoff, listener: CsmsListener) -> CsClient:
        return CsClient(options, backoff, listener, self.session_class)
