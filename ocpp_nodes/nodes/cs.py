"""The CS node: a Charging Station that connects to a CSMS.

Config (see docs/nodes.md): ``cbId``, the ``target-csms`` URL (or the
``csms_url`` of older exports), password credential ``csms_pw`` (or an older
export's plain ``csms_pw``), ``auto_connect``, ``ocpp_logging``,
``ws_rt_minimum`` / ``ws_rt_repeat`` / ``ws_rt_rnd_range`` (reconnect
back-off: wait minimum, doubling times, random range, in seconds).
"""

from __future__ import annotations

import asyncio
import math
import ssl
import uuid
from collections import deque
from typing import Any

from ..rpc import (
    V201,
    VERSIONS,
    CallReceived,
    ConnectionClosed,
    OcppVersion,
    OutgoingError,
    RequestExpired,
    Role,
    SendReceived,
    check_request,
)
from ..rpc.registration import (
    BOOT_ACTION,
    DEFAULT_BOOT_WAIT,
    ErrorAnswer,
    Registration,
    RegistrationStatus,
    ResultAnswer,
)
from ..transport import (
    Backoff,
    ClientOptions,
    ConnectFailure,
    StationClient,
    StationLink,
    station_url,
)
from ..transport.tls import TlsMaterial, client_context
from .base import (
    PORT_COMMON,
    STATUS_LABELS,
    CallContext,
    InputError,
    NodeHost,
    NodeServices,
    NodeSpec,
    OcppNode,
    number_setting,
    registration_state,
    versions_setting,
)
from .countdown import count_down
from .offline_store import OfflineStore, StoredRequest

__all__ = ["CsNode"]


#: How often a kept transaction message sent by the node before a redeploy is
#: looked at until it is answered or ends, before it goes again.
ORPHAN_POLL_S = 0.1

# What a node imported from an older export (no back-off fields) did.
_LEGACY_BACKOFF = {"ws_rt_minimum": 1.0, "ws_rt_repeat": 2, "ws_rt_rnd_range": 0.0}


def _setting(config: dict[str, Any], name: str) -> float:
    try:
        value = float(config.get(name))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float(_LEGACY_BACKOFF[name])
    return value if value >= 0 else float(_LEGACY_BACKOFF[name])


