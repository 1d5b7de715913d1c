"""OCPP-J conformance of the CS node, end to end.

A fake CSMS (a websockets server sending hand-written text frames, or a raw
TCP server) listens on loopback; the CS node of the real daemon, driven
through :class:`tests.shim_double.ShimDouble` as Node-RED would, connects to
it. Each test is named after the rule of OCPP 2.0.1 part 4 (OCPP-J) it
checks; docs/nodes.md describes the message shapes.

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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import PerMessageDeflate

from tests.shim_double import ShimDouble, free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")

DATE_TIME = "2026-01-01T00:00:00Z"
BOOT = {"reason": "PowerUp", "chargingStation": {"model": "M1", "vendorName": "V1"}}
GET_VARIABLES = {
    "getVariableData": [
        {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
    ]
}
_numbers = itertools.count(1)


# -- helpers --


def warnings(shim: ShimDouble, node: str) -> list[str]:
    return [f["text"] for f in shim.frames[node] if f["t"] == "log" and f.get("level") == "warn"]


def logs(shim: ShimDouble, node: str, level: str | None = None) -> list[str]:
    return [
        f["text"]
        for f in shim.frames[node]
        if f["t"] == "log" and (level is None or f.get("level") == level)
    ]


def websocket_events(shim: ShimDouble, node: str) -> list[str]:
    return [
        m["ocpp"]["websocket"]
        for m in shim.sent(node, 0)
        if isinstance(m.get("ocpp"), dict) and "websocket" in m["ocpp"]
    ]


async def recv_frame(ws: ServerConnection, timeout: float = 3.0) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def assert_nothing_arrives(ws: ServerConnection, wait: float = 0.3) -> None:
    try:
        text = await asyncio.wait_for(ws.recv(), wait)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"the fake CSMS received {text!r}")


async def poll_until(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    """Wait for a condition the shim double does not see (our own servers' state)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept of RFC 6455, 4.2.2 (GUID 258EAFA5-E914-47DA-95CA-C5AB0DC85B11)."""
    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    return base64.b64encode(digest).decode()


class FakeCsms:
    """A websockets server on a free loopback port; hands out each connection."""

    def __init__(self, **serve_options: Any) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ocpp"
        self.serve_options = {"subprotocols": ["ocpp2.0.1"], **serve_options}
        self.connections: asyncio.Queue[ServerConnection] = asyncio.Queue()
        self.all: list[ServerConnection] = []
        self.server: Server | None = None

    async def start(self) -> FakeCsms:
        self.server = await serve(self._handler, "127.0.0.1", self.port, **self.serve_options)
        return self

    async def _handler(self, ws: ServerConnection) -> None:
        self.all.append(ws)
        self.connections.put_nowait(ws)
        await ws.wait_closed()

    async def accept(self, timeout: float = 5.0) -> ServerConnection:
        return await asyncio.wait_for(self.connections.get(), timeout)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class Station:
    """A CS node of the daemon and helpers to play its flow."""

    def __init__(self, shim: ShimDouble, node: str) -> None:
        self.shim = shim
        self.node = node

    async def wait_online(self, count: int = 1, timeout: float = 5.0) -> None:
        await self.shim.wait_for(
            lambda: websocket_events(self.shim, self.node).count("ONLINE") >= count, timeout
        )

    def call(self, action: str, data: Any, **fields: Any) -> int:
        payload: dict[str, Any] = {"command": action, "data": data}
        if "MessageId" in fields:
            payload["MessageId"] = fields.pop("MessageId")
        return self.shim.input(self.node, {"payload": payload, **fields})

    def requests(self, message_id: str | None = None) -> list[dict[str, Any]]:
        return [
            m
            for m in self.shim.sent(self.node, 0)
            if str(m.get("topic", "")).endswith("/Request")
            and (message_id is None or m["ocpp"]["MessageId"] == message_id)
        ]

    async def received_request(self, message_id: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = await self.shim.wait_for(lambda: self.requests(message_id))
        return found[0]

    def answer(self, request: dict[str, Any], data: dict[str, Any]) -> int:
        return self.shim.input(self.node, {**request, "payload": {"msgType": 3, "data": data}})

    async def assert_heartbeat_works(self, ws: ServerConnection) -> None:
        """The connection is still usable: the flow's Heartbeat goes out and is answered."""
        message_id = f"hb-{next(_numbers)}"
        seq = self.call("Heartbeat", {}, MessageId=message_id)
        assert await recv_frame(ws) == [2, message_id, "Heartbeat", {}]
        await ws.send(json.dumps([3, message_id, {"currentTime": DATE_TIME}]))
        assert (await self.shim.done(seq)).get("error") is None


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shim() -> AsyncIterator[ShimDouble]:
    double = ShimDouble()
    await double.start()
    yield double
    await double.stop()


MakeFake = Callable[..., Awaitable[FakeCsms]]
MakeStation = Callable[..., Awaitable[Station]]


@pytest_asyncio.fixture(loop_scope="module")
async def make_fake() -> AsyncIterator[MakeFake]:
    made: list[FakeCsms] = []

    async def make(**serve_options: Any) -> FakeCsms:
        fake = await FakeCsms(**serve_options).start()
        made.append(fake)
        return fake

    yield make
    for fake in made:
        await fake.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def make_station(shim: ShimDouble) -> AsyncIterator[MakeStation]:
    """Factory of CS nodes (auto connect, 0.2 s retry, 1 s message timeout)."""
    made: list[str] = []

    async def make(
        url: str, cb_id: str = "CP1", password: str | None = "pw", **config: Any
    ) -> Station:
        node = f"cs{next(_numbers)}"
        shim.create(
            node,
            "CS",
            {
                "cbId": cb_id,
                "auto_connect": True,
                "ws_rt_minimum": 0.2,
                "ws_rt_repeat": 0,
                "ws_rt_rnd_range": 0,
                "message_timeout": 1,
                **config,
            },
            credentials={"csms_pw": password} if password is not None else {},
            target={"url": url},
        )
        made.append(node)
        return Station(shim, node)

    yield make
    for node in made:
        await shim.close_node(node)


@pytest_asyncio.fixture(loop_scope="module")
async def fake(make_fake: MakeFake) -> FakeCsms:
    return await make_fake()


@pytest_asyncio.fixture(loop_scope="module")
async def linked(fake: FakeCsms, make_station: MakeStation) -> tuple[Station, ServerConnection]:
    """A CS node CP1 connected to the fake CSMS, and the fake's end of the link."""
    station = await make_station(fake.url)
    ws = await fake.accept()
    await station.wait_online()
    return station, ws


# -- 1. CALLERROR generation (4.2.3, 4.3 table 8, 4.4) --

LONG_ID = "x" * 37

CALLERROR_CASES = [
    pytest.param("this is not json", "-1", "RpcFrameworkError", id="unreadable_json"),
    pytest.param('{"not": "an array"}', "-1", "RpcFrameworkError", id="not_an_array"),
    pytest.param([2, 12345, "Reset", {}], "-1", "RpcFrameworkError", id="id_not_a_string"),
    pytest.param([2, LONG_ID, "ClearCache", {}], "-1", "RpcFrameworkError", id="id_over_36_chars"),
    pytest.param([2, "len-1", "ClearCache"], "len-1", "RpcFrameworkError", id="call_too_short"),
    pytest.param(
        [7, "type-1", "ClearCache", {}], "type-1", "MessageTypeNotSupported", id="unknown_type"
    ),
    pytest.param([2, "ni-1", "FlyToTheMoon", {}], "ni-1", "NotImplemented", id="unknown_action"),
    pytest.param(
        [2, "ns-1", "BootNotification", BOOT], "ns-1", "NotSupported", id="action_cs_never_receives"
    ),
    pytest.param(
        [2, "tc-1", "GetVariables", {"getVariableData": "all"}],
        "tc-1",
        "TypeConstraintViolation",
        id="wrong_type",
    ),
    pytest.param(
        [2, "oc-1", "GetVariables", {}],
        "oc-1",
        "OccurrenceConstraintViolation",
        id="required_missing",
    ),
    pytest.param(
        [2, "oc-2", "GetVariables", {"getVariableData": []}],
        "oc-2",
        "OccurrenceConstraintViolation",
        id="too_few_items",
    ),
    pytest.param(
        [2, "pc-1", "Reset", {"type": "Sideways"}],
        "pc-1",
        "PropertyConstraintViolation",
        id="enum_value",
    ),
    pytest.param(
        [2, "fv-1", "Reset", {"type": "Immediate", "surprise": 1}],
        "fv-1",
        "FormatViolation",
        id="undefined_property",
    ),
    pytest.param(
        [2, "fv-2", "ClearCache", "{}"], "fv-2", "FormatViolation", id="payload_not_object"
    ),
]


@pytest.mark.parametrize(("frame", "answer_id", "error_code"), CALLERROR_CASES)
async def test_callerror_generation_4_2_3_table_8(
    shim: ShimDouble,
    linked: tuple[Station, ServerConnection],
    frame: Any,
    answer_id: str,
    error_code: str,
) -> None:
    """A bad frame from the CSMS is answered [4, id|"-1", code, description, {}],
    reported as a warning, never reaches the flow; the connection stays usable."""
    station, ws = linked
    await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
    answer = await recv_frame(ws)
    assert answer[:3] == [4, answer_id, error_code], answer
    assert len(answer) == 5
    assert isinstance(answer[3], str) and len(answer[3]) <= 255
    assert answer[4] == {}
    await shim.wait_for(lambda: warnings(shim, station.node))
    assert station.requests() == []
    await station.assert_heartbeat_works(ws)


async def test_duplicate_id_of_pending_call_gets_callerror_4_2_3(
    shim: ShimDouble, linked: tuple[Station, ServerConnection]
) -> None:
    station, ws = linked
    await ws.send(json.dumps([2, "dup-1", "GetVariables", GET_VARIABLES]))
    first = await station.received_request("dup-1")
    await ws.send(json.dumps([2, "dup-1", "GetVariables", GET_VARIABLES]))
    answer = await recv_frame(ws)
    assert answer[:3] == [4, "dup-1", "RpcFrameworkError"], answer
    await shim.wait_for(lambda: warnings(shim, station.node))
    assert len(station.requests("dup-1")) == 1
    result = {
        "getVariableResult": [
            {
                "attributeStatus": "Accepted",
                "attributeValue": "10",
                "component": {"name": "OCPPCommCtrlr"},
                "variable": {"name": "HeartbeatInterval"},
            }
        ]
    }
    seq = station.answer(first, result)
    assert await recv_frame(ws) == [3, "dup-1", result]
    assert (await shim.done(seq)).get("error") is None
    await station.assert_heartbeat_works(ws)


# -- 2. CALLERRORs from the CSMS reach the flow --


@pytest.mark.parametrize("via_link_call", [False, True], ids=["port1", "link_call_port2"])
async def test_received_callerror_reaches_flow(
    shim: ShimDouble, linked: tuple[Station, ServerConnection], via_link_call: bool
) -> None:
    station, ws = linked
    link = [{"id": "link-call-1", "node": "n1"}]
    extra: dict[str, Any] = {"customData": "keep me"}
    if via_link_call:
        extra["_linkSource"] = link
    seq = station.call("BootNotification", BOOT, MessageId="boot-err", **extra)
    assert await recv_frame(ws) == [2, "boot-err", "BootNotification", BOOT]
    await ws.send(json.dumps([4, "boot-err", "SecurityError", "who are you", {"n": 2}]))
    assert (await shim.done(seq)).get("error") is None
    port = 1 if via_link_call else 0
    msgs = [m for m in shim.sent(station.node, port) if m.get("topic") == "CP1/Error"]
    assert len(msgs) == 1
    msg = msgs[0]
    assert msg["payload"] == {
        "command": "BootNotification",
        "errorCode": "SecurityError",
        "errorDescription": "who are you",
        "errorDetails": {"n": 2},
    }
    assert msg["customData"] == "keep me"
    assert msg["ocpp"]["MessageId"] == "boot-err" and msg["ocpp"]["cbId"] == "CP1"
    if via_link_call:
        assert msg["_linkSource"] == link
        assert not [m for m in shim.sent(station.node, 0) if m.get("topic") == "CP1/Error"]
    else:
        assert "_linkSource" not in msg


# -- 3. the flow answers a received request with a CALLERROR --


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param(
            {"errorCode": "InternalError", "errorDescription": "relay", "errorDetails": {"r": 1}},
            ["InternalError", "relay", {"r": 1}],
            id="full",
        ),
        pytest.param({"errorCode": "NotSupported"}, ["NotSupported", "", {}], id="defaults"),
    ],
)
async def test_flow_callerror_reply_reaches_csms_exactly(
    shim: ShimDouble,
    linked: tuple[Station, ServerConnection],
    reply: dict[str, Any],
    expected: list[Any],
) -> None:
    station, ws = linked
    await ws.send(json.dumps([2, "reset-e", "Reset", {"type": "Immediate"}]))
    request = await station.received_request("reset-e")
    seq = shim.input(station.node, {**request, "payload": {"msgType": 4, **reply}})
    assert await recv_frame(ws) == [4, "reset-e", *expected]
    assert (await shim.done(seq)).get("error") is None


