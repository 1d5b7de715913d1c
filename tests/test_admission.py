"""ocpp_nodes.transport.admission and limits.AddressRateLimit, without the daemon.

The per-address bucket is pure logic (time passed in); the gate is run on
this loop in front of a real aiohttp server, over loopback TCP and TLS
(trustme): connections over the limit are closed before the TLS layer gets
a byte (counted with a TLS context whose handshakes are observed), idle ones
after the deadline, and an upgraded one is left alone.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import trustme
from aiohttp import web

from ocpp_nodes.transport.admission import (
    RATE_LIMITED,
    TLS_FAILED,
    UPGRADE_TIMEOUT,
    AdmissionGate,
    AdmissionOptions,
)
from ocpp_nodes.transport.limits import AddressRateLimit
from tests.common import client_hello

# -- the bucket per address (no I/O) ------------------------------------------------------


def test_each_address_has_its_own_burst_then_its_rate() -> None:
    limit = AddressRateLimit(per_second=2, burst=4)
    assert [limit.allow("10.0.0.1", 0.0) for _ in range(5)] == [True] * 4 + [False]
    assert limit.allow("10.0.0.2", 0.0), "another address is not limited by the first"
    assert not limit.allow("10.0.0.1", 0.25)  # half a token
    assert limit.allow("10.0.0.1", 0.5)
    assert not limit.allow("10.0.0.1", 0.5)


def test_zero_is_no_limit_and_keeps_nothing() -> None:
    limit = AddressRateLimit(per_second=0)
    assert all(limit.allow("10.0.0.1", 0.0) for _ in range(10_000))
    assert len(limit) == 0


def test_a_bucket_full_again_is_forgotten() -> None:
    limit = AddressRateLimit(per_second=10, burst=20)  # empty to full: 2 s
    for n in range(100):
        limit.allow(f"10.0.{n // 256}.{n % 256}", 0.0)
    assert len(limit) == 100
    limit.allow("10.1.0.1", 1.9)
    assert len(limit) == 101
    limit.allow("10.1.0.2", 2.0)  # the first 100 are full again by now
    assert len(limit) == 2


def test_a_flood_from_many_addresses_stays_within_max_addresses() -> None:
    limit = AddressRateLimit(per_second=20, burst=40, max_addresses=1000)
    for n in range(50_000):
        limit.allow(f"2001:db8::{n:x}", n * 1e-6)  # all within one refill period
        assert len(limit) <= 1000
    # the most recent are the ones kept: the last address is still limited
    last = "2001:db8::c34f"
    assert [limit.allow(last, 0.05) for _ in range(40)].count(False) == 1


def test_max_addresses_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_addresses"):
        AddressRateLimit(per_second=1, max_addresses=0)


# -- the gate in front of aiohttp ----------------------------------------------------------


class CountingContext:
    """A server TLS context and how many handshakes it started (its ``sni_callback``
    runs once per ClientHello that reached the TLS layer)."""

    def __init__(self, ca: trustme.CA) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(self.context)
        self.hellos = 0

        def hello(_sock: Any, _name: str | None, _context: ssl.SSLContext) -> None:
            self.hellos += 1

        self.context.sni_callback = hello


class Served:
    def __init__(self, gate: AdmissionGate, drops: list[tuple[str, str]]) -> None:
        self.gate = gate
        self.drops = drops
        self.port: int = gate.sockets[0].getsockname()[1]


async def serve(options: AdmissionOptions) -> tuple[Served, web.AppRunner]:
    async def websocket(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        gate.upgraded(request.transport)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", websocket)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    assert runner.server is not None
    drops: list[tuple[str, str]] = []
    gate = AdmissionGate(options, runner.server, lambda reason, ip: drops.append((reason, ip)))
    await gate.listen("127.0.0.1", 0)
    return Served(gate, drops), runner


@pytest_asyncio.fixture
async def make_gate() -> AsyncIterator[Any]:
    made: list[tuple[Served, web.AppRunner]] = []

    async def make(**options: Any) -> Served:
        served, runner = await serve(AdmissionOptions(**options))
        made.append((served, runner))
        return served

    yield make
    for served, runner in made:
        served.gate.close()
        await runner.cleanup()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def read_all(reader: asyncio.StreamReader, timeout: float = 10) -> bytes:
    """Everything until the server closes (a reset counts as closed)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""


