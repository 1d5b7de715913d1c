"""What hashed CS Auth entries cost: one check, and logins per second through the engine.

1. One check of each default hash (``ocpp-nodes hash-password``'s), on the
   calling thread: milliseconds per verification. Then an event loop's lag
   (a 1 ms sleep, late by how much) while nothing else runs, while checks
   run back to back in the engine's thread pool, and while the same scrypt
   runs in another process: if the thread's lag is no worse than the other
   process's, what remains is CPU contention, not the GIL.
2. A reconnect storm against the real engine (``ocpp-nodes serve``, driven
   as the shim drives it, tests/shim_double.py): a CSMS node whose list
   holds N stations, all plain, all scrypt or all PBKDF2; N stations log
   in, ``--concurrency`` at a time, each closing at once. A 503 (over
   *Logins per second*, or too many checks waiting) is retried after
   ``Retry-After``. Twice: the first time every hash is checked, the second
   the engine remembers each station's success (docs/security.md).
   Meanwhile a station connected before the storm, in a process of its own
   (so the storm's clients do not delay it), pings every 50 ms: its round
   trips are the engine's event loop, which the checks must not stop.

    .venv/bin/python bench/password_logins.py --stations 1000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ocpp_nodes.transport.auth_list import Verifier  # noqa: E402
from ocpp_nodes.transport.passwords import make_hash, parse_hash, verify  # noqa: E402
from tests.shim_double import ShimDouble, free_port  # noqa: E402

PASSWORD = "bench-Password-0123456789"


def one_check_ms(scheme: str, repeat: int = 10) -> float:
    hashed = parse_hash(make_hash(PASSWORD, scheme))
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        verify(PASSWORD, hashed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def loop_lag(seconds: float = 5.0) -> dict[str, dict[str, float]]:
    async def measure() -> dict[str, float]:
        lags: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - start - 0.001)
        lags.sort()
        return {
            "p50_ms": round(lags[len(lags) // 2] * 1000, 2),
            "p99_ms": round(lags[int(len(lags) * 0.99)] * 1000, 2),
            "max_ms": round(lags[-1] * 1000, 2),
        }

    report = {"idle": await measure()}
    verifier = Verifier()
    hashed = parse_hash(make_hash(PASSWORD))
    stop = asyncio.Event()

    async def churn() -> None:
        while not stop.is_set():
            await verifier.verify(PASSWORD, hashed)

    task = asyncio.create_task(churn())
    report["checks in the thread pool"] = await measure()
    stop.set()
    await task
    code = "import hashlib\nwhile True: hashlib.scrypt(b'pw', salt=bytes(16), n=16384, r=8, p=1)"
    other = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    report["scrypt in another process"] = await measure()
    other.kill()
    await other.wait()
    return report


def header(cb_id: str) -> dict[str, str]:
    token = base64.b64encode(f"{cb_id}:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def login(url: str, cb_id: str) -> tuple[float, int]:
    """Seconds until accepted, and how many 503s it took."""
    start = time.perf_counter()
    busy = 0
    while True:
        try:
            async with websockets.connect(
                f"{url}/{cb_id}",
                subprotocols=["ocpp2.0.1"],
                additional_headers=header(cb_id),
                open_timeout=60,
                ping_interval=None,
                close_timeout=1,
            ):
                return time.perf_counter() - start, busy
        except websockets.InvalidStatus as exc:
            if exc.response.status_code != 503:
                raise
            busy += 1
            await asyncio.sleep(float(exc.response.headers.get("Retry-After", "1")))


async def pinger(url: str) -> None:
    """``--pinger URL``: ping every 50 ms until stdin closes; print the round trips (s)."""
    rtts: list[float] = []
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    async with websockets.connect(
        f"{url}/PINGER",
        subprotocols=["ocpp2.0.1"],
        additional_headers=header("PINGER"),
        ping_interval=None,
    ) as ws:
        print("ready", flush=True)
        while not stdin_closed.done():
            start = time.perf_counter()
            await (await ws.ping())
            rtts.append(time.perf_counter() - start)
            await asyncio.sleep(0.05)
    print(json.dumps(rtts), flush=True)


async def start_pinger(url: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--pinger",
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert (await process.stdout.readline()).strip() == b"ready"
    return process


async def stop_pinger(process: asyncio.subprocess.Process) -> list[float]:
    assert process.stdin is not None
    process.stdin.close()
    out, _ = await process.communicate()
    return sorted(json.loads(out))


async def storm(url: str, stations: list[str], concurrency: int) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    ping_process = await start_pinger(url)

    async def one(cb_id: str) -> tuple[float, int]:
        async with gate:
            return await login(url, cb_id)

    start = time.perf_counter()
    results = await asyncio.gather(*(one(cb_id) for cb_id in stations))
    wall = time.perf_counter() - start
    rtts = await stop_pinger(ping_process)
    latencies = sorted(r[0] for r in results)
    return {
        "logins_per_s": round(len(stations) / wall, 1),
        "wall_s": round(wall, 2),
        "login_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "login_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "http_503": sum(r[1] for r in results),
        "loop_ping_p50_ms": round(rtts[len(rtts) // 2] * 1000, 2) if rtts else None,
        "loop_ping_p99_ms": round(rtts[int(len(rtts) * 0.99)] * 1000, 2) if rtts else None,
        "loop_ping_max_ms": round(rtts[-1] * 1000, 2) if rtts else None,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "cpus": len(os.sched_getaffinity(0)),
        "load_average_at_start": os.getloadavg(),
        "one_check_ms": {s: round(one_check_ms(s), 1) for s in ("scrypt", "pbkdf2-sha256")},
        "loop_lag": await loop_lag(),
        "storms": [],
    }
    stations = [f"ST{i:05d}" for i in range(args.stations)]
    shim = ShimDouble()
    await shim.start()
    try:
        for kind in args.kinds:
            entry = PASSWORD if kind == "plain" else make_hash(PASSWORD, kind)
            auths = dict.fromkeys([*stations, "PINGER"], entry)
            node = f"csms-{kind}"
            port = free_port()
            shim.create(
                node,
                "CSMS",
                {
                    "port": str(port),
                    "path": "/ocpp",
                    "handshakes_per_second": args.handshakes_per_second,
                },
                credentials={"basic_auths": json.dumps(auths)},
            )
            await shim.wait_for(lambda n=node: "0 connected" in shim.statuses(n), 120)
            url = f"ws://127.0.0.1:{port}/ocpp"
            for round_name in ("first", "again"):
                result = await storm(url, stations, args.concurrency)
                report["storms"].append({"entries": kind, "round": round_name, **result})
                print(json.dumps(report["storms"][-1]), file=sys.stderr)
            await shim.close_node(node)
    finally:
        await shim.stop()
    report["load_average_at_end"] = os.getloadavg()
    return report


def main() -> None:
    if sys.argv[1:2] == ["--pinger"]:
        asyncio.run(pinger(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stations", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--handshakes-per-second", type=float, default=500)
    parser.add_argument(
        "--kinds", nargs="+", default=["plain", "scrypt", "pbkdf2-sha256"], help="entries"
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
