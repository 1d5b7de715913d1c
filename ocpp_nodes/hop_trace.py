"""How long a message takes from the shim to the wire, for the benchmark.

Off unless the environment variable ``OCPP_NODES_HOP_TRACE`` names a file; the
shim sees the same variable (the daemon is its child) and then stamps every
``input`` frame with ``hop_t0``: CLOCK_MONOTONIC in nanoseconds when the message
entered the node's input handler. While the daemon handles that input, the
OCPP frames it queues for a websocket carry the stamp. For each such frame two
times are kept: until its bytes were handed to the kernel (the transport's
``write``; CS connections only, see :class:`TracedSession`, and only for a
send that did not wait for back-pressure; otherwise the same as the next) and
until the websocket library's ``send`` returned (that adds the kernel's loopback TCP
work). The daemon writes them (ns, one frame per line) to the file when it
exits. bench/run.py reads them (docs/benchmarks.md, "CS side").

Everything the tracing needs is here, as subclasses the daemon uses only
when the variable is set (:func:`daemon_parts`): :class:`TracedShimConnection`
notes the stamp of the input being handled, :class:`TracedSession` gives it
to the frames that input queues and times their sends.
"""

from __future__ import annotations

import logging
import os
import time
from array import array
from collections import deque
from collections.abc import Coroutine
from typing import Any

from .ipc.server import ShimConnection
from .transport import LocalTransports, OcppSession, TextSocket
from .transport.cs_client import ServerSocket

__all__ = ["ENV_VARIABLE", "HopTrace", "TRACE", "TracedSession", "TracedShimConnection"]

ENV_VARIABLE = "OCPP_NODES_HOP_TRACE"
#: Kept at most (8 MB); later ones are dropped.
MAX_SAMPLES = 1_000_000

log = logging.getLogger(__name__)


class HopTrace:
    def __init__(self, path: str) -> None:
        self.path = path
        #: ``hop_t0`` of the input being handled now, 0 outside one.
        self.current = 0
        #: when a watched transport's write was called during the current send
        #: (reset before each send), else 0
        self.last_write = 0
        self.handed = array("q")
        self.returned = array("q")

    def sent(self, t0: int) -> None:
        """The websocket's ``send`` of a frame stamped ``t0`` has just returned."""
        if len(self.returned) < MAX_SAMPLES:
            now = time.monotonic_ns()
            handed = self.last_write or now
            self.handed.append(handed - t0)
            self.returned.append(now - t0)

    def save(self) -> None:
        try:
            with open(self.path, "w", encoding="ascii") as out:
                out.writelines(
                    f"{a} {b}\n" for a, b in zip(self.handed, self.returned, strict=True)
                )
        except OSError as exc:
            log.warning("cannot write hop times to %s: %s", self.path, exc)


_path = os.environ.get(ENV_VARIABLE, "")
TRACE: HopTrace | None = HopTrace(_path) if _path else None


class _WatchedTransport:
    """A transport that notes when its ``write`` is called."""

    def __init__(self, trace: HopTrace, transport: Any) -> None:
        self._trace = trace
        self._transport = transport

    def write(self, data: bytes) -> None:
        self._trace.last_write = time.monotonic_ns()
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _SendTimedSocket:
    """A socket whose every send starts with no write noted yet."""

    def __init__(self, trace: HopTrace, socket: TextSocket) -> None:
        self._trace = trace
        self._socket = socket

    def send(self, text: str) -> Coroutine[Any, Any, None]:
        self._trace.last_write = 0  # set again if this socket's transport is watched
        return self._socket.send(text)

    def receive(self) -> Coroutine[Any, Any, str | bytes]:
        return self._socket.receive()

    def close(self, code: int, reason: str) -> Coroutine[Any, Any, None]:
        return self._socket.close(code, reason)


class TracedSession(OcppSession):
    """A session whose frames carry the stamp of the input that queued them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert TRACE is not None
        self._trace = TRACE
        # the hop_t0 of each outbox entry (0: not queued by an input)
        self._stamps: deque[int] = deque()
        # the send of the next frame waited for back-pressure: count to its return
        self._waited = False
        if isinstance(self.socket, ServerSocket):  # a CS connection: time the write itself
            self.socket.ws.transport = _WatchedTransport(TRACE, self.socket.ws.transport)
        self.socket = _SendTimedSocket(TRACE, self.socket)

    def _queued(self, count: int) -> None:
        self._stamps.extend([self._trace.current] * count)

    async def _finish_send(
        self, sending: Coroutine[Any, Any, None], waiting_for: Any, text: str
    ) -> None:
        self._waited = True
        await super()._finish_send(sending, waiting_for, text)

    def _sent(self, text: str) -> None:
        if self._stamps:
            stamp = self._stamps.popleft()
            if stamp:
                if self._waited:  # other sends ran meanwhile
                    self._trace.last_write = 0
                self._trace.sent(stamp)
        self._waited = False
        super()._sent(text)

    def _send_failed(self, exc: Exception) -> None:
        super()._send_failed(exc)
        self._stamps.clear()


class TracedShimConnection(ShimConnection):
    """A shim connection that notes the stamp of the input being handled."""

    def _input(self, frame: dict[str, Any]) -> None:
        t0 = frame.get("hop_t0")
        if TRACE is None or type(t0) is not int:
            super()._input(frame)
            return
        TRACE.current = t0
        try:
            super()._input(frame)
        finally:
            TRACE.current = 0


def daemon_parts() -> tuple[LocalTransports, type[ShimConnection]]:
    """The transports and shim connection class of the daemon: traced when asked."""
    if TRACE is None:
        return LocalTransports(), ShimConnection
    return LocalTransports(session_class=TracedSession), TracedShimConnection
