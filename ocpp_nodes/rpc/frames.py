"""OCPP-J frames: parse text into CALL / CALLRESULT / CALLERROR, and back.

Theory of operation (OCPP 2.0.1 part 4, section 4):

1. A frame is a JSON array. ``[2, id, action, payload]`` is a CALL,
   ``[3, id, payload]`` a CALLRESULT, ``[4, id, code, description, details]``
   a CALLERROR.
2. :func:`parse` turns text into one of the frame dataclasses or raises
   :class:`MalformedFrame`, which carries what the CALLERROR answer needs:
   which :class:`ErrorCode` applies and the message id, ``"-1"`` when it
   could not be read (4.2.3). How a version spells the code is the version
   table's business (:mod:`ocpp_nodes.rpc.versions`).
3. Only the frame structure is checked here. Whether the message type is one
   the connection's version has, whether an action is known and its payload
   valid is the connection's business (it knows the version).
4. :func:`serialize` turns a frame into compact JSON text.

No I/O, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any

__all__ = [
    "Call",
    "CallError",
    "CallResult",
    "CallResultError",
    "ErrorCode",
    "Frame",
    "MAX_ERROR_DESCRIPTION",
    "MAX_MESSAGE_ID_LENGTH",
    "MalformedFrame",
    "MessageType",
    "OversizedInt",
    "UNREADABLE_ID",
    "Send",
    "error_description",
    "parse",
    "parse_int",
    "serialize",
]

#: Message ids are ``string[36]`` (part 4, table 5).
MAX_MESSAGE_ID_LENGTH = 36

#: The id of a CALLERROR that answers a frame whose id could not be read.
UNREADABLE_ID = "-1"

#: ErrorDescription is ``string[255]`` in 2.0.1 and 2.1 (part 4, table 6); 1.6
#: sets no limit, and the engine keeps its own descriptions to it there too.
MAX_ERROR_DESCRIPTION = 255


def error_description(text: str) -> str:
    """``text`` as an ErrorDescription the engine sends: at most
    :data:`MAX_ERROR_DESCRIPTION` characters, ``...`` where it was cut."""
    if len(text) <= MAX_ERROR_DESCRIPTION:
        return text
    return text[: MAX_ERROR_DESCRIPTION - 3] + "..."


class MessageType(IntEnum):
    CALL = 2
    CALLRESULT = 3
    CALLERROR = 4
    #: (2.1) the answer to a CALLRESULT that could not be processed
    CALLRESULTERROR = 5
    #: (2.1) a message that gets no answer
    SEND = 6


class ErrorCode(Enum):
    """What a CALLERROR says went wrong, whatever the version calls it.

    The members are the codes of OCPP 2.0.1 part 4, table 8; their values are
    2.0.1's spellings, for reading only. What goes on the wire is the spelling
    of the connection's version (``OcppVersion.error_codes``).
    """

    FORMAT_VIOLATION = "FormatViolation"
    GENERIC_ERROR = "GenericError"
    INTERNAL_ERROR = "InternalError"
    MESSAGE_TYPE_NOT_SUPPORTED = "MessageTypeNotSupported"
    NOT_IMPLEMENTED = "NotImplemented"
    NOT_SUPPORTED = "NotSupported"
    OCCURRENCE_CONSTRAINT_VIOLATION = "OccurrenceConstraintViolation"
    PROPERTY_CONSTRAINT_VIOLATION = "PropertyConstraintViolation"
    PROTOCOL_ERROR = "ProtocolError"
    RPC_FRAMEWORK_ERROR = "RpcFrameworkError"
    SECURITY_ERROR = "SecurityError"
    TYPE_CONSTRAINT_VIOLATION = "TypeConstraintViolation"


@dataclass(frozen=True)
class Call:
    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class CallResult:
    message_id: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class CallError:
    message_id: str
    error_code: str
    error_description: str = ""
    error_details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CallResultError:
    """(2.1) The peer could not process our CALLRESULT ``message_id``."""

    message_id: str
    error_code: str
    error_description: str = ""
    error_details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Send:
    """(2.1) An unconfirmed message: no answer is owed or sent."""

    message_id: str
    action: str
    payload: dict[str, Any]


Frame = Call | CallResult | CallError | CallResultError | Send


class MalformedFrame(Exception):
    """A websocket message that cannot be taken as a frame of the connection.

    Attributes:
        error: what the CALLERROR answer says went wrong.
        message_id: the frame's id, or ``"-1"`` when it could not be read.
        description: what was wrong, for the CALLERROR and for the user.
        message_type: the frame's type number when it could be read, so a
            caller knows whether an answer is owed (never to a CALLRESULT or
            CALLERROR) and what to do with a type its version lacks.
    """

    def __init__(
        self,
        error: ErrorCode,
        description: str,
        message_id: str = UNREADABLE_ID,
        message_type: float | None = None,
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.message_id = message_id
        self.message_type = message_type


class OversizedInt(float):
    """A JSON integer beyond 64 bits, kept as a float (``inf`` when huge).

    OCPP integers are 32-bit. A larger one must not reach the flow as an int
    (msgpack and JavaScript numbers cannot carry it); as a float it fails an
    ``integer`` schema with ``TypeConstraintViolation``, and ``int()`` never
    spends time on thousands of digits. As a message type it is an integer we
    do not support.
    """


def parse_int(digits: str) -> int | float:
    """``json.loads``'s ``parse_int``: an int, or an :class:`OversizedInt`."""
    if len(digits) > 20:
        return OversizedInt(digits)
    value = int(digits)
    return value if -(2**63) <= value < 2**64 else OversizedInt(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Made once: json.loads / json.dumps with options build a new coder per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_int=parse_int)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _one_shot_encoder() -> Callable[[Any], str]:
    """``_ENCODER.encode``, without building the C encoder anew for every call.

    ``JSONEncoder.encode`` makes a C encoder object per call (most of its cost
    for a small frame); this one is made once. It skips the check for circular
    containers: a payload comes from msgpack or JSON, which cannot make one,
    and a structure nested too deeply still raises ``RecursionError``.
    Without the C accelerator, ``_ENCODER.encode`` itself.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _ENCODER.encode
    encode_chunks = make(
        None,  # markers: no circular check
        _ENCODER.default,
        json.encoder.encode_basestring,  # ensure_ascii=False
        _ENCODER.indent,
        _ENCODER.key_separator,
        _ENCODER.item_separator,
        _ENCODER.sort_keys,
        _ENCODER.skipkeys,
        _ENCODER.allow_nan,
    )

    def encode(value: Any) -> str:
        return "".join(encode_chunks(value, 0))

    return encode


_encode_json = _one_shot_encoder()


#: The message types :func:`parse` reads.
PARSED_TYPES = frozenset(MessageType)


def parse(text: str | bytes, message_types: frozenset[MessageType] = PARSED_TYPES) -> Frame:
    """Parse one websocket message into a frame.

    Args:
        text: the message as received (bytes are decoded as UTF-8).
        message_types: the types the connection's version has; any other
            raises with ``MESSAGE_TYPE_NOT_SUPPORTED``.

    Returns:
        A :class:`Call`, :class:`CallResult`, :class:`CallError`, or (2.1)
        :class:`CallResultError` or :class:`Send`.

    Raises:
        MalformedFrame: the message is not a well-formed OCPP-J frame.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        data = _DECODER.decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedFrame(
            ErrorCode.RPC_FRAMEWORK_ERROR, f"not valid JSON: {exc}"[:255]
        ) from None
    if not isinstance(data, list) or not data:
        raise MalformedFrame(ErrorCode.RPC_FRAMEWORK_ERROR, "frame is not a non-empty JSON array")
    message_type = data[0]
    if type(message_type) is not int and not isinstance(message_type, OversizedInt):
        raise MalformedFrame(ErrorCode.RPC_FRAMEWORK_ERROR, "MessageTypeId is not an integer")
    message_id = _read_message_id(data, message_type)
    if message_type in message_types:
        if message_type == MessageType.CALL:
            return _parse_call(data, message_id)
        if message_type == MessageType.CALLRESULT:
            return _parse_call_result(data, message_id)
        if message_type == MessageType.CALLERROR:
            return _parse_call_error(data, message_id)
        if message_type == MessageType.CALLRESULTERROR:
            error = _parse_call_error(data, message_id, MessageType.CALLRESULTERROR)
            return CallResultError(
                message_id, error.error_code, error.error_description, error.error_details
            )
        if message_type == MessageType.SEND:
            call = _parse_call(data, message_id, MessageType.SEND)
            return Send(message_id, call.action, call.payload)
    raise MalformedFrame(
        ErrorCode.MESSAGE_TYPE_NOT_SUPPORTED,
        f"message type {message_type} is not supported",
        message_id,
        message_type,
    )


