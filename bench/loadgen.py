"""OCPP 2.0.1 load generator: N simulated charging stations against one CSMS.

Each station connects to ``<url>/<cbId>`` with HTTP Basic auth (user = cbId) and
subprotocol ``ocpp2.0.1``, sends a BootNotification, then keeps exactly one CALL
outstanding: in ``loop`` mode it sends Heartbeat or MeterValues again as soon as
the answer arrives, for ``--duration`` seconds; in ``interval`` mode it sends a
Heartbeat every ``--interval`` seconds (the capacity run).

Stand-alone on purpose: asyncio + ``websockets`` only, nothing from ocpp_nodes.
Targets must be loopback addresses; every loop is bounded in time.

With ``--procs K`` the stations are split over K worker processes (one event
loop each, so the generator can use more than one core and open more sockets);
their results are merged. The result is one JSON object on stdout (or
``--json-out``): connections made/failed, round trips, round trips per second,
latency percentiles in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.frames import Opcode, apply_mask

SUBPROTOCOL = "ocpp2.0.1"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def boot_payload() -> dict[str, Any]:
    return {
        "reason": "PowerUp",
        "chargingStation": {
            "model": "BenchModel",
            "vendorName": "BenchVendor",
            "firmwareVersion": "1.0.0",
        },
    }


def meter_values_payload(timestamp: str | None = None) -> dict[str, Any]:
    """A realistic periodic sample of a three-phase AC charger, taken now by default."""
    sampled = [
        {
            "value": 230.4,
            "measurand": "Voltage",
            "phase": p,
            "unitOfMeasure": {"unit": "V"},
        }
        for p in ("L1-N", "L2-N", "L3-N")
    ]
    sampled += [
        {
            "value": 15.9,
            "measurand": "Current.Import",
            "phase": p,
            "unitOfMeasure": {"unit": "A"},
        }
        for p in ("L1", "L2", "L3")
    ]
    sampled += [
        {
            "value": 10995.0,
            "measurand": "Power.Active.Import",
            "unitOfMeasure": {"unit": "W"},
            "context": "Sample.Periodic",
        },
        {
            "value": 123456.7,
            "measurand": "Energy.Active.Import.Register",
            "unitOfMeasure": {"unit": "Wh"},
            "context": "Sample.Periodic",
        },
    ]
    return {
        "evseId": 1,
        "meterValue": [{"timestamp": timestamp or now_iso(), "sampledValue": sampled}],
    }


def payload_text(action: str) -> Callable[[], str]:
    """What makes the compact JSON of a loop CALL's payload, fresh for each call.

    The payload is encoded once; each call only puts the current time into
    the MeterValues text. Encoding the whole payload per call (``json.dumps``
    with ``separators`` builds an encoder each time) cost the generator
    2.7 µs per Heartbeat and 15 µs per MeterValues of CPU the system under
    test shares on a small machine.
    """
    if action == "Heartbeat":
        return lambda: "{}"
    mark = "\x01timestamp\x01"
    head, tail = compact(meter_values_payload(timestamp=mark)).split(compact(mark))
    return lambda: f"{head}{compact(now_iso())}{tail}"


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def percentiles(samples_us: list[int]) -> dict[str, float | None]:
    """p50/p90/p99/max in milliseconds (None when there are no samples)."""
    if not samples_us:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    s = sorted(samples_us)

    def pick(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))] / 1000.0

    return {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "max": s[-1] / 1000.0}


class Stats:
    def __init__(self) -> None:
        self.connected = 0
        self.failed = 0
        self.retries_503 = 0
        self.fail_reasons: dict[str, int] = {}
        self.round_trips = 0
        self.errors = 0  # CALLERROR answers
        self.lost = 0  # stations whose loop ended early (connection lost, timeout)
        self.lost_reasons: dict[str, int] = {}
        self.latencies_us: list[int] = []
        self.recording = False
        self.last_connect_at = 0.0

    def lose(self, err: BaseException) -> None:
        self.lost += 1
        reason = f"{type(err).__name__}: {err}"[:80]
        self.lost_reasons[reason] = self.lost_reasons.get(reason, 0) + 1

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.fail_reasons[reason] = self.fail_reasons.get(reason, 0) + 1


class Station:
    def __init__(self, cb_id: str, args: argparse.Namespace, stats: Stats) -> None:
        self.cb_id = cb_id
        self.args = args
        self.stats = stats
        self.seq = 0
        # MessageIds unique across stations and runs, as real stations make
        # them (the old package keys waiting requests by MessageId alone,
        # across stations); cheaper than a uuid4 per call, which reads
        # os.urandom each time
        self.id_prefix = f"{uuid.uuid4().hex[:16]}-"
        self.ws: Any = None

    async def open(self, deadline: float, sem: asyncio.Semaphore) -> bool:
        token = base64.b64encode(f"{self.cb_id}:{self.args.password}".encode()).decode()
        url = f"{self.args.url.rstrip('/')}/{self.cb_id}"
        while True:
            try:
                async with sem:
                    self.ws = await asyncio.wait_for(
                        connect(
                            url,
                            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                            additional_headers={"Authorization": f"Basic {token}"},
                            compression="deflate" if self.args.deflate else None,
                            ping_interval=None,
                            open_timeout=None,
                            max_size=2**22,
                        ),
                        timeout=max(0.1, min(20.0, deadline - time.monotonic())),
                    )
                if self.ws.subprotocol != SUBPROTOCOL:
                    self.stats.fail("no subprotocol")
                    await self.ws.close()
                    return False
                self.stats.connected += 1
                self.stats.last_connect_at = time.monotonic()
                return True
            except InvalidStatus as err:
                status = err.response.status_code
                if status == 503 and time.monotonic() < deadline:
                    self.stats.retries_503 += 1
                    after = float(err.response.headers.get("Retry-After", "1") or 1)
                    await asyncio.sleep(after * (0.5 + random.random()))
                    continue
                self.stats.fail(f"HTTP {status}")
                return False
            except (OSError, asyncio.TimeoutError, Exception) as err:  # noqa: BLE001
                if (
                    isinstance(err, OSError)
                    and time.monotonic() < deadline
                    and err.errno
                    in (
                        99,  # EADDRNOTAVAIL
                        111,  # ECONNREFUSED (listen backlog full)
                    )
                ):
                    await asyncio.sleep(0.2 + random.random())
                    continue
                self.stats.fail(type(err).__name__)
                return False

    async def call(self, action: str, payload: dict[str, Any]) -> bool:
        self.seq += 1
        mid = f"{self.id_prefix}{self.seq}"
        frame = json.dumps([2, mid, action, payload], separators=(",", ":"))
        t0 = time.perf_counter_ns()
        await self.ws.send(frame)
        while True:
            raw = await self.ws.recv()
            msg = json.loads(raw)
            if msg[0] in (3, 4) and msg[1] == mid:
                break
            if msg[0] == 2:  # a CALL from the CSMS: answer it as a station would
                await self.ws.send(json.dumps([3, msg[1], {}]))
        dt = (time.perf_counter_ns() - t0) // 1000
        if msg[0] == 4:
            self.stats.errors += 1
        if self.stats.recording:
            self.stats.round_trips += 1
            self.stats.latencies_us.append(dt)
        return msg[0] == 3

    async def run_loop(self, stop_at: float) -> None:
        """One CALL outstanding until ``stop_at``, driven by :class:`LoopProtocol`."""
        finished = asyncio.get_running_loop().create_future()
        driver = LoopProtocol(self, stop_at, finished)
        try:
            driver.start()
            await finished
        except Exception as err:  # noqa: BLE001
            self.stats.lose(err)
        finally:
            driver.stop()

    async def run_interval(self, stop_at: float) -> None:
        # spread the first heartbeat over one interval, then keep the period
        next_at = time.monotonic() + random.random() * self.args.interval
        try:
            while True:
                delay = next_at - time.monotonic()
                if next_at >= stop_at:
                    break
                if delay > 0:
                    await asyncio.sleep(delay)
                await asyncio.wait_for(self.call("Heartbeat", {}), self.args.call_timeout)
                next_at += self.args.interval
        except Exception as err:  # noqa: BLE001
            self.stats.lose(err)


_mask_pool = [b"", 0]


def text_frame(data: bytes) -> bytes:
    """A whole masked text frame from a client (RFC 6455, 5.2); keys cut from 4 KiB reads."""
    pool, at = _mask_pool
    if at >= len(pool):
        pool, at = os.urandom(4096), 0
    mask = pool[at : at + 4]
    _mask_pool[:] = [pool, at + 4]
    n = len(data)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + mask + apply_mask(data, mask)


class LoopProtocol(asyncio.Protocol):
    """The loop phase of one station without per-message tasks, futures or queues.

    The handshake and the BootNotification go through websockets' asyncio
    client (``Station.open``, ``Station.call``). For the loop, the connection's
    transport is handed to this protocol: each answer is taken in
    ``data_received`` and the next CALL written from there. Whole text frames
    are framed (``text_frame``) and parsed here; every other frame (ping,
    close, fragments) goes to the connection's own sans-I/O websockets
    protocol object. The generator then costs less CPU per round trip, which
    on a small machine is CPU the system under test does not have to share.
    ``stop`` hands the transport back to the connection (for its closing
    handshake).
    """

    def __init__(self, station: Station, stop_at: float, finished: asyncio.Future[None]) -> None:
        self.station = station
        self.ws = station.ws
        self.buffer = b""  # the start of a frame not whole yet
        self.stop_at = stop_at
        self.finished = finished
        self.loop = asyncio.get_running_loop()
        self.mid = ""
        self.answer_head = b""  # how a compact CALLRESULT to the outstanding CALL starts
        self.payload_text = payload_text(station.args.action)
        self.t0 = 0
        self.to_flush = False  # the websockets protocol has bytes to write
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.ws.transport.set_protocol(self)
        self.send_next()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.ws.transport.is_closing():
            self.ws.transport.set_protocol(self.ws)

    def end(self, err: BaseException | None = None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.finished.done():
            if err is None:
                self.finished.set_result(None)
            else:
                self.finished.set_exception(err)

    def send_next(self) -> None:
        if time.monotonic() >= self.stop_at:
            self.end()
            return
        station = self.station
        action = station.args.action
        station.seq += 1
        mid = self.mid = f"{station.id_prefix}{station.seq}"
        # The MessageId is hex digits, "-" and a counter: nothing JSON escapes.
        text = f'[2,"{mid}","{action}",{self.payload_text()}]'
        self.answer_head = f'[3,"{mid}",'.encode()
        self.t0 = time.perf_counter_ns()
        self.ws.transport.write(text_frame(text.encode()))
        if self.timer is None:
            self.timer = self.loop.call_later(station.args.call_timeout, self.check_timeout)

    def check_timeout(self) -> None:
        self.timer = None
        waited = (time.perf_counter_ns() - self.t0) / 1e9
        if waited >= self.station.args.call_timeout:
            self.end(TimeoutError(f"no answer within {self.station.args.call_timeout} s"))
        else:
            self.timer = self.loop.call_later(
                self.station.args.call_timeout - waited, self.check_timeout
            )

    def flush(self) -> None:
        for data in self.ws.protocol.data_to_send():
            if data:
                self.ws.transport.write(data)

    def data_received(self, data: bytes) -> None:
        # Whole unfragmented text frames are taken apart here; any other frame
        # (ping, close, a fragment) goes whole to the websockets protocol.
        buf = self.buffer + data if self.buffer else data
        pos, size = 0, len(buf)
        while size - pos >= 2:
            second = buf[pos + 1]
            length = second & 0x7F
            extended = 2 if length == 126 else 8 if length == 127 else 0
            head = 2 + extended + (4 if second & 0x80 else 0)  # masked: the library objects
            if size - pos < head:
                break
            if extended:
                length = int.from_bytes(buf[pos + 2 : pos + 2 + extended], "big")
            end = pos + head + length
            if size < end:
                break
            if buf[pos] == 0x81 and not second & 0x80:  # FIN, text, unmasked
                self.on_text(buf[pos + head : end])
            else:
                self.to_library(buf[pos:end])
            pos = end
        self.buffer = buf[pos:]
        if self.to_flush:  # pongs, the closing handshake, answers to CALLs
            self.to_flush = False
            self.flush()

    def to_library(self, frame: bytes) -> None:
        protocol = self.ws.protocol
        protocol.receive_data(frame)
        self.to_flush = True
        for event in protocol.events_received():
            if event.opcode is Opcode.TEXT:
                self.on_text(event.data)
            elif event.opcode is Opcode.CLOSE:
                self.end(ConnectionError("closed by the server"))

    def on_text(self, raw: bytes) -> None:
        # The common case, a compact CALLRESULT to the outstanding CALL, is
        # recognised by its start; anything else is parsed.
        if not raw.startswith(self.answer_head):
            msg = json.loads(raw)
            if msg[0] == 2:  # a CALL from the CSMS: answer it as a station would
                self.ws.protocol.send_text(json.dumps([3, msg[1], {}]).encode())
                self.to_flush = True
                return
            if msg[0] not in (3, 4) or msg[1] != self.mid:
                return
            if msg[0] == 4:
                self.station.stats.errors += 1
        stats = self.station.stats
        if stats.recording:
            stats.round_trips += 1
            stats.latencies_us.append((time.perf_counter_ns() - self.t0) // 1000)
        self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.connection_lost(exc)
        self.end(exc or ConnectionError("connection lost"))

    def eof_received(self) -> bool | None:
        return self.ws.eof_received()


async def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    stats = Stats()
    ids = [f"{args.id_prefix}{i:05d}" for i in range(args.first, args.first + args.stations)]
    stations = [Station(cb, args, stats) for cb in ids]
    sem = asyncio.Semaphore(args.connect_concurrency)
    t_start = time.monotonic()
    deadline = t_start + args.connect_timeout
    ok = await asyncio.gather(*(s.open(deadline, sem) for s in stations))
    live = [s for s, good in zip(stations, ok, strict=True) if good]
    connect_s = (stats.last_connect_at - t_start) if live else None

    async def boot(s: Station) -> Station | None:
        try:
            await asyncio.wait_for(s.call("BootNotification", boot_payload()), args.call_timeout)
            return s
        except Exception:  # noqa: BLE001
            stats.fail("boot")
            return None

    booted = [s for s in await asyncio.gather(*(boot(s) for s in live)) if s is not None]
    # all workers start the measured phase together when a start time is given
    if args.start_at:
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
    t_loop = time.monotonic()
    stop_at = t_loop + args.warmup + args.duration
    runner = Station.run_interval if args.mode == "interval" else Station.run_loop
    tasks = [asyncio.create_task(runner(s, stop_at)) for s in booted]

    window: dict[str, float] = {}

    async def recorder() -> None:
        await asyncio.sleep(args.warmup)
        stats.recording = True
        window["start"] = time.time()
        await asyncio.sleep(args.duration)
        stats.recording = False
        window["end"] = time.time()

    rec = asyncio.create_task(recorder())
    t_rec = time.monotonic() + args.warmup
    await asyncio.wait(tasks, timeout=args.warmup + args.duration + args.call_timeout + 5)
    await rec
    measured_s = min(time.monotonic(), t_rec + args.duration) - t_rec
    still_open = sum(1 for s in booted if s.ws is not None and s.ws.state.name == "OPEN")
    await asyncio.gather(*(s.ws.close() for s in live), return_exceptions=True)
    return {
        "stations": args.stations,
        "connected": stats.connected,
        "failed": stats.failed,
        "fail_reasons": stats.fail_reasons,
        "retries_503": stats.retries_503,
        "booted": len(booted),
        "connect_s": connect_s,
        "open_at_end": still_open,
        "lost": stats.lost,
        "lost_reasons": stats.lost_reasons,
        "callerrors": stats.errors,
        "round_trips": stats.round_trips,
        "measured_s": measured_s,
        "latencies_us": stats.latencies_us,
        "rec_start": window.get("start"),
        "rec_end": window.get("end"),
    }


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    lat: list[int] = []
    reasons: dict[str, int] = {}
    lost_reasons: dict[str, int] = {}
    for p in parts:
        for k, v in p.get("lost_reasons", {}).items():
            lost_reasons[k] = lost_reasons.get(k, 0) + v
        lat.extend(p["latencies_us"])
        for k, v in p["fail_reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    measured = max(p["measured_s"] for p in parts) or 1e-9
    rt = sum(p["round_trips"] for p in parts)
    connect = [p["connect_s"] for p in parts if p["connect_s"] is not None]
    out = {
        k: sum(p[k] for p in parts)
        for k in (
            "stations",
            "connected",
            "failed",
            "retries_503",
            "booted",
            "open_at_end",
            "lost",
            "callerrors",
        )
    }
    out.update(
        fail_reasons=reasons,
        lost_reasons=lost_reasons,
        connect_s=max(connect) if connect else None,
        round_trips=rt,
        measured_s=measured,
        rps=rt / measured,
        latency_ms=percentiles(lat),
        procs=len(parts),
        rec_start=min((p["rec_start"] for p in parts if p["rec_start"]), default=None),
        rec_end=max((p["rec_end"] for p in parts if p["rec_end"]), default=None),
    )
    return out


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    addr = socket.gethostbyname(host)
    if not ipaddress.ip_address(addr).is_loopback:
        raise SystemExit(f"loadgen: {url} is not a loopback address; refusing")


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, need)) if hard != resource.RLIM_INFINITY else max(soft, need)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/ocpp (cbId is appended)")
    p.add_argument("--stations", "-n", type=int, default=10)
    p.add_argument("--first", type=int, default=0, help="index of the first station")
    p.add_argument("--id-prefix", default="bench")
    p.add_argument("--password", default="bench-password")
    p.add_argument("--mode", choices=["loop", "interval"], default="loop")
    p.add_argument("--action", choices=["Heartbeat", "MeterValues"], default="Heartbeat")
    p.add_argument("--interval", type=float, default=10.0, help="interval mode: seconds")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument("--connect-concurrency", type=int, default=200)
    p.add_argument("--call-timeout", type=float, default=30.0)
    p.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    p.add_argument("--procs", type=int, default=1, help="worker processes")
    p.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path)
    return p.parse_args(argv)


def run_loop(main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run on uvloop where installed (bench/requirements.txt): a cheaper generator
    leaves more of the shared cores to the system under test."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_loopback(args.url)
    raise_nofile(args.stations // max(1, args.procs) + 256)
    if args.procs <= 1:
        result = merge([run_loop(run_worker(args))])
    else:
        per = -(-args.stations // args.procs)
        workers = []
        tmp = Path(tempfile.mkdtemp(prefix="loadgen-"))
        base = [a for a in (argv if argv is not None else sys.argv[1:])]
        for i in range(args.procs):
            first = args.first + i * per
            count = min(per, args.first + args.stations - first)
            if count <= 0:
                break
            out = tmp / f"w{i}.json"
            cmd = [sys.executable, os.path.abspath(__file__), *base]
            cmd += ["--procs", "1", "--first", str(first), "--stations", str(count)]
            cmd += ["--json-out", str(out), "--raw"]
            workers.append((subprocess.Popen(cmd), out))
        parts = []
        for proc, out in workers:
            proc.wait(timeout=args.connect_timeout + args.warmup + args.duration + 120)
            parts.append(json.loads(out.read_text()))
            out.unlink()
        tmp.rmdir()
        result = merge(parts)
        result["procs"] = len(parts)
    text = json.dumps(result)
    if args.json_out:
        args.json_out.write_text(text)
    else:
        print(text)
    return 0


def worker_main(argv: list[str]) -> int:
    """A worker of --procs: writes its raw (unmerged) result."""
    argv = [a for a in argv if a != "--raw"]
    args = parse_args(argv)
    raise_nofile(args.stations + 256)
    raw = run_loop(run_worker(args))
    assert args.json_out is not None
    args.json_out.write_text(json.dumps(raw))
    return 0


if __name__ == "__main__":
    if "--raw" in sys.argv[1:]:
        sys.exit(worker_main(sys.argv[1:]))
    sys.exit(main())
