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
from collections import deque
from typing import Any

from ..rpc import VERSIONS, CallReceived, OcppVersion, OutgoingError, Role, check_request
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
    CallContext,
    InputError,
    NodeHost,
    NodeServices,
    NodeSpec,
    OcppNode,
    number_setting,
)
from .offline_store import OfflineStore

__all__ = ["CsNode"]


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
    commands = ("connect", "close", "retrybackoff")

    def __init__(self, spec: NodeSpec, host: NodeHost, services: NodeServices) -> None:
        super().__init__(spec, host, services)
        config = spec.config
        self.tls = TlsMaterial.from_options(spec.tls)
        #: offered in this order
        self.versions: tuple[OcppVersion, ...] = tuple(VERSIONS.values())
        # Requests while offline: "transactions" (default: the version's
        # transaction-related actions, kept on disk), "all" (also every other
        # request, in memory), "off".
        mode = config.get("offline_queue", "transactions")
        self.offline_mode = mode if mode in ("transactions", "all", "off") else "transactions"
        self.offline_limit = int(number_setting(config.get("offline_queue_size"), 1000))
        store = services.offline_store(spec.user_dir)
        self.store = store if store is not None else OfflineStore(":memory:")
        self._waiting: deque[tuple[int, dict[str, Any]]] = deque()
        self._drainer: asyncio.Task[None] | None = None
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

    async def start(self) -> None:
        if self.auto_connect:
            self._connect()
        else:
            self.host.status("grey", "ring", "not connected")

    async def _stop(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.stop()
        while self._waiting:
            seq, _ = self._waiting.popleft()
            self.host.done(seq, f"{self.cb_id}: the node stopped before it was connected")

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
        self.host.status("green", "dot", "connected")
        self._announce(online=True)
        self._drainer = self.tasks.start(self._drain(link))

    def link_closed(self, link: StationLink, reason: str | None) -> None:
        self.link = None
        if self._drainer is not None:
            self._drainer.cancel()
            self._drainer = None
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
        """Status ``retry in Ns``, updated every second until the next attempt.

        The whole seconds shown are counted down from the wait itself, never
        worked out again from the loop's clock: ``(now + 40) - now`` can come
        out a hair over 40 in floating point (the loop clock of uvloop counts
        from boot, and between 472 and 512 s a quarter of its readings do), and
        the status then said "retry in 41s" for a 40 s wait.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        whole = math.ceil(seconds)
        while whole > 0:
            self.host.status("red", "ring", f"retry in {whole}s")
            whole -= 1
            await asyncio.sleep(max(0.0, end - whole - loop.time()))

    def _stop_countdown(self) -> None:
        if self._countdown is not None:
            self._countdown.cancel()
            self._countdown = None

    # -- requests while offline ----------------------------------------------------------

    def _version(self) -> OcppVersion:
        """The version of the connection; while offline, the one offered first."""
        return self.link.version if self.link is not None else self.versions[0]

    def _send_request(self, seq: int, msg: dict[str, Any], payload: dict[str, Any]) -> None:
        action = payload.get("command")
        version = self._version()
        if action in version.transaction_actions and self.offline_mode != "off":
            # Kept in order: behind what is stored, even once connected again.
            if self.link is None or self._draining() or self.store.count(self.cb_id):
                self._store(seq, msg, payload, version, offline=self.link is None)
                return
        elif self.link is None and self.offline_mode == "all":
            self._wait_for_connection(seq, msg, payload)
            return
        super()._send_request(seq, msg, payload)

    def _draining(self) -> bool:
        return self._drainer is not None and not self._drainer.done()

    def _store(
        self,
        seq: int,
        msg: dict[str, Any],
        payload: dict[str, Any],
        version: OcppVersion,
        offline: bool,
    ) -> None:
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
        if offline and isinstance(data, dict) and "offline" not in data:
            data = {**data, "offline": True}  # part 2: it happened while offline
        message_id = payload.get("MessageId") or None
        try:
            self.store.add(
                self.cb_id,
                action,
                data,
                message_id,
                msg.get("customData"),
                "customData" in msg,
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"cannot keep this request for later: {exc}") from None
        self.host.done(seq)  # kept on disk; its answer comes out later as a Response

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

    async def _drain(self, link: StationLink) -> None:
        """Send what was kept, in order, one at a time; then what waited in memory."""
        loop = asyncio.get_running_loop()
        while link is self.link:
            entry = self.store.first(self.cb_id)
            if entry is None:
                break
            outcome: asyncio.Future[str] = loop.create_future()
            context = CallContext(
                None,
                entry.has_custom_data,
                entry.custom_data,
                None,
                lambda result, outcome=outcome: outcome.done() or outcome.set_result(result),
            )
            try:
                self._call(link, entry.action, entry.payload, entry.message_id, context)
            except OutgoingError as exc:
                self.host.log("warn", f"{self.cb_id}: dropped a stored {entry.action}: {exc}")
                self.store.remove(entry.row_id)
                continue
            if await outcome == "failed":  # kept: tried again, now or on reconnection
                await asyncio.sleep(1.0)
                continue
            self.store.remove(entry.row_id)
        while self._waiting and link is self.link:
            seq, msg = self._waiting.popleft()
            self.input(seq, msg)

    def _link_for(self, msg: dict[str, Any]) -> StationLink:
        if self.link is None:
            raise InputError(f"{self.cb_id or 'CS'} is not connected to the CSMS")
        return self.link

    def _request_payload(self, link: StationLink, event: CallReceived) -> dict[str, Any]:
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
        raise InputError(f"unknown command {command!r}: {self._command_list()}")

    async def _reconnect(self, seq: int, settings: dict[str, Any]) -> None:
        await self._stop()
        self._reported = None  # a new start: its first failure is news
        if settings.get("cbId"):
            self.cb_id = str(settings["cbId"])
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
        for key, given in settings.items():
            attribute = fields.get(str(key).lower())
            if attribute is None:
                continue
            try:
                value = float(given)
            except (TypeError, ValueError):
                raise InputError(f"data.{key} must be a number of seconds") from None
            if value < 0:
                raise InputError(f"data.{key} must not be negative")
            setattr(self.backoff, attribute, int(value) if attribute == "repeat_times" else value)
        self.backoff.reset()
