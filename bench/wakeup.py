"""What waking another process costs on this machine: a ping-pong between two.

A parent and a forked child bounce one small message N times over a Unix
socket pair and over loopback TCP; the round trip contains two wake-ups of
a process blocked in ``recv``. Pinned to one core (Linux), the wake-ups
become plain context switches; pinned to two different cores, each wakes
the other's core, which on this VM has halted. Left to the scheduler, the
two mostly share a core in short runs and spread out in long ones.
bench/run.py records the results with every run (docs/benchmarks.md,
"Machine"), and the two-core case before and after each load run: the
shim -> daemon hop contains one such wake-up.

    .venv/bin/python bench/wakeup.py
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

ROUND_TRIPS = 20_000


def _pair(kind: str) -> tuple[socket.socket, socket.socket]:
    if kind == "unix":
        return socket.socketpair()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    a = socket.create_connection(server.getsockname())
    b, _ = server.accept()
    server.close()
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


def ping_pong(kind: str, cores: int = 0, n: int = ROUND_TRIPS) -> dict[str, float]:
    """Median and p90 round trip, and the median ``send`` call, in µs.

    ``cores``: 1 pins both processes to one core, 2 to two different cores,
    0 leaves them to the scheduler (Linux with enough cores; otherwise 0).
    The result's ``cores`` says which was done.
    """
    a, b = _pair(kind)
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = cores if len(allowed) >= cores else 0
    if cores:
        os.sched_setaffinity(0, {allowed[0]})
    pid = os.fork()
    if pid == 0:  # the echoing child
        if cores == 2:
            os.sched_setaffinity(0, {allowed[1]})
        a.close()
        try:
            while data := b.recv(64):
                b.send(data)
        finally:
            os._exit(0)
    b.close()
    sends, trips = [], []
    message = b"x" * 60
    try:
        for _ in range(n):
            t0 = time.perf_counter_ns()
            a.send(message)
            t1 = time.perf_counter_ns()
            a.recv(64)
            trips.append(time.perf_counter_ns() - t0)
            sends.append(t1 - t0)
    finally:
        a.close()
        os.waitpid(pid, 0)
        if cores:
            os.sched_setaffinity(0, allowed)
    sends.sort()
    trips.sort()
    return {
        "cores": cores,
        "round_trip_p50_us": round(trips[n // 2] / 1000, 1),
        "round_trip_p90_us": round(trips[n * 9 // 10] / 1000, 1),
        "send_p50_us": round(sends[n // 2] / 1000, 1),
    }


def measure() -> dict[str, Any]:
    return {
        "unix": ping_pong("unix"),
        "unix, one core": ping_pong("unix", cores=1),
        "unix, two cores": ping_pong("unix", cores=2),
        "tcp": ping_pong("tcp"),
    }


if __name__ == "__main__":
    json.dump(measure(), sys.stdout, indent=1)
    print()
