"""A real Node-RED runtime for end-to-end tests, with the checkout's shim loaded.

Theory of operation:

1. A fresh user directory (a temp dir) gets `settings.js` from
   `scripts/prepare_userdir.py`: editor and admin API on 127.0.0.1 and a free
   port, `ocppNodes.python` = the interpreter running the tests (so the daemon
   is this checkout's `ocpp_nodes`), and the shim symlinked into its
   `node_modules`.
2. `tools/node/node_modules/.bin/node-red` runs as a child process in its own
   session, stdout and stderr going to `<user dir>/node-red.log`; the
   environment carries a marker (`OCPP_NODES_TEST_RUN=<random>`) that the
   daemon inherits, so the processes of this run can be found again.
3. `deploy(nodes)` POSTs a full deployment (credentials as a `credentials`
   property on a node, as the admin API takes them).
4. `stop()` sends SIGTERM to Node-RED (SIGKILL after a grace period), then
   waits for every process of the run to end and returns the `ocpp_nodes`
   daemons that did not: a daemon must exit when Node-RED does. Whatever is
   left is killed, so a failing test leaves nothing running.

Every wait here is bounded.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))

import deploy_flow  # noqa: E402
import prepare_userdir  # noqa: E402

__all__ = [
    "MARKER_ENV",
    "NODE_RED_BIN",
    "NodeRed",
    "free_port",
    "node_red_missing_reason",
    "proc_alive",
    "running_node_red",
    "wait_until",
]

NODE_RED_BIN = REPO_ROOT / "tools" / "node" / "node_modules" / ".bin" / "node-red"
NODE_RED_PKG = REPO_ROOT / "tools" / "node" / "node_modules" / "node-red"
ARTIFACTS = REPO_ROOT / "test-artifacts"
MARKER_ENV = "OCPP_NODES_TEST_RUN"

T = TypeVar("T")


def node_red_missing_reason() -> str | None:
    """Why Node-RED cannot run here, or None when it can."""
    if not (NODE_RED_PKG / "package.json").is_file() or not NODE_RED_BIN.exists():
        return "tools/node/node_modules/node-red is not installed (run `make setup`)"
    if shutil.which("node") is None:
        return "node is not on PATH"
    return None


def _listening_ports() -> range:
    """Ports for the tests' servers: outside the kernel's ephemeral range.

    A port the kernel hands out for ``bind(0)`` comes from the same range as
    the local ports of outgoing connections: with thousands of them (the
    redeploy, limits and load tests), one could take a test server's port
    between ``free_port()`` and the server's bind ("port busy").
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(n) for n in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    if low > 11024:
        return range(low - 10000, low)
    return range(high + 1, 65536)