# -- 4. outgoing validation --


async def test_invalid_outgoing_request_is_refused_and_not_sent(
    shim: ShimDouble, linked: tuple[Station, ServerConnection]
) -> None:
    station, ws = linked
    seq = station.call("BootNotification", {"reason": "PowerUp"})
    error = (await shim.done(seq)).get("error")
    assert error and "chargingStation" in error and "OccurrenceConstraintViolation" in error
    await assert_nothing_arrives(ws)


async def test_invalid_outgoing_response_is_refused_and_not_sent(
    shim: ShimDouble, linked: tuple[Station, ServerConnection]
) -> None:
    station, ws = linked
    await ws.send(json.dumps([2, "reset-v", "Reset", {"type": "Immediate"}]))
    request = await station.received_request("reset-v")
    seq = station.answer(request, {"status": "Maybe"})
    error = (await shim.done(seq)).get("error")
    assert error and "status" in error
    await assert_nothing_arrives(ws)
    seq = station.answer(request, {"status": "Accepted"})  # it still waits
    assert await recv_frame(ws) == [3, "reset-v", {"status": "Accepted"}]
    assert (await shim.done(seq)).get("error") is None


async def test_action_the_cs_never_sends_is_refused(
    shim: ShimDouble, linked: tuple[Station, ServerConnection]
) -> None:
    station, ws = linked
    seq = station.call("GetVariables", GET_VARIABLES)
    error = (await shim.done(seq)).get("error")
    assert error and "GetVariables" in error
    await assert_nothing_arrives(ws)


