"""Installing the npm tarball the way a new user does (docs/install.md).

`make pack` builds the tarball (shim, examples/, the engine wheel in python/);
a fresh Node-RED user dir gets it with `npm install <tarball>`; Node-RED
starts with no `ocppNodes.python` and no `OCPP_NODES_PYTHON`, so the shim must
build `<userDir>/ocpp-nodes/venv` from the bundled wheel (pip uses the
machine's own indexes and cache). An example flow comes from the admin API
(Import > Examples), is deployed with a free port, and a station boots.

Node statuses are read as the editor reads them: from the `/comms` websocket
(`status/<node id>` topics).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from tests.common import recv_frame
from tests.flowkit import connect_station, wait_port
from tests.nodered import MARKER_ENV, REPO_ROOT, NodeRed, free_port, wait_until

pytestmark = pytest.mark.nodered

PACKAGE = "node-red-contrib-ocpp-nodes"
INSTALL_TIMEOUT = 240.0  # venv + pip with a warm cache takes ~15 s; a cold one longer


def _settings(user_dir: Path, port: int, extra: dict[str, Any] | None = None) -> None:
    """A user's settings.js: loopback editor, no ocppNodes unless `extra` says so."""
    settings: dict[str, Any] = {
        "uiHost": "127.0.0.1",
        "uiPort": port,
        "flowFile": "flows.json",
        "credentialSecret": False,
        "logging": {"console": {"level": "info", "metrics": False, "audit": False}},
        "telemetry": {"enabled": False, "updateNotification": False},
        "diagnostics": {"enabled": False, "ui": False},
        "editorTheme": {"tours": False},
    }
    settings.update(extra or {})
    (user_dir / "settings.js").write_text(f"module.exports = {json.dumps(settings, indent=4)};\n")


class InstalledNodeRed(NodeRed):
    """Node-RED over a user dir with the package npm-installed (no checkout link),
    started without OCPP_NODES_PYTHON."""

    def __init__(self, user_dir: Path, port: int, extra: dict[str, Any] | None = None) -> None:
        super().__init__(user_dir, port)
        self.extra = extra

    def prepare(self) -> None:
        _settings(self.user_dir, self.port, self.extra)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("OCPP_NODES_PYTHON", "VIRTUAL_ENV")}
        # python3 is whatever the machine has, not this checkout's .venv (which
        # already imports ocpp_nodes).
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join(
            p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin
        )
        env[MARKER_ENV] = self.marker
        return env


class StatusWatch:
    """Every node status Node-RED publishes on /comms, in order (a thread reads them)."""

    def __init__(self, base_url: str) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._stack = ExitStack()
        self._ws = self._stack.enter_context(
            ws_connect(base_url.replace("http://", "ws://") + "/comms", open_timeout=10)
        )
        self._ws.send(json.dumps({"subscribe": "status/#"}))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in self._ws:
                for event in json.loads(raw):
                    topic = event.get("topic", "")
                    if topic.startswith("status/"):
                        self.seen.append((topic.split("/", 1)[1], event.get("data") or {}))
        except Exception:  # noqa: BLE001 - the socket closes when Node-RED stops
            return

    def texts(self, node_id: str) -> list[str]:
        return [str(data.get("text", "")) for nid, data in self.seen if nid == node_id]

    def latest(self, node_id: str) -> dict[str, Any] | None:
        found = [data for nid, data in self.seen if nid == node_id]
        return found[-1] if found else None

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="module")
def tarball() -> Path:
    started = time.monotonic()
    subprocess.run(["make", "-s", "pack"], cwd=REPO_ROOT, check=True, timeout=180)
    (path,) = (REPO_ROOT / "build").glob(f"{PACKAGE}-*.tgz")
    print(f"make pack: {time.monotonic() - started:.1f} s")
    return path


def npm_install(user_dir: Path, tarball: Path) -> None:
    """What `npm install <pkg>` in ~/.node-red does for a new user."""
    user_dir.mkdir(parents=True)
    (user_dir / "package.json").write_text(
        json.dumps(
            {
                "name": "node-red-project",
                "description": "A Node-RED Project",
                "version": "0.0.1",
                "private": True,
            }
        )
        + "\n"
    )
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--silent", str(tarball)],
        cwd=user_dir,
        check=True,
        timeout=180,
    )
    installed = user_dir / "node_modules" / PACKAGE
    assert installed.is_dir() and not installed.is_symlink()
    assert list((installed / "python").glob("ocpp_nodes-*-py3-none-any.whl"))


@pytest.fixture
def stop_after(request: pytest.FixtureRequest) -> Iterator[list[NodeRed]]:
    runtimes: list[NodeRed] = []
    yield runtimes
    for runtime in runtimes:
        leftovers = runtime.stop()
        runtime.save_log(request.node.name)
        assert not leftovers, f"daemon(s) outlived Node-RED: {leftovers}"


def _boot(url: str) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        ws = await connect_station(url, "CS001", "cs001-password")
        try:
            await ws.send(
                json.dumps(
                    [
                        2,
                        "boot-1",
                        "BootNotification",
                        {
                            "reason": "PowerUp",
                            "chargingStation": {"model": "Install", "vendorName": "ocpp-nodes"},
                        },
                    ]
                )
            )
            frame = await recv_frame(ws, timeout=15)
            assert frame[0] == 3 and frame[1] == "boot-1", frame
            payload: dict[str, Any] = frame[2]
            return payload
        finally:
            await ws.close()

    return asyncio.run(go())


