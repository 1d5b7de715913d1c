"""Benchmark: ocpp-nodes vs @anl-ioc/node-red-contrib-ocpp2 vs a do-nothing server.

`make bench` runs this. Everything listens on 127.0.0.1 and every phase is
bounded in time. Steps:

1. Two Node-RED 4.1 runtimes from tools/node, each with its own user dir under
   .local/bench/: `ours` (the checkout's shim symlinked, as the tests do) and
   `old` (the npm package installed there with npm). Both get the flow of
   bench/flows.py: a CSMS node and a function node answering the stations.
   A third system, bench/null_server.py, answers every CALL at once.
2. For each scenario (Heartbeat / MeterValues x N stations) and each system,
   bench/loadgen.py runs the stations while CPU and RSS of the system's
   processes (Node-RED, our daemon; the null server) are sampled.
3. Capacity: 10,000 stations, one Heartbeat each every 10 s for 2 minutes.
4. CS side: a flow sends Heartbeats through our CS node to the null server as
   fast as the answers come; the null server measures flow -> wire delay.
5. Versions (ours only): Heartbeat and MeterValues at N=100 with every station
   on OCPP 1.6, 2.0.1 or 2.1, and a mix (a third on each), the groups in short
   turns (see `versions_scenario`); `--versions-only` runs just this and keeps
   the other results of bench/results/last-run.json.
6. Fleet (issue 24, ours only): a CSMS node listening itself and one in fleet
   mode (an ``ocpp-nodes gateway`` and Mosquitto between it and its stations)
   in one Node-RED, N=100 stations on each in turns; then 10,000 stations over
   two gateways, their memory (see `fleet_scenario`); `--fleet-only` runs just
   this and keeps the other results of bench/results/last-run.json.
7. Results go to bench/results/last-run.json; docs/benchmarks.md and
   docs/benchmarks.png are written from them (`--report-only` rewrites the
   docs from the saved JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(BENCH))

import check_payloads  # noqa: E402
import deploy_flow  # noqa: E402
import mqtt_floor  # noqa: E402
import prepare_userdir  # noqa: E402
import report  # noqa: E402
import wakeup  # noqa: E402

import flows  # noqa: E402

sys.path.insert(0, str(REPO))
from ocpp_nodes.transport.passwords import make_hash  # noqa: E402
from tests.fleetkit import GatewayProcess, Mosquitto, mosquitto_missing_reason  # noqa: E402

NODE_RED_BIN = REPO / "tools" / "node" / "node_modules" / ".bin" / "node-red"
WORK = REPO / ".local" / "bench"
RESULTS = BENCH / "results" / "last-run.json"
OLD_PACKAGE = "@anl-ioc/node-red-contrib-ocpp2"
OLD_VERSION = "1.0.1-beta.3"
PASSWORD = "bench-password"
SYSTEMS = ("ours", "old", "null")


def log(text: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    print(f"[bench {stamp}] {text}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 65536
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


@contextlib.contextmanager
def others_paused(systems: dict[str, Any], keep: str) -> Iterator[None]:
    """Every process of the systems other than ``keep`` stopped (SIGSTOP) meanwhile.

    A system between its runs is not quiet: Node-RED goes on collecting
    garbage for a while after a run (the old package's heap grows during one,
    and 10-11 % of a core went to it about 30 s after its run, in the middle
    of the next system's). Stopped processes take no CPU from the run.
    """
    stopped: list[psutil.Process] = []
    try:
        for name, system in systems.items():
            if name == keep or system.proc is None:
                continue
            for proc in tree(system.proc.pid):
                try:
                    proc.suspend()
                except psutil.Error:
                    continue
                stopped.append(proc)
        yield
    finally:
        for proc in stopped:
            with contextlib.suppress(psutil.Error):
                proc.resume()


# -- systems under test --------------------------------------------------------


class NodeRedSystem:
    """Node-RED with one of the two packages; the CSMS listens on `ws_port`."""

    def __init__(
        self,
        name: str,
        user_dir: Path,
        env: dict[str, str] | None = None,
        package: str | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.name = name
        self.package = package or name  # "ours" or "old"
        self.user_dir = user_dir
        self.env = env or {}
        #: the engine's metrics endpoint (ocppNodes.metrics) when set
        self.metrics_port = metrics_port
        self.port = free_port()
        self.ws_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ocpp"

    def start(self) -> None:
        extra = None
        if self.metrics_port is not None:
            extra = {
                "ocppNodes": {"python": sys.executable, "metrics": {"port": self.metrics_port}}
            }
        prepare_userdir.write_settings(
            self.user_dir, self.port, sys.executable, log_level="warn", extra=extra
        )
        if self.package == "ours":
            prepare_userdir.link_shim(self.user_dir)
        else:
            ensure_old_package(self.user_dir)
        for stale in ("flows.json", "flows_cred.json"):
            (self.user_dir / stale).unlink(missing_ok=True)
        env = dict(os.environ, OCPP_NODES_PYTHON=sys.executable, **self.env)
        logf = (self.user_dir / "node-red.log").open("wb")
        self.proc = subprocess.Popen(
            [str(NODE_RED_BIN), "-u", str(self.user_dir), "-p", str(self.port)],
            cwd=self.user_dir,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deploy_flow.wait_for_admin(self.base_url, timeout=90)

    def deploy(self, nodes: list[dict[str, Any]]) -> None:
        deploy_flow.deploy(self.base_url, nodes, timeout=60)

    def deploy_csms(self, stations: int) -> None:
        self.deploy(flows.csms_flow(self.ws_port, package=self.package, stations=stations))
        wait_listening(self.ws_port, 60)

    def pids(self) -> dict[str, int]:
        assert self.proc is not None
        out = {"node-red": self.proc.pid}
        for p in tree(self.proc.pid)[1:]:
            try:
                if "ocpp_nodes" in " ".join(p.cmdline()):
                    out["daemon"] = p.pid
            except psutil.Error:
                pass
        return out

    def stop(self) -> None:
        if self.proc is None:
            return
        procs = tree(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        _gone, alive = psutil.wait_procs(procs, timeout=15)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.proc = None


class NullSystem:
    name = "null"

    def __init__(self) -> None:
        self.ws_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ocpp"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "null_server.py"), "--port", str(self.ws_port)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError(f"null server did not start: {line!r}")

    def deploy_csms(self, stations: int) -> None:
        pass

    def pids(self) -> dict[str, int]:
        assert self.proc is not None
        return {"server": self.proc.pid}

    def http(self, method: str, path: str) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.ws_port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


def wait_listening(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def ensure_old_package(user_dir: Path) -> None:
    pkg = user_dir / "node_modules" / "@anl-ioc" / "node-red-contrib-ocpp2" / "package.json"
    if pkg.is_file():
        return
    log(f"installing {OLD_PACKAGE}@{OLD_VERSION} into {user_dir} (npm)")
    user_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
            str(user_dir),
            f"{OLD_PACKAGE}@{OLD_VERSION}",
        ],
        check=True,
        timeout=300,
    )


# -- CPU / RSS sampling ----------------------------------------------------------


class Sampler:
    """Samples cumulative CPU seconds, RSS and run-queue waits of named process trees.

    A sample every `every` s. The run-queue wait (`/proc/<pid>/task/*/schedstat`,
    Linux) is the time the trees' threads were ready to run but waited for a
    core (taken by the other processes of the run or by anything else).
    """

    def __init__(self, pids: dict[str, int], every: float = 0.25) -> None:
        self.pids = pids
        self.every = every
        self.samples: list[tuple[float, dict[str, tuple[float, int, float]]]] = []
        self._stop = threading.Event()
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add_tree(self, name: str, pid: int) -> None:
        self.pids[name] = pid

    def _sample(self) -> None:
        now = time.time()
        row: dict[str, tuple[float, int, float]] = {}
        for name, pid in list(self.pids.items()):
            cpu, rss, wait = 0.0, 0, 0.0
            procs = (
                tree(pid)
                if name.startswith("loadgen")
                else [self._procs.get(name) or psutil.Process(pid)]
            )
            for p in procs:
                try:
                    with p.oneshot():
                        t = p.cpu_times()
                        cpu += t.user + t.system + t.children_user + t.children_system
                        rss += p.memory_info().rss
                except psutil.Error:
                    pass
                wait += run_queue_wait(p.pid)
            row[name] = (cpu, rss, wait)
        self.samples.append((now, row))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def cpu_seconds(self, name: str, start: float, end: float) -> float | None:
        """CPU seconds of tree ``name`` in [start, end]: its cumulative CPU time
        interpolated linearly between the samples on either side of each edge."""
        points = [(t, row[name][0]) for t, row in self.samples if name in row]

        def at(when: float) -> float | None:
            for (t0, c0), (t1, c1) in zip(points, points[1:], strict=False):
                if t0 <= when <= t1:
                    return c0 + (c1 - c0) * (when - t0) / max(1e-9, t1 - t0)
            return None

        a, b = at(start), at(end)
        return None if a is None or b is None else round(b - a, 6)

    def window(self, start: float | None, end: float | None) -> dict[str, dict[str, float]]:
        """CPU and run-queue wait (% of one core) and RSS (MiB: max, at end) of each
        tree in [start, end]."""
        if not self.samples:
            return {}
        start = start if start is not None else self.samples[0][0]
        end = end if end is not None else self.samples[-1][0]
        inside = [s for s in self.samples if start - self.every <= s[0] <= end + self.every]
        if len(inside) < 2:
            inside = self.samples
        t0, first = inside[0]
        _, last = inside[-1]
        out: dict[str, dict[str, float]] = {}
        for name in first:
            rows = [(t, r[name]) for t, r in inside if name in r]
            # cumulative counters: the sample with the most CPU is the last one
            # while the tree was alive (a finished generator reads as 0)
            t1, top = max(rows, key=lambda tr: tr[1][0])
            cpu = (top[0] - first[name][0]) / max(1e-9, t1 - t0) * 100
            wait = (top[2] - first[name][2]) / max(1e-9, t1 - t0) * 100
            out[name] = {
                "cpu_pct": round(cpu, 1),
                "run_queue_wait_pct": round(wait, 1),
                "rss_max_mib": round(max(r[name][1] for _, r in inside if name in r) / 2**20, 1),
                "rss_end_mib": round(last.get(name, (0, 0))[1] / 2**20, 1),
            }
        return out


def run_queue_wait(pid: int) -> float:
    """Seconds the threads of `pid` have waited for a core (0 where Linux does not say)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return total / 1e9


# -- scenarios -------------------------------------------------------------------


def wakeup_probe() -> dict[str, float]:
    """How long waking a process on the other core takes right now.

    bench/wakeup.py's Unix-socket ping-pong, 2,000 round trips, the two
    processes pinned to two different cores. The machine's speed moves with
    what else runs on its host; taken next to each run, this lets a run's
    tail be set against it.
    """
    return wakeup.ping_pong("unix", cores=2, n=2000)


def run_loadgen(
    system: Any,
    args: list[str],
    timeout: float,
    profile: Path | None = None,
    every: float = 0.25,
) -> dict[str, Any]:
    out = WORK / "loadgen-out.json"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(BENCH / "loadgen.py"),
        "--url",
        system.url,
        "--password",
        PASSWORD,
        "--json-out",
        str(out),
        *args,
    ]
    pids = system.pids()
    with Sampler(dict(pids), every=every) as sampler:
        gen = subprocess.Popen(cmd)
        sampler.add_tree("loadgen", gen.pid)
        spy = None
        if profile is not None and "daemon" in pids and py_spy():
            spy = start_py_spy(pids["daemon"], profile)
        try:
            gen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            gen.kill()
            gen.wait()
            raise
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
    result: dict[str, Any] = json.loads(out.read_text())
    result["resources"] = sampler.window(result.get("rec_start"), result.get("rec_end"))
    for turn in result.get("slices", []):  # loadgen --groups: each turn's CPU seconds
        turn["cpu_s"] = {
            name: sampler.cpu_seconds(name, turn["rec_start"], turn["rec_end"])
            for name in sampler.pids
        }
    return result


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            py_spy() or "py-spy",
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize_profile(raw: Path, top: int = 15) -> list[dict[str, Any]]:
    """Top functions by self and by inclusive samples from py-spy's collapsed stacks."""
    if not raw.is_file():
        return []
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for f in set(frames):
            incl_n[f] = incl_n.get(f, 0) + n
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
    rows = sorted(self_n.items(), key=lambda kv: -kv[1])[:top]
    return [
        {
            "frame": f,
            "self_pct": round(100 * n / total, 1),
            "incl_pct": round(100 * incl_n.get(f, 0) / total, 1),
        }
        for f, n in rows
    ] + [
        {
            "frame": f,
            "self_pct": round(100 * self_n.get(f, 0) / total, 1),
            "incl_pct": round(100 * n / total, 1),
            "inclusive": True,
        }
        for f, n in sorted(incl_n.items(), key=lambda kv: -kv[1])[: top * 2]
    ]