# -- 5. synchronicity (4.1.1) --


async def test_one_outstanding_call_at_a_time_4_1_1(
    shim: ShimDouble, fake: FakeCsms, make_station: MakeStation
) -> None:
    station = await make_station(fake.url, message_timeout=5)
    ws = await fake.accept()
    await station.wait_online()
    seqs = [station.call("Heartbeat", {}, MessageId=f"hb-{i}") for i in range(3)]
    for i, seq in enumerate(seqs):
        assert await recv_frame(ws) == [2, f"hb-{i}", "Heartbeat", {}]
        await assert_nothing_arrives(ws, 0.3)
        assert seq not in shim.dones
        await ws.send(json.dumps([3, f"hb-{i}", {"currentTime": DATE_TIME}]))
        assert (await shim.done(seq)).get("error") is None


async def test_queue_overflow_ends_request_with_error(
    shim: ShimDouble, fake: FakeCsms, make_station: MakeStation
) -> None:
    station = await make_station(fake.url, message_timeout=5, queue_size=1)
    ws = await fake.accept()
    await station.wait_online()
    seqs = [station.call("Heartbeat", {}, MessageId=f"q-{i}") for i in range(3)]
    assert (await shim.done(seqs[2])).get("error")
    assert seqs[0] not in shim.dones and seqs[1] not in shim.dones
    for i in range(2):
        assert await recv_frame(ws) == [2, f"q-{i}", "Heartbeat", {}]
        await ws.send(json.dumps([3, f"q-{i}", {"currentTime": DATE_TIME}]))
        assert (await shim.done(seqs[i])).get("error") is None
    await assert_nothing_arrives(ws)


