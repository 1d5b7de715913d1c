"""OCPP-J conformance of the CS node, end to end: the rules of this role only.

A fake CSMS (a websockets server, or a raw TCP server) listens on loopback;
the CS node of the real daemon, driven through
:class:`tests.shim_double.ShimDouble` as Node-RED would, connects to it.
Here: how the CS names and authenticates itself (percent-encoded identity,
Basic auth), the subprotocol it offers, compression and its own framing,
keep-alive pings, the reconnect back-off. The rules both roles follow
(CALLERRORs, ids, timeouts, queueing, sizes) are written once in
tests/test_conformance.py. Each test is named after the rule of OCPP 2.0.1
part 4 (OCPP-J) it checks; docs/nodes.md describes the message shapes.

One daemon serves the whole module; every test makes its own CS node and
fake CSMS and closes them afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import time

import pytest
import pytest_asyncio
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import PerMessageDeflate

from tests.common import (
    FakeCsms,
    MakeCs,
    MakeFakeCsms,
    logs,
    poll_until,
    recv_frame,
    warnings,
    websocket_events,
)
from tests.shim_double import ShimDouble, free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept of RFC 6455, 4.2.2 (GUID 258EAFA5-E914-47DA-95CA-C5AB0DC85B11)."""
    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    return base64.b64encode(digest).decode()


@pytest_asyncio.fixture(loop_scope="module")
async def fake(make_fake_csms: MakeFakeCsms) -> FakeCsms:
    return await make_fake_csms()


# -- 1. station identity and credentials (3.1.1, 3.2; part 2 security profile 1) --


@pytest.mark.parametrize(
    ("cb_id", "path"),
    [
        pytest.param("RDAM 123", "/ocpp/RDAM%20123", id="space"),
        pytest.param("CP/1", "/ocpp/CP%2F1", id="slash"),
        pytest.param("CP%1", "/ocpp/CP%251", id="percent"),
    ],
)
async def test_cs_percent_encodes_its_identity_3_1_1(
    shim: ShimDouble, fake: FakeCsms, make_cs: MakeCs, cb_id: str, path: str
) -> None:
    station = await make_cs(fake.url, cb_id=cb_id)
    ws = await fake.accept()
    assert ws.request is not None and ws.request.path == path
    await station.wait_online()
    await station.assert_heartbeat_works(ws)


async def test_cs_sends_password_only_in_authorization_header(
    fake: FakeCsms, make_cs: MakeCs
) -> None:
    station = await make_cs(fake.url, cb_id="CP 7", password="s3cret!")
    ws = await fake.accept()
    request = ws.request
    assert request is not None
    assert "s3cret" not in request.path
    authorization = request.headers["Authorization"]
    scheme, _, token = authorization.partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(token).decode() == "CP 7:s3cret!"
    for name, value in request.headers.raw_items():
        if name.lower() != "authorization":
            assert "s3cret" not in value, name
    await station.wait_online()


@pytest.mark.parametrize(
    "cb_id",
    [pytest.param("CP:1", id="colon"), pytest.param("A" * 49, id="over_48_chars")],
)
async def test_cs_refuses_invalid_identity_3_1_1(
    shim: ShimDouble, fake: FakeCsms, make_cs: MakeCs, cb_id: str
) -> None:
    station = await make_cs(fake.url, cb_id=cb_id)
    await shim.wait_for(lambda: logs(shim, station.node, "error"))
    status = [f for f in shim.frames[station.node] if f["t"] == "status"][-1]
    assert status.get("fill") == "red"
    with pytest.raises(asyncio.TimeoutError):
        await fake.accept(timeout=0.5)


async def test_cs_identity_of_exactly_48_chars_connects_3_1_1(
    fake: FakeCsms, make_cs: MakeCs
) -> None:
    station = await make_cs(fake.url, cb_id="A" * 48)
    ws = await fake.accept()
    assert ws.request is not None and ws.request.path == "/ocpp/" + "A" * 48
    await station.wait_online()
    await station.assert_heartbeat_works(ws)


# -- 2. subprotocols (3.1.2, 3.2) --


async def test_cs_offers_ocpp201_subprotocol_3_1_2(fake: FakeCsms, make_cs: MakeCs) -> None:
    station = await make_cs(fake.url)
    ws = await fake.accept()
    assert ws.request is not None
    offered = [p.strip() for p in ws.request.headers["Sec-WebSocket-Protocol"].split(",")]
    assert "ocpp2.0.1" in offered
    assert ws.subprotocol == "ocpp2.0.1"
    await station.wait_online()


async def test_cs_refuses_csms_that_selects_no_subprotocol_3_2(
    shim: ShimDouble, make_fake_csms: MakeFakeCsms, make_cs: MakeCs
) -> None:
    fake = await make_fake_csms(select_subprotocol=lambda connection, protocols: None)
    station = await make_cs(fake.url)
    first = await fake.accept()
    second = await fake.accept(timeout=3)  # it retries
    assert first.subprotocol is None
    for ws in (first, second):
        with pytest.raises(ConnectionClosed):  # closed without a single frame
            await asyncio.wait_for(ws.recv(), 3)
    assert any("subprotocol" in text for text in warnings(shim, station.node))
    assert "ONLINE" not in websocket_events(shim, station.node)


# -- 3. compression (3.3) --


