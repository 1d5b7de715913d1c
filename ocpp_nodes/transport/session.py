"""An OCPP-J connection bound to a live websocket: the local :class:`StationLink`.

The session is the only place where the sans-I/O core meets a socket: it
feeds received messages to :class:`~ocpp_nodes.rpc.OcppConnection`, writes
what the core wants sent (in order; at once while the socket takes it, through
a task only while the socket pushes back), runs the core's deadlines on the
event loop's clock, and tells its :class:`~ocpp_nodes.transport.link.
LinkListener` what happens. Both roles use it; the CSMS server and the CS
client only differ in how the socket is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import types
from collections import deque
from collections.abc import Coroutine, Generator
from typing import Any, Protocol

from ..rpc import CallReceived, Event, OcppConnection, OcppVersion, Role, UnansweredCall
from .link import LinkListener, LinkOptions, PendingCall

__all__ = ["OcppSession", "TextSocket", "SocketClosed"]

log = logging.getLogger(__name__)


class SocketClosed(Exception):
    """The websocket is closed; ``reason`` says by whom and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TextSocket(Protocol):
    """What a session needs from a websocket library."""

    async def receive(self) -> str | bytes:
        """The next message; raises :class:`SocketClosed` when the socket is done."""

    async def send(self, text: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class OcppSession:
    """One connection between a station and its CSMS, seen from either end.

    A :class:`~ocpp_nodes.transport.link.StationLink`.

    Args:
        cb_id: the station identity of the connection.
        version: the OCPP version the socket negotiated.
        role: which end we are.
        socket: the websocket.
        listener: told when the link opens and closes, and what happens on it.
        options: timeouts, queue and frame size, whether frames are logged.
        remote: the peer's address.
    """

    def __init__(
        self,
        cb_id: str,
        version: OcppVersion,
        role: Role,
        socket: TextSocket,
        listener: LinkListener,
        options: LinkOptions,
        remote: str = "",
    ) -> None:
        self.cb_id = cb_id
        self.version = version
        self.remote = remote
        self.connection = OcppConnection(
            version,
            role,
            call_timeout=options.call_timeout,
            answer_timeout=options.answer_timeout,
            max_queued=options.max_queued,
            max_frame_size=options.max_frame_size,
        )
        self.socket = socket
        self.listener = listener
        self._log_frames = options.log_frames
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._outbox: deque[str] = deque()
        # the task finishing a send the socket made wait for (back-pressure)
        self._writer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # counts what crosses the link (ocpp_nodes.metrics.LinkMeter); None: metrics off
        self._meter = None if options.meter is None else options.meter.link(version, cb_id)

    # -- the StationLink --------------------------------------------------------

    @property
    def call_timeout(self) -> float:
        return self.connection.calls.timeout

    def send_call(self, action: str, payload: Any, *, message_id: str | None = None) -> str:
        call = self.connection.send_call(action, payload, self._loop.time(), message_id=message_id)
        self._flush()
        if self._meter is not None:
            self._meter.call_sent(action)
        return call.message_id

    def send_unconfirmed(self, action: str, payload: Any, *, message_id: str | None = None) -> str:
        sent = self.connection.send_unconfirmed(action, payload, message_id=message_id)
        self._flush()
        if self._meter is not None:
            self._meter.send_sent(action)
        return sent

    def send_result(self, message_id: str, payload: Any) -> None:
        request = self._request(message_id)
        self.connection.send_result(message_id, payload)
        self._flush()
        if request is not None:
            self._answered(request, None)

    def send_error(
        self, message_id: str, error_code: str, description: str = "", details: Any = None
    ) -> None:
        request = self._request(message_id)
        self.connection.send_error(message_id, error_code, description, details)
        self._flush()
        if request is not None:
            self._answered(request, error_code)

    def _request(self, message_id: Any) -> UnansweredCall | None:
        """The received CALL an answer is for, when metrics count it (else None)."""
        if self._meter is None or not isinstance(message_id, str):
            return None
        return self.connection.received.get(message_id)

    def _answered(self, request: UnansweredCall, error_code: str | None) -> None:
        assert self._meter is not None
        # the core set the deadline when the CALL came: received + answer timeout
        received_at = request.deadline - self.connection.answer_timeout
        self._meter.answered(request, self._loop.time() - received_at, error_code)

    def awaits_answer(self, message_id: Any) -> bool:
        return self.connection.awaits_answer(message_id)

    def pending_calls(self) -> list[PendingCall]:
        return [
            PendingCall(call.message_id, call.action, call.sent)
            for call in self.connection.calls.all()
        ]

    def update_options(self, options: LinkOptions) -> None:
        """Behave as ``options`` say from now on (a redeployed node's settings).

        Timeouts count from now for what is sent or received from now; the
        size limit applies to what is sent (what is received keeps the limit
        the socket was opened with).
        """
        connection = self.connection
        connection.calls.timeout = options.call_timeout
        connection.calls.max_queued = options.max_queued
        connection.answer_timeout = options.answer_timeout
        connection.max_frame_size = options.max_frame_size
        self._log_frames = options.log_frames

    def unanswered(self) -> list[CallReceived]:
        """The received CALLs that still wait for our answer, in the order they came."""
        return [
            CallReceived(request.message_id, request.action, request.payload)
            for request in self.connection.received.values()
        ]

    def withdraw_queued(self) -> list[PendingCall]:
        """Take back our CALLs that wait behind the outstanding one (never sent)."""
        return [
            PendingCall(call.message_id, call.action, False)
            for call in self.connection.calls.withdraw_queued()
        ]

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the websocket; :meth:`run` then ends and reports the loss."""
        with contextlib.suppress(Exception):
            await self.socket.close(code, reason)

    # -- the loops -------------------------------------------------------------

    async def run(self) -> str | None:
        """Open the link, read until the socket closes, close the link.

        The listener hears ``link_opened`` first and ``link_closed`` last,
        after every call still pending has ended with ``CallAborted``.

        Returns:
            Why it closed; ``None`` when it was cancelled (our side stopping).
        """
        await self.listener.link_opened(self)
        reason: str | None = None
        try:
            reason = await self._read()
        finally:
            if self._meter is not None:
                self._meter.closed(reason is not None)
            self.listener.link_closed(self, reason)
        return reason

    async def _read(self) -> str:
        reason = "connection closed"
        try:
            while True:
                try:
                    text = await self.socket.receive()
                except SocketClosed as exc:
                    reason = exc.reason
                    break
                if self._log_frames:
                    self._log_frame(text if isinstance(text, str) else repr(text), True)
                now = self._loop.time()
                if self._meter is None:
                    events = self.connection.receive_text(text, now)
                else:
                    calls = self.connection.calls
                    outstanding = calls.outstanding  # what this message may answer
                    # its deadline was set when it went on the wire: sent + call timeout
                    sent_at = (outstanding.deadline or 0.0) - calls.timeout if outstanding else 0.0
                    events = self.connection.receive_text(text, now)
                    self._meter.received(events, outstanding, sent_at, now)
                self._flush()
                self._deliver(events)
        finally:
            self.closed = True
            self._outbox.clear()
            if self._timer is not None:
                self._timer.cancel()
            self._deliver(self.connection.connection_lost(reason))
            writer = self._writer
            if writer is not None:
                writer.cancel()
                # wait() rather than awaiting the task: a cancel of *this* task
                # (the node stopping) must not be swallowed with the writer's.
                await asyncio.wait([writer])
        return reason

    def _flush(self) -> None:
        texts = self.connection.data_to_send()
        if texts and not self.closed:
            self._outbox.extend(texts)
            self._queued(len(texts))
            if self._writer is None:
                self._write()
        self._arm_timer()

    def _queued(self, count: int) -> None:
        """``count`` frames joined the outbox: a hook for an observer of sends
        (the benchmark's ``hop_trace.TracedSession``); nothing here."""

    def _write(self) -> None:
        """Write the outbox in order, now, for as long as the socket takes it.

        A websocket library's ``send`` is a coroutine that finishes without
        suspending unless the socket's buffer is full. It is stepped here
        directly: no task and no turn of the event loop per frame. If it does
        suspend, a task finishes that send and then writes the rest.
        """
        while self._outbox and not self.closed:
            text = self._outbox.popleft()
            sending = self.socket.send(text)
            try:
                waiting_for = sending.send(None)
            except StopIteration:
                self._sent(text)
                continue
            except Exception as exc:
                self._send_failed(exc)
                return
            self._writer = asyncio.ensure_future(self._finish_send(sending, waiting_for, text))
            return

    async def _finish_send(
        self, sending: Coroutine[Any, Any, None], waiting_for: Any, text: str
    ) -> None:
        try:
            await _resume(sending, waiting_for)
        except Exception as exc:
            self._writer = None
            self._send_failed(exc)
            return
        self._writer = None
        self._sent(text)
        self._write()

    def _sent(self, text: str) -> None:
        if self._log_frames:
            self._log_frame(text, False)

    def _send_failed(self, exc: Exception) -> None:
        # the reader sees the close and ends the session
        log.debug("%s: send failed: %s", self.cb_id, exc)
        self._outbox.clear()

    def _arm_timer(self) -> None:
        # Lazy: a timer already due no later than the next deadline stays as it
        # is. Every message moves the deadline later; re-arming each time would
        # cost a timer handle per message. A timer that fires early finds
        # nothing expired and arms itself for the real next deadline.
        if self.closed:
            return
        deadline = self.connection.next_deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_at is not None and self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        self._timer_at = None
        events = self.connection.expire(self._loop.time())
        self._flush()
        if self._meter is not None:
            for event in events:
                self._meter.expired(event)
        self._deliver(events)

    def _log_frame(self, text: str, from_peer: bool) -> None:
        try:
            self.listener.link_frame(self, text, from_peer)
        except Exception:  # a frame that cannot be logged must not end the connection
            log.exception("%s: logging a frame failed", self.cb_id)

    def _deliver(self, events: list[Event]) -> None:
        if not events:
            return
        try:
            self.listener.link_events(self, events)
        except Exception:  # a bug in a handler must not end the connection
            log.exception("%s: handling %s failed", self.cb_id, events)


@types.coroutine
def _resume(sending: Coroutine[Any, Any, None], waiting_for: Any) -> Generator[Any, Any, None]:
    """Go on with a coroutine that was stepped by hand and suspended on ``waiting_for``.

    What ``yield from`` does, from the middle: the task running this waits for
    what the coroutine yielded, then passes the outcome (a value, or an
    exception such as a cancel) back into it, until it returns.
    """
    while True:
        try:
            value = yield waiting_for
        except BaseException as exc:
            try:
                waiting_for = sending.throw(exc)
            except StopIteration:
                return
        else:
            try:
                waiting_for = sending.send(value)
            except StopIteration:
                return
