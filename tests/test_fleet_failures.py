"""Fleet mode's failures (issue 24, item 3), each with real parts: Mosquitto, HAProxy,
``ocpp-nodes gateway`` processes, real Node-RED runtimes (tests/nodered.py) and
stations over real websockets (tests/fleetkit.py ``FleetStation``: raw frames in
all three versions, and the Python ``ocpp`` package's ``ChargePoint``), each
reconnecting with its own back-off and retrying transaction messages as OCPP
2.0.1 E13 asks.

The flow (``fleet_flow``) answers the stations' requests (BootNotification,
Heartbeat, StatusNotification, TransactionEvent), keeps in a global what a test
reads through ``GET /t/state`` (connection events per cbId, the CSMS node's
status, the TransactionEvents it saw, the answers to a fan-out of requests),
and ``POST /t/in/fan`` sends one request to each of many stations.

The failures:

a. ``kill -9`` of one of three gateways behind HAProxy holding 3,000 stations:
   its stations are connected again through the others within their back-off
   plus 10 s, then a request to each of the 3,000 is answered.
b. ``kill -9`` of one of two Node-RED instances of one group under load: the
   other carries on; transaction messages in flight at the dead one are
   answered InternalError by the gateway and retried by the station: none lost.
c. Broker restart (graceful, then ``kill -9``): no station is disconnected; its
   CALLs meanwhile are answered InternalError at once and retried; the flow's
   requests end with done(err) at once; afterwards everything works again.
d. A request to a station that just disconnected, and to one whose gateway was
   killed (after the gateway's will), ends with done(err) at once.
e. One cbId on two gateways: the newest wins (the older closed with 1000
   "replaced by a newer connection"), or the second is refused 409 with
   ``duplicate_cbid: "reject"``; a station that moved from A to B stays online
   when A notices its dead socket later.
f. A gateway stopped gracefully (a rolling restart): each of its stations is
   marked offline, it disconnects from the broker cleanly (no will), and its
   stations come back through the other gateway.

Measured numbers are printed (``-s``) and written to
test-artifacts/fleet-failures.json.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from contextlib import suppress
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import websockets

from ocpp_nodes.transport.passwords import make_hash
from tests.fleetkit import (
    CallOutcome,
    FleetStation,
    GatewayProcess,
    MakeHAProxy,
    Mosquitto,
    StationPool,
    TcpForwarder,
    call_until_answered,
    first_message,
    kill_node_red,
)
from tests.flowkit import Flow, caught, connect_station, http_api, marker, node, online, recorder
from tests.flowkit import request as flow_request
from tests.nodered import ARTIFACTS, NodeRed, proc_alive, running_node_red

pytestmark = [pytest.mark.nodered, pytest.mark.asyncio]

TAB = "ff"
GROUP = "fleet"
PASSWORD = "fleet-failures-password"
_node = partial(node, tab=TAB)

#: prefix of the stations whose traffic is only counted (not recorded one by one)
BULK = "P"

_STATE = (
    "const s = global.get('fs')\n"
    "  || {online: {}, onlines: {}, fan: {ok: 0, err: []}, tx: {}, status: ''};\n"
)

STATE_JS = _STATE + (
    "if (msg.status && msg.status.source) { s.status = msg.status.text || ''; }\n"
    "else if (typeof msg.customData === 'string' && msg.customData.startsWith('fan-')) {\n"
    "  if (msg.error) s.fan.err.push(msg.error.message); else s.fan.ok++;\n"
    "  s.fan.last = Date.now();\n"
    "} else if (msg.ocpp && msg.ocpp.websocket) {\n"
    "  const up = msg.ocpp.websocket === 'ONLINE';\n"
    "  s.online[msg.ocpp.cbId] = up;\n"
    "  if (up) s.onlines[msg.ocpp.cbId] = (s.onlines[msg.ocpp.cbId] || 0) + 1;\n"
    "} else if (msg.topic && msg.topic.endsWith('/Request')\n"
    "           && msg.ocpp.command === 'TransactionEvent') {\n"
    "  const key = msg.ocpp.cbId + ':' + msg.payload.data.seqNo;\n"
    "  s.tx[key] = (s.tx[key] || 0) + 1;\n"
    "}\n"
    "global.set('fs', s);\n"
    "return null;\n"
)

#: what reaches the recorder: not the bulk stations' traffic
FILTER_JS = (
    "const cb = (msg.ocpp && msg.ocpp.cbId) || '';\n"
    f"if (cb.startsWith('{BULK}')) return null;\n"
    "if (typeof msg.customData === 'string' && msg.customData.startsWith('fan-')) return null;\n"
    "return msg;\n"
)

ANSWER_JS = (
    "if (!msg.topic || !msg.topic.endsWith('/Request')) return null;\n"
    "const now = new Date().toISOString();\n"
    "const command = msg.ocpp.command;\n"
    "let data;\n"
    "if (command === 'BootNotification') data = {currentTime: now, interval: 300,"
    " status: 'Accepted'};\n"
    "else if (command === 'Heartbeat') data = {currentTime: now};\n"
    "else if (command === 'TransactionEvent' && global.get('hold')) {\n"
    "  const s = global.get('fs') || {};\n"
    "  s.held = (s.held || 0) + 1;  // left unanswered: in flight here\n"
    "  return null;\n"
    "}\n"
    "else if (command === 'TransactionEvent' || command === 'StatusNotification') data = {};\n"
    "else return null;\n"
    "msg.payload = {msgType: 3, data: data};\n"
    "return msg;\n"
)

FAN_JS = (
    _STATE + "s.fan = {ok: 0, err: [], start: Date.now()};\n"
    "global.set('fs', s);\n"
    "const p = msg.payload;\n"
    "return [p.ids.map(id => ({payload: {command: p.command, data: p.data, cbId: id},"
    " customData: 'fan-' + id}))];\n"
)

STATE_API_JS = (
    _STATE + "const q = msg.req.query || {};\n"
    "const up = Object.keys(s.online).filter(k => s.online[k]);\n"
    "msg.payload = {status: s.status, online: up.length, held: s.held || 0,\n"
    "  onlines: q.onlines ? s.onlines : undefined, tx: q.tx ? s.tx : undefined,\n"
    "  fan: {ok: s.fan.ok, errors: s.fan.err.length, some: s.fan.err.slice(0, 5),\n"
    "        start: s.fan.start, last: s.fan.last}};\n"
    "return msg;\n"
)


def fleet_flow(broker: Mosquitto, auths: dict[str, str], message_timeout: float = 10) -> list[Any]:
    return [
        {"id": TAB, "type": "tab", "label": "fleet failures"},
        _node(
            "csms",
            "CSMS",
            [["answer", "state", "filter"], [], []],
            mode="fleet",
            fleet_broker=broker.url,
            fleet_group=GROUP,
            port="",
            path="",
            ocpp_versions=["2.0.1", "1.6", "2.1"],
            connection_events=True,
            message_timeout=message_timeout,
            credentials={
                "basic_auths": json.dumps(auths),
                "fleet_username": broker.username,
                "fleet_password": broker.password,
            },
        ),
        _node("answer", "function", [["csms"]], func=ANSWER_JS, outputs=1),
        _node("state", "function", [[]], func=STATE_JS, outputs=1),
        _node("filter", "function", [["rec.csms"]], func=FILTER_JS, outputs=1),
        recorder("rec.csms", TAB, "csms"),
        _node("fan", "function", [["csms"]], func=FAN_JS, outputs=1),
        _node("hold", "function", [[]], func="global.set('hold', true);\nreturn null;\n"),
        _node("catch", "catch", [["rec.catch", "state"]], scope=["csms"], uncaught=False),
        recorder("rec.catch", TAB, "catch"),
        _node("status", "status", [["state"]], scope=["csms"]),
        _node("state.in", "http in", [["state.fn"]], url="/t/state", method="get", upload=False),
        _node("state.fn", "function", [["state.out"]], func=STATE_API_JS, outputs=1),
        _node("state.out", "http response", []),
        *http_api(TAB, {"csms": "csms", "fan": "fan", "hold": "hold"}),
    ]


# -- reading the flow's state ----------------------------------------------------------


async def state(runtime: NodeRed, **query: int) -> dict[str, Any]:
    path = "/t/state" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    status, body = await asyncio.to_thread(runtime.wait_for_endpoint, "GET", path)
    assert status == 200 and isinstance(body, dict), (status, body)
    return body


async def wait_state(
    runtime: NodeRed, check: Any, timeout: float, what: str, **query: int
) -> dict[str, Any]:
    """Poll ``GET /t/state`` until ``check(state)`` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        body = await state(runtime, **query)
        if check(body):
            return body
        if loop.time() >= deadline:
            summary = {k: v for k, v in body.items() if k not in ("onlines", "tx")}
            raise TimeoutError(f"{what}: not within {timeout}s; flow state {summary}")
        await asyncio.sleep(0.1)


