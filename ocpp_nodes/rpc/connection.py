"""One OCPP-J connection's state: text in -> events out, calls in -> text out.

Theory of operation:

1. A connection speaks one OCPP version (:class:`~ocpp_nodes.rpc.versions.
   OcppVersion`), the one its websocket negotiated, in one role. Every
   version-dependent decision below reads that version.
2. The transport feeds every received websocket message to
   :meth:`OcppConnection.receive_text` and writes out whatever
   :meth:`OcppConnection.data_to_send` returns, in order.
3. A received CALL with a known action and a valid payload becomes
   :class:`CallReceived` and is remembered as an :class:`UnansweredCall`
   until it is answered with :meth:`send_result` or :meth:`send_error`, or its
   answer deadline passes. Anything else that owes an answer (bad JSON,
   unknown action, schema violation, duplicate id, a message type the version
   lacks when the version says to answer it) is answered with the version's
   CALLERROR at once, and reported as :class:`PeerError` so the user sees
   what the peer sent.
4. CALLRESULT and CALLERROR frames settle our outstanding call
   (:class:`ResultReceived`, :class:`ErrorReceived`); one for no call of ours
   is reported as :class:`UnexpectedAnswer` and never delivered as current.
   A CALLRESULT whose payload breaks the schema is :class:`ResultInvalid`;
   a version with CALLRESULTERROR (2.1) also tells the peer with one.
4a. (2.1) A CALLRESULTERROR about one of our CALLRESULTs is
   :class:`ResultRefused`; a valid SEND is :class:`SendReceived` and is never
   answered, nor is a bad one. Our SENDs (:meth:`send_unconfirmed`) go out at
   once, never behind the outstanding CALL.
5. Our CALLs go through :class:`~ocpp_nodes.rpc.calls.PendingCalls`: one
   outstanding, the rest queued. Payloads we send are validated first;
   :class:`OutgoingError` means nothing went on the wire.
6. :meth:`expire` ends calls and received requests whose time is up;
   :meth:`next_deadline` says when to call it next.
7. :meth:`connection_lost` ends every call of ours with :class:`CallAborted`
   and closes the connection (:class:`ConnectionState`): from then on,
   sending raises :class:`ConnectionClosed` instead of queueing a call that
   would never end.

Time is an argument; message ids come from a factory that may be replaced.
No I/O.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..schemas import Direction
from .calls import OutgoingCall, PendingCalls, QueueFull
from .frames import (
    MAX_MESSAGE_ID_LENGTH,
    Call,
    CallError,
    CallResult,
    CallResultError,
    ErrorCode,
    MalformedFrame,
    MessageType,
    Send,
    error_description,
    parse,
    serialize,
)
from .roles import Role
from .versions import OcppVersion, UnknownMessageType

__all__ = [
    "CallAborted",
    "CallReceived",
    "CallTimedOut",
    "ConnectionClosed",
    "ConnectionState",
    "ErrorReceived",
    "Event",
    "OcppConnection",
    "OutgoingError",
    "PeerError",
    "RequestExpired",
    "ResultInvalid",
    "ResultReceived",
    "ResultRefused",
    "SendReceived",
    "UnansweredCall",
    "UnexpectedAnswer",
    "check_request",
]


class ConnectionState(Enum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class UnansweredCall:
    """A CALL from the peer that waits for our answer until ``deadline``.

    ``payload`` is kept so that the request can be handed again to whoever
    answers it now (a redeployed node: docs/reliability.md, "Redeploys").
    """

    message_id: str
    action: str
    deadline: float
    payload: Any = None


# -- events: what a received message or a deadline means -------------------------


@dataclass(frozen=True)
class CallReceived:
    """The peer sent a valid CALL. Answer it with ``send_result`` or
    ``send_error`` before the answer deadline (then :class:`RequestExpired`)."""

    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class ResultReceived:
    """Our CALL ``message_id`` was answered with a valid CALLRESULT."""

    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class ErrorReceived:
    """Our CALL ``message_id`` was answered with a CALLERROR."""

    message_id: str
    action: str
    error_code: str
    error_description: str
    error_details: dict[str, Any]


@dataclass(frozen=True)
class ResultInvalid:
    """Our CALL ``message_id`` was answered with a CALLRESULT whose payload
    breaks the schema; ``error_code`` and ``description`` say how."""

    message_id: str
    action: str
    payload: dict[str, Any]
    error_code: str
    description: str


@dataclass(frozen=True)
class ResultRefused:
    """(2.1) The peer could not process our CALLRESULT to its CALL
    ``message_id`` (of ``action``, ``""`` when no longer known): a CALLRESULTERROR."""

    message_id: str
    action: str
    error_code: str
    error_description: str
    error_details: dict[str, Any]


@dataclass(frozen=True)
class SendReceived:
    """(2.1) The peer sent a valid SEND: nothing is owed back."""

    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class CallTimedOut:
    """Our CALL ``message_id`` got no answer within the call timeout; a later
    answer is an :class:`UnexpectedAnswer`."""

    message_id: str
    action: str


@dataclass(frozen=True)
class CallAborted:
    """Our CALL ``message_id`` (sent or queued) ended unanswered because the
    connection was lost; ``reason`` says how."""

    message_id: str
    action: str
    reason: str


@dataclass(frozen=True)
class PeerError:
    """The peer sent something wrong. ``answer`` is the CALLERROR we sent
    back, or ``None`` when nothing is owed (a bad answer, or a message type
    the version says to ignore)."""

    description: str
    answer: CallError | None


@dataclass(frozen=True)
class UnexpectedAnswer:
    """A CALLRESULT or CALLERROR for no call of ours (late, or never sent); dropped."""

    message_id: str
    message_type: int


@dataclass(frozen=True)
class RequestExpired:
    """The peer's CALL ``message_id`` was not answered in time; a later answer is refused."""

    message_id: str
    action: str


