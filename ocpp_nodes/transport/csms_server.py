"""The CSMS side: an aiohttp server that Charging Stations connect to.

A station connects to ``ws://host:port/<path>/<cbId>`` (part 4, 3.1.1) with
HTTP Basic auth whose user is the cbId. The server decides before any
upgrade: an identity it does not know gets 404 (3.2), a known identity with
missing or wrong credentials gets 401. The subprotocol is selected from the
station's offer and the versions the server accepts (``select_version``: the
station's order of preference); a client that offered none of them completes
the upgrade without one and is closed at once (3.2). Everything after that is
an :class:`~ocpp_nodes.transport.session.OcppSession` of the selected version.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, NamedTuple, Protocol

from aiohttp import WSMsgType, hdrs, web

from ..rpc import VERSIONS, OcppVersion, Role, select_version
from .admission import AdmissionGate, AdmissionOptions
from .identity import identity_problem
from .limits import RateLimit
from .link import LinkListener, LinkOptions
from .session import OcppSession, SocketClosed
from .tls import peer_common_name

__all__ = [
    "Admission",
    "AuthDecision",
    "CsmsServer",
    "ServerOptions",
    "StationListener",
    "StationSocket",
    "basic_auth_credentials",
    "route_for",
]

log = logging.getLogger(__name__)


class AuthDecision(Enum):
    ACCEPT = 200
    UNKNOWN_IDENTITY = 404
    BAD_CREDENTIALS = 401
    WRONG_CERTIFICATE = 403
    ALREADY_CONNECTED = 409
    #: too many password hashes being checked: try again shortly
    BUSY = 503


def basic_auth_credentials(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` from an ``Authorization: Basic`` header, or ``None``."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def route_for(path: str) -> str:
    """The aiohttp route of a node's ``path`` setting: ``"/ocpp"`` -> ``"/ocpp/{cbId}"``."""
    prefix = "/".join(part for part in path.split("/") if part)
    return f"/{prefix}/{{cbId}}" if prefix else "/{cbId}"