def online_record(cb_id: str, record: dict[str, Any]) -> bool:
    return online(record) and record["ocpp"]["cbId"] == cb_id


def connected_status(count: int) -> Any:
    return lambda body: body["status"].startswith(f"{count} connected")


# -- the broker as a consumer sees it ----------------------------------------------------


async def retained(broker: Mosquitto, topic: str, timeout: float = 15.0) -> bytes:
    """The retained (non-empty) message on ``topic``; waits until there is one."""
    return await first_message(broker, topic, timeout=timeout)


async def presences(broker: Mosquitto, count: int, timeout: float = 15.0) -> dict[str, Any]:
    """Every station's retained presence record (waits until ``count`` are there)."""
    found: dict[str, Any] = {}
    prefix = f"ocpp/{GROUP}/presence/"
    async with aiomqtt.Client(**broker.client_args(), protocol=aiomqtt.ProtocolVersion.V5) as mqtt:
        await mqtt.subscribe(prefix + "+", qos=1)
        async with asyncio.timeout(timeout):
            async for message in mqtt.messages:
                if isinstance(message.payload, bytes | bytearray) and message.payload:
                    found[str(message.topic)[len(prefix) :]] = json.loads(message.payload)
                if len(found) >= count:
                    return found
    raise AssertionError("unreachable")


async def offline_reasons(
    broker: Mosquitto, count: int, held: set[str], ready: asyncio.Event, timeout: float = 30.0
) -> dict[str, str]:
    """The reason of each offline record of a station of ``held`` published from now
    on (``ready`` is set once the ``count`` retained records came, i.e. subscribed)."""
    prefix = f"ocpp/{GROUP}/presence/"
    seen = 0
    reasons: dict[str, str] = {}
    async with aiomqtt.Client(**broker.client_args(), protocol=aiomqtt.ProtocolVersion.V5) as mqtt:
        await mqtt.subscribe(prefix + "+", qos=1)
        async with asyncio.timeout(timeout):
            async for message in mqtt.messages:
                seen += 1
                if seen >= count:
                    ready.set()
                record = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                cb_id = str(message.topic)[len(prefix) :]
                if not message.retain and not record["online"] and cb_id in held:
                    reasons[cb_id] = record.get("reason", "")
                    if len(reasons) == len(held):
                        return reasons
    raise AssertionError("unreachable")


