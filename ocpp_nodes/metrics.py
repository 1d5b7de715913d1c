"""The engine's metrics and health: ``/metrics`` (Prometheus) and ``/health``.

Off unless Node-RED's settings.js has ``ocppNodes: { metrics: { port } }`` (the
shim then starts the engine with ``--metrics HOST:PORT``; docs/operations.md
lists every metric). Theory of operation:

1. :class:`EngineMetrics` owns a registry of its own (no default collectors
   but the process one) and the HTTP endpoint, served by aiohttp on the
   engine's own event loop: a scrape reads the nodes' tables on the thread
   that changes them, so it needs no lock and sees no half-made change.
2. What is counted as it happens (messages, CALLERRORs, round trips,
   handshakes, disconnects) is counted in the session and node layers
   through a :class:`NodeMeter` per node and a :class:`LinkMeter` per
   connection, into plain dicts of ints and :class:`Tally` histograms that
   :class:`_TallyCollector` turns into Prometheus families at scrape time. A
   message costs a dict update or a bisect (about 1.5 µs a round trip, where
   prometheus_client's ``Counter``/``Histogram`` children, with their locks,
   cost about 5 µs: docs/benchmarks.md). The OCPP core (``ocpp_nodes.rpc``)
   knows nothing of this. Rare events (hop-time samples, the loop's lag) use
   prometheus_client's own metrics.
3. What is a state (stations connected, calls outstanding and queued, the
   offline queue, whether each node is up) is read from the nodes at scrape
   time by :class:`_StateCollector`: nothing on the hot path.
4. Labels are bounded: node id, OCPP version, action (only actions the
   version's schemas know), message type, error code (only the version's
   codes; anything else is ``other``), handshake outcome. A station's cbId
   is a label only with ``stationLabels: true`` (small fleets).
5. ``/health`` is 200 when the engine is up: a Node-RED shim is connected,
   the event loop's lag is under :data:`MAX_HEALTHY_LAG_S`, and no node is
   down (a CSMS node that should listen and does not, a node whose
   configuration is refused, a node that failed to start); else 503 with the
   reasons. A CS node that cannot reach its CSMS is not "down" (the engine
   cannot fix a remote outage; ``ocpp_nodes_stations_connected`` shows it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .rpc import (
    CallReceived,
    CallTimedOut,
    ErrorReceived,
    Event,
    OcppVersion,
    PeerError,
    RequestExpired,
    ResultInvalid,
    ResultReceived,
    ResultRefused,
    SendReceived,
    UnexpectedAnswer,
)
from .rpc.calls import OutgoingCall
from .rpc.connection import UnansweredCall

if TYPE_CHECKING:
    from .ipc.server import DaemonServer
    from .nodes.base import OcppNode

__all__ = [
    "DEFAULT_HOST",
    "EngineMetrics",
    "HANDSHAKE_OUTCOMES",
    "LinkMeter",
    "MAX_HEALTHY_LAG_S",
    "NodeMeter",
    "handshake_outcome",
]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
#: /health says 503 when the event loop was this late (seconds) at its last check.
MAX_HEALTHY_LAG_S = 1.0
#: how often the event loop's lag is measured (seconds)
LAG_PERIOD_S = 0.5

#: round trips and answer times (seconds): a LAN station answers in ms, a
#: cellular one in hundreds of ms, the default call timeout is 30 s
ROUND_TRIP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: the shim -> engine hop: tens of µs when idle, ms under load
HOP_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 5)

#: every ``outcome`` of ``ocpp_nodes_handshakes_total``: "accepted", an HTTP
#: status before the upgrade, "no_common_version" (closed after it, code
#: 1002), and what a connection closed before any HTTP answer was dropped for
#: (``StationListener.dropped``: the per-address rate limit, an upgrade not
#: completed in time, a failed TLS handshake)
HANDSHAKE_OUTCOMES = (
    "accepted",
    "400",
    "401",
    "403",
    "404",
    "409",
    "503",
    "no_common_version",
    "rate_limited",
    "upgrade_timeout",
    "tls_failed",
    "other",
)
_STATUS_OUTCOMES = {int(o): o for o in HANDSHAKE_OUTCOMES if o.isdigit()}
_NO_COMMON_VERSION = 1002  # transport.csms_server.NO_COMMON_VERSION

_TYPE_NAMES = {3: "CALLRESULT", 4: "CALLERROR"}


def handshake_outcome(status: int | str) -> str:
    """The ``outcome`` label of an HTTP status, a close code or a drop reason."""
    if isinstance(status, str):
        return status if status in HANDSHAKE_OUTCOMES else "other"
    if status == _NO_COMMON_VERSION:
        return "no_common_version"
    return _STATUS_OUTCOMES.get(status, "other")


class Tally:
    """A histogram kept as plain numbers; exported at scrape time.

    ``observe`` is a bisect and two additions: a prometheus_client
    ``Histogram`` takes a lock and walks its buckets per observation, which
    cost several per cent of the engine's CPU per round trip (docs/benchmarks.md).
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: over every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last."""
        out = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((floatToGoString(bound), float(running)))
        return out


class LinkMeter:
    """Counts what crosses one connection (a session holds one).

    The session calls it; every method is on the hot path and only adds to
    plain dicts of its node and version (:class:`VersionTally`).
    """

    __slots__ = ("_tally", "_codes", "_station")

    def __init__(self, node: NodeMeter, version: OcppVersion, cb_id: str) -> None:
        self._tally = node.version_tally(version)
        self._codes = version.error_code_names
        #: [in, out] of this station (``stationLabels`` only)
        self._station = node.station_tally(cb_id) if node.metrics.station_labels else None

    # -- out -------------------------------------------------------------------

    def call_sent(self, action: str) -> None:
        """Our CALL was handed to the connection (sent now, or queued behind another)."""
        self._count(("out", "CALL", action))
        if self._station is not None:
            self._station[1] += 1

    def send_sent(self, action: str) -> None:
        self._count(("out", "SEND", action))
        if self._station is not None:
            self._station[1] += 1

    def answered(self, request: UnansweredCall, waited: float, code: str | None) -> None:
        """The flow answered a received CALL after ``waited`` s: a CALLRESULT, or
        a CALLERROR of ``code``."""
        tally = self._tally
        action = request.action
        if code is None:
            self._count(("out", "CALLRESULT", action))
        else:
            self._count(("out", "CALLERROR", action))
            self._error(("out", code if code in self._codes else "other"))
        answers = tally.answers.get(action)
        if answers is None:
            answers = tally.answers[action] = Tally(ROUND_TRIP_BUCKETS)
        answers.observe(waited)
        if self._station is not None:
            self._station[1] += 1

    # -- in ----------------------------------------------------------------------

    def received(
        self, events: list[Event], outstanding: OutgoingCall | None, sent_at: float, now: float
    ) -> None:
        """What one received message meant; ``outstanding`` was our CALL on the
        wire before it came (sent at ``sent_at``), whose answer it may be."""
        if self._station is not None:
            self._station[0] += 1
        for event in events:
            if isinstance(event, CallReceived):
                self._count(("in", "CALL", event.action))
            elif isinstance(event, (ResultReceived, ResultInvalid, ErrorReceived)):
                action = event.action
                if isinstance(event, ErrorReceived):
                    self._count(("in", "CALLERROR", action))
                    self._error(("in", self._code(event.error_code)))
                else:
                    self._count(("in", "CALLRESULT", action))
                if outstanding is not None and outstanding.message_id == event.message_id:
                    trips = self._tally.round_trips.get(action)
                    if trips is None:
                        trips = self._tally.round_trips[action] = Tally(ROUND_TRIP_BUCKETS)
                    trips.observe(now - sent_at)
            elif isinstance(event, SendReceived):
                self._count(("in", "SEND", event.action))
            elif isinstance(event, ResultRefused):
                self._count(("in", "CALLRESULTERROR", event.action or "unknown"))
                self._error(("in", self._code(event.error_code)))
            elif isinstance(event, PeerError):
                self._count(("in", "invalid", "unknown"))
                if event.answer is not None:  # the core answered it with a CALLERROR
                    self._count(("out", "CALLERROR", "unknown"))
                    self._error(("out", self._code(event.answer.error_code)))
            elif isinstance(event, UnexpectedAnswer):
                self._count(("in", _TYPE_NAMES.get(event.message_type, "other"), "unknown"))
            else:
                self.expired(event)

    def expired(self, event: Event) -> None:
        """A deadline passed: our CALL got no answer, or the flow gave none."""
        if isinstance(event, CallTimedOut):
            _add(self._tally.timeouts, event.action)
        elif isinstance(event, RequestExpired):
            _add(self._tally.expired, event.action)

    def closed(self, by_peer: bool) -> None:
        """The connection ended; ``by_peer``: not because our node stopped."""
        if by_peer:
            self._tally.disconnects += 1

    def _count(self, key: tuple[str, str, str]) -> None:
        messages = self._tally.messages
        messages[key] = messages.get(key, 0) + 1

    def _error(self, key: tuple[str, str]) -> None:
        errors = self._tally.errors
        errors[key] = errors.get(key, 0) + 1

    def _code(self, code: str) -> str:
        return code if code in self._codes else "other"


def _add(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


class VersionTally:
    """What the links of one node and one OCPP version counted, as plain numbers."""

    __slots__ = (
        "messages",
        "errors",
        "round_trips",
        "answers",
        "timeouts",
        "expired",
        "disconnects",
    )

    def __init__(self) -> None:
        #: (direction, message type, action) -> messages
        self.messages: dict[tuple[str, str, str], int] = {}
        #: (direction, code) -> CALLERRORs
        self.errors: dict[tuple[str, str], int] = {}
        #: action -> round trips of our CALLs
        self.round_trips: dict[str, Tally] = {}
        #: action -> the flow's answer times
        self.answers: dict[str, Tally] = {}
        self.timeouts: dict[str, int] = {}
        self.expired: dict[str, int] = {}
        self.disconnects = 0


class NodeMeter:
    """The counts of one node: its links' (per version), its handshakes'."""

    def __init__(self, metrics: EngineMetrics, node_id: str) -> None:
        self.metrics = metrics
        self.node_id = node_id
        self.versions: dict[str, VersionTally] = {}
        self.handshakes: dict[str, int] = {}
        #: cbId -> [messages in, messages out] (``stationLabels`` only)
        self.stations: dict[str, list[int]] = {}

    def version_tally(self, version: OcppVersion) -> VersionTally:
        tally = self.versions.get(version.name)
        if tally is None:
            tally = self.versions[version.name] = VersionTally()
        return tally

    def station_tally(self, cb_id: str) -> list[int]:
        return self.stations.setdefault(cb_id, [0, 0])

    def link(self, version: OcppVersion, cb_id: str) -> LinkMeter:
        """The meter of a new connection of this node."""
        return LinkMeter(self, version, cb_id)

    def handshake(self, outcome: int | str) -> None:
        """One connection attempt to a CSMS node ended so: "accepted", an HTTP
        status or close code (``StationListener.refused``), or a drop reason
        (``StationListener.dropped``: "rate_limited", "upgrade_timeout", "tls_failed")."""
        _add(self.handshakes, handshake_outcome(outcome))


class EngineMetrics:
    """Every metric of the engine, its ``/metrics`` and ``/health`` endpoint.

    Args:
        station_labels: also series per station (cbId as a label).
        restarts: how many times the shim restarted the engine before this one.
    """

    def __init__(self, station_labels: bool = False, restarts: int = 0) -> None:
        self.station_labels = station_labels
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.server: DaemonServer | None = None
        ProcessCollector(registry=registry)
        self.hop = Histogram(
            "ocpp_nodes_shim_hop_seconds",
            "A sample of messages: entered the node in Node-RED until the engine handled it",
            buckets=HOP_BUCKETS,
            registry=registry,
        )
        self.loop_lag = Histogram(
            "ocpp_nodes_event_loop_lag_seconds",
            f"How late the engine's event loop ran a timer due every {LAG_PERIOD_S} s",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        restarts_total = Counter(
            "ocpp_nodes_engine_restarts",
            "Times the Node-RED shim restarted the engine after it died",
            registry=registry,
        )
        restarts_total.inc(restarts)
        Gauge(
            "ocpp_nodes_engine_start_time_seconds",
            "When this engine process started (Unix time)",
            registry=registry,
        ).set(time.time())
        registry.register(_TallyCollector(self))
        registry.register(_StateCollector(self))
        self.last_lag = 0.0
        self._runner: web.AppRunner | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self.meters: dict[str, NodeMeter] = {}

    def node(self, node_id: str) -> NodeMeter:
        """The meter of a node (the same one for a node re-created with its id, so
        that its counters go on across redeploys)."""
        meter = self.meters.get(node_id)
        if meter is None:
            meter = self.meters[node_id] = NodeMeter(self, node_id)
        return meter

    def hop_time(self, t0_ns: int) -> None:
        """A shim-stamped input (``hop_t0``, CLOCK_MONOTONIC ns) is being handled now."""
        self.hop.observe(max(0, time.monotonic_ns() - t0_ns) / 1e9)

    # -- the endpoint ----------------------------------------------------------------

    async def start(self, server: DaemonServer, host: str, port: int) -> bool:
        """Serve ``/metrics`` and ``/health`` on ``host:port`` and measure the loop's lag.

        A port that cannot be had is logged as an error and the engine goes
        on without the endpoint (False); it never stops the engine.
        """
        self.server = server
        self._lag_task = asyncio.ensure_future(self._measure_lag())
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            log.error(
                "metrics endpoint not started: cannot listen on %s:%d: %s; "
                "the engine runs on without it (set another ocppNodes.metrics.port)",
                host,
                port,
                exc.strerror or exc,
            )
            return False
        self._runner = runner
        log.info("metrics on http://%s:%d/metrics, health on /health", host, port)
        return True

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            await asyncio.wait([self._lag_task])
            self._lag_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _measure_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_PERIOD_S
            await asyncio.sleep(LAG_PERIOD_S)
            self.last_lag = max(0.0, loop.time() - due)
            self.loop_lag.observe(self.last_lag)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        problems = self.health_problems()
        body = {
            "status": "fail" if problems else "ok",
            "problems": problems,
            "nodes": sum(1 for _ in self._nodes()),
            "event_loop_lag_s": round(self.last_lag, 4),
        }
        return web.json_response(body, status=503 if problems else 200)

    def health_problems(self) -> list[str]:
        """Why the engine is not up (empty: it is); see the module's rule 5."""
        problems = []
        server = self.server
        if server is None or not any(c.greeted for c in server.connections):
            problems.append("no Node-RED shim is connected")
        if self.last_lag > MAX_HEALTHY_LAG_S:
            problems.append(f"event loop {self.last_lag:.2f} s late (over {MAX_HEALTHY_LAG_S:g} s)")
        for node_id, node, status in self._nodes():
            problem = node_problem(node, status)
            if problem is not None:
                problems.append(f"{node.type_name} node {node_id}: {problem}")
        return problems

    def _nodes(self) -> Iterator[tuple[str, OcppNode, tuple[str | None, str | None]]]:
        """Every node of every shim, with its last status (fill, text)."""
        if self.server is None:
            return
        for connection in list(self.server.connections):
            for node_id, node in list(connection.nodes.items()):
                yield node_id, node, connection.statuses.get(node_id, (None, None))


