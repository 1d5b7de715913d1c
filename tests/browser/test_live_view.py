"""The live view (flows/csms-live-view.json) in headless Chromium, with 100 stations.

A real Node-RED (tests/nodered.py, the FlowFuse Dashboard from tools/node)
runs the example flow on a free port, with its CS Auth list replaced by the
stations of this test: 100 from the benchmark generator (bench/loadgen.py,
interval mode, a Heartbeat a second each, OCPP 1.6, 2.0.1 and 2.1 round-robin)
and one from the Python `ocpp` package (tests/peers/reset_station.py) that
answers Reset: the generator's stations answer every CSMS call with an empty
payload, which is not a valid ResetResponse. tests/browser/live-view.test.js
then drives the dashboard page; it leaves its screenshot in
.local/screenshots/live-view.png (`make screenshots` copies it to docs/images/).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from tests.browser.test_editor import SCREENSHOTS, browser_missing_reason, run_browser_test
from tests.flowkit import wait_port
from tests.nodered import REPO_ROOT, free_port, running_node_red

pytestmark = pytest.mark.nodered

STATIONS = 100
VERSIONS = ("1.6", "2.0.1", "2.1")
BENCH_PASSWORD = "bench-password"
RESET_STATION, RESET_PASSWORD = "CS-RESET", "cs-reset-password"


def live_view_flow(port: int, auth: dict[str, str]) -> list[dict[str, Any]]:
    """flows/csms-live-view.json with its CSMS on `port` and `auth` as its CS Auth list."""
    nodes: list[dict[str, Any]] = json.loads(
        (REPO_ROOT / "flows" / "csms-live-view.json").read_text()
    )
    (csms,) = [n for n in nodes if n["type"] == "CSMS"]
    csms["port"] = str(port)
    csms["credentials"] = {"basic_auths": json.dumps(auth)}
    # the benchmark generator's stations all come from 127.0.0.1
    csms["handshakes_per_address"] = 0
    return nodes


class Lines:
    """The lines a child process prints, read by a thread, waited for with a bound."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> None:
        while text not in self.seen:
            try:
                self.seen.append(self._queue.get(timeout=timeout))
            except queue.Empty:
                raise TimeoutError(f"{text!r} not printed in {timeout} s: {self.seen}") from None

    def drain(self) -> list[str]:
        while not self._queue.empty():
            self.seen.append(self._queue.get_nowait())
        return self.seen


@contextmanager
def child(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process (stdout piped, stderr to `log`), ended when the block is left."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
        )
        try:
            yield proc
        finally:
            if proc.stdin:
                proc.stdin.close()  # the reset station stops at end of input
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_live_view_in_headless_chromium(tmp_path: Path) -> None:
    reason = browser_missing_reason()
    if reason:
        pytest.skip(reason)
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ocpp"
    auth = {f"bench{i:05d}": BENCH_PASSWORD for i in range(STATIONS)}
    auth[RESET_STATION] = RESET_PASSWORD
    loadgen = [
        sys.executable,
        str(REPO_ROOT / "bench" / "loadgen.py"),
        f"--url={url}",
        f"--stations={STATIONS}",
        f"--password={BENCH_PASSWORD}",
        f"--versions={','.join(VERSIONS)}",
        "--mode=interval",
        "--interval=1",
        "--warmup=0",
        "--duration=300",  # ended by the test long before
    ]
    station = [
        sys.executable,
        str(REPO_ROOT / "tests" / "peers" / "reset_station.py"),
        f"--url={url}",
        f"--cb-id={RESET_STATION}",
        f"--password={RESET_PASSWORD}",
        "--heartbeat=600",  # one at boot only: its last message stays the Reset's answer
    ]
    with running_node_red(tmp_path / "node-red", "test_live_view_in_headless_chromium") as runtime:
        runtime.deploy(live_view_flow(port, auth))
        wait_port(port)
        with (
            child(loadgen, tmp_path / "loadgen.err") as bench,
            child(station, tmp_path / "station.err") as reset_station,
        ):
            assert reset_station.stdout is not None
            said = Lines(reset_station.stdout)
            said.wait_for("booted Accepted", timeout=60)
            returncode, output = run_browser_test(
                "live-view.test.js",
                180,
                OCPP_DASHBOARD_URL=f"{runtime.base_url}/dashboard",
                OCPP_STATIONS=str(STATIONS + 1),
                OCPP_VERSIONS=",".join(VERSIONS),
                OCPP_RESET_STATION=RESET_STATION,
            )
            assert bench.poll() is None, (tmp_path / "loadgen.err").read_text()
            assert returncode == 0, output + runtime.log_tail(40)
            assert "pass 6" in output and "fail 0" in output, output
            # the station got the Reset the button sent (2.0.1: type Immediate)
            said.wait_for("reset Immediate", timeout=10)
    assert (SCREENSHOTS / "live-view.png").is_file()