@pytest.mark.asyncio
async def test_over_the_limit_closed_before_the_tls_layer_sees_a_byte(
    make_gate: Any, ca: trustme.CA
) -> None:
    counting = CountingContext(ca)
    served = await make_gate(per_address=0.01, ssl_context=counting.context)  # burst 1
    hello = client_hello()
    answers = []
    for _ in range(4):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(hello)
        if not answers:  # the admitted one: wait for its ServerHello
            answers.append(await asyncio.wait_for(reader.read(5), 10))
        else:
            answers.append(await read_all(reader))
        writer.close()
    assert answers[0][:1] == b"\x16", "the first connection gets a TLS handshake record"
    assert answers[1:] == [b"", b"", b""], "the others: closed without a ServerHello"
    assert counting.hellos == 1
    assert served.drops.count((RATE_LIMITED, "127.0.0.1")) == 3


@pytest.mark.asyncio
async def test_idle_connections_closed_at_the_deadline_upgraded_ones_kept(
    make_gate: Any, ca: trustme.CA
) -> None:
    served = await make_gate(upgrade_timeout=0.3)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"http://127.0.0.1:{served.port}/ws")
        started = asyncio.get_running_loop().time()  # before the server accepts them
        idle = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(3)]
        slow_reader, slow = await asyncio.open_connection("127.0.0.1", served.port)
        slow.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert [await read_all(reader) for reader, _ in idle] == [b""] * 3
        assert await read_all(slow_reader) == b""
        for _, writer in [*idle, (slow_reader, slow)]:
            writer.close()
        # not before the deadline (a timer may fire a clock tick early)
        assert asyncio.get_running_loop().time() - started >= 0.3 - 0.01
        # the websocket's deadline passed long ago: still served
        await ws.send_str("still here")
        assert (await ws.receive(timeout=5)).data == "still here"
        await ws.close()
    assert served.drops.count((UPGRADE_TIMEOUT, "127.0.0.1")) == 4
    assert served.gate.in_admission == 0


@pytest.mark.asyncio
async def test_failed_tls_handshake_counted(make_gate: Any, ca: trustme.CA) -> None:
    counting = CountingContext(ca)
    served = await make_gate(ssl_context=counting.context, upgrade_timeout=5)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to a TLS port
    await read_all(reader)
    writer.close()
    for _ in range(100):
        if served.drops:
            break
        await asyncio.sleep(0.05)
    assert served.drops == [(TLS_FAILED, "127.0.0.1")]


@pytest.mark.asyncio
async def test_close_frees_the_port_and_ends_handshakes_in_progress(
    make_gate: Any, ca: trustme.CA
) -> None:
    counting = CountingContext(ca)
    served = await make_gate(ssl_context=counting.context)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)  # says nothing
    for _ in range(100):
        if served.gate.in_admission:
            break
        await asyncio.sleep(0.01)
    served.gate.close()
    assert await read_all(reader) == b""
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", served.port)
    assert served.drops == [], "closing is not a drop"
    with socket.socket() as again:  # as a restarted node would
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", served.port))


@pytest.mark.asyncio
async def test_update_applies_to_connections_accepted_from_then_on(
    make_gate: Any, ca: trustme.CA
) -> None:
    served = await make_gate(per_address=0.01)  # a burst of one
    hello = client_hello()

    async def answered() -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(hello)
        try:
            answer = await asyncio.wait_for(reader.read(5), 10)
        except ConnectionResetError:
            answer = b""
        writer.close()
        return answer[:1] == b"\x16"

    served.gate.update(AdmissionOptions(per_address=0.01, ssl_context=CountingContext(ca).context))
    assert await answered(), "TLS from now on, the bucket kept: its one token"
    assert not await answered()
    assert served.drops.count((RATE_LIMITED, "127.0.0.1")) == 1
    served.gate.update(AdmissionOptions(per_address=0, ssl_context=served.gate.options.ssl_context))
    assert all([await answered() for _ in range(5)]), "no limit now"
