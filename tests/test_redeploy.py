"""100 full redeploys through the admin API in a REAL Node-RED, a station connected.

Every redeploy changes the CSMS and CS nodes' `message_timeout`, so every
node is closed in the daemon and created again: the new node takes over the
old one's server and connections (docs/reliability.md, "Redeploys"). Every
other redeploy also changes the CSMS node's path (and the CS node's URL with
it), which no node can take over: the old server is stopped, its port freed
and bound again by the new one. After each deploy an external station
connects to the CSMS node and gets a Heartbeat answered by the flow. The
daemon's open file descriptors, threads and RSS after redeploy 10 and after
redeploy 100 must not differ beyond noise; no port is ever busy; stopping
Node-RED leaves no daemon (the fixture).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from tests.common import auth_header
from tests.nodered import NodeRed, free_port, proc_alive, wait_until

pytestmark = [
    pytest.mark.nodered,
    pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning"),
]

TAB = "r.tab"
PASSWORD = "redeploy-pw"
REDEPLOYS = 100
ANSWER = (
    "if (msg.topic && msg.topic.endsWith('/Request') && msg.ocpp.command === 'Heartbeat') {\n"
    "  msg.payload = {msgType: 3, data: {currentTime: new Date().toISOString()}};\n"
    "  return msg;\n"
    "}\n"
    "return null;\n"
)


def path_of(n: int) -> str:
    """The CSMS node's path in redeploy ``n``: it changes at every other one."""
    return "/ocpp" if (n // 2) % 2 == 0 else "/ocpp-b"


def flow(port: int, version: int, path: str = "/ocpp") -> list[dict[str, Any]]:
    return [
        {"id": TAB, "type": "tab", "label": "redeploy"},
        {
            "id": "r.csms",
            "type": "CSMS",
            "z": TAB,
            "name": f"CSMS v{version}",
            "port": str(port),
            "path": path,
            "message_timeout": 30 + version,
            "outputs": 2,
            "x": 100,
            "y": 100,
            "wires": [["r.answer"], []],
            "credentials": {"basic_auths": json.dumps({"ST1": PASSWORD, "RCS": PASSWORD})},
        },
        {
            "id": "r.answer",
            "type": "function",
            "z": TAB,
            "func": ANSWER,
            "outputs": 1,
            "x": 300,
            "y": 100,
            "wires": [["r.csms"]],
        },
        {
            "id": "r.target",
            "type": "target-csms",
            "name": "own",
            "url": f"ws://127.0.0.1:{port}{path}",
        },
        {
            "id": "r.cs",
            "type": "CS",
            "z": TAB,
            "cbId": "RCS",
            "csms": "r.target",
            "auto_connect": True,
            "message_timeout": 30 + version,
            "ws_rt_minimum": 0.2,
            "ws_rt_repeat": 0,
            "ws_rt_rnd_range": 0,
            "outputs": 2,
            "x": 100,
            "y": 200,
            "wires": [[], []],
            "credentials": {"csms_pw": PASSWORD},
        },
    ]


def station_heartbeat(url: str, n: int, timeout: float = 20) -> int:
    """Connect (retrying while the new node does not listen yet), one Heartbeat; tries used."""
    deadline = time.monotonic() + timeout
    tries = 0
    while True:
        tries += 1
        try:
            with connect(
                f"{url}/ST1",
                subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                additional_headers=auth_header("ST1", PASSWORD),
                open_timeout=5,
            ) as ws:
                ws.send(json.dumps([2, f"hb-{n}", "Heartbeat", {}]))
                answer = json.loads(ws.recv(timeout=10))
                assert answer[:2] == [3, f"hb-{n}"], answer
                return tries
        except (OSError, WebSocketException, TimeoutError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def usage(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        "fds": len(list(Path(f"/proc/{pid}/fd").iterdir())),
        "threads": int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1)),  # type: ignore[union-attr]
        "rss_kib": int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1)),  # type: ignore[union-attr]
    }


def test_100_redeploys_leak_nothing_and_the_station_always_comes_back(nodered: NodeRed) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ocpp"
    nodered.deploy(flow(port, 0))
    pid = wait_until(
        lambda: next(
            (
                int(p)
                for p in re.findall(r"ready \(pid (\d+)\)", nodered.log())
                if proc_alive(int(p))
            ),
            None,
        ),
        30,
        what="the daemon ready",
    )
    station_heartbeat(url, 0)
    samples: dict[int, dict[str, int]] = {}
    tries: list[int] = []
    started = time.monotonic()
    for n in range(1, REDEPLOYS + 1):
        nodered.deploy(flow(port, n % 2, path_of(n)))
        tries.append(station_heartbeat(f"ws://127.0.0.1:{port}{path_of(n)}", n))
        if n in (10, REDEPLOYS):
            time.sleep(0.5)  # let the closed connections settle before sampling
            samples[n] = usage(pid)
    elapsed = time.monotonic() - started
    log = nodered.log()
    print(
        f"\n{REDEPLOYS} redeploys in {elapsed:.1f} s ({elapsed / REDEPLOYS:.2f} s each, "
        f"station connects {sum(tries)} tries); daemon after 10: {samples[10]}, "
        f"after {REDEPLOYS}: {samples[REDEPLOYS]}"
    )
    assert nodered.daemon_pids() == {pid}, "the daemon was restarted"
    assert "EADDRINUSE" not in log and "busy" not in log, "a port was still held"
    assert len(re.findall(r"ready \(pid", log)) == 1
    # half the redeploys kept the server, the other half changed its path
    path_changes = sum(path_of(n) != path_of(n - 1) for n in range(1, REDEPLOYS + 1))
    kept = re.findall(r"redeploy: \d+ station\(s\) kept connected", log)
    assert len(kept) == REDEPLOYS - path_changes, len(kept)
    before, after = samples[10], samples[REDEPLOYS]
    assert after["fds"] <= before["fds"] + 10, (before, after)
    assert after["threads"] <= before["threads"] + 2, (before, after)
    assert after["rss_kib"] <= before["rss_kib"] * 1.2, (before, after)
