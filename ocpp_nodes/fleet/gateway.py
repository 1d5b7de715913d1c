"""``ocpp-nodes gateway``: stations' websockets on one side, the fleet's broker on the other.

A gateway listens for stations as a CSMS node does (the same server: port,
path, versions, TLS, limits before TLS and HTTP, Basic auth), runs each
station's OCPP-J connection (so malformed frames are answered next to the
station, and a station gets one CALL of the CSMS at a time, whichever
Node-RED instance sent it), and bridges what is valid to the broker
(:mod:`ocpp_nodes.fleet.topics`).

Theory of operation:

1. Logins are checked against the salted hashes the CSMS nodes publish on
   ``auth/<cbId>``; no password leaves the gateway. Until the broker has
   been reached, while it is unreachable, and while no CSMS node has
   published a list, a station is answered HTTP 503 (it retries with its
   back-off): it could not reach a CSMS anyway. The gateway is ready when
   its own ``gateway/<id>`` record, published after subscribing, comes back
   (the retained entries came before it); it publishes the record again
   every :data:`READY_RETRY_S` until then, since a broker that drops what it
   queued for a client drops that record too. The CSMS nodes' ``auth-index``
   names every entry: those that did not come with the subscription (the
   broker dropped them) are fetched a batch of topics at a time, and their
   stations are answered 503 meanwhile, not 404.
2. An admitted station: the gateway subscribes to ``station/<cbId>/down``
   and publishes its online presence before reading any frame from it.
3. A station's CALL goes to ``station/<cbId>/up``. It is answered by what
   comes back on ``down``; if it cannot be published, or the broker says
   that no CSMS node subscribes (MQTT 5 reason code 16, e.g. right after a
   broker restart), or the broker connection is lost meanwhile, or nothing
   comes within the answer timeout, the gateway answers it with a CALLERROR
   ``InternalError`` at once, which a station retries transaction messages
   on (E13). Nothing is dropped silently.
4. A CALL from ``down`` goes to the station when its previous CALL is
   answered (one at a time, part 4); the station's answer goes to the CALL's
   response topic. The broker drops a CALL that waited longer than its
   expiry (the sender's call timeout). A message addressed to an earlier
   connection of the station (user property ``connection``) is not sent to
   this one; a CALL that cannot be sent is answered CALLERROR
   ``GenericError`` on its response topic.
5. Presence: the last record on ``presence/<cbId>`` wins. A gateway that
   sees, after its own record came back to it, a newer online record of
   another connection for a station it holds, closes its socket ("replaced
   by a newer connection", as a CSMS node does); an offline record of
   another connection that overwrote its own is answered by publishing its
   own again. A gateway's will marks it offline; every gateway then marks
   the stations that gateway held offline, unless they are online elsewhere.
   With ``duplicate_cbid: "reject"``, a station online anywhere is refused
   409.
6. After a reconnect the gateway subscribes and publishes its stations'
   presence again (the broker may have lost them). Its session is kept by
   the broker (``session_expiry``), so what was published to it meanwhile is
   delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import ssl
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from paho.mqtt.client import MQTTMessage
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..metrics import MAX_HEALTHY_LAG_S, EngineMetrics
from ..rpc import (
    VERSIONS,
    CallReceived,
    ErrorCode,
    ErrorReceived,
    Event,
    OcppVersion,
    OutgoingError,
    RequestExpired,
    ResultInvalid,
    ResultReceived,
    SendReceived,
)
from ..rpc.frames import Call, CallError, CallResult, Send, error_description, serialize
from ..transport.auth_list import AuthList, VerifierBusy
from ..transport.csms_server import AuthDecision, CsmsServer, ServerOptions
from ..transport.link import LinkOptions, StationLink
from ..transport.passwords import HashFormatError, parse_hash
from ..transport.tls import TlsMaterial, server_context
from . import topics as fleet
from .broker import Broker, BrokerOptions, BrokerUnreachable, publish_properties
from .topics import Presence, Topics, group_problem

__all__ = ["Gateway", "GatewayConfig", "load_config", "run_gateway"]

log = logging.getLogger(__name__)

#: what the broker keeps for a gateway that is gone (its subscriptions and
#: the messages for its stations), unless the config says otherwise
DEFAULT_SESSION_EXPIRY = 300

#: seconds after subscribing by which the gateway expects to be ready (rule 1)
READY_WARNING_S = 10.0

#: seconds between publishing its own record again until it comes back (rule 1)
READY_RETRY_S = 2.0

#: auth entries fetched per SUBSCRIBE when the broker dropped some (rule 1): well
#: under Mosquitto's default queue of 1,000 messages per client
AUTH_FETCH_BATCH = 200

#: seconds to wait for one batch of fetched auth entries
AUTH_FETCH_WAIT_S = 3.0

#: batches an entry is asked for before the gateway says it is not on the broker
AUTH_FETCH_TRIES = 3


class ConfigError(ValueError):
    """The gateway's config file is wrong; the text says where."""


