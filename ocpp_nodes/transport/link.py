"""What the node layer sees of one connection between a station and its CSMS.

The CSMS node talks to each connected station, and the CS node to its CSMS,
through a :class:`StationLink` only: send a CALL, a CALLRESULT or a CALLERROR,
ask whether a received CALL still waits for its answer, list our pending
CALLs, close. What happens on the link comes back through a
:class:`LinkListener`. Nothing of a session's internals (its OCPP-J state,
its socket) crosses this line, so a station held by another process (fleet
mode) can stand behind the same two interfaces.

Per-call context that only a node needs (the input's ``done``,
``customData``, ``_linkSource``) stays in the node, keyed by message id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from ..rpc import CallReceived, Event, OcppVersion

__all__ = ["LinkListener", "LinkOptions", "PendingCall", "StationLink"]


@dataclass(frozen=True)
class LinkOptions:
    """How a link behaves, the same for every link of a node.

    Attributes:
        call_timeout: seconds our CALL waits for its answer.
        answer_timeout: seconds a received CALL waits for the flow's answer.
        max_queued: our CALLs that may wait behind the outstanding one.
        max_frame_size: largest frame (UTF-8 bytes) sent or accepted.
        log_frames: whether the listener's ``link_frame`` hears every frame.
        meter: what counts the link's messages (``ocpp_nodes.metrics.NodeMeter``);
            ``None`` when metrics are off.
    """

    call_timeout: float = 30.0
    answer_timeout: float = 30.0
    max_queued: int = 1000
    max_frame_size: int = 1024 * 1024
    log_frames: bool = False
    meter: Any = None


class PendingCall(NamedTuple):
    """One CALL of ours not answered yet: on the wire (``sent``) or queued."""

    message_id: str
    action: str
    sent: bool


class StationLink(Protocol):
    """One live OCPP connection, seen from the node that owns it.

    Attributes:
        cb_id: the station's identity.
        version: the OCPP version this connection negotiated.
        remote: the peer's address (``""`` when unknown).
        call_timeout: seconds our CALL waits for its answer.
    """

    cb_id: str
    version: OcppVersion
    remote: str

    @property
    def call_timeout(self) -> float: ...

    def send_call(self, action: str, payload: Any, *, message_id: str | None = None) -> str:
        """Send (or queue) a CALL; returns its message id.

        Raises:
            OutgoingError: it cannot be sent (``ConnectionClosed`` once the
                link is closed); nothing went on the wire.
        """

    def send_unconfirmed(self, action: str, payload: Any, *, message_id: str | None = None) -> str:
        """(2.1) Send a SEND at once (not behind the outstanding CALL); returns its
        message id. Raises ``OutgoingError``."""

    def send_result(self, message_id: str, payload: Any) -> None:
        """Answer the received CALL ``message_id``. Raises ``OutgoingError``."""

    def send_error(
        self, message_id: str, error_code: str, description: str = "", details: Any = None
    ) -> None:
        """Answer the received CALL ``message_id`` with a CALLERROR. Raises ``OutgoingError``."""

    def awaits_answer(self, message_id: Any) -> bool:
        """True when the received CALL ``message_id`` still waits for our answer."""

    def pending_calls(self) -> list[PendingCall]:
        """Our CALLs not answered yet: the outstanding one first, then the queue."""

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection; the listener's ``link_closed`` follows."""

    # A redeployed node takes over the links of the one it replaces
    # (ocpp_nodes/nodes/redeploy.py):

    listener: LinkListener

    def update_options(self, options: LinkOptions) -> None:
        """Behave as ``options`` say from now on."""

    def unanswered(self) -> list[CallReceived]:
        """The received CALLs that still wait for our answer, in the order they came."""

    def withdraw_queued(self) -> list[PendingCall]:
        """Take back our CALLs not yet sent (they will not be)."""


class LinkListener(Protocol):
    """What a node hears of its links."""

    async def link_opened(self, link: StationLink) -> None:
        """A link is up; nothing arrives on it before this returns."""

    def link_events(self, link: StationLink, events: list[Event]) -> None:
        """What a received message or a deadline meant, in order."""

    def link_frame(self, link: StationLink, text: str, from_peer: bool) -> None:
        """One raw frame, when the link's options ask for them (``log_frames``)."""

    def link_closed(self, link: StationLink, reason: str | None) -> None:
        """The link is gone, every CALL of ours on it ended (``CallAborted``);
        ``reason`` says why, ``None`` when our side was stopping."""
