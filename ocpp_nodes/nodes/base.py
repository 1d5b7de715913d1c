"""What the CS and CSMS nodes share: Node-RED message shapes and ports.

Theory of operation:

1. A node talks to Node-RED only through a :class:`NodeHost`: ``send`` on a
   port, ``status``, ``done`` for an input, ``log``. The ipc layer implements
   it with frames to the shim; tests implement it with lists.
2. Every input is classified by ``msg.payload.msgType``: 2 (or absent) a
   request to send, 3 a response to a received request, 4 a CALLERROR reply
   to a received request, 99 a command for the node. ``4`` without a pending
   received request for ``msg.ocpp.MessageId`` is a command too (both forms
   exist in flows written for the package we replace).
3. Every input ends with exactly one ``done``: a request when its answer
   arrives or it fails, anything else once carried out.
4. The shapes of messages to the flow are those of the package we replace:
   received requests have ``payload = {command, data, MessageId}``, answers
   ``payload = {command, data}``, and ``msg.ocpp = {ocppVersion, MessageId,
   command, cbId}``, ``topic = "<cbId>/Request|Response|Error"``. An answer
   to a request that came through a ``link call`` goes out of port 2 with its
   ``_linkSource``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..rpc import (
    CallAborted,
    CallReceived,
    CallTimedOut,
    ErrorReceived,
    Event,
    OcppConnection,
    OutgoingCall,
    OutgoingError,
    PeerError,
    RequestExpired,
    ResultInvalid,
    ResultReceived,
    Role,
    UnexpectedAnswer,
)
from ..rpc.frames import parse_int
from ..schemas import registry
from ..transport import OcppSession, TextSocket

__all__ = [
    "CallContext",
    "InputError",
    "NodeHost",
    "OcppNode",
    "PORT_COMMON",
    "PORT_LINK",
    "PORT_LOG",
    "number_setting",
]

log = logging.getLogger(__name__)

PORT_COMMON, PORT_LINK, PORT_LOG = 0, 1, 2

MSG_REQUEST, MSG_RESPONSE, MSG_CALLERROR, MSG_COMMAND = 2, 3, 4, 99


class NodeHost(Protocol):
    """The Node-RED side of one node."""

    def send(self, port: int, msg: dict[str, Any]) -> None: ...

    def status(
        self, fill: str | None = None, shape: str | None = None, text: str | None = None
    ) -> None: ...

    def done(self, seq: int, error: str | None = None) -> None: ...

    def log(self, level: str, text: str, msg: dict[str, Any] | None = None) -> None: ...


class InputError(Exception):
    """An input message the node cannot carry out; ends it with ``done(err)``."""


@dataclass
class CallContext:
    """What a request needs back when its answer comes.

    ``seq`` is the flow input the request ends (``None`` for a request sent
    from the offline store, whose input ended when it was stored).
    ``settled``, when set, learns the outcome: ``"answered"`` (CALLRESULT or
    CALLERROR delivered), ``"invalid"`` (answered with a payload that breaks
    the schema) or ``"failed"`` (timed out, or the connection was lost).
    """

    seq: int | None
    has_custom_data: bool
    custom_data: Any
    link_source: Any
    settled: Callable[[str], None] | None = None


def number_setting(value: Any, default: float) -> float:
    """``value`` as a non-negative number; ``default`` when absent, empty or invalid."""
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if number >= 0 and number == number else default


def security_profile(config: dict[str, Any]) -> int:
    """OCPP security profile 1, 2 or 3 (``security_profile``); 1 when absent."""
    try:
        profile = int(config.get("security_profile") or 1)
    except (TypeError, ValueError):
        return 1
    return profile if profile in (1, 2, 3) else 1


@dataclass(frozen=True)
class LinkOptions:
    """Per-connection settings shared by both nodes (absent in older exports: defaults).

    ``message_timeout`` (s): how long a request waits for its answer and a
    received request for the flow's. ``queue_size``: requests that may wait
    behind the outstanding one. ``ping_interval`` (s, 0 = off): websocket
    ping period; a pong must come within half of it. ``max_frame_size``
    (bytes): the largest frame accepted or sent.
    """

    message_timeout: float = 30.0
    queue_size: int = 1000
    ping_interval: float = 30.0
    max_frame_size: int = 1024 * 1024

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LinkOptions:
        default = cls()
        # The package we replace read an undocumented `messageTimeout` in milliseconds.
        legacy_timeout = number_setting(config.get("messageTimeout"), 0) / 1000
        timeout = number_setting(
            config.get("message_timeout"), legacy_timeout or default.message_timeout
        )
        return cls(
            message_timeout=timeout or default.message_timeout,
            queue_size=int(number_setting(config.get("queue_size"), default.queue_size)),
            ping_interval=number_setting(config.get("ping_interval"), default.ping_interval),
            max_frame_size=int(number_setting(config.get("max_frame_size"), default.max_frame_size))
            or default.max_frame_size,
        )


class OcppNode:
    """Base of the CS and CSMS nodes.

    Subclasses set :attr:`peer_name` and :attr:`own_name` (``"CS"`` /
    ``"CSMS"``, used in the log port's ``msgFrom``), implement
    :meth:`start`, :meth:`stop`, :meth:`_session_for` and :meth:`_command`.
    """

    role: Role
    peer_name = "peer"
    own_name = "node"
    ocpp_version = "2.0.1"
    commands: tuple[str, ...] = ()

    def __init__(self, node_id: str, config: dict[str, Any], host: NodeHost) -> None:
        self.node_id = node_id
        self.config = config
        self.host = host
        self.logging_enabled = bool(config.get("ocpp_logging"))
        self.options = LinkOptions.from_config(config)
        self.security_profile = security_profile(config)

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    # -- input ---------------------------------------------------------------

    def input(self, seq: int, msg: dict[str, Any]) -> None:
        """Carry out one input message; always ends it with ``host.done``."""
        try:
            finished = self._input(seq, msg)
        except (InputError, OutgoingError) as exc:
            self.host.done(seq, str(exc))
            return
        except Exception as exc:  # a bug must end the input, not the daemon
            log.exception("%s: input failed", self.node_id)
            self.host.done(seq, f"internal error: {exc}")
            return
        if finished:
            self.host.done(seq)

    def _input(self, seq: int, msg: dict[str, Any]) -> bool:
        """Returns True when the input is finished now, False when a later event ends it."""
        payload = msg.get("payload")
        if not isinstance(payload, dict):
            raise InputError("msg.payload must be an object such as {command, data}")
        msg_type = payload.get("msgType", MSG_REQUEST)
        is_reply = msg_type == MSG_CALLERROR and self._is_reply(msg)
        if msg_type == MSG_CALLERROR and not is_reply and not payload.get("command"):
            message_id = (
                msg.get("ocpp", {}).get("MessageId") if isinstance(msg.get("ocpp"), dict) else None
            )
            if message_id:  # a CALLERROR reply whose request no longer waits
                raise InputError(
                    f"no received request with MessageId {message_id!r} waits for an answer "
                    "(already answered, or older than the message timeout)"
                )
        if msg_type == MSG_COMMAND or (msg_type == MSG_CALLERROR and not is_reply):
            command = payload.get("command")
            if not isinstance(command, str) or not command:
                raise InputError(f"a command message needs payload.command: {self._command_list()}")
            return self._command(seq, command.lower(), payload.get("data"), msg)
        if msg_type == MSG_RESPONSE:
            session, message_id = self._reply_target(msg)
            session.send_result(message_id, payload.get("data", {}))
            return True
        if msg_type == MSG_CALLERROR:
            session, message_id = self._reply_target(msg)
            session.send_error(
                message_id,
                payload.get("errorCode", "GenericError"),
                payload.get("errorDescription", ""),
                payload.get("errorDetails"),
            )
            return True
        if msg_type == MSG_REQUEST:
            self._send_request(seq, msg, payload)
            return False
        raise InputError(f"payload.msgType {msg_type!r} is not 2, 3, 4 or 99")

    def _send_request(self, seq: int, msg: dict[str, Any], payload: dict[str, Any]) -> None:
        action = payload.get("command")
        if not isinstance(action, str) or not action:
            raise InputError("a request needs payload.command, the OCPP action (e.g. Heartbeat)")
        session = self._session_for(msg)
        context = CallContext(
            seq, "customData" in msg, msg.get("customData"), msg.get("_linkSource")
        )
        message_id = payload.get("MessageId")
        session.send_call(
            action,
            payload.get("data", {}),
            message_id=None if message_id in (None, "") else message_id,
            context=context,
        )

    def _reply_target(self, msg: dict[str, Any]) -> tuple[OcppSession, str]:
        ocpp = msg.get("ocpp")
        message_id = ocpp.get("MessageId") if isinstance(ocpp, dict) else None
        if not message_id:
            raise InputError(
                "a response needs msg.ocpp of the received request (reuse the incoming msg)"
            )
        return self._session_for(msg), message_id

    def _is_reply(self, msg: dict[str, Any]) -> bool:
        """True when ``msg.ocpp.MessageId`` names a received request that waits."""
        ocpp = msg.get("ocpp")
        if not isinstance(ocpp, dict) or not ocpp.get("MessageId"):
            return False
        try:
            session = self._session_for(msg)
        except InputError:
            return False
        return ocpp["MessageId"] in session.connection.received

    def _session_for(self, msg: dict[str, Any]) -> OcppSession:
        raise NotImplementedError

    def _new_session(self, cb_id: str, socket: TextSocket, remote: str = "") -> OcppSession:
        connection = OcppConnection(
            registry(self.ocpp_version),
            self.role,
            call_timeout=self.options.message_timeout,
            answer_timeout=self.options.message_timeout,
            max_queued=self.options.queue_size,
            max_frame_size=self.options.max_frame_size,
        )
        return OcppSession(
            cb_id,
            connection,
            socket,
            self.handle_events,
            self.log_frame if self.logging_enabled else None,
            remote=remote,
        )

    def _command(self, seq: int, command: str, data: Any, msg: dict[str, Any]) -> bool:
        raise NotImplementedError

    def _command_list(self) -> str:
        return "valid commands are " + ", ".join(f'"{name}"' for name in self.commands)

    def _reply_to_command(self, msg: dict[str, Any], **fields: Any) -> None:
        """Send a command's answer: the input msg with ``fields`` added to its payload."""
        answer = dict(msg)
        answer["payload"] = {**msg.get("payload", {}), **fields}
        self.host.send(PORT_LINK if "_linkSource" in msg else PORT_COMMON, answer)

    # -- events from a session ----------------------------------------------------

    def handle_events(self, session: OcppSession, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, CallReceived):
                self._emit_request(session.cb_id, event)
            elif isinstance(event, ResultReceived):
                self._emit_answer(session.cb_id, event.call, "Response", {"data": event.payload})
            elif isinstance(event, ErrorReceived):
                self._emit_answer(
                    session.cb_id,
                    event.call,
                    "Error",
                    {
                        "errorCode": event.error_code,
                        "errorDescription": event.error_description,
                        "errorDetails": event.error_details,
                    },
                )
            elif isinstance(event, ResultInvalid):
                self._fail_call(event.call, f"{session.cb_id}: {event.description}", "invalid")
            elif isinstance(event, CallTimedOut):
                self._fail_call(
                    event.call,
                    f"{session.cb_id}: no answer to {event.call.action} "
                    f"within {session.connection.calls.timeout:g} s",
                )
            elif isinstance(event, CallAborted):
                self._fail_call(
                    event.call, f"{session.cb_id}: {event.call.action} not answered: {event.reason}"
                )
            elif isinstance(event, PeerError):
                self.host.log(
                    "warn", f"{session.cb_id} sent an invalid message: {event.description}"
                )
            elif isinstance(event, UnexpectedAnswer):
                self.host.log(
                    "warn",
                    f"{session.cb_id}: dropped an answer to unknown or expired "
                    f"MessageId {event.message_id}",
                )
            elif isinstance(event, RequestExpired):
                self.host.log(
                    "warn",
                    f"{session.cb_id}: {event.request.action} {event.request.message_id} "
                    "was not answered in time; a later answer will be refused",
                )

    def _ocpp_fields(self, cb_id: str, message_id: str, action: str) -> dict[str, Any]:
        return {
            "ocppVersion": self.ocpp_version,
            "MessageId": message_id,
            "command": action,
            "cbId": cb_id,
        }

    def _request_payload(self, cb_id: str, event: CallReceived) -> dict[str, Any]:
        return {"command": event.action, "data": event.payload, "MessageId": event.message_id}

    def _emit_request(self, cb_id: str, event: CallReceived) -> None:
        self.host.send(
            PORT_COMMON,
            {
                "topic": f"{cb_id}/Request",
                "ocpp": self._ocpp_fields(cb_id, event.message_id, event.action),
                "payload": self._request_payload(cb_id, event),
            },
        )

    def _emit_answer(
        self, cb_id: str, call: OutgoingCall, kind: str, fields: dict[str, Any]
    ) -> None:
        context: CallContext = call.context
        msg: dict[str, Any] = {
            "topic": f"{cb_id}/{kind}",
            "ocpp": self._ocpp_fields(cb_id, call.message_id, call.action),
            "payload": {"command": call.action, **fields},
        }
        if context.has_custom_data:
            msg["customData"] = context.custom_data
        port = PORT_COMMON
        if context.link_source is not None:
            msg["_linkSource"] = context.link_source
            port = PORT_LINK
        self.host.send(port, msg)
        if context.seq is not None:
            self.host.done(context.seq)
        if context.settled is not None:
            context.settled("answered")

    def _fail_call(self, call: OutgoingCall, reason: str, outcome: str = "failed") -> None:
        context: CallContext = call.context
        if context.seq is not None:
            self.host.done(context.seq, reason)
        else:  # nobody waits on an input: say it in the log
            self.host.log("warn", reason)
        if context.settled is not None:
            context.settled(outcome)

    # -- the log port ---------------------------------------------------------------

    def log_frame(self, session: OcppSession, text: str, from_peer: bool) -> None:
        """Put one raw frame on the log port (port 3) when logging is on."""
        try:
            frame: Any = json.loads(text, parse_int=parse_int)
        except (ValueError, RecursionError):  # not JSON, or nested too deep: the raw text
            frame = text
        self.host.send(
            PORT_LOG,
            {
                "timestamp": int(time.time() * 1000),
                "msgFrom": self.peer_name if from_peer else self.own_name,
                "cbId": session.cb_id,
                "payload": frame,
            },
        )