@dataclass
class GatewayConfig:
    """The gateway's settings (docs/fleet.md, "The gateway's config file")."""

    id: str
    group: str
    broker: BrokerOptions
    server: ServerOptions
    security_profile: int = 1
    reject_duplicates: bool = False
    answer_timeout: float = 30.0
    #: where /metrics and /health are served (None: not at all)
    metrics: tuple[str, int] | None = None


def _read_text(base: Path, value: Any, what: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a file name")
    path = base / value
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None


def _number(section: dict[str, Any], key: str, default: float, what: str) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{what}.{key} must be a number of at least 0")
    return float(value)


def load_config(path: str | Path) -> GatewayConfig:
    """Read and check a gateway config file (JSON); raises :class:`ConfigError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    base = path.parent
    gateway_id = str(data.get("id") or socket.gethostname())
    if not fleet.GROUP_PATTERN.fullmatch(gateway_id):
        raise ConfigError(f"id {gateway_id!r} must be 1-64 letters, digits, '_', '-' or '.'")
    group = data.get("group", "default")
    problem = group_problem(group)
    if problem is not None:
        raise ConfigError(problem)

    broker = data.get("broker")
    if not isinstance(broker, dict) or not broker.get("url"):
        raise ConfigError('"broker" must be an object with at least "url"')
    password = broker.get("password")
    if broker.get("password_file"):
        password = (_read_text(base, broker["password_file"], "broker.password_file") or "").strip()
    elif os.environ.get("OCPP_GATEWAY_BROKER_PASSWORD"):
        password = os.environ["OCPP_GATEWAY_BROKER_PASSWORD"]
    broker_tls = None
    ca = _read_text(base, broker.get("ca"), "broker.ca")
    cert = _read_text(base, broker.get("cert"), "broker.cert")
    key = _read_text(base, broker.get("key"), "broker.key")
    if ca or cert:
        from ..transport.tls import client_context

        broker_tls = client_context(TlsMaterial(cert=cert, key=key, ca=ca))
    topics = Topics(group)
    broker_options = BrokerOptions(
        url=str(broker["url"]),
        client_id=f"ocpp-gateway-{group}-{gateway_id}",
        username=broker.get("username"),
        password=password,
        tls=broker_tls,
        session_expiry=int(_number(broker, "session_expiry", DEFAULT_SESSION_EXPIRY, "broker")),
        keepalive=int(_number(broker, "keepalive", 30, "broker")) or 30,
        will=(topics.gateway(gateway_id), json.dumps({"online": False}).encode()),
    )
    try:
        from .broker import broker_address

        broker_address(broker_options.url)
    except ValueError as exc:
        raise ConfigError(f"broker.url: {exc}") from None

    listen = data.get("listen", {})
    if not isinstance(listen, dict) or not isinstance(listen.get("port"), int):
        raise ConfigError('"listen" must be an object with "port" (and "host", "path")')
    names = data.get("versions", ["2.0.1", "1.6", "2.1"])
    versions: list[OcppVersion] = []
    for name in names if isinstance(names, list) else [names]:
        version = VERSIONS.get(str(name).removeprefix("ocpp"))
        if version is None:
            raise ConfigError(f"versions: {name!r} is not one of {', '.join(VERSIONS)}")
        versions.append(version)
    if not versions:
        raise ConfigError("versions must name at least one OCPP version")
    profile = data.get("security_profile", 1)
    if profile not in (1, 2, 3):
        raise ConfigError("security_profile must be 1, 2 or 3")
    tls = data.get("tls") or {}
    ssl_context = None
    if tls:
        material = TlsMaterial(
            cert=_read_text(base, tls.get("cert"), "tls.cert"),
            key=_read_text(base, tls.get("key"), "tls.key"),
            ca=_read_text(base, tls.get("ca"), "tls.ca"),
        )
        try:
            ssl_context = server_context(material, require_client_certificate=profile == 3)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"tls: the certificate or key does not load: {exc}") from None
    if profile >= 2 and ssl_context is None:
        raise ConfigError(f'security_profile {profile} needs "tls" with cert and key')
    limits = data.get("limits", {})
    timeouts = data.get("timeouts", {})
    duplicate = data.get("duplicate_cbid", "newest")
    if duplicate not in ("newest", "reject"):
        raise ConfigError('duplicate_cbid must be "newest" or "reject"')
    answer_timeout = _number(timeouts, "answer", 30, "timeouts")
    link = LinkOptions(
        call_timeout=_number(timeouts, "call", 30, "timeouts"),
        # the gateway's own deadline (rule 3) ends a wait; the core's must not first
        answer_timeout=answer_timeout + 3600,
        max_frame_size=int(_number(limits, "max_frame_size", 1024 * 1024, "limits")),
    )
    server = ServerOptions(
        host=listen.get("host") or None,
        port=listen["port"],
        path=str(listen.get("path", "")),
        versions=versions,
        own_order=data.get("version_preference") == "gateway",
        link=link,
        ping_interval=_number(timeouts, "ping_interval", 30, "timeouts"),
        ssl_context=ssl_context,
        max_connections=int(_number(limits, "max_connections", 25_000, "limits")),
        handshakes_per_second=_number(limits, "handshakes_per_second", 500, "limits"),
        handshakes_per_address=_number(limits, "handshakes_per_address", 20, "limits"),
        upgrade_timeout=_number(limits, "upgrade_timeout", 10, "limits"),
    )
    metrics = None
    if data.get("metrics"):
        from ..metrics import parse_address

        try:
            metrics = parse_address(str(data["metrics"]))
        except ValueError:
            raise ConfigError('metrics must be "[HOST:]PORT", e.g. "127.0.0.1:9465"') from None
    return GatewayConfig(
        id=gateway_id,
        group=group,
        broker=broker_options,
        server=server,
        security_profile=profile,
        reject_duplicates=duplicate == "reject",
        answer_timeout=answer_timeout,
        metrics=metrics,
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class Held:
    """A station connected to this gateway."""

    def __init__(self, link: StationLink, gateway_id: str) -> None:
        self.link = link
        self.connection = connection = secrets.token_hex(8)
        self.presence = Presence(
            online=True,
            gateway=gateway_id,
            connection=connection,
            since=_now(),
            version=link.version.subprotocol,
            remote=link.remote,
        )
        #: our presence record came back from the broker (rule 5)
        self.echoed = False
        #: the CSMS's CALLs on the wire or queued: MessageId -> the response topic
        self.calls: dict[str, str] = {}
        #: the station's CALLs forwarded, waiting for the CSMS: MessageId -> deadline timer
        self.forwarded: dict[str, asyncio.TimerHandle] = {}


class Gateway:
    """One gateway (theory: the module's doc)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.topics = Topics(config.group)
        self.broker = Broker(config.broker, self._message, self._broker_up, self._broker_lost)
        self.metrics: GatewayMetrics | None = None
        self.meter: Any = None
        if config.metrics is not None:
            self.metrics = GatewayMetrics(self)
            self.meter = self.metrics.node(config.id)
            config.server = replace(
                config.server, link=replace(config.server.link, meter=self.meter)
            )
        self.server = CsmsServer(config.server, self)
        self.auth = AuthList({})
        #: the broker's auth entries have arrived (rule 1)
        self.auth_received = False
        #: the own records published since the last subscription (rule 1)
        self._ready_markers: set[str] = set()
        #: the cbIds of the auth-index: entries there should be (None: no index yet)
        self.auth_expected: set[str] | None = None
        #: entries on the broker that are not a hash the gateway can check
        self._auth_unreadable: set[str] = set()
        #: cbIds being fetched, and what wakes the fetch when they have all come
        self._auth_awaited: set[str] = set()
        self._auth_came: asyncio.Event | None = None
        self._auth_fetch: asyncio.Task[None] | None = None
        #: entries the index names that fetching did not bring: not on the broker
        self._auth_absent: set[str] = set()
        #: entries held when the gateway became ready: what the broker delivered at once
        self._auth_at_ready = 0
        self.held: dict[str, Held] = {}
        #: the last presence record of every station of the fleet
        self.presence: dict[str, Presence] = {}
        self.gateways_gone: set[str] = set()
        #: stop() closes the stations: their offline record says so, not how the
        #: websocket's closing handshake ended
        self._stopping = False
        #: station CALLs the gateway answered InternalError itself, by why (rule 3)
        self.unanswerable: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.get_running_loop()

    # -- life -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the broker and listen for stations (``OSError``: the port)."""
        self.broker.start()
        await self.server.start()
        if self.metrics is not None and self.config.metrics is not None:
            await self.metrics.start(None, *self.config.metrics)
        log.info(
            "gateway %s of fleet %r: listening on port %d, broker %s",
            self.config.id,
            self.config.group,
            self.config.server.port,
            self.config.broker.url,
        )

    async def stop(self) -> None:
        """Close every station (their presence goes offline), say so, disconnect."""
        self._stopping = True
        await self.server.stop(f"gateway {self.config.id} stopping")
        if self.broker.connected:
            self.broker.publish(
                self.topics.gateway(self.config.id),
                json.dumps({"online": False, "since": _now()}),
                retain=True,
            )
        for task in list(self._tasks):
            task.cancel()
        await self.broker.stop()
        if self.metrics is not None:
            await self.metrics.stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the broker -------------------------------------------------------------------

    def _broker_up(self, session_present: bool) -> None:
        self._spawn(self._resume(session_present))

    async def _resume(self, session_present: bool) -> None:
        topics = self.topics
        broker = self.broker
        try:
            # the index first, alone: a broker that drops what it cannot queue for us
            # drops from the flood of retained records the next subscription brings
            await broker.subscribe([topics.auth_index])
            await broker.subscribe([topics.all_auth, topics.all_gateways, topics.all_presence])
            if not session_present:
                await broker.subscribe(topics.down(cb_id) for cb_id in list(self.held))
        except Exception as exc:
            log.info("subscribing failed: %s", exc)
            return
        # When this record comes back, the retained auth entries the broker sent
        # on subscribing have come before it: logins can be checked (rule 1).
        self._ready_markers.clear()
        self._announce(self._loop.time())
        for cb_id, held in self.held.items():
            self._publish_presence(cb_id, held)

    def _announce(self, first: float) -> None:
        """Publish the gateway's own record; again until it comes back (rule 1)."""
        marker = _now()  # to the microsecond: it names this publication
        self._ready_markers.add(marker)
        self.broker.publish(
            self.topics.gateway(self.config.id),
            json.dumps({"online": True, "since": marker}),
            retain=True,
        )
        self._loop.call_later(READY_RETRY_S, self._not_ready_yet, first, marker)

    def _not_ready_yet(self, first: float, marker: str) -> None:
        if self.auth_received or marker not in self._ready_markers or not self.broker.connected:
            return
        waited = self._loop.time() - first
        if waited >= READY_WARNING_S and waited < READY_WARNING_S + READY_RETRY_S:
            log.error(
                "gateway %s: its own record has not come back from the broker after %g s, "
                "so it admits no station yet: the broker may be dropping messages it queued "
                "for the gateway (Mosquitto: raise max_queued_messages; docs/fleet.md, Sizing)",
                self.config.id,
                READY_WARNING_S,
            )
        self._announce(first)

    def _broker_lost(self, reason: str) -> None:
        log.warning(
            "%s; stations stay connected, their requests are answered InternalError", reason
        )
        for held in list(self.held.values()):
            for message_id in list(held.forwarded):
                self._unanswerable(
                    held, message_id, "the CSMS is unreachable (broker lost)", "broker_lost"
                )

    def _message(self, message: MQTTMessage) -> None:
        parsed = self.topics.parse(message.topic)
        if parsed is None:
            return
        kind, name = parsed
        if kind == "down":
            self._down(name, message)
        elif kind == "presence":
            self._presence(name, Presence.from_json(message.payload))
        elif kind == "auth":
            self._auth(name, message.payload)
        elif kind == "auth-index":
            self._auth_index(message.payload)
        elif kind == "gateway":
            self._gateway(name, message.payload)

    def _auth(self, cb_id: str, payload: bytes) -> None:
        if not payload:
            self.auth.remove(cb_id)
            self._auth_unreadable.discard(cb_id)
        else:
            try:
                self.auth.put(cb_id, parse_hash(payload.decode()))
                self._auth_unreadable.discard(cb_id)
            except (HashFormatError, UnicodeDecodeError) as exc:
                log.warning(
                    "auth entry of %s on the broker is not a hash we can check: %s", cb_id, exc
                )
                self.auth.remove(cb_id)
                self._auth_unreadable.add(cb_id)
        if cb_id in self._auth_awaited:
            self._auth_awaited.discard(cb_id)
            if not self._auth_awaited and self._auth_came is not None:
                self._auth_came.set()

    def _auth_index(self, payload: bytes) -> None:
        try:
            stations = json.loads(payload)["stations"] if payload else []
        except (ValueError, KeyError, TypeError):
            stations = None
        if not isinstance(stations, list) or not all(isinstance(c, str) for c in stations):
            log.warning('the auth index on the broker is not {"stations": ["cbId", ...]}: ignored')
            return
        expected = set(stations)
        self.auth_expected = expected
        self._auth_absent.clear()
        self._check_auth()

    def auth_missing(self) -> set[str]:
        """cbIds the auth index names whose entries the gateway does not hold."""
        if self.auth_expected is None:
            return set()
        return {cb_id for cb_id in self.auth_expected if self._lacks(cb_id)}

    def _check_auth(self) -> None:
        """Fetch the entries the index names that the subscription did not bring (rule 1)."""
        if not self.auth_received or (self._auth_fetch is not None and not self._auth_fetch.done()):
            return
        if self.auth_missing():
            self._auth_fetch = asyncio.ensure_future(self._fetch_auth())
            self._tasks.add(self._auth_fetch)
            self._auth_fetch.add_done_callback(self._tasks.discard)

    def _lacks(self, cb_id: str) -> bool:
        expected = self.auth_expected
        return (
            expected is not None
            and cb_id in expected
            and cb_id not in self.auth
            and cb_id not in self._auth_unreadable
        )

    async def _fetch_auth(self) -> None:
        """Subscribe to the missing entries' own topics, a batch at a time, small
        enough for what the broker delivered at once when the gateway subscribed."""
        missing = sorted(self.auth_missing())
        # half of what came at once fits what the broker queues for us; nothing came
        # (the list was published after the gateway subscribed): the default
        size = min(AUTH_FETCH_BATCH, self._auth_at_ready // 2) or AUTH_FETCH_BATCH
        log.warning(
            "gateway %s: %d of %d station logins did not come when it subscribed: the broker "
            "dropped them (Mosquitto: raise max_queued_messages; docs/fleet.md, Sizing); "
            "fetching them %d at a time, their stations are answered 503 meanwhile",
            self.config.id,
            len(missing),
            len(self.auth_expected or ()),
            size,
        )
        index = self.auth_expected
        pending = deque(missing)
        tries: dict[str, int] = {}
        try:
            while pending:
                batch = [pending.popleft() for _ in range(min(size, len(pending)))]
                self._auth_awaited = {cb_id for cb_id in batch if self._lacks(cb_id)}
                if not self._auth_awaited:
                    continue
                self._auth_came = came = asyncio.Event()
                topics = [self.topics.auth(cb_id) for cb_id in self._auth_awaited]
                await self.broker.subscribe(topics)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(came.wait(), AUTH_FETCH_WAIT_S)
                await self.broker.unsubscribe(topics)
                left = [cb_id for cb_id in batch if self._lacks(cb_id)]
                if left and len(left) < len(batch):
                    size = max(1, size // 2)  # part came: the broker dropped the rest again
                for cb_id in left:
                    tries[cb_id] = tries.get(cb_id, 0) + 1
                    if tries[cb_id] < AUTH_FETCH_TRIES:
                        pending.append(cb_id)
        except BrokerUnreachable:
            return  # subscribing again after the reconnect checks again
        finally:
            self._auth_awaited = set()
            self._auth_came = None
        if self.auth_expected is not index:  # a new index came meanwhile: it is checked
            self._loop.call_soon(self._check_auth)  # once this fetch is done
            return
        still = self.auth_missing()
        self._auth_absent = still
        if still:
            log.error(
                "gateway %s: the auth index names %d stations whose logins are not on the "
                "broker (e.g. %s): they are refused here",
                self.config.id,
                len(still),
                ", ".join(sorted(still)[:5]),
            )
        else:
            log.info("gateway %s: all %d station logins are here", self.config.id, len(self.auth))

    def _gateway(self, gateway_id: str, payload: bytes) -> None:
        try:
            record = json.loads(payload) if payload else {}
            online = bool(record.get("online"))
        except (ValueError, AttributeError):
            return
        if gateway_id == self.config.id and online and record.get("since") in self._ready_markers:
            if not self.auth_received:
                log.info("gateway %s: ready, %d station logins known", gateway_id, len(self.auth))
                self._auth_at_ready = len(self.auth)
            self.auth_received = True
            self._check_auth()
        if online:
            self.gateways_gone.discard(gateway_id)
            return
        if gateway_id == self.config.id:
            return  # our own will from before a restart, or our stop
        self.gateways_gone.add(gateway_id)
        for cb_id, presence in list(self.presence.items()):
            if presence.online and presence.gateway == gateway_id and cb_id not in self.held:
                self._mark_offline(cb_id, presence, f"its gateway {gateway_id} is gone")

    def _mark_offline(self, cb_id: str, presence: Presence, reason: str) -> None:
        record = Presence(
            online=False,
            gateway=presence.gateway,
            connection=presence.connection,
            since=_now(),
            reason=reason,
        )
        self.presence[cb_id] = record
        self.broker.publish(self.topics.presence(cb_id), record.to_json(), retain=True)

    def _presence(self, cb_id: str, presence: Presence | None) -> None:
        if presence is None:
            return
        self.presence[cb_id] = presence
        held = self.held.get(cb_id)
        if held is None:
            if presence.online and presence.gateway == self.config.id:
                # a connection of ours from before a restart
                self._mark_offline(cb_id, presence, f"gateway {self.config.id} restarted")
            elif presence.online and presence.gateway in self.gateways_gone:
                # retained from a gateway that is gone (its will came first)
                self._mark_offline(cb_id, presence, f"its gateway {presence.gateway} is gone")
            return
        if presence.connection == held.connection:
            if presence.online:
                held.echoed = True
            else:  # marked offline by someone who thought us gone: we are not
                held.echoed = False
                self._publish_presence(cb_id, held)
            return
        if not held.echoed:
            return  # older than our record: the broker orders each topic
        if presence.online:
            self._spawn(held.link.close(1000, "replaced by a newer connection"))
        else:  # someone marked an older connection offline over ours
            held.echoed = False
            self._publish_presence(cb_id, held)

    # -- stations (the StationListener) --------------------------------------------------

    async def authenticate(
        self, cb_id: str, credentials: tuple[str, str] | None, client_cn: str | None
    ) -> AuthDecision:
        if not self.broker.connected or not self.auth_received:
            return AuthDecision.BUSY  # 503: the CSMS cannot be reached now (rule 1)
        if self.config.security_profile == 3:
            if client_cn != cb_id:
                return AuthDecision.WRONG_CERTIFICATE
        else:
            if not len(self.auth):
                return AuthDecision.BUSY  # no CSMS node has published its list yet (rule 1)
            if cb_id not in self.auth:
                if self._lacks(cb_id) and cb_id not in self._auth_absent:
                    return AuthDecision.BUSY  # its entry is being fetched (rule 1)
                return AuthDecision.UNKNOWN_IDENTITY
            if credentials is None or credentials[0] != cb_id:
                return AuthDecision.BAD_CREDENTIALS
            try:
                if not await self.auth.check(cb_id, credentials[1]):
                    return AuthDecision.BAD_CREDENTIALS
            except VerifierBusy:
                return AuthDecision.BUSY
        if self.config.reject_duplicates:
            presence = self.presence.get(cb_id)
            if cb_id in self.held or (
                presence is not None
                and presence.online
                and presence.gateway not in self.gateways_gone
            ):
                return AuthDecision.ALREADY_CONNECTED
        return AuthDecision.ACCEPT

    def refused(self, status: int, remote: str, cb_id: str | None = None) -> None:
        if self.meter is not None:
            self.meter.handshake(status)
        log.debug("refused %s from %s: %s", cb_id, remote, status)

    def dropped(self, reason: str, remote: str) -> None:
        if self.meter is not None:
            self.meter.handshake(reason)
        log.debug("dropped a connection from %s: %s", remote, reason)

    async def link_opened(self, link: StationLink) -> None:
        cb_id = link.cb_id
        previous = self.held.get(cb_id)
        held = Held(link, self.config.id)
        self.held[cb_id] = held
        if self.meter is not None:
            self.meter.handshake("accepted")
        if previous is not None:  # the newest connection of an identity wins
            self._spawn(previous.link.close(1000, "replaced by a newer connection"))
        else:
            try:
                await self.broker.subscribe([self.topics.down(cb_id)])
            except Exception as exc:
                log.info("%s: cannot subscribe to its messages: %s", cb_id, exc)
                # its CALLs are answered InternalError until the broker is back (rule 3)
        self._publish_presence(cb_id, held)
        log.debug("%s connected (%s, %s)", cb_id, link.version.name, held.connection)

    def _publish_presence(self, cb_id: str, held: Held) -> None:
        self.presence[cb_id] = held.presence
        self.broker.publish(self.topics.presence(cb_id), held.presence.to_json(), retain=True)

    def link_closed(self, link: StationLink, reason: str | None) -> None:
        cb_id = link.cb_id
        held = self.held.get(cb_id)
        if held is None or held.link is not link:
            return  # replaced: the newer connection holds the station
        del self.held[cb_id]
        for timer in held.forwarded.values():
            timer.cancel()
        latest = self.presence.get(cb_id)
        if latest is None or latest.connection == held.connection:
            if self._stopping or not reason:
                reason = f"gateway {self.config.id} stopped"
            self._mark_offline(cb_id, held.presence, reason)
        if self.broker.connected:
            self._spawn(self._unsubscribe(cb_id))
        log.debug("%s disconnected: %s", cb_id, reason)

    async def _unsubscribe(self, cb_id: str) -> None:
        if cb_id in self.held:
            return  # back meanwhile
        try:
            await self.broker.unsubscribe([self.topics.down(cb_id)])
        except Exception as exc:
            log.debug("%s: unsubscribe failed: %s", cb_id, exc)

    def link_frame(self, link: StationLink, text: str, from_peer: bool) -> None:
        pass  # frames are not logged by a gateway

    def link_events(self, link: StationLink, events: list[Event]) -> None:
        held = self.held.get(link.cb_id)
        if held is None or held.link is not link:
            return
        for event in events:
            if isinstance(event, CallReceived):
                self._forward_call(held, event)
            elif isinstance(event, SendReceived):
                self._publish_up(
                    held, serialize(Send(event.message_id, event.action, event.payload)), None
                )
            elif isinstance(event, ResultReceived | ResultInvalid):
                self._answer_csms(
                    held, event.message_id, serialize(CallResult(event.message_id, event.payload))
                )
            elif isinstance(event, ErrorReceived):
                frame = CallError(
                    event.message_id,
                    event.error_code,
                    event.error_description,
                    event.error_details,
                )
                self._answer_csms(held, event.message_id, serialize(frame))
            elif isinstance(event, RequestExpired):
                held.forwarded.pop(event.message_id, None)
            else:  # timeouts, aborts: the CSMS node's own timers say the same
                message_id = getattr(event, "message_id", None)
                if message_id is not None:
                    held.calls.pop(message_id, None)

    def _forward_call(self, held: Held, event: CallReceived) -> None:
        text = serialize(Call(event.message_id, event.action, event.payload))
        message_id = event.message_id

        def unheard(why: str) -> None:  # no CSMS node subscribes now (rule 3)
            self._unanswerable(
                held, message_id, f"the CSMS is unreachable (broker: {why})", "no_subscriber"
            )

        if not self._publish_up(held, text, event.message_id, unheard):
            self._unanswerable_now(held, event.message_id, "the CSMS is unreachable", "no_broker")
            return
        held.forwarded[event.message_id] = self._loop.call_later(
            self.config.answer_timeout,
            self._unanswerable,
            held,
            event.message_id,
            f"the CSMS did not answer within {self.config.answer_timeout:g} s",
            "no_answer",
        )

    def _publish_up(
        self,
        held: Held,
        text: str,
        message_id: str | None,
        unheard: Callable[[str], None] | None = None,
    ) -> bool:
        cb_id = held.link.cb_id
        properties = publish_properties(
            response_topic=self.topics.down(cb_id) if message_id is not None else None,
            correlation=message_id,
            expiry=self.config.answer_timeout if message_id is not None else None,
            user=(
                (fleet.CONNECTION, held.connection),
                (fleet.VERSION, held.link.version.subprotocol),
                (fleet.GATEWAY, self.config.id),
            ),
        )
        return self.broker.publish(
            self.topics.up(cb_id), text, properties=properties, unheard=unheard
        )

    def _unanswerable(self, held: Held, message_id: str, why: str, cause: str) -> None:
        timer = held.forwarded.pop(message_id, None)
        if timer is None:
            return  # answered meanwhile
        timer.cancel()
        self._unanswerable_now(held, message_id, why, cause)

    def _unanswerable_now(self, held: Held, message_id: str, why: str, cause: str) -> None:
        self.unanswerable[cause] = self.unanswerable.get(cause, 0) + 1
        link = held.link
        try:
            link.send_error(message_id, link.version.code(ErrorCode.INTERNAL_ERROR), why)
        except OutgoingError as exc:
            log.debug("%s: %s", link.cb_id, exc)

    def _answer_csms(self, held: Held, message_id: str, text: str) -> None:
        response_topic = held.calls.pop(message_id, None)
        if response_topic is None:
            return
        properties = publish_properties(
            correlation=message_id,
            user=(("cbId", held.link.cb_id), (fleet.CONNECTION, held.connection)),
        )
        self.broker.publish(response_topic, text, properties=properties)

    def _down(self, cb_id: str, message: MQTTMessage) -> None:
        held = self.held.get(cb_id)
        if held is None:
            log.debug("%s: a message for a station not here; dropped", cb_id)
            return
        properties = message.properties
        user = dict(getattr(properties, "UserProperty", None) or ())
        link = held.link
        if user.get(fleet.CONTROL) == "close":
            if user.get(fleet.CONNECTION) == held.connection:
                try:
                    request = json.loads(message.payload)
                    code, reason = int(request.get("code", 1000)), str(request.get("reason", ""))
                except (ValueError, AttributeError, TypeError):
                    code, reason = 1000, ""
                self._spawn(link.close(code, reason))
            return
        try:
            frame = json.loads(message.payload)
            kind, message_id = frame[0], frame[1]
        except (ValueError, IndexError, KeyError, TypeError):
            log.warning("%s: a message on its down topic is not an OCPP-J frame; dropped", cb_id)
            return
        response_topic = getattr(properties, "ResponseTopic", None)
        addressed = user.get(fleet.CONNECTION)
        if addressed and addressed != held.connection:
            # meant for an earlier connection of the station: never for this one
            log.info(
                "%s: %s was sent to its connection before this one; dropped", cb_id, message_id
            )
            if kind == 2 and response_topic:
                self._refuse_call(
                    cb_id,
                    held,
                    addressed,
                    message_id,
                    response_topic,
                    "the connection it was sent to is gone; not sent",
                )
            return
        try:
            if kind == 2:
                link.send_call(frame[2], frame[3], message_id=message_id)
                if response_topic:
                    held.calls[message_id] = response_topic
            elif kind in (3, 4):
                timer = held.forwarded.pop(message_id, None)
                if timer is None:
                    log.info(
                        "%s: an answer to %s that is no longer awaited; dropped", cb_id, message_id
                    )
                    return
                timer.cancel()
                if kind == 3:
                    link.send_result(message_id, frame[2])
                else:
                    link.send_error(
                        message_id, frame[2], frame[3], frame[4] if len(frame) > 4 else None
                    )
            elif kind == 6:
                link.send_unconfirmed(frame[2], frame[3], message_id=message_id)
            else:
                log.warning(
                    "%s: message type %r on its down topic is not 2, 3, 4 or 6; dropped",
                    cb_id,
                    kind,
                )
        except (OutgoingError, IndexError) as exc:
            log.info("%s: cannot send %s: %s", cb_id, message_id, exc)
            if kind == 2 and response_topic:
                self._refuse_call(cb_id, held, held.connection, message_id, response_topic, exc)

    def _refuse_call(
        self,
        cb_id: str,
        held: Held,
        connection: str,
        message_id: Any,
        response_topic: str,
        why: object,
    ) -> None:
        """Answer a CSMS's CALL that did not go to the station with a CALLERROR (rule 4)."""
        error = CallError(
            str(message_id),
            held.link.version.code(ErrorCode.GENERIC_ERROR),
            error_description(f"gateway {self.config.id}: {why}"),
        )
        self.broker.publish(
            response_topic,
            serialize(error),
            properties=publish_properties(
                correlation=str(message_id),
                user=(("cbId", cb_id), (fleet.CONNECTION, connection)),
            ),
        )


class GatewayMetrics(EngineMetrics):
    """The gateway's ``/metrics`` and ``/health`` (docs/fleet.md, "Metrics").

    The engine's families (:mod:`ocpp_nodes.metrics`) with the gateway as
    their one "node" (``node`` label = the gateway's id), and its own:
    whether the broker is connected, and the station CALLs it answered
    ``InternalError`` itself, by cause. Healthy: the broker is connected, the
    event loop is not late.
    """

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway
        self.registry.register(_GatewayCollector(gateway))

    def health_problems(self) -> list[str]:
        problems = []
        if self.last_lag > MAX_HEALTHY_LAG_S:
            problems.append(f"event loop {self.last_lag:.2f} s late (over {MAX_HEALTHY_LAG_S:g} s)")
        if not self.gateway.broker.connected:
            problems.append(f"broker: {self.gateway.broker.problem}")
        return problems

    def _nodes(self) -> Iterator[tuple[str, Any, tuple[str | None, str | None]]]:
        yield self.gateway.config.id, _GatewayAsNode(self.gateway), ("green", "")


class _GatewayAsNode:
    """What the engine's state collector reads of a node, for the gateway."""

    type_name = "gateway"

    def __init__(self, gateway: Gateway) -> None:
        self.stations = {cb_id: held.link for cb_id, held in gateway.held.items()}
        self.versions = gateway.config.server.versions
        self.config = {"name": gateway.config.id}


class _GatewayCollector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        gateway = self.gateway
        connected = GaugeMetricFamily(
            "ocpp_nodes_gateway_broker_connected",
            "1 while the gateway is connected to the fleet's broker",
            labels=["gateway"],
        )
        connected.add_metric([gateway.config.id], 1 if gateway.broker.connected else 0)
        answered = CounterMetricFamily(
            "ocpp_nodes_gateway_internal_errors",
            "Station CALLs the gateway answered InternalError itself, by cause: broker_lost "
            "(forwarded, then the broker was lost), no_broker (could not be published), "
            "no_subscriber (no CSMS node subscribed), "
            "no_answer (no answer within the answer timeout)",
            labels=["gateway", "cause"],
        )
        for cause in ("broker_lost", "no_broker", "no_subscriber", "no_answer"):
            answered.add_metric([gateway.config.id, cause], gateway.unanswerable.get(cause, 0))
        waiting = GaugeMetricFamily(
            "ocpp_nodes_gateway_forwarded_waiting",
            "Station CALLs forwarded to the CSMS and not answered yet",
            labels=["gateway"],
        )
        waiting.add_metric(
            [gateway.config.id], sum(len(held.forwarded) for held in gateway.held.values())
        )
        ready = GaugeMetricFamily(
            "ocpp_nodes_gateway_ready",
            "1 once the gateway has its stations' logins from the broker and admits stations",
            labels=["gateway"],
        )
        ready.add_metric([gateway.config.id], 1 if gateway.auth_received else 0)
        missing = GaugeMetricFamily(
            "ocpp_nodes_gateway_auth_missing",
            "Stations named in the CSMS nodes' auth index whose login entries the gateway "
            "does not hold (the broker dropped them; they are being fetched)",
            labels=["gateway"],
        )
        missing.add_metric([gateway.config.id], len(gateway.auth_missing()))
        yield from (connected, answered, waiting, ready, missing)


async def run_gateway(config: GatewayConfig) -> int:
    """Run until SIGTERM or SIGINT; 0, or 1 when the port cannot be had."""
    gateway = Gateway(config)
    try:
        await gateway.start()
    except OSError as exc:
        log.error("cannot listen on port %d: %s", config.server.port, exc.strerror or exc)
        await gateway.broker.stop()
        return 1
    print(
        json.dumps(
            {"event": "ready", "gateway": config.id, "port": config.server.port, "pid": os.getpid()}
        ),
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gateway.stop()
    return 0
