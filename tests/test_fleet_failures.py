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

Measured numbers are printed (``-s``) and written to
test-artifacts/fleet-failures.json.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio
import websockets

from ocpp_nodes.transport.passwords import make_hash
from tests.common import OCPP201, auth_header
from tests.fleetkit import (
    CallOutcome,
    FleetStation,
    GatewayProcess,
    MakeHAProxy,
    Mosquitto,
    StationPool,
    TcpForwarder,
    call_until_answered,
    kill_node_red,
)
from tests.flowkit import Flow, caught, http_api, marker, node, online, recorder, request
from tests.nodered import ARTIFACTS, NodeRed, proc_alive, running_node_red

pytestmark = [pytest.mark.nodered, pytest.mark.asyncio]

TAB = "ff"
GROUP = "fleet"
PASSWORD = "fleet-failures-password"
_node = partial(node, tab=TAB)

#: prefix of the stations whose traffic is only counted (not recorded one by one)
BULK = "P"

_STATE = "const s = global.get('fs') || {online: {}, onlines: {}, fan: {ok: 0, err: []}, tx: {}, status: ''};\n"

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
    "else if (command === 'TransactionEvent' || command === 'StatusNotification') data = {};\n"
    "else return null;\n"
    "msg.payload = {msgType: 3, data: data};\n"
    "return msg;\n"
)

FAN_JS = (
    _STATE
    + "s.fan = {ok: 0, err: [], start: Date.now()};\n"
    "global.set('fs', s);\n"
    "const p = msg.payload;\n"
    "return [p.ids.map(id => ({payload: {command: p.command, data: p.data, cbId: id},"
    " customData: 'fan-' + id}))];\n"
)

STATE_API_JS = (
    _STATE
    + "const q = msg.req.query || {};\n"
    "const up = Object.keys(s.online).filter(k => s.online[k]);\n"
    "msg.payload = {status: s.status, online: up.length,\n"
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
        _node("catch", "catch", [["rec.catch", "state"]], scope=["csms"], uncaught=False),
        recorder("rec.catch", TAB, "catch"),
        _node("status", "status", [["state"]], scope=["csms"]),
        _node("state.in", "http in", [["state.fn"]], url="/t/state", method="get", upload=False),
        _node("state.fn", "function", [["state.out"]], func=STATE_API_JS, outputs=1),
        _node("state.out", "http response", []),
        *http_api(TAB, {"csms": "csms", "fan": "fan"}),
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


def connected_status(count: int) -> Any:
    return lambda body: body["status"].startswith(f"{count} connected")


# -- the broker as a consumer sees it ----------------------------------------------------


async def retained(broker: Mosquitto, topic: str, timeout: float = 15.0) -> bytes:
    """The retained (non-empty) message on ``topic``; waits until there is one."""
    async with aiomqtt.Client(**broker.client_args(), protocol=aiomqtt.ProtocolVersion.V5) as mqtt:
        await mqtt.subscribe(topic, qos=1)
        async with asyncio.timeout(timeout):
            async for message in mqtt.messages:
                if isinstance(message.payload, bytes | bytearray) and message.payload:
                    return bytes(message.payload)
    raise AssertionError("unreachable")


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


async def wait_gateway_gone(broker: Mosquitto, gateway_id: str, timeout: float = 10.0) -> float:
    """Wait for a gateway's will (its record says offline); returns the loop time."""
    topic = f"ocpp/{GROUP}/gateway/{gateway_id}"
    async with aiomqtt.Client(**broker.client_args(), protocol=aiomqtt.ProtocolVersion.V5) as mqtt:
        await mqtt.subscribe(topic, qos=1)
        async with asyncio.timeout(timeout):
            async for message in mqtt.messages:
                payload = message.payload
                if isinstance(payload, bytes | bytearray) and payload:
                    if json.loads(payload).get("online") is False:
                        return asyncio.get_running_loop().time()
    raise AssertionError("unreachable")


# -- the parts -------------------------------------------------------------------------


def hashed(cb_ids: list[str], password: str = PASSWORD) -> dict[str, str]:
    """Cheap salted hashes (1,000 rounds) for many stations' CS Auth entries."""
    return {cb_id: make_hash(password, "pbkdf2-sha256", cost=1000) for cb_id in cb_ids}


async def start_gateways(
    directory: Path, broker: Mosquitto, ids: list[str], **options: Any
) -> list[GatewayProcess]:
    gateways = [GatewayProcess(directory, broker, gid, GROUP, **options) for gid in ids]
    await asyncio.gather(*(asyncio.to_thread(gateway.start) for gateway in gateways))
    return gateways


def stop_gateways(gateways: list[GatewayProcess], test_name: str) -> None:
    for gateway in gateways:
        gateway.stop()
        gateway.save_log(test_name)


@pytest.fixture
def flow_runtime(nodered: NodeRed) -> NodeRed:
    return nodered


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
    await asyncio.to_thread(nodered.deploy, fleet_flow(mosquitto, auths, message_timeout=30))
    await asyncio.to_thread(nodered.wait_for_endpoint, "GET", "/t/state")
    await retained(mosquitto, f"ocpp/{GROUP}/auth/{ids[-1]}")
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
    held = {cb_id for cb_id, record in where.items() if record["gateway"] == "g0"}
    assert held and all(record["online"] for record in where.values()), "not all online"
    spread = {gid: sum(r["gateway"] == gid for r in where.values()) for gid in ("g0", "g1", "g2")}

    killed_at = loop.time()
    gateways[0].kill()
    # every station of g0 lost its connection and came back through g1 or g2
    await until_true(
        lambda: all(pool.by_id[cb].outages and pool.by_id[cb].outages[-1].took for cb in held),
        60,
        "the killed gateway's stations connected again",
    )
    back_at = loop.time()
    moved = [pool.by_id[cb] for cb in held]
    others = [s for s in pool.stations if s.cb_id not in held]
    assert not any(s.outages for s in others), "a station of another gateway was disconnected"
    outages = [s.outages[-1] for s in moved]
    assert all(o.closed_at >= killed_at for o in outages)
    late = [
        (s.cb_id, o.took, o.waited) for s, o in zip(moved, outages, strict=True)
        if (o.took or 0) > o.waited + 10
    ]
    assert not late, f"connected again later than back-off + 10 s: {late[:5]}"

    # the CSMS node has every station on its new connection
    def all_back(body: dict[str, Any]) -> bool:
        onlines = body["onlines"]
        return body["online"] == STATIONS and all(onlines.get(cb, 0) >= 2 for cb in held)

    node_view = await wait_state(runtime, all_back, 60, "the CSMS node sees them again", onlines=1)
    assert node_view["status"].startswith(f"{STATIONS} connected"), node_view["status"]
    node_back_at = loop.time()
    after = await presences(broker, STATIONS)
    assert not [cb for cb, r in after.items() if not r["online"] or r["gateway"] == "g0"]

    # a request from the flow to each of the 3,000 is answered
    fan_started = loop.time()
    await runtime_send(runtime, "fan", {"payload": {"ids": ids, "command": "ClearCache", "data": {}}})
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