def load_scenarios(
    systems: dict[str, Any], plan: dict[str, Any], results: dict[str, Any], profile: bool
) -> None:
    """Each (action, N) is run `repeat` times; within a repetition the systems run back
    to back, in an order rotated per repetition, so that drift of the shared machine
    falls on all of them alike. The report takes medians."""
    names = list(systems)
    for action in plan["actions"]:
        for n in plan["stations"]:
            for rep in range(plan["repeat"]):
                shift = rep % len(names)
                for name in names[shift:] + names[:shift]:
                    with others_paused(systems, keep=name):
                        load_run(systems[name], name, action, n, rep, plan, results, profile)


def load_run(
    system: Any,
    name: str,
    action: str,
    n: int,
    rep: int,
    plan: dict[str, Any],
    results: dict[str, Any],
    profile: bool,
) -> None:
    procs = 1 if n <= 1000 else 2
    args = [
        "--stations",
        str(n),
        "--action",
        action,
        "--duration",
        str(plan["duration"]),
        "--warmup",
        str(plan["warmup"]),
        "--procs",
        str(procs),
        "--connect-timeout",
        "90",
    ]
    prof = None
    if (
        profile
        and name == "ours"
        and n == plan["profile_at"]
        and action == "MeterValues"
        and rep == 0
    ):
        prof = WORK / f"py-spy-daemon-{action}-{n}.txt"
        prof.unlink(missing_ok=True)
    log(f"{action} N={n} {name} (run {rep + 1} of {plan['repeat']})")
    before = wakeup_probe()
    r = run_loadgen(system, args, timeout=plan["duration"] + 300, profile=prof)
    r.update(
        action=action, n=n, system=name, rep=rep, wakeup_before=before, wakeup_after=wakeup_probe()
    )
    if prof is not None:
        r["profile"] = summarize_profile(prof)
    r.pop("latencies_us", None)
    results["scenarios"].append(r)
    lat = r["latency_ms"]
    log(
        f"  -> {r['rps']:.0f} rt/s p50 {lat['p50']} p99 {lat['p99']} ms, "
        f"connected {r['connected']}/{n}, failed {r['failed']}, lost {r['lost']}, "
        f"res {r['resources']}"
    )
    save(results)
    time.sleep(1)


