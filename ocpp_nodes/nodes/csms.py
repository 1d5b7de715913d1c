"""The CSMS node: a server that Charging Stations connect to.

Config (see docs/nodes.md): ``port``, ``path``, ``ocpp_logging``, and the
credential ``basic_auths``: a JSON object ``{cbId: password}`` as text. A
station is routed by ``msg.payload.cbId``, else ``msg.ocpp.cbId``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import ssl
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from ..rpc import V201, CallReceived, ErrorCode, OcppVersion, Role
from ..rpc.registration import BOOT_ACTION, Registration, RegistrationStatus
from ..transport import AuthDecision, ServerOptions, StationLink, StationServer
from ..transport.csms_server import NO_COMMON_VERSION
from ..transport.tls import TlsMaterial, server_context
from .base import (
    PORT_COMMON,
    InputError,
    NodeHost,
    NodeServices,
    NodeSpec,
    OcppNode,
    number_setting,
    registration_state,
    versions_setting,
)

__all__ = ["CsmsNode", "parse_auth_list"]


def parse_auth_list(value: Any) -> dict[str, str]:
    """The ``basic_auths`` credential as a dict; raises ``ValueError`` saying what is wrong."""
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"CS Auth list is not valid JSON: {exc}") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError('CS Auth list must be a JSON object {"cbId": "password", ...}')
    return dict(value)


class RefusalLog:
    """Refused connection attempts, summed up in at most one warning per 10 s.

    An audit trail of bad logins that a flood cannot turn into a log flood.
    """

    REASONS = {
        400: "invalid identity",
        401: "wrong or missing credentials",
        403: "client certificate of another station",
        404: "unknown identity",
        409: "already connected",
        503: "over a connection cap",
    }
    #: not HTTP: closed after the upgrade, as part 4 asks
    CLOSED = {NO_COMMON_VERSION: "no OCPP version in common; closed with code 1002"}
    PERIOD = 10.0

    def __init__(self, host: NodeHost) -> None:
        self.host = host
        self.counts: Counter[int] = Counter()
        self.remotes: set[str] = set()
        self._flush: asyncio.TimerHandle | None = None

    def count(self, status: int, remote: str) -> None:
        self.counts[status] += 1
        if len(self.remotes) < 5:
            self.remotes.add(remote)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self.PERIOD, self.report)

    def report(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if not self.counts:
            return
        parts = ", ".join(
            f"{n} x {self.CLOSED[status]}"
            if status in self.CLOSED
            else f"{n} x HTTP {status} ({self.REASONS.get(status, 'refused')})"
            for status, n in sorted(self.counts.items())
        )
        self.host.log(
            "warn", f"refused connection attempts: {parts}; from {', '.join(sorted(self.remotes))}"
        )
        self.counts.clear()
        self.remotes.clear()


class CsmsNode(OcppNode):
    type_name = "CSMS"
    role = Role.CSMS
    peer_name = "CS"
    own_name = "CSMS"
    commands = (
        "connections",
        "cmds",
        "command",
        "commands",
        "get_auth_list",
        "set_auth_list",
        "get_auth_cs",
        "get_auth_user",
        "set_auth_cs",
        "set_auth_user",
        "ws_close",
        "ws_open",
        "registration",
    )

    def __init__(self, spec: NodeSpec, host: NodeHost, services: NodeServices) -> None:
        super().__init__(spec, host, services)
        config = spec.config
        self.tls = TlsMaterial.from_options(spec.tls)
        # a certificate of the other key type, so that all four suites of part 2 are served
        self.tls2 = TlsMaterial.from_options(spec.tls2)
        # accepted (``ocpp_versions``; older exports: 2.0.1), and whose order
        # of preference picks one ("station", the default, or "csms")
        self.versions: tuple[OcppVersion, ...] = (V201,)
        self.versions_problem: str | None = None
        try:
            self.versions = versions_setting(config)
        except ValueError as exc:
            self.versions_problem = str(exc)
        self.own_order = config.get("version_preference") == "csms"
        self.path = str(config.get("path") or "")
        # Connection caps (0 = none); see docs/security.md.
        self.max_connections = int(number_setting(config.get("max_connections"), 25_000))
        self.handshakes_per_second = number_setting(config.get("handshakes_per_second"), 500)
        # The package we replace answered get_auth_list / get_auth_cs to any
        # flow; keep that unless the node says otherwise.
        self.auth_list_readable = config.get("allow_auth_list_read", True) is not False
        self.port_problem: str | None = None
        try:
            self.port = int(str(config.get("port")))
            if not 0 < self.port < 65536:
                raise ValueError
        except ValueError:
            self.port = 0
            self.port_problem = f"port {config.get('port')!r} is not a TCP port number"
        self.auth_problem: str | None = None
        try:
            self.auth_list = parse_auth_list(spec.credentials.get("basic_auths"))
        except ValueError as exc:
            self.auth_list = {}
            self.auth_problem = str(exc)
        # A station that connects again while connected: the newer connection
        # replaces the older ("newest", the default), or is refused ("reject").
        self.replace_duplicates = config.get("duplicate_cbid", "newest") != "reject"
        # Off when absent, so flows imported from older exports see no new messages.
        self.connection_events = bool(config.get("connection_events", False))
        self.server: StationServer | None = None
        self._refusals = RefusalLog(host)
        self.stations: dict[str, StationLink] = {}
        self.connected_since: dict[str, str] = {}
        # Boot rules (B01-B03): off when absent, so older exports behave as before.
        self.boot_rules = bool(config.get("boot_rules", False))
        # every station seen booting, kept across its connections
        self.registrations: dict[str, Registration] = {}
        # the BootNotification requests each link waits to have answered
        self._boot_requests: dict[StationLink, set[str]] = {}
        # (cbId, action) whose SecurityError answer is in the log since the last boot
        self._refusals_told: set[tuple[str, str]] = set()

    async def start(self) -> None:
        if self.auth_problem:
            self.host.log("error", self.auth_problem)
        if self.port_problem:
            self.host.status("red", "ring", "bad port")
            self.host.log("error", self.port_problem)
            return
        await self._listen()

    def _ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context the profile asks for; raises ``ValueError`` saying what is missing."""
        profile = self.security_profile
        if self.tls is None or not self.tls.has_identity:
            if profile >= 2:
                raise ValueError(
                    f"security profile {profile} needs a TLS configuration with the "
                    "CSMS's certificate and private key"
                )
            if self.tls2 is not None:
                raise ValueError(
                    "a second certificate needs the first: set TLS to a configuration "
                    "with the CSMS's certificate and private key"
                )
            return None
        try:
            return server_context(
                self.tls, require_client_certificate=profile == 3, second=self.tls2
            )
        except ssl.SSLError as exc:  # never echoes key material
            raise ValueError(f"the TLS configuration does not load: {exc.reason or exc}") from None

    async def _listen(self) -> bool:
        try:
            if self.versions_problem:
                raise ValueError(self.versions_problem)
            ssl_context = self._ssl_context()
        except ValueError as exc:
            self.host.status("red", "ring", "config error")
            self.host.log("error", str(exc))
            return False
        server = self.transports.server(self.server_options(ssl_context), self)
        try:
            await server.start()
        except OSError as exc:
            self.host.status("red", "ring", f"port {self.port} busy"[:20])
            self.host.log("error", f"cannot listen on port {self.port}: {exc.strerror or exc}")
            return False
        self.server = server
        self._show_connection_count()
        return True

    def server_options(self, ssl_context: ssl.SSLContext | None) -> ServerOptions:
        """Where and how this node's server listens (also for one it takes over)."""
        return ServerOptions(
            host=None,
            port=self.port,
            path=self.path,
            versions=self.versions,
            own_order=self.own_order,
            link=self.link_options,
            ping_interval=self.settings.ping_interval,
            ssl_context=ssl_context,
            max_connections=self.max_connections,
            handshakes_per_second=self.handshakes_per_second,
        )

    async def _stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()
        self._refusals.report()

    def _show_connection_count(self) -> None:
        if self.server is None:
            self.host.status("grey", "ring", "not listening")
            return
        text = f"{len(self.stations)} connected"
        counts = Counter(
            registration.status
            for cb_id, registration in self.registrations.items()
            if cb_id in self.stations
        )
        for status in (RegistrationStatus.PENDING, RegistrationStatus.REJECTED):
            if counts[status]:
                text += f", {counts[status]} {status.value.lower()}"
        self.host.status("green", "dot" if self.stations else "ring", text)

    # -- the StationListener ----------------------------------------------------------

    def refused(self, status: int, remote: str) -> None:
        self._refusals.count(status, remote)
        if self.meter is not None:
            self.meter.handshake(status)

    def authenticate(
        self, cb_id: str, credentials: tuple[str, str] | None, client_cn: str | None
    ) -> AuthDecision:
        if self.security_profile == 3:
            # The TLS handshake has checked the certificate against our CA;
            # it must also be this station's.
            if client_cn != cb_id:
                return AuthDecision.WRONG_CERTIFICATE
            return self._admit(cb_id)
        expected = self.auth_list.get(cb_id)
        if expected is None:
            return AuthDecision.UNKNOWN_IDENTITY
        if credentials is None:
            return AuthDecision.BAD_CREDENTIALS
        user, password = credentials
        user_ok = hmac.compare_digest(user.encode(), cb_id.encode())
        password_ok = hmac.compare_digest(password.encode(), expected.encode())
        if not (user_ok and password_ok):
            return AuthDecision.BAD_CREDENTIALS
        return self._admit(cb_id)

    def _admit(self, cb_id: str) -> AuthDecision:
        if cb_id in self.stations and not self.replace_duplicates:
            return AuthDecision.ALREADY_CONNECTED
        return AuthDecision.ACCEPT

    async def link_opened(self, link: StationLink) -> None:
        cb_id = link.cb_id
        previous = self.stations.get(cb_id)
        if previous is not None:  # the newest connection of an identity wins
            await previous.close(1000, "replaced by a newer connection")
        self.stations[cb_id] = link
        self.connected_since[cb_id] = datetime.now(timezone.utc).isoformat()
        if self.meter is not None:
            self.meter.handshake("accepted")
        self._show_connection_count()
        self._announce(cb_id, "ONLINE", link.remote)

    def link_closed(self, link: StationLink, reason: str | None) -> None:
        cb_id = link.cb_id
        replaced = self.stations.get(cb_id) is not link
        self._boot_requests.pop(link, None)
        if not replaced:
            del self.stations[cb_id]
            self.connected_since.pop(cb_id, None)
        self._show_connection_count()
        self.host.log("info", f"{cb_id} disconnected: {reason or 'stopped'}")
        if not replaced:  # a replaced connection's station is still online
            self._announce(cb_id, "OFFLINE", link.remote, reason or "stopped")

    def _announce(self, cb_id: str, state: str, remote: str, reason: str | None = None) -> None:
        """A station's connect or disconnect on output 1, when the node asks for it."""
        if not self.connection_events:
            return
        payload: dict[str, Any] = {"remote": remote}
        if reason is not None:
            payload["reason"] = reason
        self.host.send(
            PORT_COMMON,
            {
                "topic": f"{cb_id}/Connection",
                "ocpp": {"websocket": state, "cbId": cb_id},
                "payload": payload,
            },
        )

    # -- boot rules (B01-B03) -----------------------------------------------------------

    def _emit_request(self, link: StationLink, event: CallReceived) -> None:
        if self.boot_rules:
            if event.action == BOOT_ACTION:
                self._boot_requests.setdefault(link, set()).add(event.message_id)
            registration = self.registrations.get(link.cb_id)
            if registration is not None:
                refusal = registration.station_refusal(
                    link.version,
                    event.action,
                    event.payload,
                    asyncio.get_running_loop().time(),
                )
                if refusal is not None:  # answered here: the flow never sees it
                    link.send_error(
                        event.message_id,
                        link.version.code(ErrorCode.SECURITY_ERROR),
                        refusal,
                    )
                    if (link.cb_id, event.action) not in self._refusals_told:  # once per state
                        self._refusals_told.add((link.cb_id, event.action))
                        self.host.log(
                            "info",
                            f"{link.cb_id}: answered {event.action} SecurityError: {refusal}",
                        )
                    return
        super()._emit_request(link, event)

    def _send_result(self, link: StationLink, message_id: str, payload: Any) -> None:
        super()._send_result(link, message_id, payload)
        waiting = self._boot_requests.get(link)
        if waiting is None or message_id not in waiting:
            return
        waiting.discard(message_id)
        cb_id = link.cb_id
        registration = self.registrations.setdefault(cb_id, Registration(Role.CSMS))
        self._refusals_told = {told for told in self._refusals_told if told[0] != cb_id}
        if registration.boot_answered(payload, asyncio.get_running_loop().time()):
            self.host.send(
                PORT_COMMON,
                {
                    "topic": f"{cb_id}/Registration",
                    "ocpp": {
                        "ocppVersion": link.version.name,
                        "cbId": cb_id,
                        "registration": registration.status.value,
                    },
                    "payload": self._registration_state(registration),
                },
            )
            self._show_connection_count()

    def _send_request(self, seq: int, msg: dict[str, Any], payload: dict[str, Any]) -> None:
        if self.boot_rules:
            link = self._link_for(msg)
            registration = self.registrations.get(link.cb_id)
            action = payload.get("command")
            if registration is not None and isinstance(action, str):
                refusal = registration.csms_refusal(link.version, action)
                if refusal is not None:
                    raise InputError(f"{link.cb_id}: {refusal}; nothing was sent")
                registration.csms_request(link.version, action, payload.get("data", {}))
        super()._send_request(seq, msg, payload)

    @staticmethod
    def _registration_state(registration: Registration) -> dict[str, Any]:
        return registration_state(registration, asyncio.get_running_loop().time())

    # -- input ----------------------------------------------------------------------

    def _link_for(self, msg: dict[str, Any]) -> StationLink:
        payload = msg.get("payload")
        cb_id = payload.get("cbId") if isinstance(payload, dict) else None
        if not cb_id and isinstance(msg.get("ocpp"), dict):
            cb_id = msg["ocpp"].get("cbId")
        if not cb_id:
            raise InputError("no station named: set msg.payload.cbId (or msg.ocpp.cbId)")
        link = self.stations.get(cb_id)
        if link is None:
            raise InputError(f"station {cb_id!r} is not connected")
        return link

    def _command(self, seq: int, command: str, data: Any, msg: dict[str, Any]) -> bool:
        settings = data if isinstance(data, dict) else {}
        if command == "connections":
            self._reply_to_command(
                msg,
                connections={
                    cb_id: {"since": self.connected_since.get(cb_id), "remote": link.remote}
                    for cb_id, link in self.stations.items()
                },
            )
        elif command in ("cmds", "command", "commands"):
            self._reply_to_command(msg, commands=self._pending_calls())
        elif command == "get_auth_list":
            self._check_auth_list_readable(command)
            self._reply_to_command(msg, auth_list=dict(self.auth_list))
        elif command == "set_auth_list":
            try:
                self.auth_list = parse_auth_list(data)
            except ValueError as exc:
                raise InputError(str(exc)) from None
        elif command in ("get_auth_cs", "get_auth_user"):
            self._check_auth_list_readable(command)
            name = self._station_name(settings)
            self._reply_to_command(msg, auth_cs=self.auth_list.get(name, "NOT FOUND"))
        elif command in ("set_auth_cs", "set_auth_user"):
            name = self._station_name(settings)
            password = settings.get("password")
            if not isinstance(password, str) or not password:
                raise InputError(f"{command} needs data.password")
            self.auth_list[name] = password
        elif command == "ws_close":
            self.tasks.start(self._ws_close(seq, settings))
            return False
        elif command == "ws_open":
            self.tasks.start(self._ws_open(seq))
            return False
        elif command == "registration":
            self._reply_with_registration(msg, settings)
        else:
            raise InputError(f"unknown command {command!r}: {self._command_list()}")
        return True

    def _reply_with_registration(self, msg: dict[str, Any], settings: dict[str, Any]) -> None:
        cb_id = settings.get("cbId")
        if cb_id:
            registration = self.registrations.get(cb_id, Registration(Role.CSMS))
            self._reply_to_command(msg, registration=self._registration_state(registration))
        else:
            self._reply_to_command(
                msg,
                registrations={
                    name: self._registration_state(registration)
                    for name, registration in self.registrations.items()
                },
            )

    def _check_auth_list_readable(self, command: str) -> None:
        if not self.auth_list_readable:
            raise InputError(
                f"{command} is turned off for this node ('Flows may read passwords' is unchecked)"
            )

    @staticmethod
    def _station_name(settings: dict[str, Any]) -> str:
        name = settings.get("name") or settings.get("cbId")
        if not isinstance(name, str) or not name:
            raise InputError("this command needs data.name, the station's cbId")
        return name

    def _pending_calls(self) -> list[dict[str, Any]]:
        return [
            {"cbId": cb_id, "MessageId": call.message_id, "command": call.action, "sent": call.sent}
            for cb_id, link in self.stations.items()
            for call in link.pending_calls()
        ]

    async def _ws_close(self, seq: int, settings: dict[str, Any]) -> None:
        cb_id = settings.get("cbId")
        if cb_id:
            link = self.stations.get(cb_id)
            if link is None:
                self.host.done(seq, f"station {cb_id!r} is not connected")
                return
            await link.close(1000, "closed by the CSMS flow")
        else:  # no station named: stop listening until ws_open
            await self._stop()
            self._show_connection_count()
        self.host.done(seq)

    async def _ws_open(self, seq: int) -> None:
        if self.server is not None or await self._listen():
            self.host.done(seq)
        else:
            self.host.done(seq, f"cannot listen on port {self.port}")
