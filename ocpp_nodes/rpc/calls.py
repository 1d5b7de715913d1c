"""The CALLs we send: one outstanding, the rest waiting in order, with deadlines.

Theory of operation (OCPP 2.0.1 part 4, 4.1.1 "Synchronicity"):

1. At most one CALL of ours is outstanding on a connection. :meth:`submit`
   returns the call when it may go on the wire now; otherwise the call waits
   in a FIFO queue of bounded size, and a full queue raises :class:`QueueFull`.
2. A call's deadline is set when it is sent (``now + timeout``), not when it
   is queued: time spent waiting behind another call does not count.
3. :meth:`settle` ends the outstanding call when its answer arrives;
   :meth:`expire` ends it when its deadline has passed. Both hand back the
   next queued call, stamped with its deadline, for the caller to send.
4. :meth:`drain` empties the table when the connection is gone.

Time is always an argument (seconds on any monotonic clock). No I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OutgoingCall", "PendingCalls", "QueueFull"]


class QueueFull(Exception):
    """The queue of calls waiting to be sent is at its limit."""


@dataclass
class OutgoingCall:
    """A CALL of ours, from submission until its answer or its end.

    ``text`` is the serialized frame; ``deadline`` is set when it is sent.
    """

    message_id: str
    action: str
    payload: dict[str, Any]
    text: str
    deadline: float | None = field(default=None, compare=False)

    @property
    def sent(self) -> bool:
        """True once on the wire (outstanding), False while queued."""
        return self.deadline is not None


class PendingCalls:
    """Our CALLs on one connection.

    Args:
        timeout: seconds a sent call may wait for its answer.
        max_queued: how many calls may wait behind the outstanding one.
    """

    def __init__(self, timeout: float, max_queued: int) -> None:
        self.timeout = timeout
        self.max_queued = max_queued
        self.outstanding: OutgoingCall | None = None
        self.queued: deque[OutgoingCall] = deque()

    def knows(self, message_id: str) -> bool:
        """True when a call with this id is outstanding or queued."""
        if self.outstanding is not None and self.outstanding.message_id == message_id:
            return True
        return any(call.message_id == message_id for call in self.queued)

    def submit(self, call: OutgoingCall, now: float) -> OutgoingCall | None:
        """Take a new call.

        Returns:
            The call itself when it is to be sent now, else ``None`` (queued).

        Raises:
            QueueFull: ``max_queued`` calls are already waiting.
        """
        if self.outstanding is None:
            return self._start(call, now)
        if len(self.queued) >= self.max_queued:
            raise QueueFull(f"{len(self.queued)} requests already wait for an answer to go out")
        self.queued.append(call)
        return None

    def settle(
        self, message_id: str, now: float
    ) -> tuple[OutgoingCall | None, OutgoingCall | None]:
        """End the outstanding call because its answer arrived.

        Returns:
            ``(settled, to_send)``: the call that ``message_id`` answers, or
            ``None`` when it answers none of ours (late or unknown), and the
            next call to send now, if any.
        """
        call = self.outstanding
        if call is None or call.message_id != message_id:
            return None, None
        self.outstanding = None
        return call, self._next(now)

    def expire(self, now: float) -> tuple[OutgoingCall | None, OutgoingCall | None]:
        """End the outstanding call if its deadline has passed.

        Returns:
            ``(expired, to_send)``, either may be ``None``.
        """
        call = self.outstanding
        if call is None or call.deadline is None or call.deadline > now:
            return None, None
        self.outstanding = None
        return call, self._next(now)

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has work, or ``None``."""
        return None if self.outstanding is None else self.outstanding.deadline

    def all(self) -> list[OutgoingCall]:
        """Every call, the outstanding one first, then in queue order."""
        calls = [] if self.outstanding is None else [self.outstanding]
        calls.extend(self.queued)
        return calls

    def withdraw_queued(self) -> list[OutgoingCall]:
        """Remove and return the calls not yet sent; the outstanding one stays."""
        calls = list(self.queued)
        self.queued.clear()
        return calls

    def drain(self) -> list[OutgoingCall]:
        """Remove and return every call, outstanding first, then in queue order."""
        calls = self.all()
        self.outstanding = None
        self.queued.clear()
        return calls

    def _next(self, now: float) -> OutgoingCall | None:
        if not self.queued:
            return None
        return self._start(self.queued.popleft(), now)

    def _start(self, call: OutgoingCall, now: float) -> OutgoingCall:
        call.deadline = now + self.timeout
        self.outstanding = call
        return call
