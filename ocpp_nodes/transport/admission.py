"""Admission at TCP accept: limits that act before TLS and before any HTTP.

A listener made with ``ssl=`` does the TLS handshake of every connection it
accepts, and an HTTP server then waits for a request as long as the client
likes: a client that opens connections and never speaks (or floods TLS
handshakes) costs the server work and file descriptors at no cost to itself.
:class:`AdmissionGate` owns the listening sockets and accepts itself, in
front of an HTTP server given as a protocol factory (aiohttp's ``web.Server``
for the CSMS node; the fleet gateway can reuse it):

1. At accept, the source address's token bucket (:class:`AddressRateLimit`)
   decides. Over it, the accepted socket is closed at once: no transport, no
   TLS, no HTTP parser; ``dropped("rate_limited", address)``.
2. Else the upgrade deadline is armed (``upgrade_timeout`` seconds, 0 = none):
   a connection that has not completed its websocket upgrade by then (the
   HTTP side calls :meth:`AdmissionGate.upgraded`) is closed, whatever it is
   doing (a TLS handshake, a slow request, keep-alive after a refusal):
   ``dropped("upgrade_timeout", address)``.
3. The socket goes to ``loop.connect_accepted_socket`` with the HTTP
   protocol factory (and the TLS context): the loop's own TLS, so
   ``peercert`` and the rest are as with ``create_server(ssl=...)``. A failed
   handshake is ``dropped("tls_failed", address)``. (Not ``start_tls`` on a
   plain transport: uvloop starts reading right after ``connection_made``,
   and a ClientHello read before ``start_tls`` is lost.)
4. From there the HTTP server owns the connection (closing it on shutdown
   included); the gate keeps only its deadline.
5. :meth:`AdmissionGate.close` stops accepting, closes the listening sockets
   (the port is free when it returns) and the connections still in their
   TLS handshake.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from .limits import AddressRateLimit

__all__ = [
    "RATE_LIMITED",
    "TLS_FAILED",
    "UPGRADE_TIMEOUT",
    "AdmissionGate",
    "AdmissionOptions",
]

log = logging.getLogger(__name__)

#: the reasons :class:`AdmissionGate` tells its ``dropped`` callback
RATE_LIMITED = "rate_limited"
UPGRADE_TIMEOUT = "upgrade_timeout"
TLS_FAILED = "tls_failed"

#: asyncio's own TLS handshake timeout, used when there is no upgrade deadline
DEFAULT_TLS_HANDSHAKE_TIMEOUT = 60.0
#: accepts per readiness event of a listening socket (asyncio's create_server: its backlog)
ACCEPTS_PER_WAKEUP = 128
#: out of file descriptors (or kernel memory): stop accepting this long, as asyncio does
ACCEPT_PAUSE = 1.0
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(frozen=True)
class AdmissionOptions:
    """The gate's limits (0 = none) and the TLS context (``None``: plain TCP).

    ``per_address`` is connections accepted per second from one source
    address, ``burst_seconds`` how many seconds' worth of them may come at
    once; ``upgrade_timeout`` the seconds a connection has to complete its
    websocket upgrade (TLS and HTTP); ``max_addresses`` the most per-address
    buckets held (see :class:`AddressRateLimit`).
    """

    per_address: float = 0.0
    burst_seconds: float = 2.0
    upgrade_timeout: float = 0.0
    ssl_context: ssl.SSLContext | None = None
    max_addresses: int = 65_536


class AdmissionGate:
    """Listens, and admits each connection before TLS and HTTP.

    Args:
        options: the limits and TLS context.
        http_factory: makes the protocol an admitted connection is given
            (after its TLS handshake).
        dropped: told ``(reason, address)`` for each connection the gate
            closes: :data:`RATE_LIMITED`, :data:`UPGRADE_TIMEOUT`,
            :data:`TLS_FAILED`.
    """

    def __init__(
        self,
        options: AdmissionOptions,
        http_factory: Callable[[], asyncio.Protocol],
        dropped: Callable[[str, str], None],
    ) -> None:
        self.options = options
        self.http_factory = http_factory
        self.dropped = dropped
        self.limiter = self._limiter(options)
        self._loop = asyncio.get_running_loop()
        self._sockets: list[socket.socket] = []
        self._connecting: set[_Admission] = set()
        # handed-over transport -> its admission, until upgraded or expired
        self._awaiting: dict[asyncio.BaseTransport, _Admission] = {}
        self._closed = False

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets (one per address family when ``host`` is ``None``)."""
        return list(self._sockets)

    async def listen(
        self, host: str | None, port: int, *, reuse_address: bool = True, backlog: int = 128
    ) -> None:
        """Bind ``host`` (``None``: every interface) and ``port``, and accept.

        Raises ``OSError`` when an address cannot be had (nothing is left bound).
        """
        infos = await self._loop.getaddrinfo(
            host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        try:
            for family, kind, proto, _name, address in dict.fromkeys(infos):
                try:
                    sock = socket.socket(family, kind, proto)
                except OSError:  # a family this host lacks (IPv6 off): as asyncio does
                    continue
                self._sockets.append(sock)
                if reuse_address:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    # both families on one port, each its own socket (as asyncio does)
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(backlog)
                sock.setblocking(False)
            for sock in self._sockets:
                self._loop.add_reader(sock.fileno(), self._accept, sock)
        except BaseException:
            self._close_sockets()
            raise

    def update(self, options: AdmissionOptions) -> None:
        """New limits and TLS context for the connections accepted from now on (a
        redeploy that keeps the port). Deadlines already armed keep their time; the
        per-address buckets start afresh when their rate or size changed."""
        old, self.options = self.options, options
        if (old.per_address, old.burst_seconds, old.max_addresses) != (
            options.per_address,
            options.burst_seconds,
            options.max_addresses,
        ):
            self.limiter = self._limiter(options)

    @staticmethod
    def _limiter(options: AdmissionOptions) -> AddressRateLimit:
        return AddressRateLimit(
            options.per_address,
            max(options.per_address * options.burst_seconds, 1.0),
            options.max_addresses,
        )

    def upgraded(self, transport: asyncio.BaseTransport | None) -> None:
        """The HTTP side completed the websocket upgrade on ``transport``: no deadline now."""
        if transport is None:
            return
        admission = self._awaiting.pop(transport, None)
        if admission is not None:
            admission.cancel_deadline()

    def close(self) -> None:
        """Stop listening (the port is free on return); close the connections not yet
        handed over; forget every deadline. Handed-over ones are the HTTP server's."""
        self._closed = True
        self._close_sockets()
        for admission in list(self._connecting):
            admission.cancel()
        self._connecting.clear()
        for admission in self._awaiting.values():
            admission.cancel_deadline()
        self._awaiting.clear()

    @property
    def in_admission(self) -> int:
        """Connections accepted whose websocket upgrade is neither complete nor given up."""
        return len(self._connecting) + len(self._awaiting)

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            if sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
                sock.close()
        self._sockets.clear()

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, peer = listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRORS:  # that connection's own trouble
                    log.warning("accept on %s failed: %s", listening.getsockname(), exc)
                    continue
                log.warning(
                    "cannot accept on %s: %s; not accepting for %g s",
                    listening.getsockname(),
                    exc.strerror,
                    ACCEPT_PAUSE,
                )
                self._loop.remove_reader(listening.fileno())
                self._loop.call_later(ACCEPT_PAUSE, self._resume_accepting, listening)
                return
            self._admit(conn, str(peer[0]) if peer else "")

    def _resume_accepting(self, listening: socket.socket) -> None:
        if not self._closed and listening.fileno() >= 0:
            self._loop.add_reader(listening.fileno(), self._accept, listening)

    def _admit(self, conn: socket.socket, address: str) -> None:
        if not self.limiter.allow(address, self._loop.time()):
            conn.close()
            self._drop(RATE_LIMITED, address)
            return
        admission = _Admission(self, address)
        timeout = self.options.upgrade_timeout
        if timeout > 0:
            admission.deadline = self._loop.call_later(timeout, admission.expire)
        self._connecting.add(admission)
        admission.task = self._loop.create_task(admission.connect(conn))
        admission.task.add_done_callback(partial(admission.close_if_never_started, conn))

    def _drop(self, reason: str, address: str) -> None:
        if self._closed:
            return
        try:
            self.dropped(reason, address)
        except Exception:  # a listener's bug must not stop the accepting
            log.exception("dropped(%s, %s) failed", reason, address)


class _Admission:
    """One accepted connection: its TLS handshake, then its deadline."""

    def __init__(self, gate: AdmissionGate, address: str) -> None:
        self.gate = gate
        self.address = address
        self.task: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport | None = None  # what the HTTP side got
        self.deadline: asyncio.TimerHandle | None = None
        self.started = False

    async def connect(self, conn: socket.socket) -> None:
        # From here the loop's transport owns ``conn`` and closes it, also on a
        # failure or a cancellation: closing it here too would close its
        # descriptor under the loop (which may have handed the number on).
        self.started = True
        gate = self.gate
        context = gate.options.ssl_context
        timeout = gate.options.upgrade_timeout
        try:
            if context is None:
                transport, _protocol = await gate._loop.connect_accepted_socket(
                    gate.http_factory, conn
                )
            else:
                transport, _protocol = await gate._loop.connect_accepted_socket(
                    gate.http_factory,
                    conn,
                    ssl=context,
                    # the deadline ends it first (and says so) when there is one
                    ssl_handshake_timeout=timeout + 1
                    if timeout > 0
                    else DEFAULT_TLS_HANDSHAKE_TIMEOUT,
                )
        except Exception as exc:  # (not a cancellation: expired, or the gate closed)
            gate._connecting.discard(self)
            self.cancel_deadline()
            log.debug("TLS handshake with %s failed: %r", self.address, exc)
            gate._drop(TLS_FAILED, self.address)
            return
        gate._connecting.discard(self)
        if self.deadline is not None:
            self.transport = transport
            gate._awaiting[transport] = self

    def expire(self) -> None:
        self.deadline = None
        gate = self.gate
        if self.transport is None:  # still in its TLS handshake
            gate._connecting.discard(self)
            if self.task is not None:
                self.task.cancel()
        else:
            gate._awaiting.pop(self.transport, None)
            if self.transport.is_closing():
                return  # closed already (refused, or the client went away)
            self.transport.abort()
        gate._drop(UPGRADE_TIMEOUT, self.address)

    def close_if_never_started(self, conn: socket.socket, task: asyncio.Task[None]) -> None:
        """Done callback: a task cancelled before its first step never gave ``conn``
        to a transport, so nothing else closes it."""
        if not self.started:
            conn.close()

    def cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def cancel(self) -> None:
        self.cancel_deadline()
        if self.task is not None:
            self.task.cancel()
