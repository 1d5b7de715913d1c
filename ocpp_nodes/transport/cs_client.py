"""The Charging Station side: a websockets client that keeps itself connected.

The station connects to ``<CSMS url>/<percent-encoded cbId>`` (part 4,
3.1.1) offering the subprotocols of its versions in its order of preference,
with the password only in an ``Authorization: Basic`` header (never in the
URL). ``wss://`` stays ``wss://``. The version the CSMS selects is the
connection's: an :class:`~ocpp_nodes.transport.session.OcppSession` of it
runs until the socket closes. When the connection fails or is lost, the
client waits as :class:`~ocpp_nodes.transport.backoff.Backoff` says and tries
again, until :meth:`CsClient.stop`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import apply_mask  # type: ignore[attr-defined]  # the C speedup
from websockets.protocol import State
from websockets.typing import Subprotocol

from ..rpc import VERSIONS, OcppVersion, Role
from .backoff import Backoff
from .failures import (
    INTERNAL,
    SUBPROTOCOL,
    TLS_VERSION,
    ConnectFailure,
    failure_of,
    probe_tls_version,
    shown_url,
)
from .identity import identity_problem
from .link import LinkListener, LinkOptions
from .session import OcppSession, SocketClosed

log = logging.getLogger(__name__)

__all__ = [
    "ClientOptions",
    "CsClient",
    "CsmsListener",
    "ServerSocket",
    "station_url",
]


def station_url(csms_url: str, cb_id: str) -> str:
    """``csms_url`` + ``/`` + the percent-encoded identity.

    Raises:
        ValueError: the URL is not ``ws://`` or ``wss://`` with a host, or
            the identity breaks part 4, 3.1.1.
    """
    problem = identity_problem(cb_id)
    if problem is not None:
        raise ValueError(problem)
    parts = urlsplit(csms_url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(
            f"CSMS URL must start with ws:// or wss:// and name a host: {shown_url(csms_url)!r}"
        )
    return f"{csms_url.rstrip('/')}/{quote(cb_id, safe='')}"


class ServerSocket:
    """:class:`TextSocket` over a websockets client connection."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def receive(self) -> str | bytes:
        try:
            return await self.ws.recv()
        except ConnectionClosed as exc:
            raise SocketClosed(_describe_close(exc)) from None

    async def send(self, text: str) -> None:
        ws = self.ws
        transport = ws.transport
        # The common case, an open connection without extensions and nothing
        # waiting in the transport's buffer, is written here: the library's
        # frame building costs several times more. Anything else (closing,
        # compression negotiated, back-pressure) goes through the library.
        if (
            ws.protocol.state is State.OPEN
            and not ws.protocol.extensions
            and not transport.is_closing()
            and not transport.get_write_buffer_size()
        ):
            transport.write(client_text_frame(text.encode()))
            return
        await ws.send(text)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason)


class _MaskKeys:
    """Masking keys from the OS's random source, read 4 KiB at a time.

    RFC 6455, 5.3: each frame's key must be fresh and unpredictable; keys cut
    from one ``os.urandom`` read are, and cost one system call per 1,024
    frames instead of one per frame.
    """

    def __init__(self) -> None:
        self._pool = b""
        self._next = 0

    def take(self) -> bytes:
        if self._next >= len(self._pool):
            self._pool = os.urandom(4096)
            self._next = 0
        key = self._pool[self._next : self._next + 4]
        self._next += 4
        return key


_mask_keys = _MaskKeys()


def client_text_frame(data: bytes) -> bytes:
    """One whole text frame as a client sends it (RFC 6455, 5.2): FIN, opcode
    1, and the payload masked with a fresh random key (5.3)."""
    length = len(data)
    if length < 126:
        head = struct.pack("!BB", 0x81, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, length)
    mask = _mask_keys.take()
    return head + mask + apply_mask(data, mask)


async def _probe(url: str, servername: str | None) -> str | None:
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    return await probe_tls_version(parts.hostname, parts.port or 443, servername)


def _describe_close(exc: ConnectionClosed) -> str:
    if exc.sent is not None and exc.sent.code == 1009:
        return "a frame from the CSMS exceeded max_frame_size (closed with 1009)"
    if exc.rcvd is not None:
        return f"closed by CSMS (code {exc.rcvd.code})"
    if exc.sent is not None:
        return f"closed (code {exc.sent.code}: {exc.sent.reason or 'no reason'})"
    return "connection lost"


@dataclass
class ClientOptions:
    """Where and as whom to connect.

    ``password`` None sends no Basic auth (profile 3); ``versions`` are
    offered in this order; ``link`` is how the connection behaves;
    ``ssl_context`` is used for ``wss://`` URLs.
    """

    csms_url: str
    cb_id: str
    password: str | None
    versions: Sequence[OcppVersion] = field(default_factory=lambda: tuple(VERSIONS.values()))
    link: LinkOptions = field(default_factory=LinkOptions)
    ping_interval: float = 30.0
    open_timeout: float = 10.0
    ssl_context: ssl.SSLContext | None = None
    servername: str | None = None


