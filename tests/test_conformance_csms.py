"""OCPP-J conformance of the CSMS node, end to end: the rules of this role only.

A raw station (a websockets client, or a raw TCP socket) talks over loopback
to the CSMS node of the real daemon, driven through
:class:`tests.shim_double.ShimDouble` as Node-RED would. Here: the station's
identity and Basic auth before the upgrade, subprotocol selection,
compression, keep-alive pings, a second connection of the same identity.
The rules both roles follow (CALLERRORs, ids, timeouts, queueing, sizes) are
written once in tests/test_conformance.py. Each test is named after the rule
of OCPP 2.0.1 part 4 (OCPP-J) it checks; docs/nodes.md describes the message
shapes.

One daemon serves the whole module (its start is the slowest part); every
test makes its own CSMS node on its own port and closes it afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
import pytest_asyncio
import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import PerMessageDeflate

from tests.common import (
    HEARTBEAT_ANSWER,
    OCPP201,
    DaemonCsms,
    MakeCsms,
    auth_header,
    logs,
    recv_frame,
)
from tests.shim_double import ShimDouble

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module")
async def csms(make_csms: MakeCsms) -> DaemonCsms:
    """A CSMS node knowing CP1 (password ``pw``), 1 s message timeout."""
    return await make_csms(message_timeout=1)


# -- 1. station identity (3.1.1, 3.2) --


async def test_percent_encoded_identity_is_decoded_3_1_1(
    shim: ShimDouble, make_csms: MakeCsms
) -> None:
    csms = await make_csms({"RDAM 123": "pw"})
    async with connect(
        f"ws://127.0.0.1:{csms.port}/ocpp/RDAM%20123",
        subprotocols=OCPP201,
        additional_headers=auth_header("RDAM 123", "pw"),
    ) as ws:
        await ws.send(json.dumps([2, "id-1", "Heartbeat", {}]))
        request = await csms.received_request("id-1")
        assert request["ocpp"]["cbId"] == "RDAM 123"
        assert request["topic"] == "RDAM 123/Request"
        csms.answer(request, HEARTBEAT_ANSWER)
        assert (await recv_frame(ws))[:2] == [3, "id-1"]
        # a request of the flow is routed to the decoded identity
        seq = csms.call("ClearCache", {}, cb_id="RDAM 123", MessageId="id-2")
        assert await recv_frame(ws) == [2, "id-2", "ClearCache", {}]
        await ws.send(json.dumps([3, "id-2", {"status": "Accepted"}]))
        assert (await shim.done(seq)).get("error") is None


@pytest.mark.parametrize(
    ("path_identity", "identity"),
    [
        pytest.param("CP%2F1", "CP/1", id="slash"),
        pytest.param("CP%251", "CP%1", id="percent"),
        pytest.param("CP+1", "CP+1", id="plus_is_literal"),
        pytest.param("Z%C3%BCrich", "Z\u00fcrich", id="utf8"),
    ],
)
async def test_identity_is_percent_decoded_exactly_once_3_1_1(
    make_csms: MakeCsms, path_identity: str, identity: str
) -> None:
    csms = await make_csms({identity: "pw"})
    async with connect(
        f"ws://127.0.0.1:{csms.port}/ocpp/{path_identity}",
        subprotocols=OCPP201,
        additional_headers=auth_header(identity, "pw"),
    ) as ws:
        await ws.send(json.dumps([2, "dec-1", "Heartbeat", {}]))
        request = await csms.received_request("dec-1")
        assert request["ocpp"]["cbId"] == identity


IDENTITY_48 = "A" * 48
IDENTITY_49 = "A" * 49


@pytest.mark.parametrize(
    ("path_identity", "user", "password", "status"),
    [
        pytest.param("CP%3A1", "CP:1", "pw", 400, id="colon_400"),
        pytest.param(IDENTITY_49, IDENTITY_49, "pw", 400, id="over_48_chars_400"),
        pytest.param("NOPE", "NOPE", "pw", 404, id="unknown_404"),
        pytest.param("CP1", "CP1", "wrong", 401, id="wrong_password_401"),
        pytest.param("CP1", "OTHER", "pw", 401, id="wrong_user_401"),
        pytest.param("CP1", None, None, 401, id="no_credentials_401"),
    ],
)
async def test_identity_and_credentials_checked_before_upgrade_3_2(
    make_csms: MakeCsms, path_identity: str, user: str | None, password: str | None, status: int
) -> None:
    csms = await make_csms({"CP1": "pw", "CP:1": "pw", IDENTITY_49: "pw"})
    headers = auth_header(user, password) if user is not None and password is not None else {}
    with pytest.raises(websockets.InvalidStatus) as info:
        async with connect(
            f"ws://127.0.0.1:{csms.port}/ocpp/{path_identity}",
            subprotocols=OCPP201,
            additional_headers=headers,
        ):
            pass
    assert info.value.response.status_code == status
    assert csms.connected() == 0


async def test_identity_of_exactly_48_chars_is_accepted_3_1_1(make_csms: MakeCsms) -> None:
    csms = await make_csms({IDENTITY_48: "pw"})
    ws = await csms.station(IDENTITY_48)
    assert ws.subprotocol == "ocpp2.0.1"
    await csms.assert_heartbeat_works(ws)
    await ws.close()


# -- 2. subprotocols (3.1.2, 3.2) --


async def test_csms_selects_ocpp201_among_offered_subprotocols_3_2(csms: DaemonCsms) -> None:
    ws = await csms.station(subprotocols=["ocpp1.6", "ocpp2.0.1"])
    assert ws.subprotocol == "ocpp2.0.1"
    assert ws.response is not None
    assert ws.response.headers["Sec-WebSocket-Protocol"] == "ocpp2.0.1"
    await csms.assert_heartbeat_works(ws)
    await ws.close()


@pytest.mark.parametrize("offered", [["ocpp1.6"], None], ids=["only_ocpp16", "none_offered"])
async def test_no_common_subprotocol_handshake_completes_then_closed_3_2(
    csms: DaemonCsms, offered: list[str] | None
) -> None:
    ws = await connect(
        csms.url("CP1"),
        subprotocols=offered,  # type: ignore[arg-type]
        additional_headers=auth_header("CP1", "pw"),
    )
    assert ws.response is not None and ws.response.status_code == 101
    assert "Sec-WebSocket-Protocol" not in ws.response.headers
    assert ws.subprotocol is None
    started = time.monotonic()
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 3)
    assert time.monotonic() - started < 1.0  # closed at once
    assert csms.connected() == 0


# -- 3. compression (3.3) --


async def test_csms_accepts_permessage_deflate_3_3(csms: DaemonCsms) -> None:
    ws = await csms.station(compression="deflate")
    assert any(isinstance(ext, PerMessageDeflate) for ext in ws.protocol.extensions)
    await csms.assert_heartbeat_works(ws)  # and compressed frames are understood both ways
    await ws.close()


# -- 4. keep-alive (5.2) --


async def raw_station(csms: DaemonCsms) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """CP1 upgraded over a plain TCP stream: a station that answers no ping by itself."""
    reader, writer = await asyncio.open_connection("127.0.0.1", csms.port)
    key = base64.b64encode(b"0123456789abcdef").decode()
    auth = auth_header("CP1", "pw")["Authorization"]
    writer.write(
        (
            f"GET /ocpp/CP1 HTTP/1.1\r\nHost: 127.0.0.1:{csms.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: ocpp2.0.1\r\nAuthorization: {auth}\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith(b"HTTP/1.1 101")
    await csms.wait_connected(1)
    return reader, writer


async def test_csms_drops_station_that_never_pongs_5_2(
    shim: ShimDouble, make_csms: MakeCsms
) -> None:
    csms = await make_csms(ping_interval=0.5)
    reader, writer = await raw_station(csms)
    started = time.monotonic()
    # never read, never pong: the CSMS must give up on its own
    await csms.wait_connected(0, timeout=5)
    assert time.monotonic() - started < 3.0
    assert any(
        "CP1 disconnected" in text and "no answer to a websocket ping within 0.25 s" in text
        for text in logs(shim, csms.node)
    ), logs(shim, csms.node)
    # and the socket is really closed: EOF after whatever was sent
    await asyncio.wait_for(reader.read(), 3)
    writer.close()


async def test_station_that_pongs_stays_connected_5_2(make_csms: MakeCsms) -> None:
    """The control for the test above: pings that are answered keep the link."""
    csms = await make_csms(ping_interval=0.5)
    ws = await csms.station(ping_interval=None)  # the client answers pings, sends none
    await asyncio.sleep(1.6)
    assert csms.connected() == 1
    await csms.assert_heartbeat_works(ws)
    await ws.close()


async def test_station_that_keeps_sending_stays_connected_without_pongs_5_2(
    make_csms: MakeCsms,
) -> None:
    """Any frame from the station shows it is alive: no ping goes unanswered
    while it sends, although it would never answer one."""
    csms = await make_csms(ping_interval=0.5)
    _reader, writer = await raw_station(csms)
    for n in range(16):  # 1.6 s: without the frames, dropped after 0.75 s
        text = json.dumps([2, f"hb{n}", "Heartbeat", {}]).encode()
        writer.write(bytes((0x81, 0x80 | len(text))) + b"\0\0\0\0" + text)  # mask key 0
        await asyncio.sleep(0.1)
        assert csms.connected() == 1
    writer.close()


# -- 5. duplicate identity --


async def test_duplicate_identity_newest_wins(shim: ShimDouble, csms: DaemonCsms) -> None:
    old = await csms.station()
    new = await connect(
        csms.url("CP1"), subprotocols=OCPP201, additional_headers=auth_header("CP1", "pw")
    )
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(old.recv(), 3)
    await asyncio.sleep(0.1)
    assert csms.connected() == 1
    seq = csms.call("ClearCache", {}, MessageId="dup-route")
    assert await recv_frame(new) == [2, "dup-route", "ClearCache", {}]
    await new.send(json.dumps([3, "dup-route", {"status": "Accepted"}]))
    assert (await shim.done(seq)).get("error") is None
    await new.close()


async def test_duplicate_identity_rejected_with_409(shim: ShimDouble, make_csms: MakeCsms) -> None:
    csms = await make_csms(duplicate_cbid="reject")
    first = await csms.station()
    with pytest.raises(websockets.InvalidStatus) as info:
        async with connect(
            csms.url("CP1"), subprotocols=OCPP201, additional_headers=auth_header("CP1", "pw")
        ):
            pass
    assert info.value.response.status_code == 409
    seq = csms.call("ClearCache", {}, MessageId="first-ok")
    assert await recv_frame(first) == [2, "first-ok", "ClearCache", {}]
    await first.send(json.dumps([3, "first-ok", {"status": "Accepted"}]))
    assert (await shim.done(seq)).get("error") is None
    await csms.assert_heartbeat_works(first)
    await first.close()