def _read_message_id(data: list[Any], message_type: float) -> str:
    if len(data) < 2 or not isinstance(data[1], str) or not data[1]:
        raise MalformedFrame(
            ErrorCode.RPC_FRAMEWORK_ERROR,
            "MessageId could not be read",
            UNREADABLE_ID,
            message_type,
        )
    message_id: str = data[1]
    if len(message_id) > MAX_MESSAGE_ID_LENGTH:
        raise MalformedFrame(
            ErrorCode.RPC_FRAMEWORK_ERROR,
            f"MessageId is longer than {MAX_MESSAGE_ID_LENGTH} characters",
            UNREADABLE_ID,
            message_type,
        )
    return message_id


def _parse_call(
    data: list[Any], message_id: str, message_type: MessageType = MessageType.CALL
) -> Call:
    if len(data) != 4:
        raise MalformedFrame(
            ErrorCode.RPC_FRAMEWORK_ERROR,
            f"a {message_type.name} has 4 elements, this one has {len(data)}",
            message_id,
            message_type,
        )
    action, payload = data[2], data[3]
    if not isinstance(action, str) or not action:
        raise MalformedFrame(
            ErrorCode.RPC_FRAMEWORK_ERROR, "Action is not a string", message_id, message_type
        )
    if not isinstance(payload, dict):
        raise MalformedFrame(
            ErrorCode.FORMAT_VIOLATION,
            "payload is not a JSON object",
            message_id,
            message_type,
        )
    return Call(message_id, action, payload)


