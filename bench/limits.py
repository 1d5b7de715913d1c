"""Limits before TLS and HTTP, measured (issue 23, item 3).

One real Node-RED with our package (bench/run.py's ``NodeRedSystem``), a CSMS
node serving ``wss://`` (security profile 2, a trustme certificate in a
``tls-config`` node) with ``handshakes_per_address`` and ``upgrade_timeout``
at a new node's defaults (20 per second, a burst of 40; 10 s), answering
Heartbeats through bench/flows.py's function node. Everything on loopback,
each party from its own source address:

- the station (127.0.0.2, this process): connects over wss with Basic auth
  and sends a Heartbeat every ``--interval`` seconds, one at a time; each
  round trip is timed;
- the idle pool (127.0.1.1 .. 127.0.1.100, a child process): 2,000 TCP
  connections (20 per address, under each address's burst) that never send
  a byte; each one the CSMS closes (``upgrade_timeout``) is opened again at
  once, so about 2,000 are open throughout;
- the flood (127.0.0.3, ``--flood-procs`` child processes): each ``--flood-concurrency`` clients
  opening TLS connections as fast as they can, each a full handshake then a
  close; over the per-address limit the CSMS closes them at accept.

Phases, in one run against the same node: ``quiet`` (the station alone),
``attack`` (pool and flood running: the station connects anew, then beats);
with ``--unlimited`` also ``attack, no per-address limit`` (the node redeployed
with ``handshakes_per_address: 0``; the same attack). The daemon's CPU is
sampled per phase, and the node's refusal summaries are read from the
Node-RED log. The soft RLIMIT_NOFILE is raised to the hard limit in this
process (Node-RED, the daemon and the children inherit it): 2,000 idle
connections hold 4,000 descriptors on one machine.

    .venv/bin/python bench/limits.py               # about 2 minutes
    .venv/bin/python bench/limits.py --unlimited   # about 3 minutes

Results: bench/results/limits-last-run.json and a Markdown summary on stdout
(docs/benchmarks.md, "Limits before TLS and HTTP", is written from it by hand).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import re
import signal
import ssl
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import trustme
from websockets.asyncio.client import ClientConnection, connect

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402

import flows  # noqa: E402

WORK = run.REPO / ".local" / "bench-limits"
RESULTS = BENCH / "results" / "limits-last-run.json"
PASSWORD = "bench-password"
STATION_ADDRESS = "127.0.0.2"
FLOOD_ADDRESS = "127.0.0.3"
POOL_ADDRESSES = [f"127.0.1.{n}" for n in range(1, 101)]


#: set by SIGTERM in a child: every loop ends at its next turn (cancelling alone is not
#: enough: Python 3.11's wait_for can swallow a cancellation that meets a result)
STOPPING = asyncio.Event()


def log(text: str) -> None:
    print(f"[limits {datetime.now():%H:%M:%S}] {text}", flush=True)


# -- the attackers (child processes: python bench/limits.py --role pool|flood ...) ------


async def pool(port: int, per_address: int, seconds: float, stats: dict[str, Any]) -> None:
    """Hold ``per_address`` silent connections from each pool address; reopen closed ones."""
    stats.update(opened=0, closed_by_server=0, open_failed=0, max_open=0)
    open_now = 0
    end = time.monotonic() + seconds
    ready = False

    async def hold(address: str) -> None:
        nonlocal open_now, ready
        while time.monotonic() < end and not STOPPING.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0)), 5
                )
            except (OSError, asyncio.TimeoutError):
                stats["open_failed"] += 1
                await asyncio.sleep(0.5)
                continue
            stats["opened"] += 1
            open_now += 1
            stats["max_open"] = max(stats["max_open"], open_now)
            if not ready and open_now >= per_address * len(POOL_ADDRESSES):
                ready = True
                print("ready", flush=True)
            try:
                await asyncio.wait_for(reader.read(), max(0.1, end - time.monotonic()))
                stats["closed_by_server"] += 1
            except (OSError, asyncio.TimeoutError):
                pass
            finally:
                open_now -= 1
                writer.close()

    await asyncio.gather(*(hold(a) for a in POOL_ADDRESSES for _ in range(per_address)))


async def flood(port: int, concurrency: int, seconds: float, stats: dict[str, Any]) -> None:
    """TLS connections from one address as fast as ``concurrency`` clients can open them."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the client's own cost kept low
    stats.update(attempts=0, handshakes=0, closed_before_tls=0, other_errors=0)
    end = time.monotonic() + seconds
    stats["started"] = time.monotonic()

    async def one_client() -> None:
        while time.monotonic() < end and not STOPPING.is_set():
            stats["attempts"] += 1
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        "127.0.0.1", port, ssl=context, local_addr=(FLOOD_ADDRESS, 0)
                    ),
                    10,
                )
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
                stats["closed_before_tls"] += 1
                continue
            except ssl.SSLError as exc:  # EOF in the handshake: closed at accept, too
                if "EOF" in str(exc) or "UNEXPECTED_EOF" in str(exc):
                    stats["closed_before_tls"] += 1
                else:
                    stats["other_errors"] += 1
                continue
            except (OSError, asyncio.TimeoutError):
                stats["other_errors"] += 1
                continue
            stats["handshakes"] += 1
            writer.close()

    await asyncio.gather(*(one_client() for _ in range(concurrency)))


