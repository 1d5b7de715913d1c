"""Connection caps of the CSMS node (docs/security.md, "Limits") with the real
daemon, driven through :class:`tests.shim_double.ShimDouble`.

- ``handshakes_per_second``: a flood of bad logins must not starve a station
  that is already connected, and only ever gets 401 or 503;
- ``max_connections``: beyond it, HTTP 503; a freed place can be taken again.

The measured numbers are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import time
from collections import Counter

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.common import (
    HEARTBEAT_ANSWER,
    OCPP201,
    MakeCsms,
    answer_requests,
    auth_header,
)
from tests.shim_double import ShimDouble

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def station(port: int, cb_id: str, password: str) -> ClientConnection:
    return await connect(
        f"ws://127.0.0.1:{port}/ocpp/{cb_id}",
        subprotocols=OCPP201,
        additional_headers=auth_header(cb_id, password),
        open_timeout=5,
        ping_interval=None,
    )


async def raw_upgrade(port: int, cb_id: str, password: str) -> tuple[int, dict[str, str]]:
    """One websocket upgrade request on a fresh TCP connection: (HTTP status, headers)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        auth = base64.b64encode(f"{cb_id}:{password}".encode()).decode()
        writer.write(
            (
                f"GET /ocpp/{cb_id} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: ocpp2.0.1\r\n"
                f"Authorization: Basic {auth}\r\n"
                "\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def heartbeat(ws: ClientConnection, message_id: str) -> float:
    """One Heartbeat round trip in seconds (the answer is checked)."""
    start = time.perf_counter()
    await ws.send(json.dumps([2, message_id, "Heartbeat", {}]))
    answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
    elapsed = time.perf_counter() - start
    assert answer == [3, message_id, HEARTBEAT_ANSWER], answer
    return elapsed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


async def test_bad_login_flood_does_not_starve_a_connected_station(
    shim: ShimDouble, make_csms: MakeCsms
) -> None:
    # every attempt comes from 127.0.0.1: the per-address limit (before TLS) is off
    # here to test the node-wide one (test_security_accept.py tests that one)
    csms = await make_csms(
        {"GOOD": "good-pw", "VICTIM": "victim-pw"},
        handshakes_per_second=100,
        handshakes_per_address=0,
    )
    node, port = csms.node, csms.port
    flow = asyncio.create_task(answer_requests(shim, node, {"Heartbeat": HEARTBEAT_ANSWER}))
    good = await station(port, "GOOD", "good-pw")
    try:
        baseline = [await heartbeat(good, f"base-{i}") for i in range(20)]

        statuses: Counter[int] = Counter()
        retry_after: set[str] = set()
        limit = asyncio.Semaphore(50)

        async def bad_login(i: int) -> None:
            async with limit:
                # wrong passwords of the victim's length, other lengths, a prefix
                password = ("victim-px", "x", "victim-pw-and-more", "victim-p")[i % 4]
                status, headers = await raw_upgrade(port, "VICTIM", password)
                statuses[status] += 1
                if status == 503:
                    retry_after.add(headers.get("retry-after", ""))

        rtts: list[float] = []
        flooding = True

        async def keep_beating() -> None:
            n = 0
            while flooding:
                rtts.append(await heartbeat(good, f"hb-{n}"))
                n += 1

        beats = asyncio.create_task(keep_beating())
        started = time.perf_counter()
        await asyncio.gather(*(bad_login(i) for i in range(1000)))
        flood_seconds = time.perf_counter() - started
        flooding = False
        await beats

        p50, p99 = statistics.median(rtts), percentile(rtts, 0.99)
        print(
            f"\nflood: 1000 bad logins in {flood_seconds:.2f} s; answers {dict(statuses)};"
            f" Retry-After {sorted(retry_after)}\n"
            f"heartbeats during the flood: {len(rtts)}, p50 {p50 * 1000:.1f} ms,"
            f" p99 {p99 * 1000:.1f} ms, max {max(rtts) * 1000:.1f} ms"
            f" (before: p50 {statistics.median(baseline) * 1000:.1f} ms)"
        )
        assert sum(statuses.values()) == 1000
        assert set(statuses) <= {401, 503}, statuses
        assert statuses[401] >= 1, "not one attempt reached the password check"
        assert statuses[503] >= 1, "the handshake cap never answered 503"
        assert retry_after <= {"1"}, retry_after
        # the bucket holds one second's worth; the flood lasted flood_seconds
        assert statuses[401] <= 100 + 100 * flood_seconds + 10, statuses
        assert len(rtts) >= 5, "too few heartbeats during the flood to say anything"
        assert p99 < 1.0, f"heartbeat p99 {p99:.3f} s during the flood"
        # the connected station was never dropped
        assert await heartbeat(good, "after") < 1.0

        # After the flood a new good station gets in (once the bucket refills).
        deadline = time.monotonic() + 5
        while True:
            try:
                newcomer = await station(port, "VICTIM", "victim-pw")
                break
            except websockets.InvalidStatus as exc:
                assert exc.response.status_code == 503, exc
                assert time.monotonic() < deadline, "no good login within 5 s after the flood"
                await asyncio.sleep(0.2)
        assert await heartbeat(newcomer, "new-1") < 1.0
        await newcomer.close()
    finally:
        await good.close()
        flow.cancel()
        await shim.close_node(node)


async def test_max_connections_answers_503_then_frees_a_place(
    shim: ShimDouble, make_csms: MakeCsms
) -> None:
    auths = {f"S{i}": f"pw{i}" for i in range(5)}
    csms = await make_csms(auths, max_connections=2)
    node, port = csms.node, csms.port
    first = await station(port, "S0", "pw0")
    second = await station(port, "S1", "pw1")
    try:
        await shim.wait_for(lambda: "2 connected" in shim.statuses(node))
        with pytest.raises(websockets.InvalidStatus) as info:
            await station(port, "S2", "pw2")
        assert info.value.response.status_code == 503
        assert info.value.response.headers.get("Retry-After")
        # also with wrong credentials: the cap answers before the password check
        status, _headers = await raw_upgrade(port, "S3", "wrong")
        assert status == 503
        await first.close()
        deadline = time.monotonic() + 5
        while True:
            try:
                third = await station(port, "S2", "pw2")
                break
            except websockets.InvalidStatus as exc:
                assert exc.response.status_code == 503
                assert time.monotonic() < deadline, "the freed place was never given again"
                await asyncio.sleep(0.1)
        await shim.wait_for(lambda: shim.statuses(node)[-1] == "2 connected")
        with pytest.raises(websockets.InvalidStatus) as info:
            await station(port, "S4", "pw4")
        assert info.value.response.status_code == 503
        await third.close()
    finally:
        await second.close()
        await shim.close_node(node)


async def test_handshake_cap_also_limits_good_logins_then_recovers(
    shim: ShimDouble, make_csms: MakeCsms
) -> None:
    """The cap is per attempt, good or bad: a burst beyond it gets 503, a second later in."""
    auths = {f"B{i}": f"pw{i}" for i in range(30)}
    csms = await make_csms(auths, handshakes_per_second=10, handshakes_per_address=0)
    node, port = csms.node, csms.port
    try:
        started = time.perf_counter()
        results = await asyncio.gather(*(raw_upgrade(port, f"B{i}", f"pw{i}") for i in range(30)))
        elapsed = time.perf_counter() - started
        codes = Counter(status for status, _ in results)
        # 101 = switched to websocket (the raw client closes right after)
        assert set(codes) <= {101, 503}, codes
        # the bucket: 10 at once, refilled at 10 per second
        assert 10 <= codes[101] <= 10 + 10 * elapsed + 1, (codes, elapsed)
        assert codes[503] >= 1, codes
        await asyncio.sleep(1.1)
        status, _ = await raw_upgrade(port, "B0", "pw0")
        assert status == 101
    finally:
        await shim.close_node(node)


async def test_max_connections_holds_under_concurrent_logins(
    shim: ShimDouble, make_csms: MakeCsms
) -> None:
    """20 good logins at once against a cap of 2: exactly 2 upgrades, 18 answers 503."""
    auths = {f"C{i}": f"pw{i}" for i in range(20)}
    csms = await make_csms(auths, max_connections=2, handshakes_per_second=0)
    node, port = csms.node, csms.port
    held: list[asyncio.StreamWriter] = []

    async def login(i: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        held.append(writer)  # upgraded ones stay open until the end
        auth = base64.b64encode(f"C{i}:pw{i}".encode()).decode()
        writer.write(
            (
                f"GET /ocpp/C{i} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ocpp2.0.1\r\n"
                f"Authorization: Basic {auth}\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return int(head.split()[1])

    try:
        codes = Counter(await asyncio.gather(*(login(i) for i in range(20))))
        assert codes == Counter({101: 2, 503: 18}), codes
        await shim.wait_for(lambda: "2 connected" in shim.statuses(node))
        await asyncio.sleep(0.2)
        assert "3 connected" not in shim.statuses(node)
    finally:
        for writer in held:
            writer.close()
        await shim.close_node(node)
