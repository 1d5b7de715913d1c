"""OCPP load generator: N simulated charging stations against one CSMS.

Each station connects to ``<url>/<cbId>`` with HTTP Basic auth (user = cbId) and
one subprotocol (``ocpp2.0.1`` by default; ``--versions 1.6`` or ``2.1`` for the
other versions, ``--versions 1.6,2.0.1,2.1`` for a mix: the versions assigned to
the stations round-robin by station number), sends a BootNotification, then
keeps exactly one CALL outstanding: in ``loop`` mode it sends Heartbeat or
MeterValues again as soon as the answer arrives, for ``--duration`` seconds; in
``interval`` mode it sends a Heartbeat every ``--interval`` seconds (the
capacity run).

Stand-alone on purpose: asyncio + ``websockets`` only, nothing from ocpp_nodes.
Targets must be loopback addresses; every loop is bounded in time.

With ``--procs K`` the stations are split over K worker processes (one event
loop each, so the generator can use more than one core and open more sockets);
their results are merged. The result is one JSON object on stdout (or
``--json-out``): connections made/failed, round trips, round trips per second,
latency percentiles in milliseconds; with more than one version also the same
for each version's stations (``by_version``).

The payloads of each version are schema-valid; bench/check_payloads.py checks
them with the engine's validators (this file imports nothing from ocpp_nodes).
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

#: OCPP version -> its websocket subprotocol
SUBPROTOCOLS = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}
DEFAULT_VERSION = "2.0.1"


def version_list(text: str) -> list[str]:
    """``"1.6,ocpp2.1"`` -> ``["1.6", "2.1"]`` (names or subprotocols, comma-separated)."""
    out = []
    for part in text.replace(" ", ",").split(","):
        name = part.strip().removeprefix("ocpp")
        if not name:
            continue
        if name not in SUBPROTOCOLS:
            raise argparse.ArgumentTypeError(
                f"unknown OCPP version {part!r} (one of {', '.join(SUBPROTOCOLS)})"
            )
        out.append(name)
    if not out:
        raise argparse.ArgumentTypeError("no OCPP version given")
    return out


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def boot_payload(version: str = DEFAULT_VERSION) -> dict[str, Any]:
    if version == "1.6":
        return {
            "chargePointVendor": "BenchVendor",
            "chargePointModel": "BenchModel",
            "firmwareVersion": "1.0.0",
        }
    return {
        "reason": "PowerUp",
        "chargingStation": {
            "model": "BenchModel",
            "vendorName": "BenchVendor",
            "firmwareVersion": "1.0.0",
        },
    }


def meter_values_payload(
    timestamp: str | None = None, version: str = DEFAULT_VERSION
) -> dict[str, Any]:
    """A realistic periodic sample of a three-phase AC charger, taken now by default.

    The same eight values in every version: 2.0.1 and 2.1 have the same shape
    (numbers, ``unitOfMeasure``); 1.6 has ``connectorId``, values as strings
    and ``unit``.
    """
    if version == "1.6":
        return {
            "connectorId": 1,
            "meterValue": [
                {"timestamp": timestamp or now_iso(), "sampledValue": _sampled_values_16()}
            ],
        }
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


def _sampled_values_16() -> list[dict[str, Any]]:
    sampled: list[dict[str, Any]] = [
        {"value": "230.4", "measurand": "Voltage", "phase": p, "unit": "V"}
        for p in ("L1-N", "L2-N", "L3-N")
    ]
    sampled += [
        {"value": "15.9", "measurand": "Current.Import", "phase": p, "unit": "A"}
        for p in ("L1", "L2", "L3")
    ]
    sampled += [
        {
            "value": "10995.0",
            "measurand": "Power.Active.Import",
            "unit": "W",
            "context": "Sample.Periodic",
        },
        {
            "value": "123456.7",
            "measurand": "Energy.Active.Import.Register",
            "unit": "Wh",
            "context": "Sample.Periodic",
        },
    ]
    return sampled


def payload_text(action: str, version: str = DEFAULT_VERSION) -> Callable[[], str]:
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
    head, tail = compact(meter_values_payload(timestamp=mark, version=version)).split(compact(mark))
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
        #: version -> the latencies of its stations' round trips (µs)
        self.latencies_us: dict[str, list[int]] = {}
        self.stations_by_version: dict[str, int] = {}
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
    def __init__(
        self,
        cb_id: str,
        args: argparse.Namespace,
        stats: Stats,
        version: str = DEFAULT_VERSION,
        url: str | None = None,
    ) -> None:
        self.cb_id = cb_id
        self.args = args
        self.url = url or args.url
        self.stats = stats
        self.version = version
        self.subprotocol = SUBPROTOCOLS[version]
        self.latencies = stats.latencies_us.setdefault(version, [])
        stats.stations_by_version[version] = stats.stations_by_version.get(version, 0) + 1
        self.seq = 0
        # MessageIds unique across stations and runs, as real stations make
        # them (the old package keys waiting requests by MessageId alone,
        # across stations); cheaper than a uuid4 per call, which reads
        # os.urandom each time
        self.id_prefix = f"{uuid.uuid4().hex[:16]}-"
        self.ws: Any = None
        self.alive = True  # False once its loop ended early (connection lost, timeout)

    async def open(self, deadline: float, sem: asyncio.Semaphore) -> bool:
        token = base64.b64encode(f"{self.cb_id}:{self.args.password}".encode()).decode()
        url = f"{self.url.rstrip('/')}/{self.cb_id}"
        while True:
            try:
                async with sem:
                    self.ws = await asyncio.wait_for(
                        connect(
                            url,
                            subprotocols=[self.subprotocol],  # type: ignore[list-item]
                            additional_headers={"Authorization": f"Basic {token}"},
                            compression="deflate" if self.args.deflate else None,
                            ping_interval=None,
                            open_timeout=None,
                            max_size=2**22,
                        ),
                        timeout=max(0.1, min(20.0, deadline - time.monotonic())),
                    )
                if self.ws.subprotocol != self.subprotocol:
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
            self.latencies.append(dt)
        return msg[0] == 3

    async def run_loop(self, stop_at: float) -> None:
        """One CALL outstanding until ``stop_at``, driven by :class:`LoopProtocol`."""
        finished = asyncio.get_running_loop().create_future()
        driver = LoopProtocol(self, stop_at, finished)
        try:
            driver.start()
            await finished
        except Exception as err:  # noqa: BLE001
            self.alive = False
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
        self.payload_text = payload_text(station.args.action, station.version)
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
            self.station.latencies.append((time.perf_counter_ns() - self.t0) // 1000)
        self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.connection_lost(exc)
        self.end(exc or ConnectionError("connection lost"))

    def eof_received(self) -> bool | None:
        return self.ws.eof_received()


async def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    stats = Stats()
    # round-robin by station number, so that the workers of --procs agree
    versions = args.versions
    stations = [
        Station(f"{args.id_prefix}{i:05d}", args, stats, versions[i % len(versions)])
        for i in range(args.first, args.first + args.stations)
    ]
    sem = asyncio.Semaphore(args.connect_concurrency)
    t_start = time.monotonic()
    deadline = t_start + args.connect_timeout
    ok = await asyncio.gather(*(s.open(deadline, sem) for s in stations))
    live = [s for s, good in zip(stations, ok, strict=True) if good]
    connect_s = (stats.last_connect_at - t_start) if live else None

    async def boot(s: Station) -> Station | None:
        try:
            await asyncio.wait_for(
                s.call("BootNotification", boot_payload(s.version)), args.call_timeout
            )
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
        "stations_by_version": stats.stations_by_version,
        "rec_start": window.get("start"),
        "rec_end": window.get("end"),
    }


def rotation_order(groups: int, rounds: int) -> list[list[int]]:
    """``rounds`` rounds, each group once per round, in the orders of a Williams square.

    Every group takes each place in a round equally often, and follows each other
    group equally often (for 4 groups: 0 1 3 2, 1 2 0 3, 2 3 1 0, 3 0 2 1, then
    again; an odd number of groups needs the mirrored rows too), so that neither
    the place in a round, nor the group before, nor how long a group was idle
    favours one group.
    """
    first = [0]
    low, high = 1, groups - 1
    while len(first) < groups:
        first.append(low)
        low += 1
        if len(first) < groups:
            first.append(high)
            high -= 1
    square = [[(g + shift) % groups for g in first] for shift in range(groups)]
    if groups % 2:  # an odd number needs the mirrored rows as well
        square += [row[::-1] for row in square]
    return [square[r % len(square)] for r in range(rounds)]


async def run_rotation(args: argparse.Namespace) -> dict[str, Any]:
    """``--groups``: each group its own ``--stations`` stations, all connected and booted
    first; then the groups take turns, one at a time, ``--rounds`` rounds of one turn
    each (``rotation_order``), each turn ``--slice`` seconds of the loop, recorded
    after ``--settle`` seconds.

    Groups measured in turns seconds apart see the same machine: on a shared machine
    whose speed drifts over tens of seconds, runs of a minute each one after the other
    do not. The slices' recording windows (wall clock) let the caller attribute the
    CPU of the system under test to each slice.
    """
    stats = Stats()
    groups: list[list[str]] = args.groups
    labels: list[str] = []
    seen: dict[str, int] = {}
    for g in groups:  # the same versions again (an A/A check): "2.0.1", "2.0.1#2", ...
        label = group_label(g)
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    if args.group_labels:
        labels = args.group_labels
    urls = args.group_urls or [args.url] * len(groups)
    members: list[list[Station]] = []
    latencies: dict[str, list[int]] = {}
    for g, versions in enumerate(groups):
        mine = []
        for i in range(args.stations):
            number = args.first + g * args.stations + i
            station = Station(
                f"{args.id_prefix}{number:05d}", args, stats, versions[i % len(versions)], urls[g]
            )
            # each group's round trips apart (and, in a mixed group, each version's)
            station.latencies = latencies.setdefault(f"{labels[g]}|{station.version}", [])
            mine.append(station)
        members.append(mine)
    everyone = [s for mine in members for s in mine]
    sem = asyncio.Semaphore(args.connect_concurrency)
    t_start = time.monotonic()
    deadline = t_start + args.connect_timeout
    ok = await asyncio.gather(*(s.open(deadline, sem) for s in everyone))
    live = [s for s, good in zip(everyone, ok, strict=True) if good]
    connect_s = (stats.last_connect_at - t_start) if live else None

    async def boot(s: Station) -> bool:
        try:
            await asyncio.wait_for(
                s.call("BootNotification", boot_payload(s.version)), args.call_timeout
            )
            return True
        except Exception:  # noqa: BLE001
            stats.fail("boot")
            s.alive = False
            return False

    for s, good in zip(everyone, ok, strict=True):
        s.alive = good
    await asyncio.gather(*(boot(s) for s in live))
    booted = [s for s in live if s.alive]
    order = rotation_order(len(groups), args.rounds)
    slices = []

    async def turn(g: int, length: float, record: bool = True, round_: int = -1) -> dict[str, Any]:
        running = [s for s in members[g] if s.alive]
        stop_at = time.monotonic() + length
        before = (stats.round_trips, stats.errors)
        window: dict[str, float] = {}

        async def recorder() -> None:
            await asyncio.sleep(min(args.settle, length))
            stats.recording = record
            window["start"] = time.time()
            t0 = time.monotonic()
            await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
            stats.recording = False
            window["end"] = time.time()
            window["measured"] = time.monotonic() - t0

        rec = asyncio.create_task(recorder())
        tasks = [asyncio.create_task(s.run_loop(stop_at)) for s in running]
        await asyncio.wait(tasks, timeout=length + args.call_timeout + 5)
        await rec
        return {
            "group": labels[g],
            "round": round_,
            "stations": len(running),
            "round_trips": stats.round_trips - before[0],
            "callerrors": stats.errors - before[1],
            "measured_s": window["measured"],
            "rec_start": window["start"],
            "rec_end": window["end"],
        }

    # not recorded: every group once (a system under test that has just started
    # warms up), so that none is the first to run
    for g in range(len(groups)):
        await turn(g, args.warm_turn, record=False)
    for number, row in enumerate(order):
        for g in row:
            slices.append(await turn(g, args.slice, round_=number))
    still_open = sum(1 for s in booted if s.ws is not None and s.ws.state.name == "OPEN")
    await asyncio.gather(*(s.ws.close() for s in live), return_exceptions=True)
    out_groups: dict[str, Any] = {}
    for g, label in enumerate(labels):
        mine_slices = [sl for sl in slices if sl["group"] == label]
        measured = sum(sl["measured_s"] for sl in mine_slices) or 1e-9
        samples = [x for v in groups[g] for x in latencies.get(f"{label}|{v}", [])]
        entry: dict[str, Any] = {
            "versions": groups[g],
            "stations": args.stations,
            "slices": len(mine_slices),
            "round_trips": len(samples),
            "measured_s": measured,
            "rps": len(samples) / measured,
            "latency_ms": percentiles(samples),
        }
        if len(set(groups[g])) > 1:
            entry["by_version"] = {
                v: {
                    "stations": sum(1 for s in members[g] if s.version == v),
                    "round_trips": len(latencies.get(f"{label}|{v}", [])),
                    "rps": len(latencies.get(f"{label}|{v}", [])) / measured,
                    "latency_ms": percentiles(latencies.get(f"{label}|{v}", [])),
                }
                for v in dict.fromkeys(groups[g])
            }
        out_groups[label] = entry
    return {
        "stations": len(everyone),
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
        "rotation": {
            "slice_s": args.slice,
            "settle_s": args.settle,
            "rounds": args.rounds,
            "order": [[labels[g] for g in row] for row in order],
        },
        "slices": slices,
        "groups": out_groups,
        "rec_start": slices[0]["rec_start"] if slices else None,
        "rec_end": slices[-1]["rec_end"] if slices else None,
    }


def group_label(versions: list[str]) -> str:
    return versions[0] if len(versions) == 1 else "mixed"


def group_list(text: str) -> list[list[str]]:
    """``"2.0.1/1.6/1.6,2.0.1,2.1"`` -> ``[["2.0.1"], ["1.6"], ["1.6", "2.0.1", "2.1"]]``."""
    groups = [version_list(part) for part in text.split("/") if part.strip()]
    if len(groups) < 2:
        raise argparse.ArgumentTypeError("--groups needs at least two groups, '/'-separated")
    return groups


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    lat: list[int] = []
    by_version: dict[str, list[int]] = {}
    stations_by_version: dict[str, int] = {}
    reasons: dict[str, int] = {}
    lost_reasons: dict[str, int] = {}
    for p in parts:
        for k, v in p.get("lost_reasons", {}).items():
            lost_reasons[k] = lost_reasons.get(k, 0) + v
        for version, samples in p["latencies_us"].items():
            lat.extend(samples)
            by_version.setdefault(version, []).extend(samples)
        for version, count in p["stations_by_version"].items():
            stations_by_version[version] = stations_by_version.get(version, 0) + count
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
        ocpp_versions=sorted(by_version, key=list(SUBPROTOCOLS).index),
        rec_start=min((p["rec_start"] for p in parts if p["rec_start"]), default=None),
        rec_end=max((p["rec_end"] for p in parts if p["rec_end"]), default=None),
    )
    if len(by_version) > 1:
        out["by_version"] = {
            version: {
                "stations": stations_by_version.get(version, 0),
                "round_trips": len(samples),
                "rps": len(samples) / measured,
                "latency_ms": percentiles(samples),
            }
            for version, samples in sorted(
                by_version.items(), key=lambda kv: list(SUBPROTOCOLS).index(kv[0])
            )
        }
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
    p.add_argument(
        "--versions",
        type=version_list,
        default=[DEFAULT_VERSION],
        metavar="LIST",
        help="the stations' OCPP version (1.6, 2.0.1 or 2.1; default 2.0.1), or several "
        "comma-separated: station i gets the (i mod count)-th (1.6,2.0.1,2.1: a third each)",
    )
    p.add_argument(
        "--groups",
        type=group_list,
        metavar="G1/G2/...",
        help="loop mode in turns: groups of --stations stations each, every group a --versions "
        "LIST, '/'-separated (2.0.1/1.6/2.1/1.6,2.0.1,2.1), one group at a time, in rounds "
        "of one turn each (see run_rotation); replaces --duration",
    )
    p.add_argument(
        "--group-urls",
        type=lambda text: text.split(","),
        metavar="U1,U2,...",
        help="--groups: each group's CSMS URL (default: --url for all), e.g. two systems "
        "compared in turns (bench/run.py's metrics scenario)",
    )
    p.add_argument(
        "--group-labels",
        type=lambda text: text.split(","),
        metavar="L1,L2,...",
        help="--groups: each group's name in the result (default: from its versions)",
    )
    p.add_argument("--rounds", type=int, default=4, help="--groups: rounds of turns")
    p.add_argument("--slice", type=float, default=3.0, help="--groups: seconds per turn")
    p.add_argument(
        "--settle", type=float, default=0.5, help="--groups: unrecorded seconds of each turn"
    )
    p.add_argument(
        "--warm-turn",
        type=float,
        default=3.0,
        help="--groups: seconds of each group's unrecorded turn before the first round",
    )
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
    if args.groups:
        for extra in (args.group_urls, args.group_labels):
            if extra is not None and len(extra) != len(args.groups):
                raise SystemExit("loadgen: --group-urls and --group-labels name every group")
        for url in args.group_urls or ():
            check_loopback(url)
    raise_nofile(args.stations // max(1, args.procs) + 256)
    if args.groups:
        if args.procs > 1 or args.mode != "loop":
            raise SystemExit("loadgen: --groups runs in one process, in loop mode")
        raise_nofile(args.stations * len(args.groups) + 256)
        result = run_loop(run_rotation(args))
    elif args.procs <= 1:
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