async def held_by(broker: Mosquitto, count: int, gateway_id: str) -> set[str]:
    """The stations ``gateway_id`` holds, once the broker has all ``count`` online."""
    where = await presences(broker, count)
    assert all(record["online"] for record in where.values()), "not all online"
    return {cb_id for cb_id, record in where.items() if record["gateway"] == gateway_id}


async def connected_again(pool: StationPool, held: set[str], timeout: float) -> None:
    """Wait until each station of ``held`` lost its connection and has a new one."""
    await until_true(
        lambda: all(pool.by_id[cb].outages and pool.by_id[cb].outages[-1].took for cb in held),
        timeout,
        "the gateway's stations connected again",
    )


def all_back(count: int, held: set[str]) -> Any:
    """A ``wait_state`` check: ``count`` online at the node, ``held`` on a new connection."""

    def check(body: dict[str, Any]) -> bool:
        onlines = body["onlines"]
        return body["online"] == count and all(onlines.get(cb, 0) >= 2 for cb in held)

    return check


async def wait_gateway_gone(broker: Mosquitto, gateway_id: str, timeout: float = 10.0) -> float:
    """Wait for a gateway's will (its record says offline); returns the loop time."""
    await first_message(
        broker,
        f"ocpp/{GROUP}/gateway/{gateway_id}",
        lambda payload: bool(payload) and json.loads(payload).get("online") is False,
        timeout,
    )
    return asyncio.get_running_loop().time()


# -- the parts -------------------------------------------------------------------------


async def deploy_fleet(
    runtime: NodeRed, broker: Mosquitto, auths: dict[str, str], message_timeout: float = 10
) -> None:
    """Deploy ``fleet_flow`` and return once the gateways can read its last login."""
    await asyncio.to_thread(runtime.deploy, fleet_flow(broker, auths, message_timeout))
    await asyncio.to_thread(runtime.wait_for_endpoint, "GET", "/t/state")
    await retained(broker, f"ocpp/{GROUP}/auth/{list(auths)[-1]}")


def hashed(cb_ids: list[str], password: str = PASSWORD) -> dict[str, str]:
    """Cheap salted hashes (1,000 rounds) for many stations' CS Auth entries."""
    return {cb_id: make_hash(password, "pbkdf2-sha256", cost=1000) for cb_id in cb_ids}


async def start_gateways(
    directory: Path, broker: Mosquitto, ids: list[str], **options: Any
) -> list[GatewayProcess]:
    gateways = [GatewayProcess(directory, broker, gid, GROUP, **options) for gid in ids]
    await start_all(gateways)
    return gateways


async def start_all(gateways: list[GatewayProcess]) -> None:
    """Start them together; if one does not start, none is left running."""
    outcomes = await asyncio.gather(
        *(asyncio.to_thread(gateway.start) for gateway in gateways), return_exceptions=True
    )
    failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if failed:  # every start has ended (started or not): stop those that did
        for gateway in gateways:
            gateway.stop()
        raise failed[0]


def stop_gateways(gateways: list[GatewayProcess], test_name: str) -> None:
    for gateway in gateways:
        gateway.stop()
        gateway.save_log(test_name)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


MEASURED: dict[str, Any] = {}


def report(name: str, numbers: dict[str, Any]) -> None:
    """Keep measured numbers (printed, and in test-artifacts/fleet-failures.json)."""
    MEASURED[name] = numbers
    print(f"\n{name}: {json.dumps(numbers)}")
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "fleet-failures.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known[name] = numbers
    path.write_text(json.dumps(known, indent=2) + "\n")


# -- a. kill -9 of one of three gateways holding 3,000 stations --------------------------

STATIONS = 3000
PACKAGE_STATIONS = 5
VERSIONS = ("1.6", "2.0.1", "2.1")


