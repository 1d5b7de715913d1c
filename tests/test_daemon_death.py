"""The daemon killed with SIGKILL under a REAL Node-RED, with traffic flowing.

The shim (js_shim/lib/daemon-client.js) must end inputs in flight with an
error a Catch node sees, turn every node red ("engine down"), start a new
daemon with back-off (1, 2, 4 ... 30 s) and create every node again: the CS
node reconnects, the CSMS node listens again and a station can boot.

A missing or broken Python is covered elsewhere (tests/shim/nodes.test.js
"without a usable Python", tests/test_install.py
::test_a_broken_python_setting_leaves_node_red_running_and_says_what_to_do).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from typing import Any

import pytest
from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

from tests.common import BOOT, auth_header
from tests.flowkit import Flow, http_api, recorder
from tests.nodered import NodeRed, free_port, proc_alive, wait_until

pytestmark = [
    pytest.mark.nodered,
    pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning"),
]

TAB = "d.tab"
PASSWORD = "death-test-pw"
ANSWER = (
    "if (!msg.topic || !msg.topic.endsWith('/Request')) return null;\n"
    "const now = new Date().toISOString();\n"
    "if (msg.ocpp.command === 'Heartbeat') msg.payload = {msgType: 3, data: {currentTime: now}};\n"
    "else if (msg.ocpp.command === 'BootNotification')\n"
    "  msg.payload = {msgType: 3, data: {currentTime: now, interval: 300, status: 'Accepted'}};\n"
    "else return null;  // e.g. Authorize stays unanswered: in flight\n"
    "return msg;\n"
)


def death_flow(port: int) -> list[dict[str, Any]]:
    return [
        {"id": TAB, "type": "tab", "label": "daemon death"},
        {
            "id": "d.csms",
            "type": "CSMS",
            "z": TAB,
            "name": "CSMS",
            "port": str(port),
            "path": "/ocpp",
            "connection_events": True,
            "message_timeout": 60,
            "outputs": 2,
            "x": 100,
            "y": 100,
            "wires": [["d.answer", "d.rec.csms"], []],
            "credentials": {"basic_auths": json.dumps({"DCS": PASSWORD, "EXT": PASSWORD})},
        },
        {
            "id": "d.answer",
            "type": "function",
            "z": TAB,
            "func": ANSWER,
            "outputs": 1,
            "x": 300,
            "y": 100,
            "wires": [["d.csms"]],
        },
        {
            "id": "d.target",
            "type": "target-csms",
            "name": "own",
            "url": f"ws://127.0.0.1:{port}/ocpp",
        },
        {
            "id": "d.cs",
            "type": "CS",
            "z": TAB,
            "name": "",
            "cbId": "DCS",
            "csms": "d.target",
            "auto_connect": True,
            "message_timeout": 60,
            "ws_rt_minimum": 0.3,
            "ws_rt_repeat": 0,
            "ws_rt_rnd_range": 0,
            "outputs": 2,
            "x": 100,
            "y": 200,
            "wires": [["d.rec.cs"], []],
            "credentials": {"csms_pw": PASSWORD},
        },
        {
            "id": "d.catch",
            "type": "catch",
            "z": TAB,
            "scope": None,
            "uncaught": False,
            "x": 100,
            "y": 300,
            "wires": [["d.rec.catch"]],
        },  # fmt: skip
        {
            "id": "d.status",
            "type": "status",
            "z": TAB,
            "scope": None,
            "x": 100,
            "y": 400,
            "wires": [["d.rec.status"]],
        },  # fmt: skip
        recorder("d.rec.csms", TAB, "csms"),
        recorder("d.rec.cs", TAB, "cs"),
        recorder("d.rec.catch", TAB, "catch"),
        recorder("d.rec.status", TAB, "status"),
        *http_api(TAB, {"cs": "d.cs"}),
    ]


def ready_pid(nodered: NodeRed, after: int, timeout: float = 60) -> int:
    """The pid in the first 'engine ... ready (pid N)' log line past offset `after`,
    once that process runs."""

    def probe() -> int | None:
        found = re.findall(r"ready \(pid (\d+)\)", nodered.log()[after:])
        return int(found[0]) if found and proc_alive(int(found[0])) else None

    return wait_until(probe, timeout, 0.05, what="a daemon ready")


def heartbeat_through_flow(flow: Flow, tag_after: int, mid: str) -> None:
    flow.send("cs", {"payload": {"command": "Heartbeat", "data": {}, "MessageId": mid}})
    flow.wait(
        "cs",
        lambda r: r.get("topic") == "DCS/Response" and r["ocpp"]["MessageId"] == mid,
        timeout=20,
        after=tag_after,
    )


def station_boots(url: str, timeout: float = 30) -> ClientConnection:
    """An external station connects (retrying while nothing listens) and boots."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ws = connect(
                f"{url}/EXT",
                subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                additional_headers=auth_header("EXT", PASSWORD),
                open_timeout=5,
            )
            ws.send(json.dumps([2, "boot-1", "BootNotification", BOOT]))
            answer = json.loads(ws.recv(timeout=10))
            assert answer[:2] == [3, "boot-1"] and answer[2]["status"] == "Accepted", answer
            return ws
        except (OSError, WebSocketException, TimeoutError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def test_daemon_killed_mid_traffic_everything_comes_back(nodered: NodeRed) -> None:
    port = free_port()
    nodered.deploy(death_flow(port))
    flow = Flow(nodered)
    old = ready_pid(nodered, 0)
    url = f"ws://127.0.0.1:{port}/ocpp"
    flow.wait("cs", lambda r: (r.get("ocpp") or {}).get("websocket") == "ONLINE", timeout=20)
    heartbeat_through_flow(flow, 0, "hb-before")
    station = station_boots(url)

    # a request the CSMS flow never answers: in flight when the daemon dies
    flow.send("cs", {"payload": {"command": "Authorize", "data": {"idToken": {
        "idToken": "T1", "type": "Central"}}, "MessageId": "in-flight-1"}})  # fmt: skip
    flow.wait("csms", lambda r: (r.get("ocpp") or {}).get("MessageId") == "in-flight-1")
    cs_seen, status_seen = len(flow.records("cs")), len(flow.records("status"))
    log_at = len(nodered.log())

    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)

    caught = flow.wait("catch", lambda r: True, timeout=10)
    assert "OCPP engine stopped" in caught["error"]["message"], caught
    assert caught["error"]["source"]["id"] == "d.cs", caught
    for node in ("d.cs", "d.csms"):
        down = flow.wait(
            "status",
            lambda r, node=node: (
                r["status"]["source"]["id"] == node and r["status"]["text"] == "engine down"
            ),
            after=status_seen,
        )
        assert down["status"]["fill"] == "red", down
    with pytest.raises((OSError, WebSocketException, TimeoutError)):  # its CSMS went with it
        station.recv(timeout=10)

    new = ready_pid(nodered, log_at, timeout=30)
    restarted_after = time.monotonic() - killed_at
    assert new != old and not proc_alive(old)
    assert nodered.daemon_pids() == {new}
    # every node re-created: the CS is ONLINE again and the flow's traffic flows
    flow.wait(
        "cs",
        lambda r: (r.get("ocpp") or {}).get("websocket") == "ONLINE",
        timeout=30,
        after=cs_seen,
    )
    heartbeat_through_flow(flow, cs_seen, "hb-after")
    flow.wait(
        "status",
        lambda r: r["status"]["source"]["id"] == "d.cs" and r["status"]["fill"] == "green",
        after=status_seen,
    )
    # the CSMS node listens again: an external station reconnects and boots
    station_boots(url).close()
    print(f"\nnew daemon ready {restarted_after:.2f} s after the kill")
    assert "Traceback" not in nodered.log()[log_at:]


def test_daemon_killed_repeatedly_backs_off(nodered: NodeRed) -> None:
    port = free_port()
    nodered.deploy(death_flow(port))
    pid = ready_pid(nodered, 0)
    gaps: list[float] = []
    for _ in range(4):
        log_at = len(nodered.log())
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        pid = ready_pid(nodered, log_at, timeout=40)
        gaps.append(time.monotonic() - killed_at)
    print(f"\nrestart gaps after each kill: {[round(g, 2) for g in gaps]} s")
    for gap, nominal in zip(gaps, [1, 2, 4, 8], strict=True):
        assert nominal <= gap < nominal + 5, gaps
    assert all(b > a + 0.5 for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    assert nodered.log().count("OCPP engine stopped (") >= 4
    # and the last one is healthy: the CS is connected again
    flow = Flow(nodered)
    flow.wait(
        "status",
        lambda r: r["status"]["source"]["id"] == "d.cs" and r["status"]["fill"] == "green",
        after=len(flow.records("status")) - 1,
        timeout=20,
    )