async def test_cs_offers_permessage_deflate_3_3(fake: FakeCsms, make_cs: MakeCs) -> None:
    station = await make_cs(fake.url)
    ws = await fake.accept()
    assert ws.request is not None
    assert "permessage-deflate" in ws.request.headers.get("Sec-WebSocket-Extensions", "")
    assert any(isinstance(ext, PerMessageDeflate) for ext in ws.protocol.extensions)
    await station.wait_online()
    await station.assert_heartbeat_works(ws)  # compressed both ways


@pytest.mark.parametrize("size", [10, 200, 70_000])
async def test_cs_frames_without_compression_are_masked_text_frames_rfc6455_5_2(
    make_fake_csms: MakeFakeCsms, make_cs: MakeCs, size: int
) -> None:
    # Without an extension the daemon frames text itself (cs_client.client_text_frame):
    # the websockets server drops a connection that sends an unmasked or
    # malformed frame (1002), so an intact DataTransfer proves the framing,
    # at each of the three length encodings (7-bit, 16-bit, 64-bit).
    fake = await make_fake_csms(compression=None)
    station = await make_cs(fake.url)
    ws = await fake.accept()
    assert not ws.protocol.extensions
    await station.wait_online()
    data = {"vendorId": "V", "data": "x" * size}
    seq = station.call("DataTransfer", data, MessageId=f"dt-{size}")
    assert await recv_frame(ws) == [2, f"dt-{size}", "DataTransfer", data]
    await ws.send(json.dumps([3, f"dt-{size}", {"status": "Accepted"}]))
    assert (await station.shim.done(seq)).get("error") is None
    await station.assert_heartbeat_works(ws)


# -- 4. keep-alive (5.2) --


class DeadCsms:
    """Completes the websocket handshake by hand, then never reads or answers a ping."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ocpp"
        self.accepted: list[float] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> DeadCsms:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.append(time.monotonic())
        self.writers.append(writer)
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        key = next(
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("sec-websocket-key:")
        )
        writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept_key(key)}\r\n"
                "Sec-WebSocket-Protocol: ocpp2.0.1\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        # and now: silence, never a read

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()


async def test_cs_detects_dead_csms_by_ping_and_reconnects_5_2(
    shim: ShimDouble, make_cs: MakeCs
) -> None:
    dead = await DeadCsms().start()
    try:
        station = await make_cs(dead.url, ping_interval=0.5)
        await station.wait_online()
        await poll_until(lambda: len(dead.accepted) >= 1)
        await shim.wait_for(lambda: "OFFLINE" in websocket_events(shim, station.node), timeout=4)
        # a ping at 0.5 s, no pong by 1.0 s; the session ends once the close
        # handshake gives up too (close_timeout, 2 s)
        assert time.monotonic() - dead.accepted[0] < 3.6
        assert any("keepalive" in text or "ping" in text for text in warnings(shim, station.node))
        # reconnects (after the close handshake gives up, 2 s, and the 0.2 s back-off)
        await poll_until(lambda: len(dead.accepted) >= 2, timeout=5)
        assert dead.accepted[1] - dead.accepted[0] < 4.5
    finally:
        await dead.stop()


async def test_cs_without_ping_does_not_notice_dead_csms(make_cs: MakeCs) -> None:
    """The control: with ping_interval 0 the same dead CSMS goes unnoticed."""
    dead = await DeadCsms().start()
    try:
        station = await make_cs(dead.url, ping_interval=0)
        await station.wait_online()
        await asyncio.sleep(3.6)
        assert "OFFLINE" not in websocket_events(station.shim, station.node)
        assert len(dead.accepted) == 1
    finally:
        await dead.stop()


async def test_cs_with_answering_csms_stays_connected_5_2(
    shim: ShimDouble, fake: FakeCsms, make_cs: MakeCs
) -> None:
    """The control for the test above: a CSMS that pongs keeps the link."""
    station = await make_cs(fake.url, ping_interval=0.5)
    ws = await fake.accept()
    await station.wait_online()
    await asyncio.sleep(1.6)
    assert "OFFLINE" not in websocket_events(shim, station.node)
    assert len(fake.all) == 1
    await station.assert_heartbeat_works(ws)


# -- 5. reconnect back-off (5.3) --


async def test_reconnect_backoff_doubles_then_stays_5_3(shim: ShimDouble, make_cs: MakeCs) -> None:
    """RetryBackOffWaitMinimum 0.2 s, RepeatTimes 2, RandomRange 0: the waits between
    attempts are 0.2, 0.4, 0.8, 0.8 s."""
    attempts: list[float] = []

    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts.append(time.monotonic())
        writer.close()

    port = free_port()
    server = await asyncio.start_server(slam, "127.0.0.1", port)
    try:
        await make_cs(
            f"ws://127.0.0.1:{port}/ocpp", ws_rt_minimum=0.2, ws_rt_repeat=2, ws_rt_rnd_range=0
        )
        await poll_until(lambda: len(attempts) >= 5, timeout=6)
    finally:
        server.close()
        await server.wait_closed()
    gaps = [b - a for a, b in itertools.pairwise(attempts[:5])]
    for gap, expected in zip(gaps, [0.2, 0.4, 0.8, 0.8], strict=True):
        assert expected - 0.02 <= gap <= expected + 0.15, gaps