async def test_a_gateway_killed_its_stations_come_back_through_the_others(
    mosquitto: Mosquitto,
    nodered: NodeRed,
    make_haproxy: MakeHAProxy,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    ids = [f"{BULK}{i:04d}" for i in range(STATIONS - PACKAGE_STATIONS)]
    ids += [f"{BULK}K{i}" for i in range(PACKAGE_STATIONS)]
    auths = hashed(ids)
    await deploy_fleet(nodered, mosquitto, auths, message_timeout=30)
    gateways = await start_gateways(tmp_path / "gw", mosquitto, ["g0", "g1", "g2"])
    try:
        proxy = make_haproxy([gateway.port for gateway in gateways])
        url = f"ws://127.0.0.1:{proxy.port}/ocpp"
        stations = [
            FleetStation(
                url,
                cb_id,
                PASSWORD,
                "2.0.1" if index >= STATIONS - PACKAGE_STATIONS else VERSIONS[index % 3],
                minimum=1.0,
                random_range=2.0,
                package=index >= STATIONS - PACKAGE_STATIONS,
            )
            for index, cb_id in enumerate(ids)
        ]
        pool = StationPool(stations)
        pool.start()
        try:
            await run_gateway_kill(pool, mosquitto, nodered, gateways, proxy, ids)
        finally:
            await pool.stop()
    finally:
        stop_gateways(gateways, request.node.name)


async def run_gateway_kill(
    pool: StationPool,
    broker: Mosquitto,
    runtime: NodeRed,
    gateways: list[GatewayProcess],
    proxy: Any,
    ids: list[str],
) -> None:
    loop = asyncio.get_running_loop()
    connect_took = await pool.wait_connected(120)
    await wait_state(runtime, connected_status(STATIONS), 60, "all stations at the CSMS node")
    where = await presences(broker, STATIONS)
    held = await held_by(broker, STATIONS, "g0")
    spread = {gid: sum(r["gateway"] == gid for r in where.values()) for gid in ("g0", "g1", "g2")}

    killed_at = loop.time()
    gateways[0].kill()
    # every station of g0 lost its connection and came back through g1 or g2
    await connected_again(pool, held, 60)
    back_at = loop.time()
    moved = [pool.by_id[cb] for cb in held]
    others = [s for s in pool.stations if s.cb_id not in held]
    assert not any(s.outages for s in others), "a station of another gateway was disconnected"
    outages = [s.outages[-1] for s in moved]
    assert all(o.closed_at >= killed_at for o in outages)
    late = [
        (s.cb_id, o.took, o.waited)
        for s, o in zip(moved, outages, strict=True)
        if (o.took or 0) > o.waited + 10
    ]
    assert not late, f"connected again later than back-off + 10 s: {late[:5]}"

    # the CSMS node has every station on its new connection
    node_view = await wait_state(
        runtime, all_back(STATIONS, held), 60, "the CSMS node sees them again", onlines=1
    )
    assert node_view["status"].startswith(f"{STATIONS} connected"), node_view["status"]
    node_back_at = loop.time()
    after = await presences(broker, STATIONS)
    assert not [cb for cb, r in after.items() if not r["online"] or r["gateway"] == "g0"]

    # a request from the flow to each of the 3,000 is answered
    fan_started = loop.time()
    await runtime_send(
        runtime, "fan", {"payload": {"ids": ids, "command": "ClearCache", "data": {}}}
    )
    fan = await wait_state(
        runtime,
        lambda body: body["fan"]["ok"] + body["fan"]["errors"] >= STATIONS,
        120,
        "answers to the fan-out",
    )
    fan_took = loop.time() - fan_started
    assert fan["fan"]["errors"] == 0, fan["fan"]
    assert fan["fan"]["ok"] == STATIONS
    assert all("ClearCache" in s.received for s in pool.stations)

    took = [o.took or 0.0 for o in outages]
    beyond = [(o.took or 0.0) - o.waited for o in outages]
    report(
        "a_gateway_kill",
        {
            "stations": STATIONS,
            "per_gateway_before": spread,
            "initial_connect_s": round(connect_took, 2),
            "moved_stations": len(held),
            "reconnect_s_max": round(max(took), 2),
            "reconnect_s_p50": round(statistics.median(took), 2),
            "beyond_backoff_s_max": round(max(beyond), 2),
            "beyond_backoff_s_p50": round(statistics.median(beyond), 2),
            "all_back_at_stations_s": round(back_at - killed_at, 2),
            "all_back_at_csms_node_s": round(node_back_at - killed_at, 2),
            "fan_out_answered": fan["fan"]["ok"],
            "fan_out_errors": fan["fan"]["errors"],
            "fan_out_s_node": round((fan["fan"]["last"] - fan["fan"]["start"]) / 1000, 2),
            "fan_out_s_test": round(fan_took, 2),
            "haproxy_states": proxy.server_states(),
        },
    )


async def runtime_send(runtime: NodeRed, name: str, msg: dict[str, Any]) -> None:
    await Flow(runtime).asend(name, msg)


async def until_true(probe: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not probe():
        if loop.time() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.05)


# -- transaction load: every TransactionEvent retried until answered (E13) ---------------


def transaction_event(cb_id: str, seq_no: int) -> dict[str, Any]:
    return {
        "eventType": "Started" if seq_no == 0 else "Updated",
        "timestamp": now_iso(),
        "triggerReason": "CablePluggedIn" if seq_no == 0 else "MeterValuePeriodic",
        "seqNo": seq_no,
        "transactionInfo": {"transactionId": f"tx-{cb_id}"},
    }


class TransactionLoad:
    """Each station sends TransactionEvents one after the other (``pace`` s apart),
    each again after a CALLERROR, a timeout (``timeout``) or a lost connection until
    a CALLRESULT comes: :attr:`answered` (cbId -> [(seqNo, loop time)]); a message
    not answered within ``give_up`` s counts in :attr:`lost`."""

    def __init__(
        self,
        stations: list[FleetStation],
        pace: float = 0.05,
        timeout: float = 10.0,
        retry_after: float = 0.2,
        give_up: float = 60.0,
    ) -> None:
        self.stations = stations
        self.pace, self.timeout, self.retry_after, self.give_up = (
            pace,
            timeout,
            retry_after,
            give_up,
        )
        self.answered: dict[str, list[tuple[int, float]]] = {s.cb_id: [] for s in stations}
        self.outcomes: dict[str, list[CallOutcome]] = {s.cb_id: [] for s in stations}
        self.lost: list[tuple[str, int]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._run(s)) for s in self.stations]

    async def _run(self, station: FleetStation) -> None:
        loop = asyncio.get_running_loop()
        seq_no = 0
        while not self._stop.is_set():
            try:
                await call_until_answered(
                    station,
                    "TransactionEvent",
                    transaction_event(station.cb_id, seq_no),
                    timeout=self.timeout,
                    retry_after=self.retry_after,
                    deadline=loop.time() + self.give_up,
                    seen=self.outcomes[station.cb_id],
                )
            except TimeoutError:
                self.lost.append((station.cb_id, seq_no))
                return
            self.answered[station.cb_id].append((seq_no, loop.time()))
            seq_no += 1
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.pace)

    def answered_after(self, at: float) -> int:
        """How many stations have had at least one answer after loop time ``at``."""
        return sum(any(t > at for _, t in done) for done in self.answered.values())

    def errors(self, since: float = 0.0, until: float = float("inf")) -> list[CallOutcome]:
        return [
            o
            for outcomes in self.outcomes.values()
            for o in outcomes
            if o.kind != "result" and since <= o.at <= until
        ]

    def stations_with_errors(self, since: float) -> int:
        return sum(
            any(o.kind != "result" and o.at >= since for o in outcomes)
            for outcomes in self.outcomes.values()
        )

    async def finish(self, timeout: float = 90.0) -> None:
        """Stop after each station's message in hand is answered."""
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), timeout)

    def total(self) -> int:
        return sum(len(done) for done in self.answered.values())