# -- 6. timeouts of our requests --


async def test_unanswered_request_times_out_and_late_answer_is_dropped(
    shim: ShimDouble, linked: tuple[Station, ServerConnection]
) -> None:
    station, ws = linked
    started = time.monotonic()
    first = station.call("Heartbeat", {}, MessageId="to-1")
    second = station.call("Heartbeat", {}, MessageId="to-2")
    assert (await recv_frame(ws))[1] == "to-1"
    error = (await shim.done(first, timeout=5)).get("error")
    elapsed = time.monotonic() - started
    assert error and "Heartbeat" in error
    assert 0.9 <= elapsed <= 2.0, elapsed
    assert (await recv_frame(ws))[1] == "to-2"
    warned = len(warnings(shim, station.node))
    await ws.send(json.dumps([3, "to-1", {"currentTime": DATE_TIME}]))  # too late
    await shim.wait_for(lambda: len(warnings(shim, station.node)) > warned)
    await ws.send(json.dumps([3, "to-2", {"currentTime": DATE_TIME}]))
    assert (await shim.done(second)).get("error") is None
    answers = [m for m in shim.sent(station.node, 0) if m.get("topic") == "CP1/Response"]
    assert [m["ocpp"]["MessageId"] for m in answers] == ["to-2"]


# -- 7. the flow's answer comes too late --