def _daemon_pythons(runtime: NodeRed) -> list[str]:
    pythons = []
    for pid in runtime.daemon_pids():
        try:
            pythons.append(os.readlink(f"/proc/{pid}/exe"))
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            pythons.append(cmd)
        except OSError:
            pass
    return pythons


def test_fresh_install_builds_its_engine_and_runs_an_example(
    tmp_path: Path, tarball: Path, stop_after: list[NodeRed]
) -> None:
    user_dir = tmp_path / "node-red"
    started = time.monotonic()
    npm_install(user_dir, tarball)
    npm_s = time.monotonic() - started

    runtime = InstalledNodeRed(user_dir, free_port())
    stop_after.append(runtime)
    runtime.start()
    status, flow = runtime.http("GET", f"/library/examples/flows/{PACKAGE}/csms-basic")
    assert status == 200, flow
    # the script both dialogs load is in the tarball and served to the editor
    status, script = runtime.http("GET", f"/resources/{PACKAGE}/ocpp-versions.js")
    assert status == 200 and "OcppNodesVersions" in str(script), (status, script)
    (csms,) = [node for node in flow if node["type"] == "CSMS"]
    port = free_port()
    csms["port"] = str(port)
    watch = StatusWatch(runtime.base_url)
    try:
        provision_started = time.monotonic()
        runtime.deploy(flow)
        wait_until(
            lambda: "installing engine" in watch.texts(csms["id"]),
            30,
            what="status 'installing engine'",
        )
        # Node-RED is not held up meanwhile: the admin API answers at once.
        if "OCPP engine installed" not in runtime.log():
            asked = time.monotonic()
            assert runtime.http("GET", "/flows", timeout=5)[0] == 200
            assert time.monotonic() - asked < 2
        wait_until(
            lambda: "ready (pid" in runtime.log(),
            INSTALL_TIMEOUT,
            interval=0.5,
            what="the engine to be installed and ready",
        )
        provision_s = time.monotonic() - provision_started
        venv = user_dir / "ocpp-nodes" / "venv"
        stamp = json.loads((venv / "ocpp-nodes-stamp.json").read_text())
        assert (
            stamp["package"]
            == json.loads((REPO_ROOT / "js_shim" / "package.json").read_text())["version"]
        )
        assert stamp["wheel"].startswith("ocpp_nodes-") and len(stamp["sha256"]) == 64
        assert any(str(venv) in p for p in _daemon_pythons(runtime)), _daemon_pythons(runtime)

        wait_port(port)
        answer = _boot(f"ws://127.0.0.1:{port}/ocpp")
        assert answer["status"] == "Accepted", answer
        wait_until(
            lambda: (
                (watch.latest(csms["id"]) or {}).get("text") == "1 connected"
                or "1 connected" in watch.texts(csms["id"])
            ),
            10,
            what="status 1 connected",
        )
    finally:
        watch.close()
    print(f"npm install {npm_s:.1f} s, engine install + start {provision_s:.1f} s")

    # A second start reads the stamp and builds nothing.
    runtime.stop()
    first_run = len(runtime.log())
    mtime = (venv / "ocpp-nodes-stamp.json").stat().st_mtime
    again = time.monotonic()
    runtime.start()
    wait_until(lambda: "ready (pid" in runtime.log()[first_run:], 30, what="the engine ready again")
    assert "installing the OCPP engine" in runtime.log()[:first_run]
    assert "installing the OCPP engine" not in runtime.log()[first_run:]
    assert (venv / "ocpp-nodes-stamp.json").stat().st_mtime == mtime
    print(f"restart to engine ready: {time.monotonic() - again:.1f} s")
    wait_port(port)
    assert _boot(f"ws://127.0.0.1:{port}/ocpp")["status"] == "Accepted"


def test_a_broken_python_setting_leaves_node_red_running_and_says_what_to_do(
    tmp_path: Path, tarball: Path, stop_after: list[NodeRed]
) -> None:
    user_dir = tmp_path / "node-red"
    npm_install(user_dir, tarball)
    runtime = InstalledNodeRed(
        user_dir, free_port(), extra={"ocppNodes": {"python": "/nonexistent/python"}}
    )
    stop_after.append(runtime)
    runtime.start()
    status, flow = runtime.http("GET", f"/library/examples/flows/{PACKAGE}/csms-basic")
    assert status == 200, flow
    # the script both dialogs load is in the tarball and served to the editor
    status, script = runtime.http("GET", f"/resources/{PACKAGE}/ocpp-versions.js")
    assert status == 200 and "OcppNodesVersions" in str(script), (status, script)
    (csms,) = [node for node in flow if node["type"] == "CSMS"]
    csms["port"] = str(free_port())
    watch = StatusWatch(runtime.base_url)
    try:
        runtime.deploy(flow)
        wait_until(
            lambda: (watch.latest(csms["id"]) or {}).get("text") == "no python",
            20,
            what="status 'no python'",
        )
        assert watch.latest(csms["id"])["fill"] == "red"  # type: ignore[index]
    finally:
        watch.close()
    runtime.wait_for_log("cannot start the OCPP engine")
    line = next(x for x in runtime.log().splitlines() if "cannot start the OCPP engine" in x)
    assert "/nonexistent/python" in line
    assert "settings.js" in line and "OCPP_NODES_PYTHON" in line, line
    # Node-RED itself goes on: the admin API answers, no venv was built.
    status, _ = runtime.http("GET", "/flows")
    assert status == 200
    assert runtime.proc is not None and runtime.proc.poll() is None
    assert not (user_dir / "ocpp-nodes").exists()
