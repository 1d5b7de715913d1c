"""The engine's /metrics and /health through a real Node-RED (docs/operations.md).

One Node-RED with ``ocppNodes.metrics`` on a free port runs the module's
flow: CSMS node ``csms.m`` (OCPP 1.6 and 2.0.1) whose flow answers every
request, and an ``http in`` that puts a posted payload into it. Stations are
the Python ``ocpp`` package's ChargePoint (2.0.1) and plain websockets (1.6,
bad credentials, an invalid payload). Each test reads /metrics before and
after what it does and checks what moved.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import pytest
import websockets
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result
from prometheus_client.parser import text_string_to_metric_families

from tests.common import auth_header
from tests.flowkit import node
from tests.nodered import NodeRed, free_port, running_node_red, wait_until

pytestmark = pytest.mark.nodered

TAB = "metrics"
CSMS = "csms.m"
PASSWORD = "metrics-secret-pw"
STATIONS = ("MST201", "MST16", "MSTBAD", "MSTCS")
BOOT = {"reason": "PowerUp", "charging_station": {"model": "M", "vendor_name": "Tests"}}

ANSWERS = """
if (!msg.topic || !msg.topic.endsWith("/Request")) return null;
const now = new Date().toISOString();
const answers = {
  BootNotification: {currentTime: now, interval: 300, status: "Accepted"},
  Heartbeat: {currentTime: now},
};
msg.payload = {msgType: 3, data: answers[msg.payload.command] || {}};
return msg;
"""

_node = partial(node, tab=TAB)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _cs(node_id: str, cb_id: str, target: str, **extra: Any) -> dict[str, Any]:
    return _node(
        node_id,
        "CS",
        [[], []],
        cbId=cb_id,
        csms=target,
        auto_connect=True,
        outputs=2,
        ws_rt_minimum=1,
        ws_rt_repeat=0,
        ws_rt_rnd_range=0,
        credentials={"csms_pw": PASSWORD},
        **extra,
    )


def metrics_flow(csms_port: int, csms_extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    dead_port = free_port()  # nothing listens there: cs.off stays offline
    return [
        {"id": TAB, "type": "tab", "label": "metrics"},
        _node(
            CSMS,
            "CSMS",
            [["csms.answer"], []],
            name="site CSMS",
            port=str(csms_port),
            path="/ocpp",
            ocpp_versions=["ocpp2.0.1", "ocpp1.6"],
            outputs=2,
            credentials={"basic_auths": json.dumps(dict.fromkeys(STATIONS, PASSWORD))},
            **(csms_extra or {}),
        ),
        _node("csms.answer", "function", [[CSMS]], func=ANSWERS, outputs=1),
        _node("in.send", "http in", [["fn.send"]], url="/t/send", method="post"),
        _node(
            "fn.send",
            "function",
            [[CSMS], ["http.out"]],
            outputs=2,
            func="const body = msg.payload; msg.payload = 'sent';\nreturn [{payload: body}, msg];",
        ),
        _node("http.out", "http response"),
        _node("t.here", "target-csms", url=f"ws://127.0.0.1:{csms_port}/ocpp", name="here"),
        _node("t.dead", "target-csms", url=f"ws://127.0.0.1:{dead_port}/ocpp", name="dead"),
        # a CS node connected to csms.m, and one whose CSMS is down, keeping requests
        _cs("cs.m", "MSTCS", "t.here"),
        _cs("cs.off", "MSTOFF", "t.dead", offline_queue="all"),
        _node("in.offline", "http in", [["fn.offline"]], url="/t/offline", method="post"),
        _node(
            "fn.offline",
            "function",
            [["cs.off"], ["http.out"]],
            outputs=2,
            func="const body = msg.payload; msg.payload = 'sent';\nreturn [{payload: body}, msg];",
        ),
    ]


class Scraper:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except OSError:  # nothing listens (the engine is restarting)
            return 0, ""

    def text(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200, body
        return body

    def samples(self) -> Samples:
        out: Samples = {}
        for family in text_string_to_metric_families(self.text()):
            for sample in family.samples:
                out[sample.name, frozenset(sample.labels.items())] = sample.value
        return out

    def health(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/health")
        return status, json.loads(body) if status else {}


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    """The sum of the samples of ``metric`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == metric and wanted <= ls)


class Station201(ChargePoint):
    @on("Reset")
    def on_reset(self, type: str, **_: Any) -> Any:
        return call_result.Reset(status="Accepted")


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def node_red(tmp_path_factory: pytest.TempPathFactory, metrics_port: int) -> Iterator[NodeRed]:
    settings = {
        "ocppNodes": {
            "python": sys.executable,
            "metrics": {"port": metrics_port},
        }
    }
    with running_node_red(
        tmp_path_factory.mktemp("metrics"), "test_metrics_nodered", settings=settings
    ) as runtime:
        yield runtime


@pytest.fixture(scope="module")
def csms_port(node_red: NodeRed, metrics_port: int) -> int:
    port = free_port()
    node_red.deploy(metrics_flow(port))
    node_red.wait_for_endpoint("POST", "/t/send", {})  # routed (the empty request fails)
    scraper = Scraper(metrics_port)
    wait_until(
        lambda: (
            scraper.get("/metrics")[0] == 200
            and value(scraper.samples(), "ocpp_nodes_stations_connected", node="cs.m") == 1
        ),
        30,
        what="cs.m to be connected to csms.m",
    )
    return port


@pytest.fixture
def scraper(node_red: NodeRed, csms_port: int, metrics_port: int) -> Scraper:
    scraper = Scraper(metrics_port)
    wait_until(lambda: scraper.health()[0] == 200 or None, 30, what="/health to say 200")
    return scraper


@pytest.fixture
async def station(csms_port: int) -> AsyncIterator[Station201]:
    ws = await websockets.connect(
        f"ws://127.0.0.1:{csms_port}/ocpp/MST201",
        subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
        additional_headers=auth_header("MST201", PASSWORD),
    )
    cp = Station201("MST201", ws)
    task = asyncio.create_task(cp.start())
    try:
        yield cp
    finally:
        task.cancel()
        await ws.close()


async def until(probe: Any, what: str, timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await asyncio.to_thread(probe)
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_heartbeat_round_trip_moves_the_counters(
    scraper: Scraper, station: Station201
) -> None:
    before = scraper.samples()
    await station.call(call.BootNotification(**BOOT))
    for _ in range(70):  # more than one hop-time sample (the shim stamps 1 input in 64)
        await station.call(call.Heartbeat())
    after = await until(
        lambda: (
            (s := scraper.samples())
            and value(s, "ocpp_nodes_answer_duration_seconds_count", action="Heartbeat")
            >= value(before, "ocpp_nodes_answer_duration_seconds_count", action="Heartbeat") + 70
            and s
        ),
        "the Heartbeat answers to be counted",
    )

    def moved(metric: str, /, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, **labels)

    ours = {"node": CSMS, "version": "2.0.1"}
    assert (
        moved("ocpp_nodes_messages_total", **ours, direction="in", type="CALL", action="Heartbeat")
        == 70
    )
    assert (
        moved(
            "ocpp_nodes_messages_total",
            **ours,
            direction="out",
            type="CALLRESULT",
            action="Heartbeat",
        )
        == 70
    )
    assert (
        moved(
            "ocpp_nodes_messages_total",
            **ours,
            direction="in",
            type="CALL",
            action="BootNotification",
        )
        == 1
    )
    assert moved("ocpp_nodes_answer_duration_seconds_count", **ours, action="Heartbeat") == 70
    assert (
        moved("ocpp_nodes_answer_duration_seconds_bucket", **ours, action="Heartbeat", le="+Inf")
        == 70
    )
    assert moved("ocpp_nodes_answer_duration_seconds_sum", **ours, action="Heartbeat") > 0
    assert value(after, "ocpp_nodes_handshakes_total", node=CSMS, outcome="accepted") >= 1
    assert value(after, "ocpp_nodes_stations_connected", **ours) == 2  # MST201 and cs.m
    assert moved("ocpp_nodes_shim_hop_seconds_count") >= 1
    await until(  # measured every 0.5 s from the engine's start
        lambda: value(scraper.samples(), "ocpp_nodes_event_loop_lag_seconds_count") > 0,
        "the event loop's lag to be measured",
    )
    assert value(after, "ocpp_nodes_node_up", node=CSMS, type="CSMS") == 1
    assert value(after, "ocpp_nodes_node_info", node=CSMS, name="site CSMS") == 1


async def test_our_call_round_trip_is_a_histogram(
    node_red: NodeRed, scraper: Scraper, station: Station201
) -> None:
    before = scraper.samples()
    status, _ = await asyncio.to_thread(
        node_red.http,
        "POST",
        "/t/send",
        {"command": "Reset", "cbId": "MST201", "data": {"type": "Immediate"}},
    )
    assert status == 200
    after = await until(
        lambda: (
            (s := scraper.samples())
            and value(s, "ocpp_nodes_call_duration_seconds_count", action="Reset")
            > value(before, "ocpp_nodes_call_duration_seconds_count", action="Reset")
            and s
        ),
        "the Reset round trip to be observed",
    )
    labels = {"node": CSMS, "version": "2.0.1"}
    assert (
        value(after, "ocpp_nodes_call_duration_seconds_count", **labels, action="Reset")
        - value(before, "ocpp_nodes_call_duration_seconds_count", **labels, action="Reset")
        == 1
    )
    assert (
        value(
            after,
            "ocpp_nodes_messages_total",
            **labels,
            direction="out",
            type="CALL",
            action="Reset",
        )
        - value(
            before,
            "ocpp_nodes_messages_total",
            **labels,
            direction="out",
            type="CALL",
            action="Reset",
        )
        == 1
    )
    assert value(after, "ocpp_nodes_calls_outstanding", node=CSMS) == 0


async def test_stations_are_counted_per_version(scraper: Scraper, csms_port: int) -> None:
    async with websockets.connect(
        f"ws://127.0.0.1:{csms_port}/ocpp/MST16",
        subprotocols=["ocpp1.6"],  # type: ignore[list-item]
        additional_headers=auth_header("MST16", PASSWORD),
    ):
        await until(
            lambda: (
                value(scraper.samples(), "ocpp_nodes_stations_connected", node=CSMS, version="1.6")
                == 1
            ),
            "the 1.6 station to be counted",
        )
    await until(
        lambda: (
            value(scraper.samples(), "ocpp_nodes_stations_connected", node=CSMS, version="1.6") == 0
        ),
        "the 1.6 station to be gone",
    )
    assert value(scraper.samples(), "ocpp_nodes_disconnects_total", node=CSMS, version="1.6") >= 1


async def test_refused_handshakes_count_by_outcome(scraper: Scraper, csms_port: int) -> None:
    before = scraper.samples()
    for cb_id, password in (("MSTBAD", "wrong"), ("NOSUCH", PASSWORD)):
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(
                f"ws://127.0.0.1:{csms_port}/ocpp/{cb_id}",
                subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                additional_headers=auth_header(cb_id, password),
            )
    after = await until(
        lambda: (
            (s := scraper.samples())
            and value(s, "ocpp_nodes_handshakes_total", outcome="404")
            > value(before, "ocpp_nodes_handshakes_total", outcome="404")
            and s
        ),
        "the 404 to be counted",
    )
    for outcome in ("401", "404"):
        assert (
            value(after, "ocpp_nodes_handshakes_total", node=CSMS, outcome=outcome)
            - value(before, "ocpp_nodes_handshakes_total", node=CSMS, outcome=outcome)
            == 1
        )


async def test_callerrors_sent_count_by_code(scraper: Scraper, csms_port: int) -> None:
    before = scraper.samples()
    async with websockets.connect(
        f"ws://127.0.0.1:{csms_port}/ocpp/MSTBAD",
        subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
        additional_headers=auth_header("MSTBAD", PASSWORD),
    ) as ws:
        await ws.send(json.dumps([2, "bad-1", "Heartbeat", {"unexpected": 1}]))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert answer[0] == 4
        code = answer[2]
    after = await until(
        lambda: (
            (s := scraper.samples())
            and value(s, "ocpp_nodes_callerrors_total", direction="out", code=code)
            > value(before, "ocpp_nodes_callerrors_total", direction="out", code=code)
            and s
        ),
        "the CALLERROR to be counted",
    )
    labels = {"node": CSMS, "version": "2.0.1"}
    assert (
        value(after, "ocpp_nodes_callerrors_total", **labels, direction="out", code=code)
        - value(before, "ocpp_nodes_callerrors_total", **labels, direction="out", code=code)
        == 1
    )
    assert (
        value(after, "ocpp_nodes_messages_total", **labels, direction="in", type="invalid")
        - value(before, "ocpp_nodes_messages_total", **labels, direction="in", type="invalid")
        == 1
    )


async def test_cs_nodes_connection_and_offline_queue(node_red: NodeRed, scraper: Scraper) -> None:
    samples = scraper.samples()
    assert value(samples, "ocpp_nodes_stations_connected", node="cs.m", version="2.0.1") == 1
    assert value(samples, "ocpp_nodes_stations_connected", node="cs.off") == 0
    before = value(samples, "ocpp_nodes_offline_queue", node="cs.off")
    status, _ = await asyncio.to_thread(
        node_red.http, "POST", "/t/offline", {"command": "Heartbeat", "data": {}}
    )
    assert status == 200
    await until(
        lambda: value(scraper.samples(), "ocpp_nodes_offline_queue", node="cs.off") == before + 1,
        "the kept request to be counted",
    )
    # a CS node that cannot reach its CSMS is not "down": the engine is healthy
    samples = scraper.samples()
    assert value(samples, "ocpp_nodes_node_up", node="cs.off", type="CS") == 1
    assert scraper.health()[0] == 200


def test_no_secret_and_no_station_in_any_label(scraper: Scraper) -> None:
    text = scraper.text()
    assert PASSWORD not in text
    for cb_id in (*STATIONS, "MSTOFF"):
        assert cb_id not in text  # stationLabels is off
    assert "ocpp_nodes_station_connected" not in text


def test_health_is_503_with_the_reason_while_a_csms_node_cannot_listen(
    node_red: NodeRed, scraper: Scraper, csms_port: int
) -> None:
    assert scraper.health() == (200, {**scraper.health()[1], "status": "ok", "problems": []})
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        node_red.deploy(
            metrics_flow(csms_port)
            + [_node("csms.busy", "CSMS", [[], []], port=str(port), path="/x", outputs=2)]
        )
        status, body = wait_until(
            lambda: (h := scraper.health())[0] == 503 and h or None, 20, what="/health 503"
        )
        assert body["status"] == "fail"
        assert any(
            "csms.busy" in problem and str(port) in problem for problem in body["problems"]
        ), body
        assert value(scraper.samples(), "ocpp_nodes_node_up", node="csms.busy") == 0
    node_red.deploy(metrics_flow(csms_port))
    wait_until(lambda: scraper.health()[0] == 200 or None, 20, what="/health 200 again")


def test_engine_restarts_are_counted(node_red: NodeRed, scraper: Scraper) -> None:
    before = value(scraper.samples(), "ocpp_nodes_engine_restarts_total")
    (pid,) = node_red.daemon_pids()
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: (
            (s := scraper.get("/metrics"))[0] == 200
            and value(
                {
                    (sample.name, frozenset(sample.labels.items())): sample.value
                    for family in text_string_to_metric_families(s[1])
                    for sample in family.samples
                },
                "ocpp_nodes_engine_restarts_total",
            )
            == before + 1
            or None
        ),
        30,
        what="the restarted engine to count its restart",
    )
