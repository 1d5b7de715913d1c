"""The CSMS node: a server that Charging Stations connect to.

Config (see docs/nodes.md): ``port``, ``path``, ``ocpp_logging``, and the
credential ``basic_auths``: a JSON object ``{cbId: password or hash}`` as text
(:mod:`ocpp_nodes.transport.auth_list`). A station is routed by
``msg.payload.cbId``, else ``msg.ocpp.cbId``.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import ssl
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from ..fleet.remote import FleetOptions, FleetServer, fleet_options, remote_session_class
from ..rpc import V201, CallReceived, ErrorCode, OcppVersion, Role
from ..rpc.registration import BOOT_ACTION, Registration, RegistrationStatus
from ..transport import AuthDecision, ServerOptions, StationLink, StationServer
from ..transport.auth_list import VERIFIER, AuthList, VerifierBusy
from ..transport.passwords import SCHEMES, HashFormatError, make_hash
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
from .countdown import bind_waits, count_down
from .refusals import RefusalLog

__all__ = ["CsmsNode", "parse_auth_list"]


def parse_auth_list(value: Any) -> dict[str, str]:
    """The ``basic_auths`` credential as a dict; raises ``ValueError`` saying what is wrong.

    The message never quotes a password, nor the text (which holds them).
    """
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:  # says where, not what: no password in it
            raise ValueError(f"CS Auth list is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(
            'CS Auth list must be a JSON object {"cbId": "password", ...}, '
            f"not {json_type(value)}"
        )
    wrong = [
        f"the password of {cb_id!r} must be a string, not {json_type(password)}"
        for cb_id, password in value.items()
        if not isinstance(password, str)
    ]
    if wrong:
        more = f"; and {len(wrong) - 3} more" if len(wrong) > 3 else ""
        raise ValueError(f"CS Auth list: {'; '.join(wrong[:3])}{more}")
    return dict(value)


def json_type(value: Any) -> str:
    """What JSON calls the type of ``value``, for messages: ``"a number"`` ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


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
        "hash_password",
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
        # Before TLS and HTTP (0 = none); see docs/security.md, "Limits".
        # 20 for new nodes (the dialog's default); absent (older exports): no limit,
        # as before, so that their stations behind one address (a NAT, a proxy, the
        # CS nodes of the same Node-RED) are not held back after the switch
        self.handshakes_per_address = number_setting(config.get("handshakes_per_address"), 0)
        self.upgrade_timeout = number_setting(config.get("upgrade_timeout"), 10)
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
            self.auth_list = AuthList.parse(parse_auth_list(spec.credentials.get("basic_auths")))
        except ValueError as exc:
            self.auth_list = AuthList({})
            self.auth_problem = str(exc)
        # A station that connects again while connected: the newer connection
        # replaces the older ("newest", the default), or is refused ("reject").
        self.replace_duplicates = config.get("duplicate_cbid", "newest") != "reject"
        # Off when absent, so flows imported from older exports see no new messages.
        self.connection_events = bool(config.get("connection_events", False))
        # Fleet mode (docs/fleet.md): gateways hold the stations' sockets, this node
        # serves them through the broker instead of listening.
        self.fleet: FleetOptions | None = None
        self.fleet_problem: str | None = None
        #: what identifies the fleet connection (a redeploy keeps it when unchanged)
        self.fleet_identity = (
            config.get("mode") == "fleet",
            config.get("fleet_broker"),
            config.get("fleet_group"),
            spec.credentials.get("fleet_username"),
            spec.credentials.get("fleet_password"),
            spec.fleet_tls,
        )
        if config.get("mode") == "fleet":
            try:
                self.fleet = fleet_options(config, spec.credentials, spec.fleet_tls)
            except ValueError as exc:
                self.fleet_problem = str(exc)
        self.server: StationServer | FleetServer | None = None
        # tries a busy port again until it is free (or the node stops)
        self._bind_retry: asyncio.Task[None] | None = None
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
        if self.port_problem and self.fleet is None and self.fleet_problem is None:
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
        if self.auth_problem:  # listening would answer every station 404
            self.host.status("red", "ring", "bad CS Auth list")
            self.host.log("error", f"{self.auth_problem}; not listening")
            return False
        if self.fleet_problem is not None:
            self.host.status("red", "ring", "fleet config error")
            self.host.log("error", self.fleet_problem)
            return False
        if self.fleet is not None:
            return await self._join_fleet(self.fleet)
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
            self._cannot_bind(exc)
            return False
        self.server = server
        self._show_connection_count()
        return True

    async def _join_fleet(self, fleet: FleetOptions) -> bool:
        if self.versions_problem:
            self.host.status("red", "ring", "config error")
            self.host.log("error", self.versions_problem)
            return False
        server = FleetServer(
            self.server_options(None),
            self,
            fleet,
            self._broker_state,
            remote_session_class(self.transports),
        )
        server.publish_auth(self.auth_list)
        await server.start()
        self.server = server
        self._show_connection_count()
        return True

    def _broker_state(self, connected: bool, problem: str) -> None:
        """The fleet's broker connection came (``connected``) or went (``problem``)."""
        if connected:
            self.host.log(
                "info", f"fleet {self.fleet.group if self.fleet else ''}: broker connected"
            )
        else:
            self.host.log("warn", f"fleet: {problem}; trying again")
        self._show_connection_count()

    def _auth_list_changed(self) -> None:
        """A flow changed the CS Auth list: in fleet mode the gateways learn it."""
        if isinstance(self.server, FleetServer):
            self.server.publish_auth(self.auth_list)

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
            handshakes_per_address=self.handshakes_per_address,
            upgrade_timeout=self.upgrade_timeout,
        )

    def _cannot_bind(self, exc: OSError) -> None:
        """Try the port again with a back-off; one warning per streak of failures."""
        if self._bind_retry is not None:  # a try of the retry itself
            return
        self.host.log(
            "warn",
            f"cannot listen on port {self.port}: {exc.strerror or exc}; "
            "trying again until it is free",
        )
        busy = exc.errno == errno.EADDRINUSE
        self._bind_retry = self.tasks.start(self._retry_bind(busy))

    async def _retry_bind(self, busy: bool) -> None:
        what = f"port {self.port} busy" if busy else "cannot listen"
        try:
            for wait in bind_waits():
                await count_down(
                    wait, lambda n: self.host.status("red", "ring", f"{what}, retry in {n}s")
                )
                if self.server is not None:  # a ws_open got it meanwhile
                    return
                if await self._listen():
                    again = "is free again" if busy else "can be had now"
                    self.host.log("info", f"port {self.port} {again}: listening")
                    return
        finally:
            self._bind_retry = None

    async def _stop(self) -> None:
        retry, self._bind_retry = self._bind_retry, None
        if retry is not None and retry is not asyncio.current_task():
            retry.cancel()
            await asyncio.wait([retry])
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()
        self._refusals.report()

    def _show_connection_count(self) -> None:
        if self.server is None:
            self.host.status("grey", "ring", "not listening")
            return
        if isinstance(self.server, FleetServer) and not self.server.connected:
            broker = self.server.broker
            if broker is not None and broker.problem.startswith("lost"):
                self.host.status("red", "ring", "broker lost, reconnecting")
            else:
                self.host.status("yellow", "ring", "connecting to broker")
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

    def refused(self, status: int, remote: str, cb_id: str | None = None) -> None:
        self._refusals.count(status, remote, cb_id)
        if self.meter is not None:
            self.meter.handshake(status)

    def dropped(self, reason: str, remote: str) -> None:
        self._refusals.count(reason, remote)
        if self.meter is not None:
            self.meter.handshake(reason)

    async def authenticate(
        self, cb_id: str, credentials: tuple[str, str] | None, client_cn: str | None
    ) -> AuthDecision:
        if self.security_profile == 3:
            # The TLS handshake has checked the certificate against our CA;
            # it must also be this station's.
            if client_cn != cb_id:
                return AuthDecision.WRONG_CERTIFICATE
            return self._admit(cb_id)
        auth_list = self.auth_list
        if cb_id not in auth_list:
            return AuthDecision.UNKNOWN_IDENTITY
        if credentials is None:
            return AuthDecision.BAD_CREDENTIALS
        user, password = credentials
        if not hmac.compare_digest(user.encode(), cb_id.encode()):
            return AuthDecision.BAD_CREDENTIALS
        try:
            password_ok = await auth_list.check(cb_id, password)
        except VerifierBusy:
            return AuthDecision.BUSY
        if auth_list is not self.auth_list:  # changed while a hash was checked
            return await self.authenticate(cb_id, credentials, client_cn)
        if not password_ok:
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
            self._reply_to_command(msg, auth_list=self.auth_list.readable())
        elif command == "set_auth_list":
            try:
                self.auth_list = AuthList.parse(parse_auth_list(data), previous=self.auth_list)
            except ValueError as exc:
                raise InputError(f"set_auth_list: {exc}; the list was not changed") from None
            self.auth_problem = None  # ws_open listens again
            self._auth_list_changed()
        elif command in ("get_auth_cs", "get_auth_user"):
            self._check_auth_list_readable(command)
            name = self._station_name(settings)
            entry = self.auth_list.readable_entry(name)
            self._reply_to_command(msg, auth_cs="NOT FOUND" if entry is None else entry)
        elif command in ("set_auth_cs", "set_auth_user"):
            name = self._station_name(settings)
            password = settings.get("password")
            if password is None or password == "":
                raise InputError(f"{command} needs data.password")
            if not isinstance(password, str):
                raise InputError(
                    f"{command}: data.password must be a string, not {json_type(password)}"
                )
            try:
                self.auth_list = self.auth_list.with_entry(name, password)
            except ValueError as exc:
                raise InputError(str(exc)) from None
            self._auth_list_changed()
        elif command == "ws_close":
            self.tasks.start(self._ws_close(seq, settings))
            return False
        elif command == "ws_open":
            self.tasks.start(self._ws_open(seq))
            return False
        elif command == "registration":
            self._reply_with_registration(msg, settings)
        elif command == "hash_password":
            self.tasks.start(self._hash_password(seq, msg, settings))
            return False
        else:
            raise InputError(f"unknown command {command!r}: {self._command_list()}")
        return True

    async def _hash_password(self, seq: int, msg: dict[str, Any], settings: dict[str, Any]) -> None:
        """Answer ``payload.hash``: a new hash of ``data.password``, made in a thread.

        The reply leaves ``data.password`` out: the flow asked for the hash.
        """
        password = settings.get("password")
        scheme = settings.get("scheme", "scrypt")
        if not isinstance(password, str) or not password:
            self.host.done(seq, "hash_password needs data.password (text)")
            return
        if scheme not in SCHEMES:
            self.host.done(seq, f"hash_password: data.scheme must be one of {', '.join(SCHEMES)}")
            return
        if VERIFIER.busy():  # station logins first
            self.host.done(seq, "hash_password: too many password hashes to check; try later")
            return
        try:
            hashed = await VERIFIER.run(make_hash, password, scheme)
        except HashFormatError as exc:
            self.host.done(seq, f"hash_password: {exc}")
            return
        payload = dict(msg.get("payload") or {})
        payload["data"] = {key: value for key, value in settings.items() if key != "password"}
        self._reply_to_command({**msg, "payload": payload}, hash=hashed)
        self.host.done(seq)

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
        elif self.auth_problem:
            self.host.done(seq, f"not listening: {self.auth_problem}")
        else:
            self.host.done(seq, f"cannot listen on port {self.port}")