async def until_stopped(args: argparse.Namespace) -> dict[str, Any]:
    """Run the child's role until its time is up or SIGTERM; its counters."""
    stats: dict[str, Any] = {}
    if args.role == "pool":
        work = pool(args.port, args.per_address, args.seconds, stats)
    else:
        work = flood(args.port, args.flood_concurrency, args.seconds, stats)
    task = asyncio.ensure_future(work)

    def stop() -> None:
        STOPPING.set()
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
    try:
        await task
    except asyncio.CancelledError:
        pass
    if "started" in stats:
        stats["seconds"] = round(time.monotonic() - stats.pop("started"), 2)
    return stats


def child_main(args: argparse.Namespace) -> int:
    async def main() -> None:
        print(json.dumps(await until_stopped(args)), flush=True)
        # no clean-up: hundreds of connections closing would only delay the answer
        os._exit(0)

    asyncio.run(main())
    return 0


def spawn(role: str, port: int, seconds: float, args: argparse.Namespace) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--role",
            role,
            "--port",
            str(port),
            "--seconds",
            str(seconds),
            "--per-address",
            str(args.per_address),
            "--flood-concurrency",
            str(args.flood_concurrency),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def last_json(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The child's counters: the JSON line it prints when stopped (SIGTERM)."""
    assert proc.stdout is not None
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": f"no counters: {out[-300:]!r}"}


def merged(counters: list[dict[str, Any]]) -> dict[str, Any]:
    """The flood processes' counters summed (``seconds``: the longest)."""
    out: dict[str, Any] = {}
    for one in counters:
        for key, value in one.items():
            if key == "seconds":
                out[key] = max(out.get(key, 0), value)
            elif isinstance(value, int):
                out[key] = out.get(key, 0) + value
            else:
                out.setdefault("errors", []).append(value)
    return out


# -- the station (this process) ---------------------------------------------------------


def station_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def station_connect(port: int, ca: trustme.CA, cb_id: str) -> tuple[ClientConnection, float]:
    auth = base64.b64encode(f"{cb_id}:{PASSWORD}".encode()).decode()
    started = time.perf_counter()
    ws = await connect(
        f"wss://127.0.0.1:{port}/ocpp/{cb_id}",
        ssl=station_context(ca),
        subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
        additional_headers={"Authorization": f"Basic {auth}"},
        open_timeout=30,
        ping_interval=None,
        local_addr=(STATION_ADDRESS, 0),
    )
    return ws, time.perf_counter() - started


async def beat(ws: ClientConnection, seconds: float, interval: float) -> list[float]:
    """Heartbeats every ``interval`` s for ``seconds``: each round trip in ms."""
    rtts: list[float] = []
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        message_id = f"hb{n}"
        started = time.perf_counter()
        await ws.send(json.dumps([2, message_id, "Heartbeat", {}]))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 30))
        rtts.append((time.perf_counter() - started) * 1000)
        if answer[:2] != [3, message_id]:
            raise RuntimeError(f"unexpected answer {answer}")
        await asyncio.sleep(max(0.0, interval - rtts[-1] / 1000))
    return rtts


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(rtts: list[float]) -> dict[str, Any]:
    return {
        "heartbeats": len(rtts),
        "p50_ms": round(statistics.median(rtts), 2),
        "p99_ms": round(pct(rtts, 0.99), 2),
        "max_ms": round(max(rtts), 2),
    }


