"""Connection caps of the CSMS node (docs/security.md, "Limits") with the real
daemon, driven through :class:`tests.shim_double.ShimDouble`.

- ``handshakes_per_second``: a flood of bad logins must not starve a station
  that is already connected, and only ever gets 401 or 503;
- ``max_connections``: beyond it, HTTP 503; a freed place can be taken again;
- before TLS and HTTP: ``handshakes_per_address`` closes a connection over it
  at accept (no ServerHello), ``upgrade_timeout`` closes the idle ones, a
  plain client on a wss port is a failed TLS handshake, all three in the
  node's refusal summary; a station from another address gets in during a
  flood; absent fields limit a burst from one address (the defaults); the
  drops are in ``ocpp_nodes_handshakes_total`` by outcome.

The measured numbers are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.common import (
    HEARTBEAT_ANSWER,
    OCPP201,
    MakeCsms,
    answer_requests,
    auth_header,
    client_hello,
    next_number,
    start_csms,
    warnings,
)
from tests.shim_double import ShimDouble, free_port
from tests.test_metrics import scrape

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def station(
    port: int, cb_id: str, password: str, local: str = "127.0.0.1"
) -> ClientConnection:
    return await connect(
        f"ws://127.0.0.1:{port}/ocpp/{cb_id}",
        subprotocols=OCPP201,
        additional_headers=auth_header(cb_id, password),
        open_timeout=10,
        ping_interval=None,
        local_addr=(local, 0),
    )


@contextlib.asynccontextmanager
async def answering_heartbeats(shim: ShimDouble, node: str) -> AsyncIterator[None]:
    """The node's flow answers Heartbeats while inside."""
    flow = asyncio.create_task(answer_requests(shim, node, {"Heartbeat": HEARTBEAT_ANSWER}))
    try:
        yield
    finally:
        flow.cancel()


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
    # here to test the node-wide one (tested further down)
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


# -- before TLS and HTTP: handshakes_per_address, upgrade_timeout --------------------------


def tls_fields(ca: trustme.CA) -> dict[str, Any]:
    """The ``tls`` of a profile 2 CSMS node's create frame: a certificate for 127.0.0.1."""
    leaf = ca.issue_cert("127.0.0.1")
    return {
        "tls": {
            "cert": "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems),
            "key": leaf.private_key_pem.bytes().decode(),
        }
    }


async def first_answer(port: int, send: bytes, local: str = "127.0.0.1") -> bytes:
    """Connect from ``local``, send ``send``; the first bytes back, b"" when closed without any."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0)), 5
    )
    try:
        writer.write(send)
        return await asyncio.wait_for(reader.read(5), 10)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def summary(shim: ShimDouble, node: str) -> str:
    """The node's refusal summary (written when it stops, at the latest)."""
    await shim.close_node(node)
    found = [text for text in warnings(shim, node) if "refused connection attempts" in text]
    assert found, warnings(shim, node)
    return " | ".join(found)


async def test_over_handshakes_per_address_closed_before_the_server_hello(
    shim: ShimDouble, make_csms: MakeCsms
) -> None:
    ca = trustme.CA()
    node = f"csms{next_number()}"
    # 0.01 per second: a burst of one, the next token in 100 s
    port = await start_csms(
        shim,
        node,
        {"CP1": "pw"},
        {"security_profile": 2, "handshakes_per_address": 0.01},
        **tls_fields(ca),
    )
    hello = client_hello()
    answers = [await first_answer(port, hello) for _ in range(4)]
    assert answers[0][:1] == b"\x16", "the first: a TLS handshake record (ServerHello)"
    assert answers[1:] == [b""] * 3, "the others: closed without a byte of TLS"
    # another address has its own bucket
    assert (await first_answer(port, hello, local="127.0.0.2"))[:1] == b"\x16"
    text = await summary(shim, node)
    assert "3 x over handshakes_per_address, closed before TLS" in text, text


async def test_idle_connections_closed_after_upgrade_timeout_and_counted(
    shim: ShimDouble, make_csms: MakeCsms
) -> None:
    csms = await make_csms({"CP1": "pw"}, upgrade_timeout=0.5)
    async with answering_heartbeats(shim, csms.node):
        good = await station(csms.port, "CP1", "pw")
        started = time.monotonic()  # before the daemon accepts them
        idle = [
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", csms.port), 5)
            for _ in range(3)
        ]
        for reader, writer in idle:
            try:
                assert await asyncio.wait_for(reader.read(), 10) == b""
            except ConnectionResetError:
                pass
            writer.close()
        # not at once (the lower bound is loose: the daemon's loop may arm its
        # timer on a clock read a busy moment earlier)
        assert time.monotonic() - started >= 0.25
        # connected before them, so its deadline is long past: still served
        assert await heartbeat(good, "after-idle") < 5
        await good.close()
    text = await summary(shim, csms.node)
    assert "3 x no websocket upgrade within upgrade_timeout" in text, text


async def test_plain_tcp_to_a_wss_node_is_a_failed_tls_handshake(
    shim: ShimDouble, make_csms: MakeCsms
) -> None:
    node = f"csms{next_number()}"
    port = await start_csms(
        shim, node, {"CP1": "pw"}, {"security_profile": 2}, **tls_fields(trustme.CA())
    )
    status_line = b"GET /ocpp/CP1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answer = await first_answer(port, status_line)
    assert not answer.startswith(b"HTTP"), answer
    text = await summary(shim, node)
    assert "1 x TLS handshake failed" in text, text