_PORTS = _listening_ports()
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port that nothing listens on right now, outside the ephemeral range,
    not handed out before by this process."""
    while len(_handed_out) < len(_PORTS):
        port = _PORTS[secrets.randbelow(len(_PORTS))]
        if port in _handed_out:
            continue
        _handed_out.add(port)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port left in {_PORTS}")


def wait_until(
    probe: Callable[[], T | None], timeout: float, interval: float = 0.2, what: str = "condition"
) -> T:
    """Call `probe` until it returns something truthy, and return that.

    Raises:
        TimeoutError: `probe` stayed falsy for `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _proc_environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def proc_alive(pid: int) -> bool:
    """True when the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class NodeRed:
    """One running Node-RED (see the module docstring). Use `running_node_red()`."""

    def __init__(
        self, user_dir: Path, port: int, settings: dict[str, object] | None = None
    ) -> None:
        self.user_dir = user_dir
        self.port = port
        self.settings = settings  # extra top-level settings.js entries
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = user_dir / "node-red.log"
        self.marker = secrets.token_hex(8)
        self.proc: subprocess.Popen[bytes] | None = None
        self._known_pids: set[int] = set()

    # -- lifecycle -------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start Node-RED and wait until its admin API answers."""
        self.prepare()
        self.launch(self.environment(), timeout)

    def prepare(self) -> None:
        """Write the user dir: settings.js and the linked shim."""
        prepare_userdir.prepare(
            self.user_dir, self.port, sys.executable, log_level="debug", extra=self.settings
        )

    def environment(self) -> dict[str, str]:
        """Node-RED's environment: this run's marker, the checkout's Python."""
        env = dict(os.environ)
        env[MARKER_ENV] = self.marker
        env["OCPP_NODES_PYTHON"] = sys.executable
        return env

    def launch(self, env: dict[str, str], timeout: float) -> None:
        """Run node-red on the prepared user dir; return once the admin API answers."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(NODE_RED_BIN), "-u", str(self.user_dir), "-p", str(self.port)],
                cwd=self.user_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"node-red exited with {self.proc.returncode} while starting:\n"
                    + self.log_tail()
                )
            try:
                deploy_flow.wait_for_admin(self.base_url, timeout=1.0)
                return
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"Node-RED admin API not up after {timeout}s:\n{self.log_tail()}"
                    ) from None

    def run_pids(self) -> set[int]:
        """Processes of this run still alive: Node-RED's descendants and marked ones."""
        pids: set[int] = set()
        if self.proc is not None and self.proc.poll() is None:
            pids |= _descendants(self.proc.pid)
        needle = f"{MARKER_ENV}={self.marker}".encode()
        for pid in _all_pids():
            if pid != os.getpid() and needle in _proc_environ(pid):
                pids.add(pid)
        if self.proc is not None:
            pids.discard(self.proc.pid)
        return {pid for pid in pids if proc_alive(pid)}

    def daemon_pids(self) -> set[int]:
        """The `ocpp_nodes` daemons of this run that are alive now (remembered for `stop`)."""
        pids = {pid for pid in self.run_pids() if "ocpp_nodes" in _proc_cmdline(pid)}
        self._known_pids |= pids
        return pids

    def stop(self, grace: float = 10.0, daemon_grace: float = 15.0) -> dict[int, str]:
        """Stop Node-RED and return {pid: cmdline} of `ocpp_nodes` processes that outlived it.

        `daemon_grace` counts from Node-RED's exit and is longer than the daemon's
        own bound on its shutdown (10 s), so only a daemon that would never exit
        is reported. Everything of the run still alive after the grace periods
        is killed.
        """
        if self.proc is None:
            return {}
        self._known_pids |= self.run_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._known_pids |= self.run_pids()
        deadline = time.monotonic() + daemon_grace
        while time.monotonic() < deadline:
            if not any(proc_alive(pid) for pid in self._known_pids | self.run_pids()):
                break
            time.sleep(0.1)
        leftovers: dict[int, str] = {}
        for pid in self._known_pids | self.run_pids():
            if not proc_alive(pid):
                continue
            cmdline = _proc_cmdline(pid)
            if "ocpp_nodes" in cmdline:
                leftovers[pid] = cmdline
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc = None
        return leftovers

    # -- admin API and HTTP ----------------------------------------------------

    def deploy(self, nodes: list[dict[str, Any]]) -> str:
        """Full deployment of `nodes` (credentials included); returns the flows revision."""
        self._known_pids |= self.run_pids()
        rev = deploy_flow.deploy(self.base_url, nodes)
        self._known_pids |= self.run_pids()
        return rev

    def flows(self) -> list[dict[str, Any]]:
        return deploy_flow.get_flows(self.base_url)

    def http(
        self, method: str, path: str, body: object = None, timeout: float = 10.0
    ) -> tuple[int, Any]:
        """A request to an `http in` endpoint (or the admin API); returns (status, JSON or text)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read().decode()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def wait_for_endpoint(
        self, method: str, path: str, body: object = None, timeout: float = 20.0
    ) -> tuple[int, Any]:
        """Repeat a request while it gets 404: a deploy's answer can come before its
        `http in` routes exist. Returns the first other (status, body)."""

        def probe() -> tuple[int, Any] | None:
            status, answer = self.http(method, path, body)
            return None if status == 404 else (status, answer)

        return wait_until(probe, timeout, what=f"{method} {path} to be routed")

    # -- log -------------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(self, text: str, timeout: float = 20.0) -> None:
        wait_until(lambda: text in self.log(), timeout, what=f"{text!r} in the Node-RED log")

    def save_log(self, name: str) -> Path:
        """Copy the log to test-artifacts/<name>.log (kept for CI inspection)."""
        ARTIFACTS.mkdir(exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        dest = ARTIFACTS / f"{safe}.node-red.log"
        dest.write_text(self.log())
        return dest


@contextmanager
def running_node_red(
    user_dir: Path, name: str, timeout: float = 60.0, settings: dict[str, object] | None = None
) -> Iterator[NodeRed]:
    """Start Node-RED in `user_dir`; on exit stop it and assert no daemon outlived it."""
    runtime = NodeRed(user_dir, free_port(), settings)
    try:
        runtime.start(timeout=timeout)
        yield runtime
    finally:
        leftovers = runtime.stop()
        runtime.save_log(name)
    assert not leftovers, f"ocpp_nodes daemon(s) outlived Node-RED: {leftovers}"
