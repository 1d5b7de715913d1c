"""The Node-RED harness itself: start, deploy with credentials, HTTP, the shim is loaded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.nodered import MARKER_ENV, NodeRed, wait_until

pytestmark = pytest.mark.nodered


def test_deploy_and_http_roundtrip(nodered: NodeRed) -> None:
    tab = {"id": "harness.tab", "type": "tab", "label": "harness"}
    nodes = [
        tab,
        {
            "id": "harness.in",
            "type": "http in",
            "z": tab["id"],
            "url": "/harness/echo",
            "method": "post",
            "upload": False,
            "wires": [["harness.fn"]],
        },
        {
            "id": "harness.fn",
            "type": "function",
            "z": tab["id"],
            "func": "msg.payload = {echo: msg.payload, ok: true}; return msg;",
            "outputs": 1,
            "wires": [["harness.out"]],
        },
        {"id": "harness.out", "type": "http response", "z": tab["id"], "wires": []},
    ]
    assert nodered.deploy(nodes)
    status, body = nodered.wait_for_endpoint("POST", "/harness/echo", {"n": 1})
    assert status == 200
    assert body == {"echo": {"n": 1}, "ok": True}
    assert {n["id"] for n in nodered.flows()} >= {"harness.in", "harness.fn", "harness.out"}


def test_shim_node_types_are_registered(nodered: NodeRed) -> None:
    def node_types() -> set[str] | None:
        status, nodes = nodered.http("GET", "/nodes")
        if status != 200 or not isinstance(nodes, list):
            return None
        return {
            t for n in nodes if n.get("module") == "node-red-contrib-ocpp-nodes" for t in n["types"]
        }

    types = wait_until(node_types, timeout=10, what="the shim's node set")
    assert {"CS", "CSMS", "target-csms"} <= types, nodered.log_tail()


def test_stop_reports_and_kills_a_daemon_left_behind(nodered: NodeRed) -> None:
    """The teardown check works: a marked `ocpp_nodes` process alive after stop is reported."""
    env = dict(os.environ, **{MARKER_ENV: nodered.marker})
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "ocpp_nodes", "serve"],
        env=env,
        start_new_session=True,
    )
    try:
        wait_until(lambda: stray.pid in nodered.daemon_pids(), timeout=5, what="the stray")
        leftovers = nodered.stop(daemon_grace=0.5)
        assert stray.pid in leftovers
        assert stray.wait(timeout=5) == -signal.SIGKILL
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait(timeout=5)