async def test_answer_after_message_timeout_is_refused(
    shim: ShimDouble, linked: tuple[Station, ServerConnection]
) -> None:
    station, ws = linked
    await ws.send(json.dumps([2, "late-1", "Reset", {"type": "OnIdle"}]))
    request = await station.received_request("late-1")
    await shim.wait_for(lambda: warnings(shim, station.node), timeout=3)  # expired
    seq = station.answer(request, {"status": "Accepted"})
    error = (await shim.done(seq)).get("error")
    assert error and ("expired" in error or "no received request" in error)
    await assert_nothing_arrives(ws, 0.4)


# -- 8. station identity and credentials (3.1.1, 3.2; part 2 security profile 1) --


@pytest.mark.parametrize(
    ("cb_id", "path"),
    [
        pytest.param("RDAM 123", "/ocpp/RDAM%20123", id="space"),
        pytest.param("CP/1", "/ocpp/CP%2F1", id="slash"),
        pytest.param("CP%1", "/ocpp/CP%251", id="percent"),
    ],
)
async def test_cs_percent_encodes_its_identity_3_1_1(
    shim: ShimDouble, fake: FakeCsms, make_station: MakeStation, cb_id: str, path: str
) -> None:
    station = await make_station(fake.url, cb_id=cb_id)
    ws = await fake.accept()
    assert ws.request is not None and ws.request.path == path
    await station.wait_online()
    await station.assert_heartbeat_works(ws)