#: the versions scenario's groups of stations: label -> their versions (the first
#: group is the baseline; "mixed": station i on the (i mod 3)-th version; the
#: control is the baseline again, loadgen calls it "2.0.1#2": its ratio to the
#: baseline shows how far two identical groups come apart in the same run)
VERSION_GROUPS = {
    "2.0.1": ["2.0.1"],
    "1.6": ["1.6"],
    "2.1": ["2.1"],
    "mixed": ["1.6", "2.0.1", "2.1"],
    "2.0.1#2": ["2.0.1"],
}


def versions_scenario(
    systems: dict[str, Any], plan: dict[str, Any], results: dict[str, Any], meta: dict[str, Any]
) -> None:
    """Our node with N stations of each version, N mixed and N on 2.0.1 again, in turns.

    For each action one generator (bench/loadgen.py ``--groups``) connects and
    boots the N stations of every group, then lets the groups run in turns of a
    few seconds, one group at a time, in rounds of one turn per group whose
    orders form Williams squares (``loadgen.rotation_order``); the fifth group,
    2.0.1 again, is the control. Separate runs of 20 s each, 2.0.1 before and
    after each other version, did not do on this shared machine: its speed
    moved by a factor of two to five within minutes, so that two 2.0.1 runs a
    minute apart differed more than the versions. Each turn's CPU is read from
    the Sampler's samples (every 0.1 s, interpolated at the turn's edges).

    Runs alone (the other systems stopped). The payloads of every version are
    checked against the engine's schemas first (bench/check_payloads.py). Each
    group's first turn is not recorded (warm-up).
    """
    vplan = plan["versions"]
    problems = check_payloads.check()
    if problems:
        raise RuntimeError("bench payloads not schema-valid: " + "; ".join(problems))
    ours = systems["ours"]
    block: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **meta,
        "plan": vplan,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "runs": [],
    }
    results["versions"] = block
    started = time.time()
    with others_paused(systems, keep="ours"):
        for action in vplan["actions"]:
            versions_run(ours, action, vplan, block)
            save(results)
    block["elapsed_s"] = round(time.time() - started)
    block["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    save(results)


def turn_args(plan: dict[str, Any]) -> list[str]:
    """bench/loadgen.py's arguments for groups taking turns, from a scenario's plan."""
    return [
        "--rounds",
        str(plan["rounds"]),
        "--slice",
        str(plan["slice_s"]),
        "--settle",
        str(plan["settle_s"]),
        "--warm-turn",
        str(plan["warm_turn_s"]),
        "--connect-timeout",
        "90",
    ]


def labelled_turn_args(
    n: int, action: str, urls: dict[str, str], plan: dict[str, Any]
) -> list[str]:
    """bench/loadgen.py's arguments for N stations (OCPP 2.0.1) on each of ``urls``
    (group label -> CSMS URL), the groups taking turns."""
    return [
        "--stations",
        str(n),
        "--action",
        action,
        "--groups",
        "/".join("2.0.1" for _ in urls),
        "--group-urls",
        ",".join(urls.values()),
        "--group-labels",
        ",".join(urls),
        *turn_args(plan),
    ]


def versions_run(system: Any, action: str, vplan: dict[str, Any], block: dict[str, Any]) -> None:
    n = vplan["n"]
    args = [
        "--stations",
        str(n),
        "--action",
        action,
        "--groups",
        "/".join(",".join(versions) for versions in VERSION_GROUPS.values()),
        *turn_args(vplan),
    ]
    turns = vplan["rounds"] * len(VERSION_GROUPS)
    log(
        f"versions: {action}, {len(VERSION_GROUPS)} groups of N={n} "
        f"({', '.join(VERSION_GROUPS)}), {turns} turns of {vplan['slice_s']} s"
    )
    before = wakeup_probe()
    timeout = (turns + len(VERSION_GROUPS)) * (vplan["slice_s"] + 35) + 300
    r = run_loadgen(system, args, timeout=timeout, every=0.1)
    r.update(action=action, n=n, system="ours", wakeup_before=before, wakeup_after=wakeup_probe())
    block["runs"].append(r)
    for label, group in r["groups"].items():
        lat = group["latency_ms"]
        daemon = report.cpu_us_per_rt_turns(r, label, ("daemon",))
        log(
            f"  -> {label}: {group['rps']:.0f} rt/s over {group['slices']} turns, p50 "
            f"{lat['p50']} p99 {lat['p99']} ms, daemon {daemon and round(daemon, 1)} µs CPU per rt"
        )
    log(
        f"  connected {r['connected']}/{r['stations']}, failed {r['failed']}, lost {r['lost']}, "
        f"callerrors {r['callerrors']}"
    )
    time.sleep(1)


#: the metrics scenario's groups: N stations on our Node-RED with the engine's
#: metrics off, N on a second one with them on (ocppNodes.metrics), in turns
METRICS_GROUPS = ("off", "on")
#: seconds between two scrapes of /metrics during the metrics scenario (a
#: Prometheus default is 15 s; more often here, so that the scrapes' cost counts)
SCRAPE_EVERY_S = 5.0


class SystemPair:
    """Two systems seen as one by run_loadgen: their processes named ``<name>-<group>``."""

    def __init__(self, systems: dict[str, NodeRedSystem]) -> None:
        self.systems = systems
        self.url = next(iter(systems.values())).url

    def pids(self) -> dict[str, int]:
        return {
            f"{name}-{group}": pid
            for group, system in self.systems.items()
            for name, pid in system.pids().items()
        }


@contextlib.contextmanager
def scraping(port: int, every: float) -> Iterator[list[float]]:
    """GET /metrics every ``every`` s meanwhile (as Prometheus would); yields each
    scrape's duration (s), which a failed scrape ends the scenario over."""
    took: list[float] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        while not stop.wait(every):
            start = time.monotonic()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    r.read()
            except OSError as exc:
                failures.append(exc)
                return
            took.append(time.monotonic() - start)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield took
    finally:
        stop.set()
        thread.join(timeout=15)
    if failures:
        raise RuntimeError(f"scraping /metrics failed: {failures[0]}")


def metrics_scenario(plan: dict[str, Any], results: dict[str, Any], meta: dict[str, Any]) -> None:
    """The cost of the engine's metrics: Heartbeat and MeterValues at N=100, metrics off
    vs on, in turns.

    Two Node-RED runtimes with our node and the same flow, one with
    ``ocppNodes.metrics`` set (and /metrics scraped every SCRAPE_EVERY_S s
    meanwhile), one without; one generator (loadgen ``--groups`` with
    ``--group-urls``) connects N stations to each, then lets the two groups run
    in turns a few seconds long, as the versions scenario does, so that both
    see the same machine. Reported: round trips per second of each, the median
    of the per-round ratios on/off, and daemon CPU per round trip.
    """
    mplan = plan["metrics"]
    block: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **meta,
        "plan": mplan,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "runs": [],
    }
    results["metrics"] = block
    metrics_port = free_port()
    pair = {
        "off": NodeRedSystem("ours-off", WORK / "ours-off", package="ours"),
        "on": NodeRedSystem("ours-on", WORK / "ours-on", package="ours", metrics_port=metrics_port),
    }
    started = time.time()
    try:
        for system in pair.values():
            log(f"metrics: starting {system.name}")
            system.start()
            system.deploy_csms(len(METRICS_GROUPS) * mplan["n"])  # loadgen --groups ids
        for action in mplan["actions"]:
            with scraping(metrics_port, SCRAPE_EVERY_S) as took:
                metrics_run(pair, action, mplan, block)
            block["runs"][-1]["scrapes_s"] = took
            save(results)
    finally:
        for system in pair.values():
            system.stop()
    block["elapsed_s"] = round(time.time() - started)
    block["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    save(results)


def metrics_run(
    pair: dict[str, NodeRedSystem], action: str, mplan: dict[str, Any], block: dict[str, Any]
) -> None:
    n = mplan["n"]
    args = labelled_turn_args(
        n, action, {group: pair[group].url for group in METRICS_GROUPS}, mplan
    )
    turns = mplan["rounds"] * len(METRICS_GROUPS)
    log(f"metrics: {action}, N={n} off and on, {turns} turns of {mplan['slice_s']} s")
    timeout = (turns + len(METRICS_GROUPS)) * (mplan["slice_s"] + 35) + 300
    r = run_loadgen(SystemPair(pair), args, timeout=timeout, every=0.1)
    r.update(action=action, n=n, system="ours")
    block["runs"].append(r)
    ratios = report.turn_ratios(r, "on", base="off")
    for group in METRICS_GROUPS:
        g = r["groups"][group]
        daemon = report.cpu_us_per_rt_turns(r, group, (f"daemon-{group}",))
        log(
            f"  -> metrics {group}: {g['rps']:.0f} rt/s over {g['slices']} turns, p50 "
            f"{g['latency_ms']['p50']} p99 {g['latency_ms']['p99']} ms, daemon "
            f"{daemon and round(daemon, 1)} µs CPU per rt"
        )
    q = report.quartiles(ratios)
    log(
        f"  -> on/off per round: median {q and round(q[1], 3)} (quartiles "
        f"{q and round(q[0], 3)}-{q and round(q[2], 3)}), connected {r['connected']}/"
        f"{r['stations']}, lost {r['lost']}, callerrors {r['callerrors']}"
    )
    time.sleep(1)


# -- fleet mode (issue 24) ------------------------------------------------------------

#: the fleet scenario's groups: N stations on a CSMS node that listens itself
#: (direct mode), N on a CSMS node in fleet mode of the same Node-RED, through
#: one gateway and Mosquitto; in turns
FLEET_GROUPS = ("direct", "fleet")
#: the fleet group's name on the broker (topics ocpp/<group>/...)
FLEET_GROUP = "bench"
#: PBKDF2 rounds of the hashes in the memory run's CS Auth list: logins stay cheap
#: for 10,000 stations on 2 cores (a plain entry would be published with 10,000)
FLEET_MEMORY_HASH_COST = 1000


#: Mosquitto's settings beyond tests/fleetkit.py's (its defaults: 20 QoS 1 messages in
#: flight per client, advertised as MQTT 5 Receive Maximum, and 1,000 queued per client,
#: beyond which it drops them); BENCH_MOSQUITTO_SETTINGS="" for its defaults
MOSQUITTO_SETTINGS = [
    line.strip()
    for line in os.environ.get(
        "BENCH_MOSQUITTO_SETTINGS", "max_inflight_messages 1000;max_queued_messages 100000"
    ).split(";")
    if line.strip()
]


class FleetSystem:
    """Node-RED, gateways and broker seen as one system by run_loadgen: their
    processes named ``node-red``, ``daemon``, ``gateway-<id>`` and ``mosquitto``."""

    def __init__(
        self, nodered: NodeRedSystem, gateways: list[GatewayProcess], broker: Mosquitto
    ) -> None:
        self.nodered = nodered
        self.gateways = gateways
        self.broker = broker
        self.url = nodered.url

    def pids(self) -> dict[str, int]:
        out = self.nodered.pids()
        for gateway in self.gateways:
            assert gateway.pid is not None
            out[gateway.name] = gateway.pid
        assert self.broker.pid is not None
        out["mosquitto"] = self.broker.pid
        return out


def wait_retained(broker: Mosquitto, topic: str, timeout: float) -> None:
    """Return once ``topic`` holds a retained message (the fleet node has published
    its auth list: gateways started then know every login)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(broker.username, broker.password)

    def connected(c: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        c.subscribe(topic, qos=1)

    def message(c: Any, userdata: Any, msg: Any) -> None:
        if msg.payload:
            got.set()

    client.on_connect = connected
    client.on_message = message
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while not got.wait(1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing retained on {topic} after {timeout} s")
            # a retained message arrives only on subscribing: ask again
            client.subscribe(topic, qos=1)
    finally:
        client.loop_stop()
        client.disconnect()


def fleet_scenario(plan: dict[str, Any], results: dict[str, Any], meta: dict[str, Any]) -> None:
    """Fleet mode against direct mode, side by side, and 10,000 stations' memory.

    1. Side by side (`fleet_side_by_side`): one Node-RED with two CSMS nodes and
       the same answering flow: one listening (direct), one in fleet mode; one
       ``ocpp-nodes gateway`` and one Mosquitto (tests/fleetkit.py's, MQTT 5,
       password file). One generator connects and boots N stations to the
       direct node and N to the gateway, then the two groups take turns as in
       the metrics scenario (loadgen ``--groups`` with ``--group-urls``): a
       ratio is the fleet group's round trips/s over the direct group's in the
       same round. CPU per round trip in each group's turns: direct, the
       engine (daemon); fleet, the engine + gateway + Mosquitto; Node-RED
       apart.
    2. The MQTT floor (`fleet_floor`, bench/mqtt_floor.py): the broker hops of
       a round trip alone, no OCPP, with fleet mode's client (paho-mqtt through
       ocpp_nodes.fleet.broker) and with gmqtt: the CPU any fleet round trip
       costs on top of direct mode's work.
    3. Memory (`fleet_memory`): a Node-RED with a fleet CSMS node, two
       gateways, Mosquitto; 10,000 stations, 5,000 to each gateway, connect,
       boot and send a Heartbeat every 10 s; RSS of every process and the
       time until all were connected.

    Skipped, saying why, when Mosquitto is not installed.
    """
    fplan = plan["fleet"]
    missing = mosquitto_missing_reason()
    if missing is not None:
        log(f"fleet scenario skipped: {missing}")
        results["fleet"] = {"skipped": missing}
        return
    block: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **meta,
        "commit": git_commit(),
        "plan": fplan,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "runs": [],
        "memory": None,
    }
    results["fleet"] = block
    started = time.time()
    if fplan["rounds"]:
        fleet_side_by_side(fplan, block, results)
    if fplan.get("floor_rounds"):
        fleet_floor(fplan, block, results)
    if fplan["memory_stations"]:
        fleet_memory(fplan, block, results)
    block["elapsed_s"] = round(time.time() - started)
    block["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    save(results)


def fleet_floor(fplan: dict[str, Any], block: dict[str, Any], results: dict[str, Any]) -> None:
    clients = ["paho"]
    try:
        import gmqtt  # noqa: F401
    except ImportError:
        log("mqtt floor: gmqtt is not installed (bench/requirements.txt): paho only")
    else:
        clients.append("gmqtt")
    log(f"mqtt floor: {', '.join(clients)}, {fplan['floor_rounds']} rounds of {fplan['floor_s']} s")
    block["mqtt_floor"] = mqtt_floor.measure(clients, fplan["floor_rounds"], fplan["floor_s"])
    save(results)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.stdout.strip() or "?"


@contextlib.contextmanager
def fleet_parts(
    work: Path, name: str, gateways: int
) -> Iterator[tuple[NodeRedSystem, list[GatewayProcess], Mosquitto]]:
    """Mosquitto, Node-RED (ours) and ``gateways`` gateways (not started: they need
    the flow's auth list on the broker first), stopped on exit; their logs in ``work``."""
    shutil.rmtree(work, ignore_errors=True)
    broker = Mosquitto(work / "mosquitto", settings=MOSQUITTO_SETTINGS)
    nodered = NodeRedSystem(name, work / "node-red", package="ours")
    started = [
        GatewayProcess(work / "gateways", broker, f"gw{i + 1}", FLEET_GROUP)
        for i in range(gateways)
    ]
    try:
        broker.start()
        nodered.start()
        yield nodered, started, broker
    finally:
        for gateway in started:
            gateway.stop()
        nodered.stop()
        broker.stop()


def start_gateways(
    gateways: list[GatewayProcess], broker: Mosquitto, stations: int, timeout: float
) -> None:
    """Start the gateways once the fleet node's auth list is on the broker (its last entry)."""
    last = flows.station_ids(stations)[-1]
    wait_retained(broker, f"ocpp/{FLEET_GROUP}/auth/{last}", timeout)
    for gateway in gateways:
        gateway.start(timeout=timeout)
        log(f"  {gateway.name} ready on port {gateway.port} (pid {gateway.pid})")


def fleet_side_by_side(
    fplan: dict[str, Any], block: dict[str, Any], results: dict[str, Any]
) -> None:
    n = fplan["n"]
    stations = len(FLEET_GROUPS) * n  # loadgen --groups numbers them across groups
    log("fleet: starting Mosquitto, Node-RED (direct and fleet CSMS nodes), 1 gateway")
    with fleet_parts(WORK / "fleet", "fleet", gateways=1) as (nodered, gateways, broker):
        auths = flows.auth_list(stations, PASSWORD)
        nodered.deploy(
            flows.csms_flow(nodered.ws_port, package="ours", stations=stations)
            + flows.fleet_csms_flow(
                broker.url, broker.username, broker.password, group=FLEET_GROUP, auths=auths
            )
        )
        wait_listening(nodered.ws_port, 60)
        start_gateways(gateways, broker, stations, timeout=120)
        system = FleetSystem(nodered, gateways, broker)
        for action in fplan["actions"]:
            fleet_run(system, action, fplan, block)
            save(results)


def fleet_run(
    system: FleetSystem, action: str, fplan: dict[str, Any], block: dict[str, Any]
) -> None:
    n = fplan["n"]
    urls = {"direct": system.nodered.url, "fleet": system.gateways[0].url}
    args = labelled_turn_args(n, action, {group: urls[group] for group in FLEET_GROUPS}, fplan)
    turns = fplan["rounds"] * len(FLEET_GROUPS)
    log(f"fleet: {action}, N={n} direct and fleet, {turns} turns of {fplan['slice_s']} s")
    load_before = [round(x, 2) for x in os.getloadavg()]
    timeout = (turns + len(FLEET_GROUPS)) * (fplan["slice_s"] + 35) + 300
    r = run_loadgen(system, args, timeout=timeout, every=0.1)
    r.update(
        action=action,
        n=n,
        system="ours",
        loadavg_before=load_before,
        loadavg_after=[round(x, 2) for x in os.getloadavg()],
    )
    block["runs"].append(r)
    for group in FLEET_GROUPS:
        g = r["groups"][group]
        server = report.cpu_us_per_rt_turns(r, group, report.fleet_names(r, group))
        nodered = report.cpu_us_per_rt_turns(r, group, ("node-red",))
        gen = report.turn_cpu_share(r, group, "loadgen")
        log(
            f"  -> {group}: {g['rps']:.0f} rt/s over {g['slices']} turns, p50 "
            f"{g['latency_ms']['p50']} p99 {g['latency_ms']['p99']} ms, server "
            f"{server and round(server, 1)} µs CPU per rt (+ Node-RED "
            f"{nodered and round(nodered, 1)}), loadgen {gen and round(gen * 100)} % of a core"
        )
    q = report.quartiles(report.turn_ratios(r, "fleet", base="direct"))
    log(
        f"  -> fleet/direct per round: median {q and round(q[1], 3)} (quartiles "
        f"{q and round(q[0], 3)}-{q and round(q[2], 3)}), connected {r['connected']}/"
        f"{r['stations']}, booted {r['booted']}, lost {r['lost']}, callerrors {r['callerrors']}"
    )
    time.sleep(1)


def fleet_memory(fplan: dict[str, Any], block: dict[str, Any], results: dict[str, Any]) -> None:
    total = fplan["memory_stations"]
    gateways_n = fplan["memory_gateways"]
    per = -(-total // gateways_n)
    log(f"fleet memory: hashing {total} CS Auth entries (PBKDF2, {FLEET_MEMORY_HASH_COST} rounds)")
    auths = json.dumps(
        {
            cb: make_hash(PASSWORD, "pbkdf2-sha256", cost=FLEET_MEMORY_HASH_COST)
            for cb in flows.station_ids(total)
        }
    )
    log(f"fleet memory: Mosquitto, Node-RED (a fleet CSMS node), {gateways_n} gateways")
    with fleet_parts(WORK / "fleet-memory", "fleet-memory", gateways_n) as parts:
        nodered, gateways, broker = parts
        nodered.deploy(
            flows.fleet_csms_flow(
                broker.url, broker.username, broker.password, group=FLEET_GROUP, auths=auths
            )
        )
        start_gateways(gateways, broker, total, timeout=180)
        system = FleetSystem(nodered, gateways, broker)
        pids = system.pids()
        idle = {
            name: round(psutil.Process(pid).memory_info().rss / 2**20, 1)
            for name, pid in pids.items()
        }
        log(f"  idle RSS MiB: {idle}")
        duration = fplan["memory_duration_s"]
        outs = [WORK / f"loadgen-memory-{i}.json" for i in range(gateways_n)]
        load_before = [round(x, 2) for x in os.getloadavg()]
        with Sampler(dict(pids), every=0.5) as sampler:
            gens = []
            for i, (gateway, out) in enumerate(zip(gateways, outs, strict=True)):
                out.unlink(missing_ok=True)
                first = i * per
                count = min(per, total - first)
                cmd = [
                    sys.executable,
                    str(BENCH / "loadgen.py"),
                    "--url",
                    gateway.url,
                    "--password",
                    PASSWORD,
                    "--first",
                    str(first),
                    "--stations",
                    str(count),
                    "--mode",
                    "interval",
                    "--interval",
                    "10",
                    "--duration",
                    str(duration),
                    "--warmup",
                    "0",
                    "--connect-timeout",
                    "300",
                    "--connect-concurrency",
                    "500",
                    "--call-timeout",
                    "60",
                    "--json-out",
                    str(out),
                ]
                gen = subprocess.Popen(cmd)
                sampler.add_tree(f"loadgen-{i + 1}", gen.pid)
                gens.append(gen)
            for gen in gens:
                gen.wait(timeout=duration + 600)
        parts_out = [json.loads(out.read_text()) for out in outs]
    rec_start = min(p["rec_start"] for p in parts_out if p.get("rec_start"))
    rec_end = max(p["rec_end"] for p in parts_out if p.get("rec_end"))
    for p in parts_out:
        p.pop("latencies_us", None)
    memory = {
        "stations": total,
        "gateways": gateways_n,
        "per_gateway": per,
        "hash_cost": FLEET_MEMORY_HASH_COST,
        "heartbeat_interval_s": 10,
        "duration_s": duration,
        "loadavg_before": load_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "idle_rss_mib": idle,
        "connected": sum(p["connected"] for p in parts_out),
        "booted": sum(p["booted"] for p in parts_out),
        "failed": sum(p["failed"] for p in parts_out),
        "lost": sum(p["lost"] for p in parts_out),
        "callerrors": sum(p["callerrors"] for p in parts_out),
        "open_at_end": sum(p["open_at_end"] for p in parts_out),
        "retries_503": sum(p["retries_503"] for p in parts_out),
        "round_trips": sum(p["round_trips"] for p in parts_out),
        "connect_s": max(p["connect_s"] or 0 for p in parts_out),
        "generators": parts_out,
        "resources": sampler.window(rec_start, rec_end),
        "resources_all": sampler.window(None, None),
    }
    block["memory"] = memory
    res = memory["resources"]
    log(
        f"  -> connected {memory['connected']}/{total} in {memory['connect_s']:.1f} s "
        f"(503 retries {memory['retries_503']}), booted {memory['booted']}, failed "
        f"{memory['failed']}, lost {memory['lost']}, callerrors {memory['callerrors']}; "
        "RSS MiB at end: " + ", ".join(f"{name} {v['rss_end_mib']}" for name, v in res.items())
    )
    save(results)


def capacity(systems: dict[str, Any], plan: dict[str, Any], results: dict[str, Any]) -> None:
    n, dur = plan["capacity_stations"], plan["capacity_duration"]
    for name, system in systems.items():
        log(f"capacity: {n} stations, Heartbeat every 10 s for {dur} s, {name}")
        args = [
            "--stations",
            str(n),
            "--mode",
            "interval",
            "--interval",
            "10",
            "--duration",
            str(dur),
            "--warmup",
            "0",
            "--procs",
            "2",
            "--connect-timeout",
            "120",
            "--connect-concurrency",
            "500",
            "--call-timeout",
            "60",
        ]
        with others_paused(systems, keep=name):
            r = run_loadgen(system, args, timeout=dur + 600)
        r.update(system=name, n=n, interval=10)
        r.pop("latencies_us", None)
        results["capacity"].append(r)
        log(
            f"  -> connected {r['connected']}/{n} in {r['connect_s']} s "
            f"(503 retries {r['retries_503']}), failed {r['failed']} {r['fail_reasons']}, "
            f"lost {r['lost']}, p99 {r['latency_ms']['p99']} ms, res {r['resources']}"
        )
        save(results)
        time.sleep(3)


def cs_side(null: NullSystem, plan: dict[str, Any], results: dict[str, Any]) -> None:
    """Heartbeats through our CS node to the null server, one at a time.

    Runs in a Node-RED of its own with OCPP_NODES_HOP_TRACE set, so that the shim
    stamps its inputs and the daemon writes the shim -> wire times when it exits
    (ocpp_nodes/hop_trace.py); the load scenarios ran without that.
    """
    log("CS side: Heartbeats through our CS node to the null server")
    hop_file = WORK / "hop-times.txt"
    hop_file.unlink(missing_ok=True)
    ours = NodeRedSystem("ours", WORK / "ours-cs", env={"OCPP_NODES_HOP_TRACE": str(hop_file)})
    woke = wakeup_probe()  # before the flow starts sending
    try:
        ours.start()
        ours.deploy(flows.cs_flow(null.url, password=PASSWORD))
        deadline = time.monotonic() + 60
        while null.http("GET", "/stats")["calls"] < 50:
            if time.monotonic() > deadline:
                raise TimeoutError("the CS flow sent nothing to the null server within 60 s")
            time.sleep(0.5)
        time.sleep(plan["warmup"])
        pids = ours.pids()
        with Sampler(dict(pids)) as sampler:
            null.http("POST", "/reset")
            t0 = time.time()
            time.sleep(plan["duration"])
            stats = null.http("GET", "/stats")
            t1 = time.time()
    finally:
        ours.stop()
    flow_to_wire = sorted(stats["hop_us"])
    # the daemon's file covers that Node-RED's whole life (warm-up too): keep as
    # many of its last samples as the measured window had Heartbeats
    lines = hop_file.read_text().splitlines() if hop_file.is_file() else []
    lines = lines[-len(flow_to_wire) :] if flow_to_wire else lines
    handed = sorted(int(line.split()[0]) / 1000 for line in lines)
    returned = sorted(int(line.split()[1]) / 1000 for line in lines)
    r = {
        "requests": stats["calls"],
        "rps": stats["calls"] / stats["since"],
        "hop_us": percentiles(flow_to_wire),
        "shim_to_kernel_us": percentiles(handed),
        "shim_to_send_returned_us": percentiles(returned),
        "resources": sampler.window(t0, t1),
        "wakeup_before": woke,
    }
    results["cs_side"] = r
    log(
        f"  -> {r['rps']:.0f} requests/s, shim->kernel p50 {r['shim_to_kernel_us']['p50']} µs, "
        f"shim->send returned p50 {r['shim_to_send_returned_us']['p50']} µs, "
        f"flow->wire p50 {r['hop_us']['p50']} µs, res {r['resources']}"
    )
    save(results)


def percentiles(sorted_values: list[float]) -> dict[str, Any]:
    def pct(q: float) -> float | None:
        if not sorted_values:
            return None
        return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 1)

    return {
        "p50": pct(0.5),
        "p90": pct(0.9),
        "p99": pct(0.99),
        "max": round(sorted_values[-1], 1) if sorted_values else None,
        "samples": len(sorted_values),
    }


# -- machine, saving -------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    nr = json.loads((REPO / "tools/node/node_modules/node-red/package.json").read_text())
    import aiohttp
    import websockets

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": version(["node", "--version"]),
        "node_red": nr["version"],
        "aiohttp": aiohttp.__version__,
        "websockets": websockets.__version__,
        "old_package": f"{OLD_PACKAGE}@{OLD_VERSION}",
        "ours": version([sys.executable, "-c", "import ocpp_nodes; print(ocpp_nodes.__version__)"]),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "wakeup": wakeup.measure(),
    }