Event = (
    CallReceived
    | ResultReceived
    | ErrorReceived
    | ResultInvalid
    | ResultRefused
    | SendReceived
    | CallTimedOut
    | CallAborted
    | PeerError
    | UnexpectedAnswer
    | RequestExpired
)


#: Frames that are never answered, even when wrong.
_NEVER_ANSWERED = frozenset(
    {MessageType.CALLRESULT, MessageType.CALLERROR, MessageType.CALLRESULTERROR, MessageType.SEND}
)

#: Received CALLs answered lately, and those that expired unanswered, kept per
#: connection so that a second or late answer is told which it is (and a
#: CALLRESULTERROR, which follows its CALLRESULT at once, can name the action,
#: 2.1). With one outstanding CALL per direction, a flow that answers twice
#: does so within the last few. About 3 KB per connection when full.
SETTLED_KEPT = 32


# Seeded once from the OS; a MessageId needs to be unique, not secret.
_random = random.Random()
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_message_id() -> str:
    """A random UUID (version 4) as text: the MessageId of our CALLs.

    Made from a pseudo-random generator seeded once, rather than
    ``uuid.uuid4()``, which reads the OS's random source (a system call) for
    every message.
    """
    digits = f"{(_random.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


class OutgoingError(ValueError):
    """What the flow asked us to send cannot be sent; nothing went on the wire."""


class ConnectionClosed(OutgoingError):
    """The connection is closed: nothing can be sent on it any more."""


def check_request(version: OcppVersion, role: Role, action: Any, payload: Any) -> None:
    """Raise :class:`OutgoingError` unless ``role`` may send ``action`` with ``payload``.

    What :meth:`OcppConnection.send_call` checks first; also used to refuse a
    request before it is stored for later.
    """
    schemas = version.schemas
    if not isinstance(action, str) or not schemas.knows(action):
        raise OutgoingError(f"{action!r} is not an OCPP {version.name} action")
    if action not in version.sends[role]:
        raise OutgoingError(f"{action} is not an action a {role.value} sends")
    violation = schemas.validate(action, Direction.REQUEST, payload)
    if violation is not None:
        raise OutgoingError(
            f"{action} request is invalid ({violation.error_code}): {violation.description}"
        )