async def test_cs_sends_password_only_in_authorization_header(
    fake: FakeCsms, make_station: MakeStation
) -> None:
    station = await make_station(fake.url, cb_id="CP 7", password="s3cret!")
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
    shim: ShimDouble, fake: FakeCsms, make_station: MakeStation, cb_id: str
) -> None:
    station = await make_station(fake.url, cb_id=cb_id)
    await shim.wait_for(lambda: logs(shim, station.node, "error"))
    status = [f for f in shim.frames[station.node] if f["t"] == "status"][-1]
    assert status.get("fill") == "red"
    with pytest.raises(asyncio.TimeoutError):
        await fake.accept(timeout=0.5)


async def test_cs_identity_of_exactly_48_chars_connects_3_1_1(
    fake: FakeCsms, make_station: MakeStation
) -> None:
    station = await make_station(fake.url, cb_id="A" * 48)
    ws = await fake.accept()
    assert ws.request is not None and ws.request.path == "/ocpp/" + "A" * 48
    await station.wait_online()
    await station.assert_heartbeat_works(ws)


# -- 9. subprotocols (3.1.2, 3.2) --


async def test_cs_offers_ocpp201_subprotocol_3_1_2(
    fake: FakeCsms, make_station: MakeStation
) -> None:
    station = await make_station(fake.url)
    ws = await fake.accept()
    assert ws.request is not None
    offered = [p.strip() for p in ws.request.headers["Sec-WebSocket-Protocol"].split(",")]
    assert "ocpp2.0.1" in offered
    assert ws.subprotocol == "ocpp2.0.1"
    await station.wait_online()


async def test_cs_refuses_csms_that_selects_no_subprotocol_3_2(
    shim: ShimDouble, make_fake: MakeFake, make_station: MakeStation
) -> None:
    fake = await make_fake(select_subprotocol=lambda connection, protocols: None)
    station = await make_station(fake.url)
    first = await fake.accept()
    second = await fake.accept(timeout=3)  # it retries
    assert first.subprotocol is None
    for ws in (first, second):
        with pytest.raises(ConnectionClosed):  # closed without a single frame
            await asyncio.wait_for(ws.recv(), 3)
    assert any("subprotocol" in text for text in warnings(shim, station.node))
    assert "ONLINE" not in websocket_events(shim, station.node)


# -- 10. compression (3.3) --


async def test_cs_offers_permessage_deflate_3_3(fake: FakeCsms, make_station: MakeStation) -> None:
    station = await make_station(fake.url)
    ws = await fake.accept()
    assert ws.request is not None
    assert "permessage-deflate" in ws.request.headers.get("Sec-WebSocket-Extensions", "")
    assert any(isinstance(ext, PerMessageDeflate) for ext in ws.protocol.extensions)
    await station.wait_online()
    await station.assert_heartbeat_works(ws)  # compressed both ways


@pytest.mark.parametrize("size", [10, 200, 70_000])
async def test_cs_frames_without_compression_are_masked_text_frames_rfc6455_5_2(
    make_fake: MakeFake, make_station: MakeStation, size: int
) -> None:
    # Without an extension the daemon frames text itself (cs_client.client_text_frame):
    # the websockets server drops a connection that sends an unmasked or
    # malformed frame (1002), so an intact DataTransfer proves the framing,
    # at each of the three length encodings (7-bit, 16-bit, 64-bit).
    fake = await make_fake(compression=None)
    station = await make_station(fake.url)
    ws = await fake.accept()
    assert not ws.protocol.extensions
    await station.wait_online()
    data = {"vendorId": "V", "data": "x" * size}
    seq = station.call("DataTransfer", data, MessageId=f"dt-{size}")
    assert await recv_frame(ws) == [2, f"dt-{size}", "DataTransfer", data]
    await ws.send(json.dumps([3, f"dt-{size}", {"status": "Accepted"}]))
    assert (await station.shim.done(seq)).get("error") is None
    await station.assert_heartbeat_works(ws)


