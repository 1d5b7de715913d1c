"""The engine's metrics endpoint without Node-RED: the daemon started as the
shim starts it (tests/shim_double.py), with and without ``--metrics``.

What Node-RED adds (settings.js, the shim's hop stamps and restart count) is
in tests/test_metrics_nodered.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from ocpp_nodes.metrics import MAX_HEALTHY_LAG_S, EngineMetrics, handshake_outcome
from ocpp_nodes.rpc import V201, OcppConnection, Role
from tests.common import answer_requests, auth_header, start_csms
from tests.shim_double import ShimDouble, free_port
from tests.test_metrics_nodered import value
from tests.test_security_socket import LoggedDaemon

PASSWORD = "station-secret-9"


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest_asyncio.fixture
async def labelled() -> AsyncIterator[tuple[ShimDouble, int]]:
    """A daemon with metrics per station (``stationLabels: true``)."""
    port = free_port()
    double = ShimDouble()
    double.serve_args = ("--metrics", f"127.0.0.1:{port}", "--metrics-station-labels")
    await double.start()
    yield double, port
    await double.stop()


async def test_no_endpoint_unless_asked(fresh_shim: ShimDouble) -> None:
    await start_csms(fresh_shim, "plain", {"CP1": "pw"})
    assert fresh_shim.process is not None
    # the CSMS node's port only: no metrics endpoint
    assert len(listening_ports(fresh_shim.pid)) == 1


async def test_a_busy_metrics_port_is_logged_and_the_engine_runs_on() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        double = LoggedDaemon()
        double.serve_args = ("--metrics", f"127.0.0.1:{busy.getsockname()[1]}")
        await double.start()  # ready and welcome all the same
        try:
            line = await double.wait_logged(r"ERROR .*metrics endpoint not started")
            assert str(busy.getsockname()[1]) in line
            await double.still_serves("after-busy-metrics")
        finally:
            await double.stop()


async def test_station_labels_are_an_opt_in(labelled: tuple[ShimDouble, int]) -> None:
    double, port = labelled
    csms = await start_csms(double, "site", {"CP7": PASSWORD})
    async with connect(
        f"ws://127.0.0.1:{csms}/ocpp/CP7",
        subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
        additional_headers=auth_header("CP7", PASSWORD),
    ) as ws:
        answering = asyncio.create_task(
            answer_requests(double, "site", {"Heartbeat": {"currentTime": "2026-01-01T00:00:00Z"}})
        )
        await ws.send(json.dumps([2, "hb-1", "Heartbeat", {}]))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))[0] == 3
        answering.cancel()
        _, text = await asyncio.to_thread(scrape, port)
    assert 'ocpp_nodes_station_connected{node="site",station="CP7",version="2.0.1"} 1.0' in text
    assert 'ocpp_nodes_station_messages_total{direction="in",node="site",station="CP7"} 1.0' in text
    assert (
        'ocpp_nodes_station_messages_total{direction="out",node="site",station="CP7"} 1.0' in text
    )
    assert PASSWORD not in text
    status, body = await asyncio.to_thread(scrape, port, "/health")
    assert status == 200, body
    assert json.loads(body)["status"] == "ok"


async def test_health_is_503_while_no_shim_is_connected(tmp_path: Path) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ocpp_nodes",
        "serve",
        "--socket",
        str(tmp_path / "daemon.sock"),
        "--metrics",
        str(port),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "OCPP_NODES_TOKEN": "t"},
    )
    try:
        assert process.stdout is not None
        assert json.loads(await asyncio.wait_for(process.stdout.readline(), 20))["event"] == "ready"
        status, body = await asyncio.to_thread(scrape, port, "/health")
        assert status == 503
        assert json.loads(body)["problems"] == ["no Node-RED shim is connected"]
    finally:
        assert process.stdin is not None
        process.stdin.close()
        await asyncio.wait_for(process.wait(), 10)


def test_handshake_outcomes_are_bounded() -> None:
    assert handshake_outcome(401) == "401"
    assert handshake_outcome(1002) == "no_common_version"
    assert handshake_outcome(418) == "other"
    assert handshake_outcome("tls_failed") == "tls_failed"
    assert handshake_outcome("anything a peer says") == "other"


def test_labels_stay_bounded_whatever_a_peer_sends() -> None:
    """Codes a version does not have become "other"; an unknown action never becomes a label."""
    metrics = EngineMetrics()
    meter = metrics.node("n").link(V201, "CP1")
    connection = OcppConnection(V201, Role.CSMS)
    call = connection.send_call("Reset", {"type": "Immediate"}, 0.0)
    events = connection.receive_text(
        json.dumps([4, call.message_id, "Bogus<script>", "x", {}]), 0.25
    )
    meter.received(events, call, 0.0, 0.25)
    unknown = connection.receive_text(json.dumps([2, "u1", "NoSuchAction", {}]), 0.3)
    meter.received(unknown, None, 0.0, 0.3)
    text = generate_latest(metrics.registry).decode()
    assert "Bogus" not in text and "NoSuchAction" not in text
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    ours = {"node": "n", "version": "2.0.1"}
    assert value(samples, "ocpp_nodes_callerrors_total", **ours, direction="in", code="other") == 1
    assert (
        value(samples, "ocpp_nodes_callerrors_total", direction="out", code="NotImplemented") == 1
    )
    assert value(samples, "ocpp_nodes_call_duration_seconds_bucket", action="Reset", le="0.25") == 1
    assert value(samples, "ocpp_nodes_call_duration_seconds_bucket", action="Reset", le="0.1") == 0
    assert value(samples, "ocpp_nodes_messages_total", type="invalid", action="unknown") == 1


def test_health_names_a_late_event_loop() -> None:
    metrics = EngineMetrics()
    assert metrics.health_problems() == ["no Node-RED shim is connected"]
    metrics.last_lag = MAX_HEALTHY_LAG_S + 0.5
    assert any("event loop 1.50 s late" in problem for problem in metrics.health_problems())
