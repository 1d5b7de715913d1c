"""End to end: the daemon's life follows Node-RED's (docs/architecture.md, daemon start)."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from tests.nodered import NodeRed, free_port, proc_alive, wait_until

pytestmark = pytest.mark.nodered


def _csms_flow(port: int) -> list[dict[str, Any]]:
    tab = {"id": "life.tab", "type": "tab", "label": "lifecycle"}
    csms = {
        "id": "life.csms",
        "type": "CSMS",
        "z": tab["id"],
        "name": "CSMS",
        "port": str(port),
        "path": "/ocpp",
        "ocpp_logging": False,
        "outputs": 2,
        "wires": [[], []],
        "credentials": {"basic_auths": '{"CS001": "secret"}'},
    }
    return [tab, csms]


def test_daemon_starts_with_the_first_node(nodered: NodeRed) -> None:
    nodered.deploy(_csms_flow(free_port()))
    pids = wait_until(nodered.daemon_pids, timeout=20, what="the ocpp_nodes daemon")
    assert len(pids) == 1, pids


def test_daemon_exits_when_node_red_is_killed(nodered: NodeRed) -> None:
    """SIGKILL gives the shim no chance to clean up: the daemon must see stdin close."""
    nodered.deploy(_csms_flow(free_port()))
    daemons = wait_until(nodered.daemon_pids, timeout=20, what="the ocpp_nodes daemon")
    assert nodered.proc is not None
    nodered.proc.send_signal(signal.SIGKILL)
    nodered.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    alive = daemons
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = {pid for pid in daemons if proc_alive(pid)}
    leftovers = nodered.stop(daemon_grace=0)
    assert not alive, f"daemon(s) still running 10 s after Node-RED was killed: {leftovers}"