# -- 11. keep-alive (5.2) --


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
    shim: ShimDouble, make_station: MakeStation
) -> None:
    dead = await DeadCsms().start()
    try:
        station = await make_station(dead.url, ping_interval=0.5)
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


async def test_cs_without_ping_does_not_notice_dead_csms(make_station: MakeStation) -> None:
    """The control: with ping_interval 0 the same dead CSMS goes unnoticed."""
    dead = await DeadCsms().start()
    try:
        station = await make_station(dead.url, ping_interval=0)
        await station.wait_online()
        await asyncio.sleep(3.6)
        assert "OFFLINE" not in websocket_events(station.shim, station.node)
        assert len(dead.accepted) == 1
    finally:
        await dead.stop()


async def test_cs_with_answering_csms_stays_connected_5_2(
    shim: ShimDouble, fake: FakeCsms, make_station: MakeStation
) -> None:
    """The control for the test above: a CSMS that pongs keeps the link."""
    station = await make_station(fake.url, ping_interval=0.5)
    ws = await fake.accept()
    await station.wait_online()
    await asyncio.sleep(1.6)
    assert "OFFLINE" not in websocket_events(shim, station.node)
    assert len(fake.all) == 1
    await station.assert_heartbeat_works(ws)


# -- 13. message size --


async def test_frame_over_max_frame_size_closes_with_1009(
    shim: ShimDouble, fake: FakeCsms, make_station: MakeStation
) -> None:
    station = await make_station(fake.url, max_frame_size=1024)
    ws = await fake.accept()
    await station.wait_online()
    data = "".join(f"{i:05d}" for i in range(400))
    await ws.send(json.dumps([2, "big-1", "DataTransfer", {"vendorId": "V", "data": data}]))
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 3)
    assert ws.close_code == 1009
    await shim.wait_for(lambda: any("1009" in text for text in logs(shim, station.node)))
    await shim.wait_for(lambda: "OFFLINE" in websocket_events(shim, station.node))
    assert station.requests() == []


async def test_flow_request_over_max_frame_size_is_refused_and_not_sent(
    shim: ShimDouble, fake: FakeCsms, make_station: MakeStation
) -> None:
    station = await make_station(fake.url, max_frame_size=1024)
    ws = await fake.accept()
    await station.wait_online()
    seq = station.call("DataTransfer", {"vendorId": "V", "data": "z" * 2000})
    error = (await shim.done(seq)).get("error")
    assert error and "1024" in error
    await assert_nothing_arrives(ws)
    await station.assert_heartbeat_works(ws)


# -- 14. reconnect back-off (5.3) --


async def test_reconnect_backoff_doubles_then_stays_5_3(
    shim: ShimDouble, make_station: MakeStation
) -> None:
    """RetryBackOffWaitMinimum 0.2 s, RepeatTimes 2, RandomRange 0: the waits between
    attempts are 0.2, 0.4, 0.8, 0.8 s."""
    attempts: list[float] = []

    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts.append(time.monotonic())
        writer.close()

    port = free_port()
    server = await asyncio.start_server(slam, "127.0.0.1", port)
    try:
        await make_station(
            f"ws://127.0.0.1:{port}/ocpp", ws_rt_minimum=0.2, ws_rt_repeat=2, ws_rt_rnd_range=0
        )
        await poll_until(lambda: len(attempts) >= 5, timeout=6)
    finally:
        server.close()
        await server.wait_closed()
    gaps = [b - a for a, b in itertools.pairwise(attempts[:5])]
    for gap, expected in zip(gaps, [0.2, 0.4, 0.8, 0.8], strict=True):
        assert expected - 0.02 <= gap <= expected + 0.15, gaps
