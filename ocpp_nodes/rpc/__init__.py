"""The OCPP-J core: frames, pending calls and per-connection state. No I/O."""

from __future__ import annotations

from .calls import OutgoingCall, PendingCalls, QueueFull
from .connection import (
    CallAborted,
    CallReceived,
    CallTimedOut,
    ErrorReceived,
    Event,
    OcppConnection,
    OutgoingError,
    PeerError,
    ReceivedCall,
    RequestExpired,
    ResultInvalid,
    ResultReceived,
    UnexpectedAnswer,
    check_request,
)
from .frames import (
    Call,
    CallError,
    CallResult,
    ErrorCode,
    FrameError,
    MessageType,
    parse,
    serialize,
)
from .roles import Role, actions_sent_by

__all__ = [
    "Call",
    "CallAborted",
    "CallError",
    "CallReceived",
    "CallResult",
    "CallTimedOut",
    "ErrorCode",
    "ErrorReceived",
    "Event",
    "FrameError",
    "MessageType",
    "OcppConnection",
    "OutgoingCall",
    "OutgoingError",
    "PeerError",
    "PendingCalls",
    "QueueFull",
    "ReceivedCall",
    "RequestExpired",
    "ResultInvalid",
    "ResultReceived",
    "Role",
    "UnexpectedAnswer",
    "actions_sent_by",
    "check_request",
    "parse",
    "serialize",
]