def _parse_call_result(data: list[Any], message_id: str) -> CallResult:
    if len(data) != 3 or not isinstance(data[2], dict):
        raise MalformedFrame(
            ErrorCode.RPC_FRAMEWORK_ERROR,
            "a CALLRESULT is [3, id, {payload}]",
            message_id,
            MessageType.CALLRESULT,
        )
    return CallResult(message_id, data[2])


def _parse_call_error(
    data: list[Any], message_id: str, message_type: MessageType = MessageType.CALLERROR
) -> CallError:
    if (
        len(data) != 5
        or not isinstance(data[2], str)
        or not isinstance(data[3], str)
        or not isinstance(data[4], dict)
    ):
        raise MalformedFrame(
            ErrorCode.RPC_FRAMEWORK_ERROR,
            f"a {message_type.name} is [{message_type.value}, id, code, description, {{details}}]",
            message_id,
            message_type,
        )
    return CallError(message_id, data[2], data[3], data[4])


def serialize(frame: Frame) -> str:
    """Compact JSON text of ``frame``.

    Raises:
        ValueError: the payload holds something JSON cannot carry (NaN ...).
    """
    body: list[Any]
    if isinstance(frame, Call):
        body = [MessageType.CALL.value, frame.message_id, frame.action, frame.payload]
    elif isinstance(frame, Send):
        body = [MessageType.SEND.value, frame.message_id, frame.action, frame.payload]
    elif isinstance(frame, CallResult):
        body = [MessageType.CALLRESULT.value, frame.message_id, frame.payload]
    else:
        error_type = (
            MessageType.CALLERROR if isinstance(frame, CallError) else MessageType.CALLRESULTERROR
        )
        body = [
            error_type.value,
            frame.message_id,
            frame.error_code,
            frame.error_description[:255],
            frame.error_details,
        ]
    return _encode_json(body)