class OcppConnection:
    """The OCPP-J state of one websocket connection, in either role.

    Args:
        version: the OCPP version the connection negotiated.
        role: which end of the connection we are; a CALL of an action our
            role never receives is answered ``NotSupported``, and we refuse
            to send an action our role never sends.
        call_timeout: seconds our CALL waits for its answer.
        answer_timeout: seconds a received CALL may wait for the flow's answer.
        max_queued: calls that may wait behind the outstanding one.
        max_frame_size: largest frame (UTF-8 bytes) we send; larger is refused.
        new_message_id: factory of message ids for our CALLs.
    """

    def __init__(
        self,
        version: OcppVersion,
        role: Role,
        *,
        call_timeout: float = 30.0,
        answer_timeout: float = 30.0,
        max_queued: int = 1000,
        max_frame_size: int = 1024 * 1024,
        new_message_id: Callable[[], str] = new_message_id,
    ) -> None:
        self.version = version
        self.role = role
        self.state = ConnectionState.OPEN
        self.max_frame_size = max_frame_size
        self._schemas = version.schemas
        self._peer_sends = version.receives(role)
        self.calls = PendingCalls(call_timeout, max_queued)
        self.answer_timeout = answer_timeout
        self.received: dict[str, UnansweredCall] = {}
        self._new_message_id = new_message_id
        self._outbox: list[str] = []
        self._answers_results = MessageType.CALLRESULTERROR in version.message_types
        self._peer_unconfirmed = version.unconfirmed.get(role.peer, frozenset())
        #: the action of each received CALL answered lately (oldest first) ...
        self._answered: dict[str, str] = {}
        #: ... and of each that expired unanswered (both bounded: SETTLED_KEPT)
        self._expired: dict[str, str] = {}
        #: whether either record has forgotten an id
        self._forgot = False

    # -- bytes in, events out -------------------------------------------------

    def receive_text(self, text: str | bytes, now: float) -> list[Event]:
        """Take one websocket message from the peer.

        Returns:
            What it means for the user, in order. CALLERROR answers owed to
            the peer are already in :meth:`data_to_send`.
        """
        try:
            frame = parse(text, self.version.message_types)
        except MalformedFrame as exc:
            return [self._reject(exc)]
        if isinstance(frame, Call):
            return [self._receive_call(frame, now)]
        if isinstance(frame, CallResult):
            return self._receive_result(frame, now)
        if isinstance(frame, CallError):
            return self._receive_error(frame, now)
        if isinstance(frame, Send):
            return [self._receive_send(frame)]
        return [
            ResultRefused(
                frame.message_id,
                self._answered.get(frame.message_id, ""),
                frame.error_code,
                frame.error_description,
                frame.error_details,
            )
        ]

    def _reject(self, exc: MalformedFrame) -> PeerError:
        if exc.message_type in _NEVER_ANSWERED and exc.message_type in self.version.message_types:
            # Never answer an answer (4.2.3 answers CALLs), nor a SEND (4.2.4).
            return PeerError(exc.description, None)
        if (
            exc.error is ErrorCode.MESSAGE_TYPE_NOT_SUPPORTED
            and self.version.unknown_message_type is UnknownMessageType.IGNORE
        ):
            return PeerError(f"{exc.description}; ignored", None)
        answer = CallError(
            exc.message_id, self.version.code(exc.error), error_description(exc.description)
        )
        self._outbox.append(serialize(answer))
        return PeerError(exc.description, answer)

    def _receive_call(self, frame: Call, now: float) -> Event:
        if frame.message_id in self.received:
            return self._reject(
                MalformedFrame(
                    ErrorCode.RPC_FRAMEWORK_ERROR,
                    f"a CALL with MessageId {frame.message_id} is already being handled",
                    frame.message_id,
                    MessageType.CALL,
                )
            )
        if not self._schemas.knows(frame.action):
            return self._reject(
                MalformedFrame(
                    ErrorCode.NOT_IMPLEMENTED,
                    f"{frame.action} is not an OCPP {self.version.name} action",
                    frame.message_id,
                    MessageType.CALL,
                )
            )
        if frame.action not in self._peer_sends:
            return self._reject(
                MalformedFrame(
                    ErrorCode.NOT_SUPPORTED,
                    f"{frame.action} is not an action a {self.role.value} receives",
                    frame.message_id,
                    MessageType.CALL,
                )
            )
        violation = self._schemas.validate(frame.action, Direction.REQUEST, frame.payload)
        if violation is not None:
            description = f"{frame.action}: {violation.description}"
            answer = CallError(
                frame.message_id, violation.error_code, error_description(description)
            )
            self._outbox.append(serialize(answer))
            return PeerError(description, answer)
        self.received[frame.message_id] = UnansweredCall(
            frame.message_id, frame.action, now + self.answer_timeout, frame.payload
        )
        return CallReceived(frame.message_id, frame.action, frame.payload)

    def _receive_send(self, frame: Send) -> Event:
        if frame.action not in self._peer_unconfirmed:
            return PeerError(
                f"SEND {frame.action} is not a message a {self.role.value} receives; ignored",
                None,
            )
        violation = self._schemas.validate(frame.action, Direction.SEND, frame.payload)
        if violation is not None:
            return PeerError(f"SEND {frame.action}: {violation.description}; ignored", None)
        return SendReceived(frame.message_id, frame.action, frame.payload)

    def _receive_result(self, frame: CallResult, now: float) -> list[Event]:
        call, to_send = self.calls.settle(frame.message_id, now)
        if call is None:
            return [UnexpectedAnswer(frame.message_id, MessageType.CALLRESULT)]
        self._put_on_wire(to_send)
        violation = self._schemas.validate(call.action, Direction.RESPONSE, frame.payload)
        if violation is not None:
            if self._answers_results:  # 2.1, 4.2.3: tell the peer
                self._outbox.append(
                    serialize(
                        CallResultError(
                            call.message_id,
                            violation.error_code,
                            error_description(f"{call.action} response: {violation.description}"),
                        )
                    )
                )
            return [
                ResultInvalid(
                    call.message_id,
                    call.action,
                    frame.payload,
                    violation.error_code,
                    f"{call.action} response: {violation.description}",
                )
            ]
        return [ResultReceived(call.message_id, call.action, frame.payload)]

    def _receive_error(self, frame: CallError, now: float) -> list[Event]:
        call, to_send = self.calls.settle(frame.message_id, now)
        if call is None:
            return [UnexpectedAnswer(frame.message_id, MessageType.CALLERROR)]
        self._put_on_wire(to_send)
        return [
            ErrorReceived(
                call.message_id,
                call.action,
                frame.error_code,
                frame.error_description,
                frame.error_details,
            )
        ]

    # -- calls in, bytes out --------------------------------------------------

    def send_call(
        self, action: str, payload: Any, now: float, *, message_id: str | None = None
    ) -> OutgoingCall:
        """Send a CALL now, or queue it behind the outstanding one.

        Raises:
            ConnectionClosed: the connection is closed.
            OutgoingError: unknown action, invalid payload, bad or duplicate
                message id, or a full queue. Nothing was sent.
        """
        self._check_open()
        check_request(self.version, self.role, action, payload)
        if message_id is None:
            message_id = self._new_message_id()
        elif not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_MESSAGE_ID_LENGTH:
            raise OutgoingError(
                f"MessageId must be a string of 1 to {MAX_MESSAGE_ID_LENGTH} characters"
            )
        elif self.calls.knows(message_id):
            raise OutgoingError(f"MessageId {message_id} is already used by a pending request")
        text = self._serialize(Call(message_id, action, payload))
        call = OutgoingCall(message_id, action, payload, text)
        try:
            to_send = self.calls.submit(call, now)
        except QueueFull as exc:
            raise OutgoingError(str(exc)) from None
        self._put_on_wire(to_send)
        return call

    def send_result(self, message_id: str, payload: Any) -> None:
        """Answer the received CALL ``message_id`` with a CALLRESULT.

        Raises:
            ConnectionClosed: the connection is closed.
            OutgoingError: no such CALL waits for an answer (the message
                says which: answered already, expired, or never received),
                or the payload is invalid.
        """
        request = self._waiting(message_id)
        self._check_payload(request.action, Direction.RESPONSE, payload)
        self._outbox.append(self._serialize(CallResult(message_id, payload)))
        del self.received[message_id]
        self._settled(self._answered, request)

    def send_unconfirmed(self, action: str, payload: Any, *, message_id: str | None = None) -> str:
        """(2.1) Send a SEND now: not queued behind the outstanding CALL, never answered.

        Returns:
            Its message id.

        Raises:
            ConnectionClosed: the connection is closed.
            OutgoingError: the version has no SEND, ``action`` is not a SEND
                our role sends, the payload is invalid, or the id is bad.
        """
        self._check_open()
        if action not in self.version.unconfirmed.get(self.role, frozenset()):
            raise OutgoingError(
                f"{action!r} is not a SEND message a {self.role.value} sends "
                f"in OCPP {self.version.name}"
            )
        self._check_payload(action, Direction.SEND, payload)
        if message_id is None:
            message_id = self._new_message_id()
        elif not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_MESSAGE_ID_LENGTH:
            raise OutgoingError(
                f"MessageId must be a string of 1 to {MAX_MESSAGE_ID_LENGTH} characters"
            )
        self._outbox.append(self._serialize(Send(message_id, action, payload)))
        return message_id

    def send_error(
        self,
        message_id: str,
        error_code: str,
        description: str = "",
        details: Any = None,
    ) -> None:
        """Answer the received CALL ``message_id`` with a CALLERROR.

        A description over 255 characters is cut there (``...`` at the end).

        Raises:
            ConnectionClosed: the connection is closed.
            OutgoingError: no such CALL waits, or the error code is not one of
                the version's, or details is not an object.
        """
        request = self._waiting(message_id)
        codes = self.version.error_code_names
        if error_code not in codes:
            raise OutgoingError(
                f"errorCode {error_code!r} is not an OCPP {self.version.name} error code: "
                f"{', '.join(sorted(codes))}"
            )
        if details is None:
            details = {}
        if not isinstance(description, str) or not isinstance(details, dict):
            raise OutgoingError("errorDescription must be a string and errorDetails an object")
        # string[255] (2.0.1 and 2.1, part 4 table 6): a longer one is cut, not refused
        self._outbox.append(
            self._serialize(
                CallError(message_id, error_code, error_description(description), details)
            )
        )
        del self.received[message_id]
        self._settled(self._answered, request)

    def awaits_answer(self, message_id: Any) -> bool:
        """True when the peer's CALL ``message_id`` still waits for our answer."""
        return message_id in self.received if isinstance(message_id, str) else False

    def data_to_send(self) -> list[str]:
        """The frames to write to the websocket, in order; empties the outbox."""
        outbox, self._outbox = self._outbox, []
        return outbox

    # -- time and loss --------------------------------------------------------

    def expire(self, now: float) -> list[Event]:
        """End whatever is past its deadline at ``now``."""
        events: list[Event] = []
        while True:
            call, to_send = self.calls.expire(now)
            if call is None:
                break
            events.append(CallTimedOut(call.message_id, call.action))
            self._put_on_wire(to_send)
        for message_id, request in list(self.received.items()):
            if request.deadline <= now:
                del self.received[message_id]
                self._settled(self._expired, request)
                events.append(RequestExpired(request.message_id, request.action))
        return events

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`expire` has work, or ``None``."""
        deadline = self.calls.next_deadline()
        for request in self.received.values():  # called per message: no list, no min()
            if deadline is None or request.deadline < deadline:
                deadline = request.deadline
        return deadline

    def connection_lost(self, reason: str) -> list[Event]:
        """The socket is gone: end every call of ours, forget received CALLs, close."""
        self.state = ConnectionState.CLOSED
        self.received.clear()
        self._outbox.clear()
        return [CallAborted(call.message_id, call.action, reason) for call in self.calls.drain()]

    # -- helpers ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self.state is ConnectionState.CLOSED:
            raise ConnectionClosed("the connection is closed")

    def _waiting(self, message_id: Any) -> UnansweredCall:
        self._check_open()
        request = self.received.get(message_id) if isinstance(message_id, str) else None
        if request is None:
            raise OutgoingError(self._why_not_waiting(message_id))
        return request

    def _settled(self, record: dict[str, str], request: UnansweredCall) -> None:
        # interned: the records keep one copy of each action name, not one per request
        record[request.message_id] = sys.intern(request.action)
        if len(record) > SETTLED_KEPT:
            del record[next(iter(record))]  # the oldest
            self._forgot = True

    def _why_not_waiting(self, message_id: Any) -> str:
        """Why an answer to the received CALL ``message_id`` cannot go out."""
        if isinstance(message_id, str):
            action = self._answered.get(message_id)
            if action is not None:
                return (
                    f"the {action} request {message_id!r} was already answered; "
                    "a request is answered once"
                )
            action = self._expired.get(message_id)
            if action is not None:
                return (
                    f"the {action} request {message_id!r} expired: it waited "
                    f"{self.answer_timeout:g} s (the message timeout) for an answer, "
                    "so this one was not sent"
                )
        text = f"no request with MessageId {message_id!r} was received on this connection"
        if self._forgot:  # only the last SETTLED_KEPT of each are known
            text += ", or it was answered or expired too long ago to be remembered"
        return text

    def _check_payload(self, action: str, direction: Direction, payload: Any) -> None:
        violation = self._schemas.validate(action, direction, payload)
        if violation is not None:
            raise OutgoingError(
                f"{action} {direction.value.lower()} is invalid ({violation.error_code}): "
                f"{violation.description}"
            )

    def _serialize(self, frame: Call | CallResult | CallError | Send) -> str:
        try:
            text = serialize(frame)
        except (TypeError, ValueError) as exc:
            raise OutgoingError(f"payload cannot be sent as JSON: {exc}") from None
        # A character is at most 4 UTF-8 bytes: encode only when it could matter.
        if len(text) * 4 > self.max_frame_size:
            size = len(text.encode("utf-8"))
            if size > self.max_frame_size:
                raise OutgoingError(
                    f"the frame would be {size} bytes, over the limit of {self.max_frame_size}"
                )
        return text

    def _put_on_wire(self, call: OutgoingCall | None) -> None:
        if call is not None:
            self._outbox.append(call.text)