def save(results: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))


def scenario_switches(p: argparse.ArgumentParser, name: str, what: str) -> None:
    """``--no-<name>`` and ``--<name>-only`` for one of our node's own scenarios."""
    p.add_argument(
        f"--no-{name}", action="store_true", help=f"skip the {what} scenario (ours only)"
    )
    p.add_argument(
        f"--{name}-only",
        action="store_true",
        help=f"run only the {what} scenario; the other results of "
        "bench/results/last-run.json are kept",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="~5 s per scenario, N up to 100")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma list of ours,old,null")
    p.add_argument("--actions", default="Heartbeat,MeterValues")
    p.add_argument("--stations", help="comma list of N (default 1,10,100,1000; quick 1,10,100)")
    p.add_argument("--duration", type=float, help="measured seconds per scenario")
    p.add_argument("--no-load", action="store_true", help="skip the N-station scenarios")
    p.add_argument(
        "--repeat",
        type=int,
        help="runs of each N-station scenario, medians reported (default 3; quick 1)",
    )
    p.add_argument("--no-capacity", action="store_true")
    p.add_argument("--no-cs", action="store_true")
    scenario_switches(p, "versions", "OCPP versions")
    p.add_argument(
        "--versions-rounds",
        type=int,
        help="versions scenario: rounds of one turn per group (2.0.1, 1.6, 2.1, mixed, "
        "2.0.1 again) per action (default 20; quick 5)",
    )
    p.add_argument(
        "--versions-turn",
        type=float,
        help="versions scenario: seconds per turn, the first 0.5 not recorded "
        "(default 2.5; quick 2)",
    )
    scenario_switches(p, "metrics", "metrics cost")
    p.add_argument(
        "--metrics-rounds",
        type=int,
        help="metrics scenario: rounds of one turn off and one on per action (default 20; quick 6)",
    )
    scenario_switches(
        p, "fleet", "fleet mode (direct vs fleet side by side, 10,000 stations' memory)"
    )
    p.add_argument(
        "--fleet-rounds",
        type=int,
        help="fleet scenario: rounds of one turn direct and one fleet per action "
        "(default 20; quick 6; 0: no side-by-side part)",
    )
    p.add_argument(
        "--fleet-floor-rounds",
        type=int,
        help="fleet scenario: rounds of bench/mqtt_floor.py, the MQTT hops alone "
        "(default 3; quick 1; 0: none)",
    )
    p.add_argument(
        "--fleet-memory-stations",
        type=int,
        help="fleet scenario: stations over the two gateways in the memory part "
        "(default 10000; quick 1000; 0: no memory part)",
    )
    p.add_argument("--capacity-stations", type=int)
    p.add_argument("--capacity-duration", type=float)
    p.add_argument(
        "--profile", action="store_true", help="py-spy the daemon during ours, MeterValues, N=100"
    )
    p.add_argument("--note", default="", help="a line for the report (e.g. 'loaded machine')")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite docs/benchmarks.md and .png from bench/results/last-run.json",
    )
    args = p.parse_args(argv)

    if args.report_only:
        report.write(json.loads(RESULTS.read_text()))
        return 0

    quick = args.quick
    plan = {
        "quick": quick,
        "actions": args.actions.split(","),
        "stations": [
            int(x) for x in (args.stations or ("1,10,100" if quick else "1,10,100,1000")).split(",")
        ],
        "duration": args.duration or (5.0 if quick else 20.0),
        "warmup": 1.0 if quick else 2.0,
        "capacity_stations": args.capacity_stations or (1000 if quick else 10000),
        "capacity_duration": args.capacity_duration or (20.0 if quick else 120.0),
        "profile_at": 100,
        "repeat": args.repeat or (1 if quick else 3),
        "others_paused": True,  # see others_paused()
    }
    plan["versions"] = {
        "actions": plan["actions"],
        "n": 100,
        "groups": VERSION_GROUPS,
        # 5 groups: a Williams square of 10 rounds (5 in quick: places balanced only)
        "rounds": args.versions_rounds or (5 if quick else 20),
        "slice_s": args.versions_turn or (2.0 if quick else 2.5),
        "settle_s": 0.5,
        # each group's unrecorded turn first (after --versions-only the system has just
        # started); not a separate warm-up run: stations that had been connected before
        # (the same cbIds) made 6-9 % more round trips/s than new ones (an A/A check,
        # bench/notes.md), so every group's stations are new or none are
        "warm_turn_s": 3.0 if quick else 5.0,
        "accepted": flows.OCPP_VERSIONS,
    }
    plan["metrics"] = {
        "actions": plan["actions"],
        "n": 100,
        "groups": METRICS_GROUPS,
        # 2 groups: off and on alternate which goes first, round by round
        "rounds": args.metrics_rounds or (6 if quick else 20),
        "slice_s": args.versions_turn or (2.0 if quick else 2.5),
        "settle_s": 0.5,
        "warm_turn_s": 3.0 if quick else 5.0,
        "scrape_every_s": SCRAPE_EVERY_S,
    }
    plan["fleet"] = {
        "actions": plan["actions"],
        "n": 100,
        "groups": FLEET_GROUPS,
        "group": FLEET_GROUP,
        "rounds": args.fleet_rounds if args.fleet_rounds is not None else (6 if quick else 20),
        "slice_s": args.versions_turn or (2.0 if quick else 2.5),
        "settle_s": 0.5,
        "warm_turn_s": 3.0 if quick else 5.0,
        "memory_stations": (
            args.fleet_memory_stations
            if args.fleet_memory_stations is not None
            else 1000
            if quick
            else 10000
        ),
        "memory_gateways": 2,
        "mosquitto_settings": MOSQUITTO_SETTINGS,
        "memory_duration_s": 30.0 if quick else 60.0,
        "floor_rounds": (
            args.fleet_floor_rounds if args.fleet_floor_rounds is not None else 1 if quick else 3
        ),
        "floor_s": 4.0 if quick else 6.0,
    }
    only = next(
        (name for name in ("versions", "metrics", "fleet") if getattr(args, f"{name}_only")), None
    )
    if only is not None:  # that scenario alone, on our node
        args.systems = "ours"
        args.no_load = args.no_capacity = args.no_cs = True
        for name in ("versions", "metrics", "fleet"):
            setattr(args, f"no_{name}", name != only)
    nofile = raise_nofile()
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "note": args.note,
        "plan": plan,
        "nofile": nofile,
        "machine": machine(),
        "scenarios": [],
        "capacity": [],
        "cs_side": None,
    }
    # what the versions block keeps of this run (the rest may be an earlier run's)
    meta = {k: results[k] for k in ("command", "note", "machine")}
    if only is not None and RESULTS.is_file():
        # only that block is new: the rest of the last run stays as it was
        kept = json.loads(RESULTS.read_text())
        kept.pop(only, None)
        results = kept
    wanted = args.systems.split(",")
    run_versions = not args.no_versions and "ours" in wanted
    if not args.no_versions and not run_versions:
        log("versions scenario skipped: it measures ours, which is not among --systems")
    if run_versions:
        results["plan"]["versions"] = plan["versions"]
    run_metrics = not args.no_metrics and "ours" in wanted
    if run_metrics:
        results["plan"]["metrics"] = plan["metrics"]
    run_fleet = not args.no_fleet and "ours" in wanted
    if run_fleet:
        results["plan"]["fleet"] = plan["fleet"]
    systems: dict[str, Any] = {}
    try:
        for name in wanted if only not in ("metrics", "fleet") else ():
            log(f"starting {name}")
            sysobj: Any = NullSystem() if name == "null" else NodeRedSystem(name, WORK / name)
            sysobj.start()
            sysobj.deploy_csms(
                max(
                    plan["capacity_stations"],
                    max(plan["stations"]),
                    len(VERSION_GROUPS) * plan["versions"]["n"],  # loadgen --groups
                )
            )
            systems[name] = sysobj
        if not args.no_load:
            load_scenarios(systems, plan, results, args.profile)
        if not args.no_capacity:
            capacity(systems, plan, results)
        if not args.no_cs and "null" in systems:
            with others_paused(systems, keep="null"):
                cs_side(systems["null"], plan, results)
        if run_versions:
            versions_scenario(systems, plan, results, meta)
        if run_metrics:
            # its own two runtimes; the others must not take CPU meanwhile
            with others_paused(systems, keep=""):
                metrics_scenario(plan, results, meta)
        if run_fleet:
            with others_paused(systems, keep=""):
                fleet_scenario(plan, results, meta)
    finally:
        for s in systems.values():
            s.stop()
    if only is None:
        results["elapsed_s"] = round(time.time() - started)
        results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    save(results)
    report.write(results)
    took = round(time.time() - started)
    log(f"done in {took} s: {RESULTS.relative_to(REPO)}, docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