class StationSocket:
    """:class:`TextSocket` over an aiohttp ``WebSocketResponse``, with its keep-alive.

    Keep-alive (part 4, 5.2 and 8.4): after ``ping_interval`` seconds in which
    nothing came from the station, a ping; when nothing (a pong or any other
    frame) comes within half the interval after it, the connection is
    aborted and :meth:`receive` raises ``SocketClosed`` saying so. 0 turns
    it off. This is aiohttp's ``heartbeat``, done here because aiohttp
    re-arms its timer through a loop callback for every message (about 2 %
    of the daemon's CPU with 100 stations sending as fast as answered); here
    a message costs one read of the loop's clock.
    """

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        ping_interval: float,
    ) -> None:
        self.ws = ws
        self._transport = transport
        self._interval = ping_interval
        self._loop = asyncio.get_running_loop()
        self._last_heard = self._loop.time()
        self._pinged_at: float | None = None
        self._silent: str | None = None  # why the keep-alive ended the connection
        self._timer: asyncio.TimerHandle | None = None
        self._ping: asyncio.Task[None] | None = None
        if ping_interval > 0:
            self._timer = self._loop.call_at(self._last_heard + ping_interval, self._keep_alive)

    async def receive(self) -> str | bytes:
        while True:
            msg = await self.ws.receive()
            self._last_heard = self._loop.time()
            if msg.type is WSMsgType.TEXT:
                return str(msg.data)
            if msg.type is WSMsgType.BINARY:
                return bytes(msg.data)
            if msg.type is WSMsgType.PING:
                await self.ws.pong(msg.data)
                continue
            if msg.type is WSMsgType.PONG:
                continue
            self.stop_keep_alive()
            if self._silent is not None:
                raise SocketClosed(self._silent)
            if msg.type is WSMsgType.ERROR:
                raise SocketClosed(f"websocket error: {self.ws.exception()}")
            code = self.ws.close_code
            raise SocketClosed(f"closed by station (code {code})" if code else "closed")

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode("utf-8"))

    def set_ping_interval(self, seconds: float) -> None:
        """Ping after ``seconds`` of silence from now on (0: no more pings)."""
        self._interval = seconds
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if seconds > 0:
            self._timer = self._loop.call_at(self._last_heard + seconds, self._keep_alive)

    def stop_keep_alive(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ping is not None:
            self._ping.cancel()
            self._ping = None

    def _keep_alive(self) -> None:
        now = self._loop.time()
        wait = self._interval / 2
        if self._pinged_at is not None and self._last_heard < self._pinged_at:
            if now < self._pinged_at + wait:  # woken early: not due yet
                self._timer = self._loop.call_at(self._pinged_at + wait, self._keep_alive)
                return
            self._timer = None
            self._silent = f"no answer to a websocket ping within {wait:g} s"
            if self._transport is not None:
                self._transport.abort()  # a dead peer would not answer a close either
            return
        self._pinged_at = None
        quiet_until = self._last_heard + self._interval
        if now < quiet_until:
            self._timer = self._loop.call_at(quiet_until, self._keep_alive)
            return
        self._pinged_at = now
        self._ping = asyncio.ensure_future(self._send_ping())
        self._timer = self._loop.call_at(now + wait, self._keep_alive)

    async def _send_ping(self) -> None:
        try:
            await self.ws.ping()
        except Exception as exc:  # closing already: the reader sees it
            log.debug("ping not sent: %s", exc)
        finally:
            self._ping = None


class StationListener(LinkListener, Protocol):
    """What a CSMS node decides and hears: each attempt, then each station's link."""

    async def authenticate(
        self, cb_id: str, credentials: tuple[str, str] | None, client_cn: str | None
    ) -> AuthDecision:
        """Decide on a cbId, its Basic credentials (``(user, password)`` or
        ``None``) and its client certificate's CN before the upgrade (may
        await a password hash's check in a thread)."""

    def refused(self, status: int, remote: str, cb_id: str | None = None) -> None:
        """An attempt from ``remote`` was refused with HTTP ``status`` before the upgrade,
        or (``status`` :data:`NO_COMMON_VERSION`) closed after it; ``cb_id`` is the
        identity its URL named (``None`` when it named none)."""

    def dropped(self, reason: str, remote: str) -> None:
        """A TCP connection from ``remote`` was closed before any HTTP answer: ``reason``
        ``"rate_limited"`` (over ``handshakes_per_address``, before TLS),
        ``"upgrade_timeout"`` or ``"tls_failed"`` (see :mod:`.admission`)."""


#: What :meth:`StationListener.refused` gets for a station that offered no
#: version the node accepts: the websocket close code it was closed with
#: after the upgrade (part 4, 3.2: the upgrade completes without a subprotocol).
NO_COMMON_VERSION = 1002


@dataclass
class ServerOptions:
    """Where and how to listen.

    ``versions`` are the OCPP versions accepted (``own_order``: in this order
    of preference rather than the station's); ``link`` is how every
    station's link behaves. ``ssl_context`` serves ``wss://`` (profiles 2
    and 3); ``max_connections`` caps open station connections and
    ``handshakes_per_second`` connection attempts (0 = no cap): both answer
    HTTP 503 beyond the cap. Before TLS and HTTP (:mod:`.admission`):
    ``handshakes_per_address`` caps connections per second from one source
    address (a burst of 2 s worth; beyond it closed at accept), and
    ``upgrade_timeout`` closes a connection whose websocket upgrade is not
    complete after that many seconds (0 = no cap, no deadline).
    """

    host: str | None
    port: int
    path: str
    versions: Sequence[OcppVersion] = field(default_factory=lambda: tuple(VERSIONS.values()))
    #: pick a station's version by the order of ``versions``, not the station's
    own_order: bool = False
    link: LinkOptions = field(default_factory=LinkOptions)
    ping_interval: float = 30.0
    compress: bool = True
    ssl_context: ssl.SSLContext | None = None
    max_connections: int = 0
    handshakes_per_second: float = 0.0
    handshakes_per_address: float = 0.0
    upgrade_timeout: float = 0.0


class Admission(NamedTuple):
    """What a connected station was admitted with, to check it again later
    (a redeployed node with another auth list: :meth:`CsmsServer.connections`)."""

    credentials: tuple[str, str] | None
    client_cn: str | None
    socket: StationSocket

    def __repr__(self) -> str:  # keep the password out of any log line
        return (
            f"Admission(credentials={self.credentials is not None}, client_cn={self.client_cn!r})"
        )


class CsmsServer:
    """Listens for stations; runs an :class:`OcppSession` for each one accepted.

    Args:
        options: where to listen, which versions, how links behave.
        listener: decides on each attempt and hears each station's link.
        session_class: the session to run (a subclass observes sends for
            the benchmark).
    """

    def __init__(
        self,
        options: ServerOptions,
        listener: StationListener,
        session_class: type[OcppSession] = OcppSession,
    ) -> None:
        self.options = options
        self.listener = listener
        self.session_class = session_class
        self._runner: web.AppRunner | None = None
        self._gate: AdmissionGate | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._handshakes = RateLimit(options.handshakes_per_second)
        self._admitted: dict[OcppSession, Admission] = {}
        if options.ssl_context is not None:
            # the listener's context stays; each handshake is served by the current one
            options.ssl_context.sni_callback = self._serve_current_context

    async def start(self) -> None:
        """Bind and listen. Raises ``OSError`` when the port cannot be had."""
        app = web.Application()
        app.router.add_get(route_for(self.options.path), self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        assert runner.server is not None
        options = self.options
        # the gate listens, not a web.TCPSite: TLS starts after admission
        gate = AdmissionGate(
            AdmissionOptions(
                per_address=options.handshakes_per_address,
                upgrade_timeout=options.upgrade_timeout,
                ssl_context=options.ssl_context,
            ),
            runner.server,
            self._dropped,
        )
        # A cancel (the node stopping) must not land inside the bind: the gate can
        # be listening by then, and nothing would close it.
        binding = asyncio.ensure_future(gate.listen(options.host, options.port))
        try:
            await asyncio.shield(binding)
        except BaseException:
            await asyncio.wait([binding])
            gate.close()
            await runner.cleanup()
            raise
        self._gate = gate
        self._runner = runner

    def update(self, options: ServerOptions, listener: StationListener) -> None:
        """Go on with ``options`` and ``listener`` (a redeployed node), keeping
        every connection: each link behaves as ``options.link`` says from now
        on, pings as ``options.ping_interval`` says, and hears ``listener``.

        ``host``, ``port``, ``path`` and whether there is TLS stay as they
        were (the caller keeps them); a new ``ssl_context`` serves the TLS
        handshakes from now on (a connected station keeps its TLS session),
        with the client certificate rule of the one the server started with.
        The limits before TLS (``handshakes_per_address``, ``upgrade_timeout``)
        apply to connections accepted from now on; drops are told to ``listener``.
        """
        if options.handshakes_per_second != self.options.handshakes_per_second:
            self._handshakes = RateLimit(options.handshakes_per_second)
        if self._gate is not None:  # its TLS context stays: see _serve_current_context
            self._gate.update(
                replace(
                    self._gate.options,
                    per_address=options.handshakes_per_address,
                    upgrade_timeout=options.upgrade_timeout,
                )
            )
        self.options = options
        self.listener = listener
        for session, admission in self._admitted.items():
            session.listener = listener
            session.update_options(options.link)
            admission.socket.set_ping_interval(options.ping_interval)

    def _dropped(self, reason: str, remote: str) -> None:
        self.listener.dropped(reason, remote)  # the listener of now (update)

    def connections(self) -> list[tuple[OcppSession, Admission]]:
        """The stations connected now, with what each was admitted with."""
        return list(self._admitted.items())

    def _serve_current_context(self, ssl_object: Any, server_name: Any, context: Any) -> None:
        current = self.options.ssl_context
        if current is not None and current is not context:
            ssl_object.context = current

    async def stop(self, reason: str = "CSMS node stopped") -> None:
        """Close every station connection (1001, ``reason``) and release the port."""
        for ws in list(self._sockets):
            await ws.close(code=1001, message=reason.encode())
        if self._gate is not None:
            self._gate.close()
            self._gate = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        response = await self._answer(request)
        if response.status >= 400:
            self.listener.refused(
                response.status, request.remote or "", request.match_info.get("cbId")
            )
        return response

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if not self._handshakes.allow(asyncio.get_running_loop().time()):
            return web.Response(
                status=503, text="Too many connection attempts", headers={"Retry-After": "1"}
            )
        if self.options.max_connections and len(self._sockets) >= self.options.max_connections:
            return web.Response(
                status=503, text="The CSMS is at its connection limit", headers={"Retry-After": "5"}
            )
        cb_id = request.match_info["cbId"]
        problem = identity_problem(cb_id)
        if problem is not None:
            return web.Response(status=400, text=f"Invalid Charging Station identity: {problem}")
        peercert = request.transport.get_extra_info("peercert") if request.transport else None
        credentials = basic_auth_credentials(request.headers.get("Authorization"))
        client_cn = peer_common_name(peercert)
        decision = await self.listener.authenticate(cb_id, credentials, client_cn)
        if decision is AuthDecision.UNKNOWN_IDENTITY:
            return web.Response(status=404, text="Unknown Charging Station identity")
        if decision is AuthDecision.BAD_CREDENTIALS:
            return web.Response(
                status=401,
                text="Access denied",
                headers={"WWW-Authenticate": 'Basic realm="OCPP", charset="UTF-8"'},
            )
        if decision is AuthDecision.WRONG_CERTIFICATE:
            return web.Response(
                status=403, text="The client certificate is not this Charging Station's"
            )
        if decision is AuthDecision.ALREADY_CONNECTED:
            return web.Response(status=409, text="This Charging Station is already connected")
        if decision is AuthDecision.BUSY:
            return web.Response(
                status=503, text="Too many logins being checked", headers={"Retry-After": "1"}
            )
        offered = request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "")
        version = select_version(
            offered.split(","), self.options.versions, own_order=self.options.own_order
        )
        ws = web.WebSocketResponse(
            protocols=() if version is None else (version.subprotocol,),
            max_msg_size=self.options.link.max_frame_size,
            compress=self.options.compress,
            autoping=False,  # pings and pongs: StationSocket
            timeout=3.0,  # seconds to wait for the close handshake of a stopping node
        )
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="Expected a websocket upgrade")
        await ws.prepare(request)
        if self._gate is not None:
            self._gate.upgraded(request.transport)
        if version is None or ws.ws_protocol != version.subprotocol:
            accepted = ", ".join(v.subprotocol for v in self.options.versions)
            await ws.close(
                code=NO_COMMON_VERSION, message=f"subprotocol {accepted} is required".encode()
            )
            self.listener.refused(NO_COMMON_VERSION, request.remote or "", cb_id)
            return ws
        self._sockets.add(ws)
        socket = StationSocket(ws, request.transport, self.options.ping_interval)
        session = self.session_class(
            cb_id,
            version,
            Role.CSMS,
            socket,
            self.listener,
            self.options.link,
            request.remote or "",
        )
        self._admitted[session] = Admission(credentials, client_cn, socket)
        try:
            await session.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("station %s: handler failed", cb_id)
        finally:
            socket.stop_keep_alive()
            self._admitted.pop(session, None)
            self._sockets.discard(ws)
            await ws.close()
        return ws
