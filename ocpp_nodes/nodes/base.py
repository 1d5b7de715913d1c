"""What the CS and CSMS nodes share: Node-RED message shapes and ports.

Theory of operation:

1. A node talks to Node-RED only through a :class:`NodeHost`: ``send`` on a
   port, ``status``, ``done`` for an input, ``log``. The ipc layer implements
   it with frames to the shim; tests implement it with lists.
2. A node talks to its stations (the CS node: to its CSMS) only through
   :class:`~ocpp_nodes.transport.StationLink` objects, which it gets from the
   :class:`~ocpp_nodes.transport.Transports` it was handed; it is the
   :class:`~ocpp_nodes.transport.LinkListener` of each. The OCPP version of
   every message is its link's.
3. Every input is classified by ``msg.payload.msgType``: 2 (or absent) a
   request to send, 3 a response to a received request, 4 a CALLERROR reply
   to a received request, 6 a SEND (OCPP 2.1: no answer), 99 a command for
   the node. ``4`` without a pending
   received request for ``msg.ocpp.MessageId`` is a command too (both forms
   exist in flows written for the package we replace).
4. Every input ends with exactly one ``done``: a request when its answer
   arrives or it fails, anything else once carried out. What a request needs
   back with its answer (:class:`CallContext`) is kept here, by link and
   message id, not in the link.
5. The shapes of messages to the flow are those of the package we replace:
   received requests have ``payload = {command, data, MessageId}``, answers
   ``payload = {command, data}``, and ``msg.ocpp = {ocppVersion, MessageId,
   command, cbId}``, ``topic = "<cbId>/Request|Response|Error"``. An answer
   to a request that came through a ``link call`` goes out of port 2 with its
   ``_linkSource``.
6. Work a node starts in the background (a command that waits for a socket,
   a countdown) is kept in its :class:`BackgroundTasks` and cancelled when
   the node stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from ..rpc import (
    CallAborted,
    CallReceived,
    CallTimedOut,
    ErrorReceived,
    Event,
    OutgoingError,
    PeerError,
    RequestExpired,
    ResultInvalid,
    ResultReceived,
    ResultRefused,
    Role,
    SendReceived,
    UnexpectedAnswer,
)
from ..rpc.frames import parse_int
from ..rpc.registration import Registration, RegistrationStatus
from ..rpc.versions import V201, OcppVersion, versions_named
from ..transport import LinkOptions, LocalTransports, StationLink, Transports
from .offline_store import OfflineStore

__all__ = [
    "BackgroundTasks",
    "CallContext",
    "ConnectionSettings",
    "InputError",
    "NodeHost",
    "NodeServices",
    "NodeSpec",
    "OcppNode",
    "PORT_COMMON",
    "PORT_LINK",
    "PORT_LOG",
    "STATUS_LABELS",
    "number_setting",
    "registration_state",
    "versions_setting",
]

log = logging.getLogger(__name__)

PORT_COMMON, PORT_LINK, PORT_LOG = 0, 1, 2

MSG_REQUEST, MSG_RESPONSE, MSG_CALLERROR, MSG_SEND, MSG_COMMAND = 2, 3, 4, 6, 99


class NodeHost(Protocol):
    """The Node-RED side of one node."""

    def send(self, port: int, msg: dict[str, Any]) -> None: ...

    def status(
        self, fill: str | None = None, shape: str | None = None, text: str | None = None
    ) -> None: ...

    def done(self, seq: int, error: str | None = None) -> None: ...

    def log(self, level: str, text: str, msg: dict[str, Any] | None = None) -> None: ...


@dataclass(frozen=True)
class NodeSpec:
    """What the shim says about a node when it creates it.

    Attributes:
        node_id: Node-RED's id of the node.
        config: the node's settings, as the editor saved them.
        credentials: its credentials (passwords).
        tls: the PEM text of its ``tls-config`` node, if it names one.
        tls2: the same of a second ``tls-config`` node (a CSMS node's
            certificate of the other key type).
        fleet_tls: the same of the ``tls-config`` node of a CSMS node's fleet
            broker (``mqtts://``).
        target: the ``target-csms`` config node a CS node names (``url``, ``name``).
        user_dir: Node-RED's user directory (where a CS node keeps its offline queue).
    """

    node_id: str
    config: dict[str, Any] = field(default_factory=dict)
    credentials: dict[str, Any] = field(default_factory=dict)
    tls: dict[str, Any] | None = None
    tls2: dict[str, Any] | None = None
    fleet_tls: dict[str, Any] | None = None
    target: dict[str, Any] | None = None
    user_dir: str | None = None


@dataclass(frozen=True)
class NodeServices:
    """What the engine gives every node.

    Attributes:
        transports: where the node gets its server or client.
        offline_store: the store of requests kept while offline for a user
            directory (``None``: one in memory).
        metrics: the engine's metrics (``ocpp_nodes.metrics.EngineMetrics``),
            ``None`` when they are off.
    """

    transports: Transports = field(default_factory=LocalTransports)
    offline_store: Callable[[str | None], OfflineStore | None] = lambda user_dir: None
    metrics: Any = None


class InputError(Exception):
    """An input message the node cannot carry out; ends it with ``done(err)``."""


@dataclass
class CallContext:
    """What a request needs back when its answer comes.

    ``seq`` is the flow input the request ends (``None`` for a request the
    node sends by itself, or whose input ended when it was queued).
    """

    seq: int | None
    has_custom_data: bool
    custom_data: Any
    link_source: Any


class BackgroundTasks:
    """The tasks a node started and has not seen end; :meth:`cancel` ends them all."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel(self) -> None:
        """Cancel every task but the caller's own, and wait for them to end."""
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


def number_setting(value: Any, default: float) -> float:
    """``value`` as a non-negative number; ``default`` when absent, empty or invalid."""
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if number >= 0 and number == number else default


#: a registration status as the node's status text says it
STATUS_LABELS = {
    RegistrationStatus.NOT_BOOTED: "not booted",
    RegistrationStatus.PENDING: "pending",
    RegistrationStatus.ACCEPTED: "accepted",
    RegistrationStatus.REJECTED: "rejected",
}


def registration_state(registration: Registration, now: float) -> dict[str, Any]:
    """A registration as the flow sees it: ``{status, interval?, bootAllowedAt?}``.

    ``bootAllowedAt`` (Pending, Rejected) is when BootNotification may go
    out again, as an ISO 8601 UTC time; ``now`` is the loop clock's.
    """
    state: dict[str, Any] = {"status": registration.status.value}
    if registration.interval is not None:
        state["interval"] = registration.interval
    if registration.boot_allowed_at is not None:
        at = time.time() + (registration.boot_allowed_at - now)
        state["bootAllowedAt"] = (
            datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")
        ).replace("+00:00", "Z")
    return state


def versions_setting(config: dict[str, Any]) -> tuple[OcppVersion, ...]:
    """``ocpp_versions``: the OCPP versions of the node, in its order.

    Absent or empty (older exports): 2.0.1 only, as before. Raises
    ``ValueError`` saying which name is unknown.
    """
    value = config.get("ocpp_versions")
    if value is None or value == "" or value == []:
        return (V201,)
    return versions_named(value)


def security_profile(config: dict[str, Any]) -> int:
    """OCPP security profile 1, 2 or 3 (``security_profile``); 1 when absent."""
    try:
        profile = int(config.get("security_profile") or 1)
    except (TypeError, ValueError):
        return 1
    return profile if profile in (1, 2, 3) else 1


@dataclass(frozen=True)
class ConnectionSettings:
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
    def from_config(cls, config: dict[str, Any]) -> ConnectionSettings:
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

    def link_options(self, log_frames: bool, meter: Any = None) -> LinkOptions:
        return LinkOptions(
            call_timeout=self.message_timeout,
            answer_timeout=self.message_timeout,
            max_queued=self.queue_size,
            max_frame_size=self.max_frame_size,
            log_frames=log_frames,
            meter=meter,
        )


class OcppNode:
    """Base of the CS and CSMS nodes, and the listener of their links.

    Subclasses set :attr:`type_name` (the Node-RED type), :attr:`role`,
    :attr:`peer_name` and :attr:`own_name` (``"CS"`` / ``"CSMS"``, used in
    the log port's ``msgFrom``), and implement :meth:`start`,
    :meth:`_stop`, :meth:`link_opened`, :meth:`link_closed`,
    :meth:`_link_for` and :meth:`_command`.

    Args:
        spec: what the shim says about the node.
        host: the node's Node-RED side.
        services: what the engine gives every node (its transports ...).
    """

    type_name: str
    role: Role
    peer_name = "peer"
    own_name = "node"
    commands: tuple[str, ...] = ()

    def __init__(self, spec: NodeSpec, host: NodeHost, services: NodeServices) -> None:
        self.node_id = spec.node_id
        self.config = spec.config
        self.host = host
        self.transports = services.transports
        self.logging_enabled = bool(spec.config.get("ocpp_logging"))
        self.settings = ConnectionSettings.from_config(spec.config)
        #: counts this node's messages and handshakes (ocpp_nodes.metrics.NodeMeter), or None
        self.meter = None if services.metrics is None else services.metrics.node(spec.node_id)
        self.link_options = self.settings.link_options(self.logging_enabled, self.meter)
        self.security_profile = security_profile(spec.config)
        self.tasks = BackgroundTasks()
        # what each request of ours needs back with its answer, by link and message id
        self._calls: dict[tuple[StationLink, str], CallContext] = {}
        # Redeploys (redeploy.py): while parked, received requests wait in their
        # links for the next node; requests of a node closed since, whose late
        # answers are dropped without a word.
        self.parked = False
        self._orphans: set[tuple[StationLink, str]] = set()

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        """Release the node's port or connection, and end what it started."""
        await self.tasks.cancel()
        await self._stop()

    async def _stop(self) -> None:
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
        # A CALLERROR with msg.ocpp.MessageId and no command is a reply even when
        # its request no longer waits: the link then says why (answered, expired ...).
        is_reply = msg_type == MSG_CALLERROR and (
            self._is_reply(msg) or (not payload.get("command") and self._names_request(msg))
        )
        if msg_type == MSG_COMMAND or (msg_type == MSG_CALLERROR and not is_reply):
            command = payload.get("command")
            if not isinstance(command, str) or not command:
                raise InputError(f"a command message needs payload.command: {self._command_list()}")
            return self._command(seq, command.lower(), payload.get("data"), msg)
        if msg_type == MSG_RESPONSE:
            link, message_id = self._reply_target(msg)
            self._send_result(link, message_id, payload.get("data", {}))
            return True
        if msg_type == MSG_CALLERROR:
            link, message_id = self._reply_target(msg)
            link.send_error(
                message_id,
                payload.get("errorCode", "GenericError"),
                payload.get("errorDescription", ""),
                payload.get("errorDetails"),
            )
            return True
        if msg_type == MSG_REQUEST:
            self._send_request(seq, msg, payload)
            return False
        if msg_type == MSG_SEND:
            action = payload.get("command")
            if not isinstance(action, str) or not action:
                raise InputError("a SEND needs payload.command (e.g. NotifyPeriodicEventStream)")
            message_id = payload.get("MessageId")
            self._link_for(msg).send_unconfirmed(
                action,
                payload.get("data", {}),
                message_id=None if message_id in (None, "") else message_id,
            )
            return True
        raise InputError(f"payload.msgType {msg_type!r} is not 2, 3, 4, 6 or 99")

    def _send_request(self, seq: int, msg: dict[str, Any], payload: dict[str, Any]) -> None:
        action = payload.get("command")
        if not isinstance(action, str) or not action:
            raise InputError("a request needs payload.command, the OCPP action (e.g. Heartbeat)")
        message_id = payload.get("MessageId")
        self._call(
            self._link_for(msg),
            action,
            payload.get("data", {}),
            None if message_id in (None, "") else message_id,
            CallContext(seq, "customData" in msg, msg.get("customData"), msg.get("_linkSource")),
        )

    def _send_result(self, link: StationLink, message_id: str, payload: Any) -> None:
        """Send the flow's CALLRESULT to a received request."""
        link.send_result(message_id, payload)

    def _call(
        self,
        link: StationLink,
        action: str,
        payload: Any,
        message_id: str | None,
        context: CallContext,
    ) -> None:
        """Send a request on ``link``; its answer (or failure) ends ``context``."""
        sent_id = link.send_call(action, payload, message_id=message_id)
        self._calls[link, sent_id] = context

    def _reply_target(self, msg: dict[str, Any]) -> tuple[StationLink, str]:
        ocpp = msg.get("ocpp")
        message_id = ocpp.get("MessageId") if isinstance(ocpp, dict) else None
        if not message_id:
            raise InputError(
                "a response needs msg.ocpp of the received request (reuse the incoming msg)"
            )
        try:
            return self._link_for(msg), message_id
        except InputError as exc:
            raise InputError(f"cannot answer the request {message_id!r}: {exc}") from None

    @staticmethod
    def _names_request(msg: dict[str, Any]) -> bool:
        ocpp = msg.get("ocpp")
        return isinstance(ocpp, dict) and bool(ocpp.get("MessageId"))

    def _is_reply(self, msg: dict[str, Any]) -> bool:
        """True when ``msg.ocpp.MessageId`` names a received request that waits."""
        ocpp = msg.get("ocpp")
        if not isinstance(ocpp, dict) or not ocpp.get("MessageId"):
            return False
        try:
            link = self._link_for(msg)
        except InputError:
            return False
        return link.awaits_answer(ocpp["MessageId"])

    def _link_for(self, msg: dict[str, Any]) -> StationLink:
        """The link ``msg`` is for; raises :class:`InputError` when there is none."""
        raise NotImplementedError

    def _command(self, seq: int, command: str, data: Any, msg: dict[str, Any]) -> bool:
        raise NotImplementedError

    def _command_list(self) -> str:
        return "valid commands are " + ", ".join(f'"{name}"' for name in self.commands)

    def _reply_to_command(self, msg: dict[str, Any], **fields: Any) -> None:
        """Send a command's answer: the input msg with ``fields`` added to its payload."""
        answer = dict(msg)
        answer["payload"] = {**msg.get("payload", {}), **fields}
        self.host.send(PORT_LINK if "_linkSource" in msg else PORT_COMMON, answer)

    # -- the LinkListener -------------------------------------------------------

    async def link_opened(self, link: StationLink) -> None:
        raise NotImplementedError

    def link_closed(self, link: StationLink, reason: str | None) -> None:
        raise NotImplementedError

    def link_events(self, link: StationLink, events: list[Event]) -> None:
        cb_id = link.cb_id
        for event in events:
            if isinstance(event, CallReceived):
                self._emit_request(link, event)
            elif isinstance(event, ResultReceived):
                self._emit_answer(
                    link, event.message_id, event.action, "Response", {"data": event.payload}
                )
            elif isinstance(event, ErrorReceived):
                self._emit_answer(
                    link,
                    event.message_id,
                    event.action,
                    "Error",
                    {
                        "errorCode": event.error_code,
                        "errorDescription": event.error_description,
                        "errorDetails": event.error_details,
                    },
                )
            elif isinstance(event, SendReceived):
                self.host.send(
                    PORT_COMMON,
                    {
                        "topic": f"{cb_id}/Send",
                        "ocpp": self._ocpp_fields(link, event.message_id, event.action),
                        "payload": self._request_payload(link, event),
                    },
                )
            elif isinstance(event, ResultRefused):
                # the flow's answer, refused by the peer with a CALLRESULTERROR (2.1)
                self.host.send(
                    PORT_COMMON,
                    {
                        "topic": f"{cb_id}/Error",
                        "ocpp": self._ocpp_fields(link, event.message_id, event.action),
                        "payload": {
                            "command": event.action,
                            "msgType": 5,
                            "errorCode": event.error_code,
                            "errorDescription": event.error_description,
                            "errorDetails": event.error_details,
                        },
                    },
                )
            elif isinstance(event, ResultInvalid):
                self._fail_call(link, event.message_id, f"{cb_id}: {event.description}", "invalid")
            elif isinstance(event, CallTimedOut):
                self._fail_call(
                    link,
                    event.message_id,
                    f"{cb_id}: no answer to {event.action} within {link.call_timeout:g} s",
                    "timeout",
                )
            elif isinstance(event, CallAborted):
                self._fail_call(
                    link,
                    event.message_id,
                    f"{cb_id}: {event.action} not answered: {event.reason}",
                    "aborted",
                )
            elif isinstance(event, PeerError):
                self.host.log("warn", f"{cb_id} sent an invalid message: {event.description}")
            elif isinstance(event, UnexpectedAnswer):
                self.host.log(
                    "warn",
                    f"{cb_id}: dropped an answer to unknown or expired "
                    f"MessageId {event.message_id}",
                )
            elif isinstance(event, RequestExpired):
                self._request_expired(link, event)

    def _request_expired(self, link: StationLink, event: RequestExpired) -> None:
        self.host.log(
            "warn",
            f"{link.cb_id}: {event.action} {event.message_id} "
            "was not answered in time; a later answer will be refused",
        )

    def _ocpp_fields(self, link: StationLink, message_id: str, action: str) -> dict[str, Any]:
        return {
            "ocppVersion": link.version.name,
            "MessageId": message_id,
            "command": action,
            "cbId": link.cb_id,
        }

    def _request_payload(
        self, link: StationLink, event: CallReceived | SendReceived
    ) -> dict[str, Any]:
        return {"command": event.action, "data": event.payload, "MessageId": event.message_id}

    def _emit_request(self, link: StationLink, event: CallReceived) -> None:
        if self.parked:  # handed to the node that takes over (redeploy.py)
            return
        self.host.send(
            PORT_COMMON,
            {
                "topic": f"{link.cb_id}/Request",
                "ocpp": self._ocpp_fields(link, event.message_id, event.action),
                "payload": self._request_payload(link, event),
            },
        )

    def _emit_answer(
        self, link: StationLink, message_id: str, action: str, kind: str, fields: dict[str, Any]
    ) -> None:
        context = self._context_of(link, message_id)
        if context is not None:
            self._deliver_answer(link, message_id, action, kind, fields, context)

    def _deliver_answer(
        self,
        link: StationLink,
        message_id: str,
        action: str,
        kind: str,
        fields: dict[str, Any],
        context: CallContext,
    ) -> None:
        """Put an answer on the flow's port and end the request's input."""
        msg: dict[str, Any] = {
            "topic": f"{link.cb_id}/{kind}",
            "ocpp": self._ocpp_fields(link, message_id, action),
            "payload": {"command": action, **fields},
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

    def _fail_call(self, link: StationLink, message_id: str, reason: str, outcome: str) -> None:
        """A request of ours got no usable answer: ``outcome`` is ``"timeout"``,
        ``"aborted"`` (the connection was lost) or ``"invalid"`` (the answer
        broke the schema)."""
        context = self._context_of(link, message_id)
        if context is None:
            return
        if context.seq is not None:
            self.host.done(context.seq, reason)
        else:  # nobody waits on an input: say it in the log
            self.host.log("warn", reason)

    def _context_of(self, link: StationLink, message_id: str) -> CallContext | None:
        context = self._calls.pop((link, message_id), None)
        if context is None and (link, message_id) in self._orphans:
            self._orphans.discard((link, message_id))  # its node was redeployed since
            return None
        if context is None:  # every call goes through _call: a bug, but not one to stop on
            log.error("%s: no context for the answer to %s", self.node_id, message_id)
        return context

    # -- the log port ---------------------------------------------------------------

    def link_frame(self, link: StationLink, text: str, from_peer: bool) -> None:
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
                "cbId": link.cb_id,
                "payload": frame,
            },
        )