class CsNode(OcppNode):
    type_name = "CS"
    role = Role.CHARGING_STATION
    peer_name = "CSMS"
    own_name = "CS"
    commands = ("connect", "close", "retrybackoff", "registration", "messageattempts")

    def __init__(self, spec: NodeSpec, host: NodeHost, services: NodeServices) -> None:
        super().__init__(spec, host, services)
        config = spec.config
        self.tls = TlsMaterial.from_options(spec.tls)
        #: offered in this order (``ocpp_versions``; older exports: 2.0.1)
        self.versions: tuple[OcppVersion, ...] = (V201,)
        self.versions_problem: str | None = None
        try:
            self.versions = versions_setting(config)
        except ValueError as exc:
            self.versions_problem = str(exc)
        # Requests while offline: "transactions" (default: the version's
        # transaction-related actions, kept on disk), "all" (also every other
        # request, in memory), "off".
        mode = config.get("offline_queue", "transactions")
        self.offline_mode = mode if mode in ("transactions", "all", "off") else "transactions"
        self.offline_limit = int(number_setting(config.get("offline_queue_size"), 1000))
        store = services.offline_store(spec.user_dir)
        self.store = store if store is not None else OfflineStore(":memory:")
        self._waiting: deque[tuple[int, dict[str, Any]]] = deque()
        # E13: how often a transaction-related message is tried, and the wait unit (s)
        self.tx_attempts = max(1, int(number_setting(config.get("tx_attempts"), 3)))
        self.tx_attempt_interval = number_setting(config.get("tx_attempt_interval"), 60.0)
        # the open inputs of kept transaction messages, by store row
        self._transaction_inputs: dict[int, int] = {}
        self._transactions_wake = asyncio.Event()
        # requests the node sends itself (retries, BootNotification again): what came of them
        self._own_calls: dict[tuple[StationLink, str], asyncio.Future[Any]] = {}
        # Boot rules (B01-B03): off when absent, so older exports behave as before.
        self.boot_rules = bool(config.get("boot_rules", False))
        self.registration = Registration(Role.CHARGING_STATION)
        #: the flow's last BootNotification: data, has customData, customData
        self._last_boot: tuple[Any, bool, Any] | None = None
        self._booter: asyncio.Task[None] | None = None
        self._link_up = asyncio.Event()
        #: CSMS requests left unanswered on purpose (a Rejected 1.6 station)
        self._ignored: set[tuple[StationLink, str]] = set()
        self.cb_id = str(config.get("cbId") or "").strip()
        self.csms_url = str((spec.target or {}).get("url") or config.get("csms_url") or "").strip()
        password = spec.credentials.get("csms_pw") or config.get("csms_pw")
        self.password: str | None = str(password) if password else None
        self.auto_connect = bool(config.get("auto_connect"))
        # Off when absent, so flows imported from older exports see no new messages.
        self.report_failures = bool(config.get("connection_failures", False))
        # the cause of the failure last put on port 1; None since the last connection
        self._reported: tuple[str, int | None] | None = None
        self.backoff = Backoff(
            wait_minimum=_setting(config, "ws_rt_minimum"),
            repeat_times=int(_setting(config, "ws_rt_repeat")),
            random_range=_setting(config, "ws_rt_rnd_range"),
        )
        self.client: StationClient | None = None
        self.link: StationLink | None = None
        self._online: bool | None = None
        self._countdown: asyncio.Task[None] | None = None
        #: why the last attempt failed; None once connected (a lost connection: "closed")
        self._last_failure: ConnectFailure | None = None

    async def start(self) -> None:
        self.tasks.start(self._send_transactions())
        if self.auto_connect:
            self._connect()
        else:
            self.host.status("grey", "ring", "not connected")

    async def _stop(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.stop()
        self.end_inputs("the node stopped")

    def end_inputs(self, reason: str) -> None:
        """End the inputs that wait for a connection or for their answer."""
        while self._waiting:
            seq, _ = self._waiting.popleft()
            self.host.done(seq, f"{self.cb_id}: {reason} before it was connected")
        for seq in self._transaction_inputs.values():  # kept on disk, sent after a restart
            self.host.done(seq)
        self._transaction_inputs.clear()

    def _connect(self) -> bool:
        """Start the client with the current settings; False (and a status) when they are bad."""
        problem = self._config_problem()
        ssl_context = None
        if problem is None and self.csms_url.startswith("wss://"):
            try:
                ssl_context = client_context(self.tls)
            except (ssl.SSLError, ValueError) as exc:  # never echoes key material
                problem = f"the TLS configuration does not load: {exc}"
        if problem is not None:
            self.host.status("red", "ring", "config error")
            self.host.log("error", f"{self.cb_id or 'CS'}: {problem}")
            return False
        self.client = self.transports.client(
            ClientOptions(
                self.csms_url,
                self.cb_id,
                # Profile 3 authenticates by client certificate, not Basic auth.
                None if self.security_profile == 3 else self.password,
                versions=self.versions,
                link=self.link_options,
                ping_interval=self.settings.ping_interval,
                ssl_context=ssl_context,
                servername=self.tls.servername if self.tls else None,
            ),
            self.backoff,
            self,
        )
        self.client.start()
        return True

    def _config_problem(self) -> str | None:
        if self.versions_problem:
            return self.versions_problem
        if not self.cb_id:
            return "cbId is empty"
        if not self.csms_url:
            return "no CSMS URL: pick a target CSMS"
        try:
            station_url(self.csms_url, self.cb_id)
        except ValueError as exc:
            return str(exc)
        profile = self.security_profile
        if profile >= 2 and not self.csms_url.startswith("wss://"):
            return f"security profile {profile} needs a wss:// CSMS URL"
        if profile == 2 and not self.password:
            return "security profile 2 needs a password"
        if profile == 3 and not (self.tls and self.tls.has_identity):
            return "security profile 3 needs a TLS configuration with a client certificate and key"
        return None

    async def link_opened(self, link: StationLink) -> None:
        self.link = link
        self._reported = None
        self._last_failure = None
        self._show_connected()
        self._announce(online=True)
        self._link_up.set()
        self._transactions_wake.set()
        self.tasks.start(self._send_waiting(link))

    def link_closed(self, link: StationLink, reason: str | None) -> None:
        self.link = None
        self._link_up.clear()
        self._ignored = {ignored for ignored in self._ignored if ignored[0] is not link}
        if reason is not None:  # None when the node stops: nothing to warn about
            self.host.log("warn", f"{self.cb_id}: disconnected: {reason}")
        self._announce(online=False)

    def _announce(self, online: bool) -> None:
        """``msg.ocpp.websocket`` ONLINE / OFFLINE on port 1, once per change."""
        if self._online is online:
            return
        self._online = online
        self.host.send(
            PORT_COMMON,
            {"ocpp": {"websocket": "ONLINE" if online else "OFFLINE", "cbId": self.cb_id}},
        )

    def connect_failed(self, failure: ConnectFailure) -> None:
        """Log every failed attempt; put one on port 1 when its cause changed."""
        self._last_failure = failure
        self.host.log("warn", f"{self.cb_id}: {failure.reason}")
        key = (failure.cause, failure.http_status)
        if not self.report_failures or key == self._reported:
            return
        self._reported = key
        payload: dict[str, Any] = {"cause": failure.cause, "reason": failure.reason}
        event = failure.security_event
        if event is not None:
            # as the version the node offers first names it: what the flow would send
            name = self.versions[0].security_events.get(event)
            if name is not None:
                payload["securityEvent"] = name
        if failure.http_status is not None:
            payload["httpStatus"] = failure.http_status
        self.host.send(
            PORT_COMMON,
            {
                "topic": f"{self.cb_id}/Connection",
                "ocpp": {"websocket": "FAILED", "cbId": self.cb_id},
                "payload": payload,
            },
        )

    def client_state(self, state: str, detail: str) -> None:
        self._stop_countdown()
        if state == "connecting":
            self.host.status("yellow", "ring", "connecting")
        elif state == "waiting":
            self._countdown = self.tasks.start(self._count_down(float(detail)))
        elif state == "stopped":
            self.host.status("grey", "dot", "stopped")

    async def _count_down(self, seconds: float) -> None:
        """Status ``<why>, retry in Ns``, updated every second until the next attempt."""
        why = self._last_failure.status_label if self._last_failure else "closed"
        await count_down(
            seconds, lambda whole: self.host.status("red", "ring", f"{why}, retry in {whole}s")
        )

    def _stop_countdown(self) -> None:
        if self._countdown is not None:
            self._countdown.cancel()
            self._countdown = None

    # -- requests ------------------------------------------------------------------------

    def _version(self) -> OcppVersion:
        """The version of the connection; while offline, the one offered first."""
        return self.link.version if self.link is not None else self.versions[0]

    def _send_request(self, seq: int, msg: dict[str, Any], payload: dict[str, Any]) -> None:
        action = payload.get("command")
        version = self._version()
        if version.is_transaction_message(action, payload.get("data")) and (
            self.offline_mode != "off"
        ):
            self._queue_transaction(seq, msg, payload, version)
            return
        if self.link is None and self.offline_mode == "all":
            self._wait_for_connection(seq, msg, payload)
            return
        if self.boot_rules and isinstance(action, str):
            data = payload.get("data", {})
            refusal = self.registration.station_refusal(version, action, data, self._now())
            if refusal is not None:
                raise InputError(f"{self.cb_id}: {refusal}; nothing was sent")
        if action == BOOT_ACTION:  # what the node sends again after a Pending or Rejected
            self._last_boot = (payload.get("data", {}), "customData" in msg, msg.get("customData"))
        super()._send_request(seq, msg, payload)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _wait_for_connection(self, seq: int, msg: dict[str, Any], payload: dict[str, Any]) -> None:
        check_request(self._version(), self.role, payload.get("command"), payload.get("data", {}))
        if len(self._waiting) >= self.offline_limit:
            self.host.log(
                "warn",
                f"{self.cb_id}: offline queue full ({self.offline_limit}); dropped this request",
                msg,
            )
            self.host.done(seq)
            return
        self._waiting.append((seq, msg))

    async def _send_waiting(self, link: StationLink) -> None:
        """Send what waited in memory for the connection, in order."""
        while self._waiting and link is self.link:
            seq, msg = self._waiting.popleft()
            self.input(seq, msg)

    # -- transaction-related messages (E13), on disk ----------------------------------

    def _queue_transaction(
        self, seq: int, msg: dict[str, Any], payload: dict[str, Any], version: OcppVersion
    ) -> None:
        """Keep a transaction-related request, in order, with its message id.

        Its input ends when its answer comes if it can go at once; else now
        (it is kept on disk and its answer comes out later as a Response).
        """
        action = payload["command"]
        data = payload.get("data", {})
        check_request(version, self.role, action, data)
        if self.store.count(self.cb_id) >= self.offline_limit:
            self.host.log(
                "warn",
                f"{self.cb_id}: offline queue full ({self.offline_limit}); dropped this {action}",
                msg,
            )
            self.host.done(seq)
            return
        flag = version.offline_field
        if self.link is None and flag and isinstance(data, dict) and flag not in data:
            data = {**data, flag: True}  # 2.x part 2: it happened while offline
        # fixed now: every try sends it with this id (2.1: ids are unique per station)
        message_id = payload.get("MessageId") or str(uuid.uuid4())
        try:
            row_id = self.store.add(
                self.cb_id,
                action,
                data,
                str(message_id),
                msg.get("customData"),
                "customData" in msg,
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"cannot keep this request for later: {exc}") from None
        if self._transactions_may_go():
            self._transaction_inputs[row_id] = seq
        else:
            self.host.done(seq)
        self._transactions_wake.set()

    def _transactions_may_go(self) -> bool:
        if self.link is None:
            return False
        return not self.boot_rules or self.registration.status is RegistrationStatus.ACCEPTED

    async def _send_transactions(self) -> None:
        """Send the kept transaction-related messages, one at a time, in order (E13).

        No answer in time, a CALLERROR or an answer that breaks the schema
        is an attempt: the message goes again, with the same id, after
        ``tx_attempt_interval`` x the attempts so far, until ``tx_attempts``
        are used up; then it is dropped and the flow told. A lost connection
        is no attempt: the message goes again when connected.
        """
        wake = self._transactions_wake
        while True:
            entry = self.store.first(self.cb_id)
            link = self.link
            if entry is None or link is None or not self._transactions_may_go():
                wake.clear()
                await wake.wait()
                continue
            message_id = entry.message_id or str(uuid.uuid4())  # rows of older versions
            if entry.message_id is None:
                self.store.update(entry.row_id, message_id, entry.attempts)
            if (link, message_id) in self._orphans:
                # sent before a redeploy: its answer (or end) goes nowhere; then again
                await asyncio.sleep(ORPHAN_POLL_S)
                continue
            try:
                _, kind, fields = await self._own_call(
                    link, entry.action, entry.payload, message_id
                )
            except ConnectionClosed:
                continue  # lost meanwhile: link_closed cleared self.link
            except OutgoingError as exc:
                self._drop(entry, message_id, entry.attempts, f"cannot be sent: {exc}", {})
                continue
            seq = self._transaction_inputs.pop(entry.row_id, None)
            if kind == "Response":
                self.store.remove(entry.row_id)
                context = CallContext(seq, entry.has_custom_data, entry.custom_data, None)
                self._deliver_answer(link, message_id, entry.action, kind, fields, context)
                continue
            if seq is not None:
                self._transaction_inputs[entry.row_id] = seq
            if kind == "aborted":  # the connection was lost: sent again when connected
                continue
            attempts = entry.attempts + 1
            reason = self._attempt_failure(kind, fields)
            if attempts >= self.tx_attempts:
                self._drop(entry, message_id, attempts, reason, fields)
                continue
            self.store.update(entry.row_id, message_id, attempts)
            wait = self.tx_attempt_interval * attempts
            self.host.log(
                "warn",
                f"{self.cb_id}: {entry.action} {message_id} not accepted ({reason}): "
                f"attempt {attempts} of {self.tx_attempts}, the next in {wait:g} s",
            )
            await asyncio.sleep(wait)

    @staticmethod
    def _attempt_failure(kind: str, fields: dict[str, Any]) -> str:
        if kind == "Error":
            description = fields.get("errorDescription")
            code = fields.get("errorCode")
            return f"CALLERROR {code}: {description}" if description else f"CALLERROR {code}"
        return str(fields.get("reason", kind))

    def _drop(
        self,
        entry: StoredRequest,
        message_id: str,
        attempts: int,
        reason: str,
        fields: dict[str, Any],
    ) -> None:
        """Give up on a kept message: out of the store, the flow told on output 1."""
        self.store.remove(entry.row_id)
        text = f"{self.cb_id}: dropped {entry.action} {message_id} after {attempts} attempt(s): "
        self.host.log("warn", text + reason)
        payload: dict[str, Any] = {
            "command": entry.action,
            "data": entry.payload,
            "reason": reason,
            "attempts": attempts,
        }
        for key in ("errorCode", "errorDescription"):
            if key in fields:
                payload[key] = fields[key]
        dropped: dict[str, Any] = {
            "topic": f"{self.cb_id}/Dropped",
            "ocpp": {
                "ocppVersion": self._version().name,
                "MessageId": message_id,
                "command": entry.action,
                "cbId": self.cb_id,
            },
            "payload": payload,
        }
        if entry.has_custom_data:
            dropped["customData"] = entry.custom_data
        self.host.send(PORT_COMMON, dropped)
        seq = self._transaction_inputs.pop(entry.row_id, None)
        if seq is not None:
            self.host.done(seq, text + reason)

    # -- requests the node sends itself ------------------------------------------------

    async def _own_call(
        self, link: StationLink, action: str, payload: Any, message_id: str | None = None
    ) -> tuple[str, str, dict[str, Any]]:
        """Send a request of the node's own and wait for what comes of it:
        ``(message id, "Response" | "Error", fields)``, or ``(message id,
        "timeout" | "aborted" | "invalid", {"reason": ...})``. Raises
        :class:`OutgoingError`."""
        sent_id = link.send_call(action, payload, message_id=message_id)
        outcome: asyncio.Future[tuple[str, dict[str, Any]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._own_calls[link, sent_id] = outcome
        try:
            kind, fields = await outcome
        finally:
            self._own_calls.pop((link, sent_id), None)
        return sent_id, kind, fields

    def _emit_answer(
        self, link: StationLink, message_id: str, action: str, kind: str, fields: dict[str, Any]
    ) -> None:
        own = self._own_calls.pop((link, message_id), None)
        if own is not None:
            if not own.done():
                own.set_result((kind, fields))
            return
        super()._emit_answer(link, message_id, action, kind, fields)
        if action == BOOT_ACTION and kind == "Response":
            self._boot_answered(fields.get("data"))

    def _fail_call(self, link: StationLink, message_id: str, reason: str, outcome: str) -> None:
        own = self._own_calls.pop((link, message_id), None)
        if own is not None:
            if not own.done():
                own.set_result((outcome, {"reason": reason}))
            return
        super()._fail_call(link, message_id, reason, outcome)

    # -- boot rules (B01-B03) ---------------------------------------------------------

    def _emit_request(self, link: StationLink, event: CallReceived) -> None:
        if self.boot_rules:
            answer = self.registration.station_answer(link.version, event.action)
            if isinstance(answer, ResultAnswer):
                link.send_result(event.message_id, answer.payload)
                return
            if isinstance(answer, ErrorAnswer):
                if answer.error is not None:
                    link.send_error(
                        event.message_id, link.version.code(answer.error), answer.description
                    )
                else:  # 1.6: not answered at all, on purpose
                    self._ignored.add((link, event.message_id))
                return
            self.registration.csms_request(link.version, event.action, event.payload)
        super()._emit_request(link, event)

    def _request_expired(self, link: StationLink, event: RequestExpired) -> None:
        if (link, event.message_id) in self._ignored:
            self._ignored.discard((link, event.message_id))
            return
        super()._request_expired(link, event)

    def _boot_answered(self, answer: Any) -> None:
        if not self.boot_rules:
            return
        registration = self.registration
        if registration.boot_answered(answer, self._now()):
            self.host.send(PORT_COMMON, self._registration_message())
        self._show_connected()
        if registration.status is RegistrationStatus.ACCEPTED:
            if self._booter is not None and self._booter is not asyncio.current_task():
                self._booter.cancel()
            self._booter = None
            self._transactions_wake.set()
        elif self._booter is None or self._booter.done():
            self._booter = self.tasks.start(self._boot_again())

    async def _boot_again(self) -> None:
        """Pending or Rejected: send the flow's last BootNotification again
        once the interval has passed (when offline, once connected)."""
        registration = self.registration
        while registration.status in (RegistrationStatus.PENDING, RegistrationStatus.REJECTED):
            await asyncio.sleep(registration.seconds_to_boot(self._now()))
            if registration.seconds_to_boot(self._now()) > 0:
                continue  # answered again meanwhile, with a new interval
            while self.link is None:
                self._link_up.clear()
                await self._link_up.wait()
            link = self.link
            if self._last_boot is None:
                return
            data, has_custom_data, custom_data = self._last_boot
            try:
                message_id, kind, fields = await self._own_call(link, BOOT_ACTION, data)
            except OutgoingError as exc:
                message_id, kind, fields = "", "failed", {"reason": str(exc)}
            if kind in ("Response", "Error"):
                self._deliver_answer(
                    link,
                    message_id,
                    BOOT_ACTION,
                    kind,
                    fields,
                    CallContext(None, has_custom_data, custom_data, None),
                )
            if kind == "Response":
                self._boot_answered(fields.get("data"))  # Accepted ends the loop
                continue
            self.host.log(
                "warn",
                f"{self.cb_id}: BootNotification sent again got no answer "
                f"({self._attempt_failure(kind, fields)}); the next after the interval",
            )
            registration.boot_allowed_at = self._now() + (
                registration.interval or DEFAULT_BOOT_WAIT
            )

    def _registration_state(self) -> dict[str, Any]:
        return registration_state(self.registration, self._now())

    def _registration_message(self) -> dict[str, Any]:
        state = self._registration_state()
        return {
            "topic": f"{self.cb_id}/Registration",
            "ocpp": {
                "ocppVersion": self._version().name,
                "cbId": self.cb_id,
                "registration": state["status"],
            },
            "payload": state,
        }

    def _show_connected(self) -> None:
        if self.link is None:
            return
        if not self.boot_rules:
            self.host.status("green", "dot", "connected")
            return
        status = self.registration.status
        fill = {
            RegistrationStatus.ACCEPTED: "green",
            RegistrationStatus.PENDING: "yellow",
            RegistrationStatus.REJECTED: "red",
        }.get(status, "green")
        shape = "dot" if status is RegistrationStatus.ACCEPTED else "ring"
        self.host.status(fill, shape, f"connected, {STATUS_LABELS[status]}")

    def _link_for(self, msg: dict[str, Any]) -> StationLink:
        if self.link is None:
            why = f": {self._last_failure.reason}" if self._last_failure else ""
            raise InputError(f"{self.cb_id or 'CS'} is not connected to the CSMS{why}")
        return self.link

    def _request_payload(
        self, link: StationLink, event: CallReceived | SendReceived
    ) -> dict[str, Any]:
        # The package we replace also put the station's cbId into the payload.
        return {**super()._request_payload(link, event), "cbId": link.cb_id}

    def _command(self, seq: int, command: str, data: Any, msg: dict[str, Any]) -> bool:
        settings = data if isinstance(data, dict) else {}
        if command == "connect":
            self.tasks.start(self._reconnect(seq, settings))
            return False
        if command == "close":
            self.tasks.start(self._close(seq))
            return False
        if command == "retrybackoff":
            self._set_backoff(settings)
            return True
        if command == "registration":
            self._reply_to_command(msg, registration=self._registration_state())
            return True
        if command == "messageattempts":
            self._set_message_attempts(settings)
            return True
        raise InputError(f"unknown command {command!r}: {self._command_list()}")

    async def _reconnect(self, seq: int, settings: dict[str, Any]) -> None:
        await self._stop()
        self._reported = None  # a new start: its first failure is news
        self._last_failure = None
        if settings.get("cbId") and str(settings["cbId"]) != self.cb_id:
            self.cb_id = str(settings["cbId"])
            self.registration = Registration(Role.CHARGING_STATION)  # another station
        if "password" in settings:
            self.password = str(settings["password"]) if settings["password"] else None
        if settings.get("csmsUrl"):
            self.csms_url = str(settings["csmsUrl"])
        if self._connect():
            self.host.done(seq)
        else:
            self.host.done(seq, f"cannot connect: {self._config_problem()}")

    async def _close(self, seq: int) -> None:
        await self._stop()
        self.host.done(seq)

    def _set_backoff(self, settings: dict[str, Any]) -> None:
        # Names are matched without case, and the package we replace read the
        # singular "RetryBackOffRepeatTime": accept it too.
        fields = {
            "retrybackoffwaitminimum": "wait_minimum",
            "retrybackoffrandomrange": "random_range",
            "retrybackoffrepeattimes": "repeat_times",
            "retrybackoffrepeattime": "repeat_times",
        }
        for attribute, (key, value) in _named_numbers(settings, fields).items():
            if value < 0:
                raise InputError(f"data.{key} must not be negative")
            setattr(self.backoff, attribute, int(value) if attribute == "repeat_times" else value)
        self.backoff.reset()

    def _set_message_attempts(self, settings: dict[str, Any]) -> None:
        """The attempts and the retry interval of transaction-related messages,
        by any version's name (``MessageAttemptsTransactionEvent`` /
        ``MessageAttemptIntervalTransactionEvent``, or without
        ``TransactionEvent``; 1.6's ``TransactionMessageAttempts`` /
        ``TransactionMessageRetryInterval``), as a CSMS sets them."""
        fields = {"messageattempts": "tx_attempts", "messageattemptinterval": "tx_attempt_interval"}
        for version in VERSIONS.values():
            attempts, interval = version.transaction_retry_settings
            fields[attempts.lower()] = "tx_attempts"
            fields[interval.lower()] = "tx_attempt_interval"
        changes = _named_numbers(settings, fields)
        if not changes:
            raise InputError(
                "messageattempts needs data.MessageAttemptsTransactionEvent and/or "
                "data.MessageAttemptIntervalTransactionEvent"
            )
        for attribute, (key, value) in changes.items():
            if attribute == "tx_attempts" and (value < 1 or value != int(value)):
                raise InputError(f"data.{key} must be a whole number of at least 1")
            if value < 0 or math.isinf(value):
                raise InputError(f"data.{key} must be a number of seconds, 0 or more")
        for attribute, (_, value) in changes.items():
            setattr(self, attribute, int(value) if attribute == "tx_attempts" else value)


def _named_numbers(
    settings: dict[str, Any], fields: dict[str, str]
) -> dict[str, tuple[str, float]]:
    """The numbers of ``settings`` whose names (in any case) ``fields`` knows:
    ``{attribute: (the name given, value)}``. Raises :class:`InputError` for
    a value that is not a number."""
    found: dict[str, tuple[str, float]] = {}
    for key, given in settings.items():
        attribute = fields.get(str(key).lower())
        if attribute is None:
            continue
        try:
            value = float(given)
        except (TypeError, ValueError):
            raise InputError(f"data.{key} must be a number") from None
        if value != value:  # NaN
            raise InputError(f"data.{key} must be a number")
        found[attribute] = (key, value)
    return found
