"""The OCPP-J core: versions, frames, pending calls and per-connection state. No I/O."""

from __future__ import annotations

from .calls import OutgoingCall, PendingCalls, QueueFull
from .connection import (
    CallAborted,
    CallReceived,
    CallTimedOut,
    ConnectionClosed,
    ConnectionState,
    ErrorReceived,
    Event,
    OcppConnection,
    OutgoingError,
    PeerError,
    RequestExpired,
    ResultInvalid,
    ResultReceived,
    UnansweredCall,
    UnexpectedAnswer,
    check_request,
)
from .frames import (
    Call,
    CallError,
    CallResult,
    ErrorCode,
    MalformedFrame,
    MessageType,
    parse,
    serialize,
)
from .roles import Role
from .versions import (
    V201,
    VERSIONS,
    OcppVersion,
    SecurityEvent,
    UnknownMessageType,
    select_version,
)

__all__ = [
    "Call",
    "CallAborted",
    "CallError",
    "CallReceived",
    "CallResult",
    "CallTimedOut",
    "ConnectionClosed",
    "ConnectionState",
    "ErrorCode",
    "ErrorReceived",
    "Event",
    "MalformedFrame",
    "MessageType",
    "OcppConnection",
    "OcppVersion",
    "OutgoingCall",
    "OutgoingError",
    "PeerError",
    "PendingCalls",
    "QueueFull",
    "RequestExpired",
    "ResultInvalid",
    "ResultReceived",
    "Role",
    "SecurityEvent",
    "UnansweredCall",
    "UnexpectedAnswer",
    "UnknownMessageType",
    "V201",
    "VERSIONS",
    "check_request",
    "parse",
    "select_version",
    "serialize",
]