def node_problem(node: OcppNode, status: tuple[str | None, str | None]) -> str | None:
    """Why a node is down (its red status text), or None when it is up.

    A CS node whose client runs is up, whatever its connection (red only
    says the CSMS refused or cannot be reached, which the engine cannot mend).
    """
    fill, text = status
    if fill != "red":
        return None
    if node.type_name == "CS" and getattr(node, "client", None) is not None:
        return None
    return text or "down"


class _TallyCollector(Collector):
    """The counts of every node's meter (:class:`NodeMeter`), as Prometheus families."""

    def __init__(self, metrics: EngineMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        by_version = ["node", "version"]
        messages = CounterMetricFamily(
            "ocpp_nodes_messages",
            "OCPP-J messages received (direction=in) and sent (out), by message type and action",
            labels=[*by_version, "direction", "type", "action"],
        )
        errors = CounterMetricFamily(
            "ocpp_nodes_callerrors",
            "CALLERRORs (and 2.1 CALLRESULTERRORs) received (in) and sent (out), by error code",
            labels=[*by_version, "direction", "code"],
        )
        round_trips = HistogramMetricFamily(
            "ocpp_nodes_call_duration_seconds",
            "Round trip of our CALLs: sent on the wire until their answer came",
            labels=[*by_version, "action"],
        )
        answers = HistogramMetricFamily(
            "ocpp_nodes_answer_duration_seconds",
            "How long the flow took to answer a received CALL (received until answer sent)",
            labels=[*by_version, "action"],
        )
        timeouts = CounterMetricFamily(
            "ocpp_nodes_call_timeouts",
            "Our CALLs that got no answer within the message timeout",
            labels=[*by_version, "action"],
        )
        expired = CounterMetricFamily(
            "ocpp_nodes_answers_expired",
            "Received CALLs the flow did not answer within the message timeout",
            labels=[*by_version, "action"],
        )
        disconnects = CounterMetricFamily(
            "ocpp_nodes_disconnects",
            "Connections that ended other than by our node stopping (peer closed, lost, ping)",
            labels=by_version,
        )
        handshakes = CounterMetricFamily(
            "ocpp_nodes_handshakes",
            "Connection attempts to CSMS nodes by outcome",
            labels=["node", "outcome"],
        )
        stations = CounterMetricFamily(
            "ocpp_nodes_station_messages",
            "OCPP-J messages per station (only with stationLabels: true)",
            labels=["node", "station", "direction"],
        )
        for node_id, meter in list(self.metrics.meters.items()):
            for outcome, count in list(meter.handshakes.items()):
                handshakes.add_metric([node_id, outcome], count)
            for cb_id, (sent_in, sent_out) in list(meter.stations.items()):
                stations.add_metric([node_id, cb_id, "in"], sent_in)
                stations.add_metric([node_id, cb_id, "out"], sent_out)
            for version, tally in list(meter.versions.items()):
                labels = [node_id, version]
                for key, count in list(tally.messages.items()):
                    messages.add_metric([*labels, *key], count)
                for code_key, count in list(tally.errors.items()):
                    errors.add_metric([*labels, *code_key], count)
                for family, tallies in ((round_trips, tally.round_trips), (answers, tally.answers)):
                    for action, times in list(tallies.items()):
                        family.add_metric([*labels, action], times.buckets(), times.total)
                for family, counts in ((timeouts, tally.timeouts), (expired, tally.expired)):
                    for action, count in list(counts.items()):
                        family.add_metric([*labels, action], count)
                disconnects.add_metric(labels, tally.disconnects)
        yield from (messages, errors, round_trips, answers, timeouts, expired, disconnects)
        yield handshakes
        if self.metrics.station_labels:
            yield stations


class _StateCollector(Collector):
    """States read from the nodes at scrape time (nothing on the hot path)."""

    def __init__(self, metrics: EngineMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        metrics = self.metrics
        connected = GaugeMetricFamily(
            "ocpp_nodes_stations_connected",
            "Open OCPP connections: stations on a CSMS node, 0 or 1 for a CS node",
            labels=["node", "version"],
        )
        outstanding = GaugeMetricFamily(
            "ocpp_nodes_calls_outstanding",
            "Our CALLs on the wire waiting for their answer",
            labels=["node"],
        )
        queued = GaugeMetricFamily(
            "ocpp_nodes_calls_queued",
            "Our CALLs waiting behind the outstanding one of their connection",
            labels=["node"],
        )
        offline = GaugeMetricFamily(
            "ocpp_nodes_offline_queue",
            "Requests a CS node keeps to send when it is connected again",
            labels=["node"],
        )
        up = GaugeMetricFamily(
            "ocpp_nodes_node_up",
            "1 when the node is up (see /health), 0 when it is down",
            labels=["node", "type"],
        )
        info = GaugeMetricFamily(
            "ocpp_nodes_node_info", "Each node's type and name", labels=["node", "type", "name"]
        )
        shims = GaugeMetricFamily(
            "ocpp_nodes_shims_connected", "Node-RED shims connected to this engine"
        )
        station = GaugeMetricFamily(
            "ocpp_nodes_station_connected",
            "1 per connected station (only with stationLabels: true)",
            labels=["node", "station", "version"],
        )
        server = metrics.server
        shims.add_metric([], sum(1 for c in server.connections if c.greeted) if server else 0)
        for node_id, node, status in metrics._nodes():
            links = _links_of(node)
            counts = dict.fromkeys((v.name for v in getattr(node, "versions", ())), 0)
            waiting = sending = 0
            for link in links:
                counts[link.version.name] = counts.get(link.version.name, 0) + 1
                calls = getattr(getattr(link, "connection", None), "calls", None)
                if calls is not None:
                    sending += calls.outstanding is not None
                    waiting += len(calls.queued)
                else:
                    for call in link.pending_calls():
                        sending += call.sent
                        waiting += not call.sent
                if metrics.station_labels:
                    station.add_metric([node_id, link.cb_id, link.version.name], 1)
            for version, count in counts.items():
                connected.add_metric([node_id, version], count)
            outstanding.add_metric([node_id], sending)
            queued.add_metric([node_id], waiting)
            if node.type_name == "CS":
                offline.add_metric([node_id], _offline_size(node))
            up.add_metric([node_id, node.type_name], 0 if node_problem(node, status) else 1)
            info.add_metric([node_id, node.type_name, str(node.config.get("name") or "")], 1)
        yield from (connected, outstanding, queued, offline, up, info, shims)
        if metrics.station_labels:
            yield station


def _links_of(node: OcppNode) -> list[Any]:
    stations = getattr(node, "stations", None)
    if isinstance(stations, dict):
        return list(stations.values())
    link = getattr(node, "link", None)
    return [] if link is None else [link]


def _offline_size(node: Any) -> int:
    try:
        stored = int(node.store.count(node.cb_id))
    except Exception:  # a closed store (node stopping) counts nothing
        stored = 0
    return stored + len(getattr(node, "_waiting", ()))


def parse_address(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``"PORT"`` -> ``(host, port)``; raises ``ValueError``."""
    host, _, port = text.rpartition(":")
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"{port} is not a TCP port number")
    return (host.strip("[]") or DEFAULT_HOST), number