class CsmsListener(LinkListener, Protocol):
    """What a CS node hears: the client's state, why an attempt failed, then
    each connection's link."""

    def client_state(self, state: str, detail: str) -> None:
        """``("connecting", "")``, ``("waiting", "<seconds>")`` or ``("stopped", "")``."""

    def connect_failed(self, failure: ConnectFailure) -> None:
        """A connection attempt failed (or an open connection's handler did)."""


class CsClient:
    """Connects, runs an :class:`OcppSession` on each open socket, reconnects after loss.

    Args:
        options: where and as whom to connect, which versions, how the link behaves.
        backoff: the reconnect policy (shared with the node, which may change it).
        listener: hears the client's state and each connection's link.
        session_class: the session to run (a subclass observes sends for
            the benchmark).
    """

    def __init__(
        self,
        options: ClientOptions,
        backoff: Backoff,
        listener: CsmsListener,
        session_class: type[OcppSession] = OcppSession,
    ) -> None:
        self.options = options
        self.backoff = backoff
        self.listener = listener
        self.session_class = session_class
        self._task: asyncio.Task[None] | None = None
        #: the connection open now, if any
        self.session: OcppSession | None = None

    async def _closed_in_handshake(self, url: str, exc: BaseException) -> ConnectFailure:
        """The CSMS hung up during the TLS handshake without saying why: if it
        completes one in TLS 1.0 or 1.1, that is why."""
        old = await _probe(url, self.options.servername)
        if old is None:
            return failure_of(exc)
        return ConnectFailure(
            TLS_VERSION,
            f"TLS handshake failed: the CSMS speaks only {old}; OCPP asks for TLS 1.2 or newer",
        )

    def update(self, link: LinkOptions, listener: CsmsListener) -> None:
        """Go on with ``listener`` and links that behave as ``link`` says,
        keeping the connection open now (a redeployed node whose connection
        settings did not change)."""
        self.options.link = link
        self.listener = listener
        if self.session is not None:
            self.session.listener = listener
            self.session.update_options(link)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start connecting (no-op when already running)."""
        if not self.running:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Close the connection and stop reconnecting."""
        task, self._task = self._task, None
        if task is not None:  # the task closes its websocket as it unwinds
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.listener.client_state("stopped", "")

    async def _run(self) -> None:
        url = station_url(self.options.csms_url, self.options.cb_id)
        headers = {}
        if self.options.password is not None:
            token = f"{self.options.cb_id}:{self.options.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
        while True:
            self.listener.client_state("connecting", "")
            failure = await self._connect_once(url, headers)
            if failure is not None:
                self.listener.connect_failed(failure.tried(url))
            wait = self.backoff.next_wait()
            self.listener.client_state("waiting", f"{wait:.3f}")
            await asyncio.sleep(wait)

    async def _connect_once(self, url: str, headers: dict[str, str]) -> ConnectFailure | None:
        """One attempt: why it failed, or ``None`` when a connection opened and
        its session ran (and reported how it ended)."""
        try:
            tls: dict[str, Any] = {}
            if url.startswith("wss://"):
                tls["ssl"] = self.options.ssl_context or True
                if self.options.servername:
                    tls["server_hostname"] = self.options.servername
            ws = await connect(
                url,
                **tls,
                subprotocols=[Subprotocol(v.subprotocol) for v in self.options.versions],
                additional_headers=headers,
                open_timeout=self.options.open_timeout,
                max_size=self.options.link.max_frame_size,
                # The pong deadline is half the interval, as on the CSMS side (aiohttp).
                ping_interval=self.options.ping_interval or None,
                ping_timeout=self.options.ping_interval / 2 or None,
                user_agent_header=None,
                # A peer that stopped answering pings will not answer a close either.
                close_timeout=min(2.0, self.options.ping_interval or 2.0),
            )
        except (ConnectionResetError, ConnectionAbortedError, ssl.SSLEOFError) as exc:
            if url.startswith("wss://"):
                return await self._closed_in_handshake(url, exc)
            return failure_of(exc)
        except Exception as exc:
            return failure_of(exc)
        # websockets refuses a subprotocol that was not offered; none at all is ours to refuse
        version = next((v for v in self.options.versions if v.subprotocol == ws.subprotocol), None)
        if version is None:
            offered = ", ".join(v.subprotocol for v in self.options.versions)
            await ws.close(1002, f"subprotocol {offered} is required")
            return ConnectFailure(
                SUBPROTOCOL, f"CSMS did not select subprotocol {offered} (got {ws.subprotocol!r})"
            )
        self.backoff.reset()
        session = self.session_class(
            self.options.cb_id,
            version,
            Role.CHARGING_STATION,
            ServerSocket(ws),
            self.listener,
            self.options.link,
        )
        self.session = session
        try:
            await session.run()
        except Exception as exc:  # a bug must not end the reconnect loop
            log.exception("%s: the connection's handler failed", self.options.cb_id)
            return ConnectFailure(INTERNAL, f"internal error: {exc or type(exc).__name__}")
        finally:
            self.session = None
            await ws.close(1000, "station stopped")
        return None