async def wait_answers_after(load: TransactionLoad, at: float, timeout: float, what: str) -> None:
    await until_true(lambda: load.answered_after(at) == len(load.stations), timeout, what)


def tx_stations(url: str, count: int, package: int, prefix: str) -> list[FleetStation]:
    stations = [FleetStation(url, f"{prefix}{i:02d}", PASSWORD) for i in range(count)]
    stations += [FleetStation(url, f"{prefix}K{i}", PASSWORD, package=True) for i in range(package)]
    return stations


# -- b. kill -9 of one of two Node-RED instances under load -------------------------------


async def test_b_node_red_killed_the_other_carries_on_and_no_transaction_message_is_lost(
    mosquitto: Mosquitto,
    nodered: NodeRed,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    loop = asyncio.get_running_loop()
    stations_n, package_n = 20, 2
    ids = [f"{BULK}B{i:02d}" for i in range(stations_n)] + [
        f"{BULK}BK{i}" for i in range(package_n)
    ]
    auths = hashed(ids)
    with running_node_red(tmp_path / "nr2", f"{request.node.name}.nr2") as second:
        first = nodered
        await asyncio.gather(*(deploy_fleet(nr, mosquitto, auths) for nr in (first, second)))
        # the gateway answers InternalError for a CALL the CSMS leaves unanswered 3 s
        gateways = await start_gateways(
            tmp_path / "gw", mosquitto, ["gb"], settings={"timeouts": {"answer": 3}}
        )
        stations = tx_stations(gateways[0].url, stations_n, package_n, f"{BULK}B")
        pool = StationPool(stations)
        pool.start()
        load = TransactionLoad(stations)
        try:
            await pool.wait_connected(30)
            for runtime in (first, second):
                await wait_state(runtime, connected_status(len(ids)), 20, "stations at each node")
            load.start()
            # both instances take a share of the stations' CALLs
            for runtime in (first, second):
                await wait_state(runtime, lambda b: len(b["tx"]) >= 20, 20, "load on both", tx=1)
            # the first instance stops answering TransactionEvents: what it gets now
            # is in flight there when it dies
            held_from = loop.time()
            await runtime_send(first, "hold", {"payload": True})
            held = await wait_state(first, lambda b: b["held"] >= 3, 10, "held at the first")
            daemons = kill_node_red(first)
            killed_at = loop.time()
            assert daemons, "no ocpp_nodes daemon found for the first Node-RED"
            await until_true(
                lambda: not any(proc_alive(pid) for pid in daemons), 15, "its daemon exits"
            )
            daemon_gone_s = loop.time() - killed_at
            # the other carries on: every station is answered again, some after a retry
            await wait_answers_after(load, killed_at + 5, 30, "every station answered again")
            fan_started = loop.time()
            await runtime_send(
                second, "fan", {"payload": {"ids": ids, "command": "ClearCache", "data": {}}}
            )
            fan = await wait_state(
                second, lambda b: b["fan"]["ok"] + b["fan"]["errors"] >= len(ids), 20, "fan-out"
            )
            fan_s = loop.time() - fan_started
            await load.finish()
        finally:
            await pool.stop()
            stop_gateways(gateways, request.node.name)
        seen = await state(second, tx=1)

    assert not load.lost, f"transaction messages never answered: {load.lost}"
    assert fan["fan"] == {**fan["fan"], "ok": len(ids), "errors": 0}, fan["fan"]
    assert not any(s.outages for s in stations), "a station lost its connection"
    # what was answered after the first instance was gone, the second one saw
    unseen = [
        (cb_id, seq_no)
        for cb_id, done in load.answered.items()
        for seq_no, at in done
        if at > killed_at + 1 and f"{cb_id}:{seq_no}" not in seen["tx"]
    ]
    assert not unseen, f"answered after the kill but not seen by the other instance: {unseen}"
    retried = load.errors(held_from)
    in_flight = [o for o in retried if o.kind == "error"]
    assert all(o.code == "InternalError" for o in in_flight), {o.code for o in in_flight}
    assert len(in_flight) >= held["held"], (len(in_flight), held["held"])
    report(
        "b_node_red_kill",
        {
            "stations": len(ids),
            "transaction_events_answered": load.total(),
            "lost": len(load.lost),
            "held_unanswered_at_the_dead_instance": held["held"],
            "in_flight_at_the_dead_instance_answered_internal_error": len(in_flight),
            "internal_error_after_s_max": round(max((o.latency for o in in_flight), default=0), 2),
            "timeouts_at_station": sum(o.kind == "timeout" for o in retried),
            "daemon_exit_after_node_red_kill_s": round(daemon_gone_s, 2),
            "fan_out_from_the_other_s": round(fan_s, 2),
            "station_disconnects": sum(len(s.outages) for s in stations),
        },
    )


# -- c. broker restart, graceful and kill -9 ----------------------------------------------


async def test_c_broker_restart_keeps_stations_connected_and_nothing_is_silently_dropped(
    mosquitto: Mosquitto,
    nodered: NodeRed,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    loop = asyncio.get_running_loop()
    ids = [f"{BULK}C{i:02d}" for i in range(10)] + [f"{BULK}CK0", "CNEW1", "CNEW2"]
    await deploy_fleet(nodered, mosquitto, hashed(ids))
    gateways = await start_gateways(tmp_path / "gw", mosquitto, ["gc"])
    url = gateways[0].url
    stations = tx_stations(url, 10, 1, f"{BULK}C")
    pool = StationPool(stations)
    pool.start()
    load = TransactionLoad(stations, pace=0.1)
    flow = Flow(nodered)
    numbers: dict[str, Any] = {}
    try:
        await pool.wait_connected(30)
        await wait_state(nodered, connected_status(len(stations)), 20, "stations at the node")
        load.start()
        await wait_answers_after(load, loop.time(), 20, "load running")
        for how in ("graceful", "kill9"):
            onlines = (await state(nodered, onlines=1))["onlines"]
            down_at = loop.time()
            if how == "graceful":
                await asyncio.to_thread(mosquitto.stop)
            else:
                await asyncio.to_thread(mosquitto.kill)
            numbers[how] = await while_the_broker_is_down(load, flow, nodered, url, down_at)
            up_at = loop.time()
            await asyncio.to_thread(mosquitto.start)
            await wait_state(nodered, connected_status(len(stations)), 30, "node reconnected")
            await wait_answers_after(load, up_at, 30, "every station answered again")
            numbers[how]["broker_down_s"] = round(up_at - down_at, 2)
            numbers[how]["served_again_after_broker_start_s"] = round(loop.time() - up_at, 2)
            # the flow saw a station go offline and come back (a will, or after a kill
            # -9 a stale retained record from the broker's last save, then the
            # gateway's records again)
            again = (await state(nodered, onlines=1))["onlines"]
            numbers[how]["stations_announced_online_again"] = sum(
                again[station.cb_id] > onlines[station.cb_id] for station in stations
            )
            # the flow reaches every station again, and a new station can log in
            await runtime_send(
                nodered, "fan", {"payload": {"ids": ids[:11], "command": "ClearCache", "data": {}}}
            )
            fan = await wait_state(
                nodered, lambda b: b["fan"]["ok"] + b["fan"]["errors"] >= 11, 20, "fan-out"
            )
            assert fan["fan"]["errors"] == 0, (how, fan["fan"])
            newcomer = "CNEW1" if how == "graceful" else "CNEW2"
            async with await connect_station(url, newcomer, PASSWORD):
                await flow.await_("csms", partial(online_record, newcomer))
        await load.finish()
    finally:
        await pool.stop()
        stop_gateways(gateways, request.node.name)

    assert not load.lost, f"transaction messages never answered: {load.lost}"
    assert not any(s.outages for s in stations), [s.outages for s in stations if s.outages]
    numbers["transaction_events_answered"] = load.total()
    numbers["lost"] = len(load.lost)
    numbers["station_disconnects"] = 0
    report("c_broker_restart", numbers)


async def while_the_broker_is_down(
    load: TransactionLoad, flow: Flow, runtime: NodeRed, url: str, down_at: float
) -> dict[str, Any]:
    """What stations and the flow see while the broker is away; returns the numbers."""
    loop = asyncio.get_running_loop()
    # the stations' CALLs are answered InternalError at once, and retried
    await until_true(
        lambda: load.stations_with_errors(down_at) == len(load.stations),
        15,
        "CALLERRORs while the broker is down",
    )
    errors = load.errors(down_at)
    assert {o.kind for o in errors} == {"error"}, {o.kind for o in errors}
    assert {o.code for o in errors} == {"InternalError"}, {o.code for o in errors}
    assert max(o.latency for o in errors) < 1.5, sorted(o.latency for o in errors)[-5:]
    # the node says so, and a request of the flow ends with done(err) at once: "broker
    # unreachable", or, when the broker published the gateway's will as it stopped
    # (Mosquitto does on a graceful stop), "not connected"
    seen = await wait_state(runtime, lambda b: "broker" in b["status"], 10, "the node's status")
    tag = marker("down")
    sent = loop.time()
    await flow_request(flow, "csms", "ClearCache", {}, tag, cbId=f"{BULK}C00")
    error = await caught(flow, "csms", tag)
    done_err_s = loop.time() - sent
    assert "broker" in error or "not connected" in error, error
    assert done_err_s < 3, done_err_s
    # a station that connects now is asked to come back later (503)
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect_station(url, "CNEW1", PASSWORD)
    assert refused.value.response.status_code == 503
    return {
        "station_call_errors": len(errors),
        "call_error_latency_s_max": round(max(o.latency for o in errors), 3),
        "flow_done_err_s": round(done_err_s, 3),
        "flow_error": error,
        "node_status": seen["status"],
        "flow_saw_stations_offline": seen["online"] < len(load.stations),
    }


# -- d. a request to a station connected nowhere ends with done(err) at once ---------------

AT_ONCE = 2.0  # seconds; the flow's call timeout is 10 s


async def test_d_a_request_to_a_station_gone_ends_with_done_err_at_once(
    mosquitto: Mosquitto,
    nodered: NodeRed,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    loop = asyncio.get_running_loop()
    ids = ["D1", "D2"]
    await deploy_fleet(nodered, mosquitto, hashed(ids))
    gateways = await start_gateways(tmp_path / "gw", mosquitto, ["gd1", "gd2"])
    flow = Flow(nodered)
    just_gone: list[float] = []
    errors: dict[str, str] = {}
    try:
        # a station that just disconnected: asked right after its socket closed
        for _ in range(20):
            after = len(await flow.arecords("csms"))
            ws = await connect_station(gateways[0].url, "D1", PASSWORD)
            await flow.await_("csms", partial(online_record, "D1"), after=after)
            tag = marker("just-gone")
            sent = loop.time()
            # the request and the close race: the node may send before it hears of it
            await asyncio.gather(
                ws.close(), flow_request(flow, "csms", "ClearCache", {}, tag, cbId="D1")
            )
            kind, error = await request_ended(flow, tag)
            just_gone.append(loop.time() - sent)
            errors[kind] = error
        assert max(just_gone) < AT_ONCE, just_gone

        # a station whose gateway was killed: once the gateway's will is out
        ws = await connect_station(gateways[1].url, "D2", PASSWORD)
        await flow.await_("csms", partial(online_record, "D2"))
        killed_at = loop.time()
        gone = asyncio.ensure_future(wait_gateway_gone(mosquitto, "gd2"))
        await asyncio.sleep(0)  # subscribed before the kill is not needed: the will is retained
        gateways[1].kill()
        will_at = await gone
        tag = marker("gateway-gone")
        sent = loop.time()
        await flow_request(flow, "csms", "ClearCache", {}, tag, cbId="D2")
        error = await caught(flow, "csms", tag)
        gateway_gone_s = loop.time() - sent
        assert "not connected" in error, error
        assert gateway_gone_s < AT_ONCE, gateway_gone_s
        offline = await flow.await_(
            "csms", lambda r: r["topic"] == "D2/Connection" and not online(r)
        )
        with suppress(websockets.ConnectionClosed):
            await ws.close()
    finally:
        stop_gateways(gateways, request.node.name)
    report(
        "d_not_connected",
        {
            "just_disconnected_done_err_s_max": round(max(just_gone), 3),
            "just_disconnected_errors": errors,
            "gateway_killed_will_after_s": round(will_at - killed_at, 3),
            "gateway_killed_done_err_s": round(gateway_gone_s, 3),
            "offline_reason": (offline.get("payload") or {}).get("reason"),
        },
    )


async def request_ended(flow: Flow, tag: str, timeout: float = 10.0) -> tuple[str, str]:
    """How the flow's request ``tag`` to a station that was closing ended: ``("not
    connected", err)`` (done(err) before sending), ``("in flight", err)`` (done(err):
    sent, then the station's close became known), or ``("callerror", description)``
    (the gateway found the socket closing and answered GenericError)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for record in await flow.arecords():
            if record.get("customData") != tag:
                continue
            if record["tag"] == "catch":
                error = str((record.get("error") or {}).get("message"))
                if "not connected" in error:
                    return "not connected", error
                assert "not answered: closed" in error, error
                return "in flight", error
            if record["tag"] == "csms" and str(record.get("topic")).endswith("/Error"):
                return "callerror", json.dumps(record["payload"])
            raise AssertionError(f"the request to a closing station was answered: {record}")
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the request {tag} did not end within {timeout}s")


# -- e. one cbId on two gateways at once --------------------------------------------------


async def answer_calls(ws: Any, answered: list[str]) -> None:
    """A raw station: answer every CALL of the CSMS with {"status": "Accepted"}."""
    with suppress(websockets.ConnectionClosed):
        async for raw in ws:
            frame = json.loads(raw)
            if frame[0] == 2:
                answered.append(frame[2])
                await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))


async def flow_call(flow: Flow, cb_id: str) -> dict[str, Any]:
    """A ClearCache from the flow to ``cb_id``; its response record."""
    tag = marker(f"call-{cb_id}")
    await flow_request(flow, "csms", "ClearCache", {}, tag, cbId=cb_id)
    return await flow.await_("csms", lambda r: r.get("customData") == tag, timeout=12)


def connection_events(records: list[dict[str, Any]], cb_id: str) -> list[str]:
    return [
        (r.get("ocpp") or {}).get("websocket", "")
        for r in records
        if r.get("topic") == f"{cb_id}/Connection"
    ]


async def test_e_one_cbid_on_two_gateways_one_wins(
    mosquitto: Mosquitto,
    nodered: NodeRed,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    loop = asyncio.get_running_loop()
    ids = ["E1", "E2", "E3"]
    await deploy_fleet(nodered, mosquitto, hashed(ids))
    directory = tmp_path / "gw"
    newest = [
        GatewayProcess(directory, mosquitto, "ga", GROUP, log_level="DEBUG"),
        GatewayProcess(directory, mosquitto, "gb", GROUP),
    ]
    reject = [
        GatewayProcess(directory, mosquitto, gid, GROUP, settings={"duplicate_cbid": "reject"})
        for gid in ("gr1", "gr2")
    ]
    gateways = newest + reject
    await start_all(gateways)
    flow = Flow(nodered)
    forwarder = TcpForwarder(newest[0].port)
    await forwarder.start()
    numbers: dict[str, Any] = {}
    tasks: list[asyncio.Task[None]] = []
    try:
        # newest wins: the connection at ga is closed when the same cbId logs in at gb
        older = await connect_station(newest[0].url, "E1", PASSWORD)
        await flow.await_("csms", partial(online_record, "E1"))
        answered: list[str] = []
        started = loop.time()
        newer = await connect_station(newest[1].url, "E1", PASSWORD)
        tasks.append(asyncio.ensure_future(answer_calls(newer, answered)))
        await asyncio.wait_for(older.wait_closed(), 10)
        numbers["older_closed_after_s"] = round(loop.time() - started, 3)
        assert (older.close_code, older.close_reason) == (1000, "replaced by a newer connection")
        response = await flow_call(flow, "E1")
        assert response["payload"]["data"] == {"status": "Accepted"}, response
        assert answered == ["ClearCache"]
        records = await flow.arecords("csms")
        assert connection_events(records, "E1") == ["ONLINE", "ONLINE"], [
            (r["ocpp"], r["payload"]) for r in records if r.get("topic") == "E1/Connection"
        ]

        # reject: the second is refused 409, the first is kept and served
        first = await connect_station(reject[0].url, "E2", PASSWORD)
        tasks.append(asyncio.ensure_future(answer_calls(first, answered := [])))
        await flow.await_("csms", partial(online_record, "E2"))
        for gateway in reject:  # another gateway, and the same one again
            with pytest.raises(websockets.InvalidStatus) as refused:
                await connect_station(gateway.url, "E2", PASSWORD)
            assert refused.value.response.status_code == 409, gateway.gateway_id
        response = await flow_call(flow, "E2")
        assert response["payload"]["data"] == {"status": "Accepted"} and answered
        assert connection_events(await flow.arecords("csms"), "E2") == ["ONLINE"]

        # moved from ga to gb while its socket at ga is dead; ga notices later
        offset = newest[0].log_size()
        stale = await connect_station(f"ws://127.0.0.1:{forwarder.port}/ocpp", "E3", PASSWORD)
        await flow.await_("csms", partial(online_record, "E3"))
        at_ga = json.loads(await retained(mosquitto, f"ocpp/{GROUP}/presence/E3"))
        assert at_ga["gateway"] == "ga", at_ga
        forwarder.freeze()  # ga's socket of E3 now carries nothing either way
        before = len(await flow.arecords("csms"))
        moved_at = loop.time()
        moved = await connect_station(newest[1].url, "E3", PASSWORD)
        tasks.append(asyncio.ensure_future(answer_calls(moved, answered := [])))
        await flow.await_("csms", partial(online_record, "E3"), after=before)
        # ga lets go of its dead socket when it sees gb's record (gateway rule 5); its
        # closing handshake cannot pass the dead path: cut it
        forwarder.cut()
        await asyncio.to_thread(newest[0].wait_for_log, "E3 disconnected", offset)
        numbers["old_socket_ended_at_ga_after_move_s"] = round(loop.time() - moved_at, 3)
        noticed = loop.time()
        presence = json.loads(await retained(mosquitto, f"ocpp/{GROUP}/presence/E3"))
        assert presence["online"] and presence["gateway"] == "gb", presence
        # and when ga's offline record of its old connection comes last (ga noticed
        # before it heard of gb): gb publishes its own again, the node ignores it
        late = {"online": False, "gateway": "ga", "connection": at_ga["connection"],
                "since": now_iso(), "reason": "ping timeout"}  # fmt: skip
        topic = f"ocpp/{GROUP}/presence/E3"
        async with aiomqtt.Client(
            **mosquitto.client_args(), protocol=aiomqtt.ProtocolVersion.V5
        ) as mqtt:
            await mqtt.subscribe(topic, qos=1)
            await mqtt.publish(topic, json.dumps(late), qos=1, retain=True)
            overwritten = False
            async with asyncio.timeout(10):
                async for message in mqtt.messages:
                    record = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                    overwritten = overwritten or record == late
                    if overwritten and record["online"] and record["gateway"] == "gb":
                        break  # gb put its own record back
        numbers["own_record_restored_after_late_offline_s"] = round(loop.time() - noticed, 3)
        response = await flow_call(flow, "E3")
        assert response["payload"]["data"] == {"status": "Accepted"} and answered
        assert connection_events(await flow.arecords("csms"), "E3") == ["ONLINE", "ONLINE"]
        with suppress(Exception):
            await stale.close()
    finally:
        for task in tasks:
            task.cancel()
        await forwarder.stop()
        stop_gateways(gateways, request.node.name)
    report("e_duplicate_cbid", numbers)


# -- f. a graceful stop of a gateway (a rolling restart) -----------------------------------


async def test_f_a_gateway_stopped_gracefully_says_so_for_each_station(
    mosquitto: Mosquitto,
    nodered: NodeRed,
    make_haproxy: MakeHAProxy,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    loop = asyncio.get_running_loop()
    count = 300
    ids = [f"{BULK}F{i:03d}" for i in range(count)]
    await deploy_fleet(nodered, mosquitto, hashed(ids))
    gateways = await start_gateways(tmp_path / "gw", mosquitto, ["gf0", "gf1"])
    proxy = make_haproxy([gateway.port for gateway in gateways])
    url = f"ws://127.0.0.1:{proxy.port}/ocpp"
    pool = StationPool([FleetStation(url, cb_id, PASSWORD) for cb_id in ids])
    pool.start()
    try:
        await pool.wait_connected(60)
        await wait_state(nodered, connected_status(count), 30, "all stations at the node")
        held = await held_by(mosquitto, count, "gf0")
        subscribed = asyncio.Event()
        offline = asyncio.ensure_future(offline_reasons(mosquitto, count, held, subscribed))
        await asyncio.wait_for(subscribed.wait(), 10)
        stopped_at = loop.time()
        await asyncio.to_thread(gateways[0].stop)
        stop_s = loop.time() - stopped_at
        reasons = set((await offline).values())
        assert reasons == {"gateway gf0 stopped"}, reasons
        # its own record says it stopped (not its will), and so does each station's
        record = json.loads(await retained(mosquitto, f"ocpp/{GROUP}/gateway/gf0"))
        assert record["online"] is False and "since" in record, record
        await connected_again(pool, held, 30)
        await wait_state(nodered, all_back(count, held), 30, "the node sees them", onlines=1)
        after = await presences(mosquitto, count)
        assert not [cb for cb, r in after.items() if not r["online"] or r["gateway"] != "gf1"]
        took = [pool.by_id[cb].outages[-1].took or 0.0 for cb in held]
        codes = {pool.by_id[cb].outages[-1].code for cb in held}
    finally:
        await pool.stop()
        stop_gateways(gateways, request.node.name)
    assert "disconnected due to" not in mosquitto.log(), "the gateway did not disconnect cleanly"
    report(
        "f_gateway_graceful_stop",
        {
            "stations": count,
            "moved_stations": len(held),
            "gateway_stop_s": round(stop_s, 2),
            "close_codes": sorted(str(code) for code in codes),
            "reconnect_s_max": round(max(took), 2),
            "reconnect_s_p50": round(statistics.median(took), 2),
        },
    )
