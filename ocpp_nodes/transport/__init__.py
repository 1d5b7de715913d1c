"""Sockets: the CSMS server (aiohttp), the CS client (websockets), the session
that binds an OCPP-J connection to either, and the link the nodes see of it."""

from __future__ import annotations

from .backoff import Backoff
from .cs_client import ClientOptions, CsClient, CsmsListener, station_url
from .csms_server import AuthDecision, CsmsServer, ServerOptions, StationListener
from .factory import LocalTransports, StationClient, StationServer, Transports
from .failures import ConnectFailure
from .identity import MAX_IDENTITY_LENGTH, identity_problem
from .link import LinkListener, LinkOptions, PendingCall, StationLink
from .session import OcppSession, SocketClosed, TextSocket

__all__ = [
    "AuthDecision",
    "Backoff",
    "ClientOptions",
    "ConnectFailure",
    "CsClient",
    "CsmsListener",
    "CsmsServer",
    "LinkListener",
    "LinkOptions",
    "LocalTransports",
    "MAX_IDENTITY_LENGTH",
    "OcppSession",
    "PendingCall",
    "ServerOptions",
    "SocketClosed",
    "StationClient",
    "StationLink",
    "StationListener",
    "StationServer",
    "TextSocket",
    "Transports",
    "identity_problem",
    "station_url",
]