class CpuMeter:
    """CPU seconds of the daemon and Node-RED over a phase."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}

    def read(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            times = proc.cpu_times()
            out[name] = times.user + times.system
        out["wall"] = time.monotonic()
        return out

    @staticmethod
    def share(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        wall = after["wall"] - before["wall"]
        return {
            f"{name}_cpu_percent": round(100 * (after[name] - before[name]) / wall, 1)
            for name in before
            if name != "wall"
        }


# -- the system ---------------------------------------------------------------------------


def limits_flow(
    port: int, cert: Path, key: Path, *, unlimited: bool = False
) -> list[dict[str, Any]]:
    nodes = flows.csms_flow(port, package="ours", stations=1, password=PASSWORD)
    tls = {
        "id": "b0000000000000a9",
        "type": "tls-config",
        "name": "bench pki",
        "cert": str(cert),
        "key": str(key),
        "ca": "",
        "verifyservercert": True,
    }
    for node in nodes:
        if node.get("type") == "CSMS":
            # a new node's default (absent, in an older export: no limit)
            node["handshakes_per_address"] = 0 if unlimited else 20
            node.pop("upgrade_timeout", None)  # the default: 10 s
            node.update(security_profile=2, tls=tls["id"])
    return [*nodes, tls]


def refusal_lines(log_text: str) -> list[str]:
    return [line for line in log_text.splitlines() if "refused connection attempts" in line]


def drop_counts(lines: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in lines:
        for n, what in re.findall(r"(\d+) x ([^,;]+)", line):
            counts[what.strip()] = counts.get(what.strip(), 0) + int(n)
    return counts


async def attack_phase(
    name: str,
    system: run.NodeRedSystem,
    ca: trustme.CA,
    args: argparse.Namespace,
    cpu: CpuMeter,
) -> dict[str, Any]:
    port = system.ws_port
    seconds = args.seconds + 60  # the attackers outlast the phase; stopped after it
    log(f"{name}: the idle pool opens {args.per_address * len(POOL_ADDRESSES)} connections")
    pool_proc = spawn("pool", port, seconds, args)
    assert pool_proc.stdout is not None
    flood_procs = [spawn("flood", port, seconds, args) for _ in range(args.flood_procs)]
    loop = asyncio.get_running_loop()
    first = await asyncio.wait_for(loop.run_in_executor(None, pool_proc.stdout.readline), 60)
    if first.strip() != "ready":
        raise RuntimeError(f"the idle pool did not fill: {first!r}")
    log(f"{name}: pool full, flood running; the station connects")
    before = cpu.read()
    ws, connect_s = await station_connect(port, ca, "bench00000")
    rtts = await beat(ws, args.seconds, args.interval)
    after = cpu.read()
    await ws.close()
    flood_stats = merged([last_json(proc, 30) for proc in flood_procs])
    pool_stats = last_json(pool_proc, 30)
    return {
        "station": {"connect_ms": round(connect_s * 1000, 1), **summary(rtts)},
        "pool": pool_stats,
        "flood": flood_stats,
        "cpu": CpuMeter.share(before, after),
    }


async def measure(system: run.NodeRedSystem, ca: trustme.CA, args: argparse.Namespace) -> Any:
    cpu = CpuMeter({k: v for k, v in system.pids().items() if k in ("daemon", "node-red")})
    phases: dict[str, Any] = {}
    log("quiet: the station alone")
    before = cpu.read()
    ws, connect_s = await station_connect(system.ws_port, ca, "bench00000")
    rtts = await beat(ws, args.seconds, args.interval)
    after = cpu.read()
    await ws.close()
    phases["quiet"] = {
        "station": {"connect_ms": round(connect_s * 1000, 1), **summary(rtts)},
        "cpu": CpuMeter.share(before, after),
    }
    phases["attack"] = await attack_phase("attack", system, ca, args, cpu)
    return phases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per phase")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between Heartbeats")
    p.add_argument("--per-address", type=int, default=20, help="idle connections per address")
    p.add_argument("--flood-concurrency", type=int, default=64, help="clients per flood process")
    p.add_argument("--flood-procs", type=int, default=1, help="flood processes (all 127.0.0.3)")
    p.add_argument(
        "--unlimited",
        action="store_true",
        help="also the attack against the node with handshakes_per_address 0",
    )
    p.add_argument("--role", choices=("pool", "flood"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        return child_main(args)

    nofile = run.raise_nofile()
    log(
        f"RLIMIT_NOFILE soft limit raised to {nofile}"
        " (inherited by Node-RED, the daemon, the children)"
    )
    WORK.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = WORK / "server.pem", WORK / "server.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    os.chmod(key, 0o600)

    system = run.NodeRedSystem("ours", WORK / "nodered")
    system.user_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {
            "seconds": args.seconds,
            "interval": args.interval,
            "idle_connections": args.per_address * len(POOL_ADDRESSES),
            "idle_addresses": len(POOL_ADDRESSES),
            "flood_concurrency": args.flood_concurrency,
            "flood_procs": args.flood_procs,
            "nofile": nofile,
        },
    }
    try:
        system.start()
        system.deploy(limits_flow(system.ws_port, cert, key))
        run.wait_listening(system.ws_port, 60)
        log(
            f"CSMS node on wss://127.0.0.1:{system.ws_port}/ocpp (defaults: 20/s per address, 10 s)"
        )
        mark = len(system_log(system))
        results["phases"] = asyncio.run(measure(system, ca, args))
        if args.unlimited:
            results["summaries"] = refusal_lines(system_log(system)[mark:])
            system.deploy(limits_flow(system.ws_port, cert, key, unlimited=True))
            run.wait_listening(system.ws_port, 60)
            mark = len(system_log(system))
            cpu_pids = {k: v for k, v in system.pids().items() if k in ("daemon", "node-red")}

            async def unlimited_phase() -> Any:
                return await attack_phase(
                    "attack, no per-address limit", system, ca, args, CpuMeter(cpu_pids)
                )

            results["phases"]["attack, no per-address limit"] = asyncio.run(unlimited_phase())
            results["summaries_unlimited"] = refusal_lines(system_log(system)[mark:])
        else:
            time.sleep(11)  # the node sums refusals up every 10 s
            results["summaries"] = refusal_lines(system_log(system)[mark:])
    finally:
        system.stop()
    results["drops"] = drop_counts(results.get("summaries", []))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


def system_log(system: run.NodeRedSystem) -> str:
    try:
        return (system.user_dir / "node-red.log").read_text(errors="replace")
    except OSError:
        return ""


def markdown(results: dict[str, Any]) -> str:
    phases = results.get("phases", {})
    quiet = phases.get("quiet", {}).get("station", {})
    rows = [
        "| phase | station connect | Heartbeats | p50 | p99 | max | daemon CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, phase in phases.items():
        s = phase["station"]
        rows.append(
            f"| {name} | {s['connect_ms']} ms | {s['heartbeats']} | {s['p50_ms']} ms"
            f" | {s['p99_ms']} ms | {s['max_ms']} ms"
            f" | {phase['cpu'].get('daemon_cpu_percent', '?')} % |"
        )
    lines = ["\n".join(rows), ""]
    for name, phase in phases.items():
        if "flood" not in phase:
            continue
        s, f, pl = phase["station"], phase["flood"], phase["pool"]
        secs = f.get("seconds") or 1
        p50_ratio, p99_ratio = s["p50_ms"] / quiet["p50_ms"], s["p99_ms"] / quiet["p99_ms"]
        lines.append(
            f"- {name}: p50 x{p50_ratio:.2f}, p99 x{p99_ratio:.2f}"
            f" of quiet; flood {f.get('attempts', 0) / secs:.0f} attempts/s, of which"
            f" {f.get('handshakes', 0) / secs:.1f}/s completed TLS and"
            f" {f.get('closed_before_tls', 0) / secs:.0f}/s were closed before TLS"
            f" ({f.get('other_errors', 0)} other errors); idle pool: max"
            f" {pl.get('max_open')} open, {pl.get('closed_by_server')} closed by the CSMS,"
            f" {pl.get('open_failed')} failed opens"
        )
    if results.get("drops"):
        lines.append(f"- the node's refusal summaries: {results['drops']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
