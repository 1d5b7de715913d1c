"""An engine started separately (``ocpp-nodes serve --tcp``) serves a real
Node-RED that names it in settings.js (``ocppNodes.daemon``): plain TCP on
loopback, and TLS checked against a CA, as for an engine on another host."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import websockets

from tests.nodered import free_port, running_node_red, wait_until

pytestmark = pytest.mark.nodered

TOKEN = "remote-engine-token-" + "7" * 40


@pytest.fixture
def engine(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """``ocpp-nodes serve --tcp 127.0.0.1:0`` (with TLS when parametrized so)."""
    args = [sys.executable, "-m", "ocpp_nodes", "serve", "--tcp", "127.0.0.1:0"]
    settings: dict[str, Any] = {}
    if getattr(request, "param", "plain") == "tls":
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1")
        server.cert_chain_pems[0].write_to_path(str(tmp_path / "engine.pem"))
        server.private_key_pem.write_to_path(str(tmp_path / "engine.key"))
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        args += [
            "--tls-cert",
            str(tmp_path / "engine.pem"),
            "--tls-key",
            str(tmp_path / "engine.key"),
        ]
        settings["ca"] = str(tmp_path / "ca.pem")
    process = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "OCPP_NODES_TOKEN": TOKEN},
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        host, port = ready["tcp"].rsplit(":", 1)
        yield {"host": host, "port": int(port), "token": TOKEN, **settings, "pid": process.pid}
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.parametrize("engine", ["plain", "tls"], indirect=True)
async def test_node_red_uses_an_engine_started_separately(
    engine: dict[str, Any], tmp_path: Path
) -> None:
    daemon = {k: v for k, v in engine.items() if k != "pid"}
    # No usable Python is named: everything must go to the engine given.
    settings = {"ocppNodes": {"python": "/nonexistent/python", "daemon": daemon}}
    port = free_port()
    with running_node_red(tmp_path / "nr", "test_remote_daemon", settings=settings) as runtime:
        runtime.deploy(
            [
                {"id": "tab", "type": "tab", "label": "remote"},
                {
                    "id": "csms",
                    "type": "CSMS",
                    "z": "tab",
                    "port": str(port),
                    "path": "/ocpp",
                    "outputs": 2,
                    "wires": [[], []],
                    "credentials": {"basic_auths": json.dumps({"R1": "pw"})},
                },
            ]
        )
        wait_until(lambda: "ready (pid" in runtime.log(), 20, what="the engine's welcome")
        assert f"pid {engine['pid']}" in runtime.log()
        token = base64.b64encode(b"R1:pw").decode()

        async def connect_once() -> bool:
            try:
                async with websockets.connect(
                    f"ws://127.0.0.1:{port}/ocpp/R1",
                    subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                    additional_headers={"Authorization": f"Basic {token}"},
                ) as ws:
                    return ws.subprotocol == "ocpp2.0.1"
            except OSError:
                return False

        for _ in range(50):
            if await connect_once():
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail("the CSMS node never listened through the separate engine")
        assert not runtime.daemon_pids(), "Node-RED started an engine of its own"
        assert TOKEN not in runtime.log()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--tcp", "0.0.0.0:0"], "needs --tls-cert"),
        (["--tcp", "127.0.0.1:0", "--tls-cert", "/nonexistent.pem"], "cannot load"),
        (["--tcp", "no-port"], "HOST:PORT"),
    ],
)
def test_engine_refuses_an_unsafe_or_broken_tcp_setup(args: list[str], says: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ocpp_nodes", "serve", *args],
        env={**os.environ, "OCPP_NODES_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2 and says in result.stderr
    assert "Traceback" not in result.stderr