async def test_a_station_from_another_address_connects_during_a_flood(
    shim: ShimDouble, make_csms: MakeCsms
) -> None:
    """The flood (127.0.0.3) is closed at accept; the station (127.0.0.2) gets in."""
    csms = await make_csms({"GOOD": "good-pw"}, handshakes_per_address=5)
    flooding = True
    attempts = 0

    async def flood() -> None:
        nonlocal attempts
        while flooding:
            try:
                _, writer = await asyncio.open_connection(
                    "127.0.0.1", csms.port, local_addr=("127.0.0.3", 0)
                )
                writer.close()
            except OSError:
                pass
            attempts += 1

    flooders = [asyncio.create_task(flood()) for _ in range(20)]
    try:
        async with answering_heartbeats(shim, csms.node):
            while attempts < 200:
                await asyncio.sleep(0.01)
            good = await station(csms.port, "GOOD", "good-pw", local="127.0.0.2")
            assert await heartbeat(good, "during-flood") < 5
            await good.close()
    finally:
        flooding = False
        await asyncio.gather(*flooders)
    text = await summary(shim, csms.node)
    assert "over handshakes_per_address" in text and "127.0.0.3" in text, text
    assert "127.0.0.2" not in text, text


async def test_the_dialogs_default_limits_a_burst_from_one_address(
    shim: ShimDouble, make_csms: MakeCsms
) -> None:
    """New nodes' 20 per second from one address: a burst of 40."""
    csms = await make_csms({"CP1": "pw"}, handshakes_per_address=20)
    opened = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", csms.port) for _ in range(100))
    )
    for _, writer in opened:
        writer.close()
    text = await summary(shim, csms.node)
    assert "over handshakes_per_address" in text, text


async def test_an_older_export_has_no_per_address_limit(
    shim: ShimDouble, make_csms: MakeCsms
) -> None:
    """No ``handshakes_per_address`` (an older export): 100 connections from one
    address at once are all served, as before; only the upgrade deadline applies."""
    csms = await make_csms({"CP1": "pw"}, upgrade_timeout=0.5)
    opened = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", csms.port) for _ in range(100))
    )
    # each is closed by the server at its deadline, none at once by the gate
    closed = await asyncio.gather(*(reader.read() for reader, _ in opened))
    for _, writer in opened:
        writer.close()
    assert closed == [b""] * 100
    text = await summary(shim, csms.node)
    assert "over handshakes_per_address" not in text, text
    assert "100 x no websocket upgrade within upgrade_timeout" in text, text


async def test_drops_counted_in_the_metrics() -> None:
    """``ocpp_nodes_handshakes_total``: outcomes rate_limited and upgrade_timeout."""
    metrics_port = free_port()
    double = ShimDouble()
    double.serve_args = ("--metrics", f"127.0.0.1:{metrics_port}")
    await double.start()
    try:
        port = await start_csms(
            double, "lim", {"CP1": "pw"}, {"handshakes_per_address": 0.01, "upgrade_timeout": 0.3}
        )
        # the first: admitted, never speaks, closed at the deadline
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await asyncio.wait_for(reader.read(), 10) == b""
        except ConnectionResetError:
            pass
        writer.close()
        # the second: over the limit
        assert await first_answer(port, b"GET / HTTP/1.1\r\n\r\n") == b""
        _, text = await asyncio.to_thread(scrape, metrics_port)
    finally:
        await double.stop()
    assert 'ocpp_nodes_handshakes_total{node="lim",outcome="rate_limited"} 1.0' in text, text
    assert 'ocpp_nodes_handshakes_total{node="lim",outcome="upgrade_timeout"} 1.0' in text, text


async def test_a_redeploy_that_keeps_the_server_applies_the_new_limits(
    shim: ShimDouble,
) -> None:
    """Same port and path: the station stays; new connections meet the new limits."""
    node = f"csms{next_number()}"
    auths = {"CP1": "pw"}
    port = await start_csms(shim, node, auths, {"handshakes_per_address": 0.01})
    request = b"GET /ocpp/NOBODY HTTP/1.1\r\nHost: x\r\n\r\n"
    async with answering_heartbeats(shim, node):
        good = await station(port, "CP1", "pw", local="127.0.0.2")
        assert (await first_answer(port, request)).startswith(b"HTTP/")
        assert await first_answer(port, request) == b"", "over the limit: closed at accept"
        statuses = len(shim.statuses(node))
        shim.write({"t": "close", "node": node, "removed": False})
        shim.create(
            node,
            "CSMS",
            {
                "port": str(port),
                "path": "/ocpp",
                "handshakes_per_address": 0,
                "upgrade_timeout": 0.3,
            },
            credentials={"basic_auths": json.dumps(auths)},
        )
        await shim.wait_for(lambda: len(shim.statuses(node)) > statuses)
        answers = [await first_answer(port, request) for _ in range(3)]
        assert all(a.startswith(b"HTTP/") for a in answers), "no limit now"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await asyncio.wait_for(reader.read(), 10) == b"", "the new deadline"
        except ConnectionResetError:
            pass
        writer.close()
        assert await heartbeat(good, "after-redeploy") < 5, "the station stayed"
        await good.close()
    await shim.close_node(node)
