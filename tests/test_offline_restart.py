"""The CS offline queue survives a killed daemon and a restarted Node-RED (REAL Node-RED).

With its CSMS down, a CS node is given 100 TransactionEvents (seqNo 0..99);
they are kept in `<userDir>/ocpp-nodes/offline-queue.sqlite`. Then either
the daemon is killed with SIGKILL (the shim starts a new one), or Node-RED
is stopped and a new one started on the same user dir with the same flow.
When the CSMS (a Python websockets server here) comes up, all 100 arrive in
order, each once, with `offline: true`, and each answer reaches the flow.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from ocpp_nodes.nodes.offline_store import OfflineStore
from tests.flowkit import Flow, http_api, recorder
from tests.nodered import NodeRed, free_port, proc_alive, wait_until

pytestmark = pytest.mark.nodered

TAB = "o.tab"
CB_ID = "OFR"
COUNT = 100


def transaction_event(seq_no: int) -> dict[str, Any]:
    return {
        "eventType": "Updated",
        "timestamp": "2026-01-01T00:00:00Z",
        "triggerReason": "MeterValuePeriodic",
        "seqNo": seq_no,
        "transactionInfo": {"transactionId": "T-restart"},
    }


def cs_flow(csms_port: int) -> list[dict[str, Any]]:
    return [
        {"id": TAB, "type": "tab", "label": "offline restart"},
        {
            "id": "o.target",
            "type": "target-csms",
            "name": "py",
            "url": f"ws://127.0.0.1:{csms_port}/ocpp",
        },
        {
            "id": "o.cs",
            "type": "CS",
            "z": TAB,
            "cbId": CB_ID,
            "csms": "o.target",
            "auto_connect": True,
            "ws_rt_minimum": 0.3,
            "ws_rt_repeat": 0,
            "ws_rt_rnd_range": 0,
            "outputs": 2,
            "x": 100,
            "y": 100,
            "wires": [["o.rec"], []],
            "credentials": {"csms_pw": "pw"},
        },
        recorder("o.rec", TAB, "cs"),
        *http_api(TAB, {"cs": "o.cs"}),
    ]


class PythonCsms:
    """Answers every TransactionEvent with {} and records (seqNo, offline) in arrival order."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[tuple[int, Any]] = []
        self.lock = threading.Lock()

    def handler(self, ws: ServerConnection) -> None:
        try:
            for _ in range(100_000):  # bounded
                frame = json.loads(ws.recv(timeout=60))
                if frame[0] != 2:
                    continue
                if frame[2] == "TransactionEvent":
                    with self.lock:
                        self.received.append((frame[3]["seqNo"], frame[3].get("offline")))
                    ws.send(json.dumps([3, frame[1], {}]))
                elif frame[2] == "Heartbeat":
                    ws.send(json.dumps([3, frame[1], {"currentTime": "2026-01-01T00:00:00Z"}]))
        except (ConnectionClosed, TimeoutError):
            return

    @contextmanager
    def running(self) -> Iterator[PythonCsms]:
        with serve(
            self.handler,
            "127.0.0.1",
            self.port,
            subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
        ) as server:
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            try:
                yield self
            finally:
                server.shutdown()
                thread.join(10)


def ready_pid(nodered: NodeRed, after: int = 0) -> int:
    def probe() -> int | None:
        found = re.findall(r"ready \(pid (\d+)\)", nodered.log()[after:])
        return int(found[-1]) if found and proc_alive(int(found[-1])) else None

    return wait_until(probe, 30, 0.05, what="a daemon ready")


def store_count(user_dir: Path) -> int:
    path = user_dir / "ocpp-nodes" / "offline-queue.sqlite"
    return OfflineStore(str(path)).count(CB_ID) if path.exists() else 0


def send_offline_events(nodered: NodeRed) -> None:
    flow = Flow(nodered)
    for n in range(COUNT):
        payload = {"command": "TransactionEvent", "data": transaction_event(n)}
        flow.send("cs", {"payload": payload, "customData": {"n": n}})
    wait_until(lambda: store_count(nodered.user_dir) == COUNT, 20, what="100 events on disk")


def assert_all_arrive_in_order(nodered: NodeRed, csms: PythonCsms) -> None:
    with csms.running():
        wait_until(lambda: len(csms.received) >= COUNT, 60, what="100 TransactionEvents")
        flow = Flow(nodered)
        answers = wait_until(
            lambda: (
                len(r := [x for x in flow.records("cs") if x.get("topic") == f"{CB_ID}/Response"])
                >= COUNT
                and r
            ),
            30,
            what="100 answers at the flow",
        )
        wait_until(lambda: store_count(nodered.user_dir) == 0, 20, what="the store emptied")
    assert [seq for seq, _ in csms.received] == list(range(COUNT)), csms.received
    assert all(offline is True for _, offline in csms.received)
    assert [a["customData"] for a in answers] == [{"n": n} for n in range(COUNT)]


def test_queued_transaction_events_survive_a_killed_daemon(nodered: NodeRed) -> None:
    csms = PythonCsms(free_port())
    nodered.deploy(cs_flow(csms.port))
    old = ready_pid(nodered)
    send_offline_events(nodered)
    log_at = len(nodered.log())
    os.kill(old, signal.SIGKILL)
    new = ready_pid(nodered, log_at)
    assert new != old
    assert store_count(nodered.user_dir) == COUNT
    assert_all_arrive_in_order(nodered, csms)


def test_queued_transaction_events_survive_a_node_red_restart(tmp_path: Path) -> None:
    user_dir = tmp_path / "node-red"
    csms = PythonCsms(free_port())
    first = NodeRed(user_dir, free_port())
    try:
        first.start()
        first.deploy(cs_flow(csms.port))
        ready_pid(first)
        send_offline_events(first)
    finally:
        leftovers = first.stop()
        first.save_log("test_offline_restart_first")
    assert not leftovers, leftovers
    assert store_count(user_dir) == COUNT
    second = NodeRed(user_dir, free_port())
    try:
        second.start()
        second.deploy(cs_flow(csms.port))
        assert_all_arrive_in_order(second, csms)
    finally:
        leftovers = second.stop()
        second.save_log("test_offline_restart_second")
    assert not leftovers, leftovers
