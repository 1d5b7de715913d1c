"""OCPP-J conformance of the CSMS node, end to end.

A raw station (a websockets client sending hand-written text frames, or a
raw TCP socket) talks over loopback to the CSMS node of the real daemon,
driven through :class:`tests.shim_double.ShimDouble` as Node-RED would.
Each test is named after the rule of OCPP 2.0.1 part 4 (OCPP-J) it checks;
docs/nodes.md describes the message shapes.

One daemon serves the whole module (its start is the slowest part); every
test makes its own CSMS node on its own port and closes it afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.typing import Subprotocol

from tests.shim_double import ShimDouble, free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")

DATE_TIME = "2026-01-01T00:00:00Z"
OCPP201 = [Subprotocol("ocpp2.0.1")]
BOOT = {"reason": "PowerUp", "chargingStation": {"model": "M1", "vendorName": "V1"}}
BOOT_ANSWER = {"currentTime": DATE_TIME, "interval": 300, "status": "Accepted"}
GET_VARIABLES = {
    "getVariableData": [
        {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
    ]
}
_node_numbers = itertools.count(1)


# -- helpers --


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def warnings(shim: ShimDouble, node: str) -> list[str]:
    return [f["text"] for f in shim.frames[node] if f["t"] == "log" and f.get("level") == "warn"]


def logs(shim: ShimDouble, node: str) -> list[str]:
    return [f["text"] for f in shim.frames[node] if f["t"] == "log"]


async def recv_frame(ws: ClientConnection, timeout: float = 3.0) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def assert_nothing_arrives(ws: ClientConnection, wait: float = 0.3) -> None:
    try:
        text = await asyncio.wait_for(ws.recv(), wait)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"the station received {text!r}")


@dataclass
class Csms:
    shim: ShimDouble
    node: str
    port: int

    def url(self, cb_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp/{quote(cb_id, safe='')}"

    def connected(self) -> int:
        texts = [t for t in self.shim.statuses(self.node) if t.endswith(" connected")]
        return int(texts[-1].split()[0]) if texts else -1

    async def wait_connected(self, count: int, timeout: float = 5.0) -> None:
        await self.shim.wait_for(lambda: self.connected() == count, timeout)

    async def station(
        self, cb_id: str = "CP1", password: str = "pw", **kwargs: Any
    ) -> ClientConnection:
        """A connected station whose session the node has registered."""
        before = self.connected()
        ws = await connect(
            self.url(cb_id),
            subprotocols=kwargs.pop("subprotocols", OCPP201),
            additional_headers=basic(cb_id, password),
            **kwargs,
        )
        if before >= 0:
            await self.shim.wait_for(
                lambda: any(
                    f["t"] == "status" and f.get("text") == f"{before + 1} connected"
                    for f in self.shim.frames[self.node]
                )
            )
        return ws

    def requests(self, message_id: str | None = None) -> list[dict[str, Any]]:
        return [
            m
            for m in self.shim.sent(self.node, 0)
            if str(m.get("topic", "")).endswith("/Request")
            and (message_id is None or m["ocpp"]["MessageId"] == message_id)
        ]

    async def received_request(self, message_id: str) -> dict[str, Any]:
        """The port 0 msg of the station's CALL ``message_id`` (waits for it)."""
        found: list[dict[str, Any]] = await self.shim.wait_for(lambda: self.requests(message_id))
        return found[0]

    def answer(self, request: dict[str, Any], data: dict[str, Any]) -> int:
        """Play the flow: answer a received request with a CALLRESULT."""
        return self.shim.input(self.node, {**request, "payload": {"msgType": 3, "data": data}})

    def call(self, action: str, data: Any, cb_id: str = "CP1", **fields: Any) -> int:
        """Play the flow: send a request to station ``cb_id``."""
        payload: dict[str, Any] = {"command": action, "data": data, "cbId": cb_id}
        if "MessageId" in fields:
            payload["MessageId"] = fields.pop("MessageId")
        return self.shim.input(self.node, {"payload": payload, **fields})

    async def assert_heartbeat_works(self, ws: ClientConnection) -> None:
        """The connection is still usable: a Heartbeat goes through the flow and back."""
        message_id = f"hb-{next(_node_numbers)}"
        await ws.send(json.dumps([2, message_id, "Heartbeat", {}]))
        request = await self.received_request(message_id)
        seq = self.answer(request, {"currentTime": DATE_TIME})
        assert await recv_frame(ws) == [3, message_id, {"currentTime": DATE_TIME}]
        assert (await self.shim.done(seq)).get("error") is None


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shim() -> AsyncIterator[ShimDouble]:
    double = ShimDouble()
    await double.start()
    yield double
    await double.stop()


MakeCsms = Callable[..., Awaitable[Csms]]


@pytest_asyncio.fixture(loop_scope="module")
async def make_csms(shim: ShimDouble) -> AsyncIterator[MakeCsms]:
    """Factory of CSMS nodes (path ``/ocpp``); all closed after the test."""
    made: list[str] = []

    async def make(auths: dict[str, str] | None = None, **config: Any) -> Csms:
        node = f"csms{next(_node_numbers)}"
        port = free_port()
        shim.create(
            node,
            "CSMS",
            {"port": str(port), "path": "/ocpp", **config},
            credentials={"basic_auths": json.dumps(auths or {"CP1": "pw"})},
        )
        made.append(node)
        await shim.wait_for(lambda: "0 connected" in shim.statuses(node))
        return Csms(shim, node, port)

    yield make
    for node in made:
        await shim.close_node(node)


@pytest_asyncio.fixture(loop_scope="module")
async def csms(make_csms: MakeCsms) -> Csms:
    """A CSMS node knowing CP1 (password ``pw``), 1 s message timeout."""
    return await make_csms(message_timeout=1)


@pytest_asyncio.fixture(loop_scope="module")
async def station(csms: Csms) -> AsyncIterator[ClientConnection]:
    ws = await csms.station()
    yield ws
    await ws.close()


# -- 1. CALLERROR generation (4.2.3, 4.3 table 8, 4.4) --

LONG_ID = "x" * 37

CALLERROR_CASES = [
    pytest.param("this is not json", "-1", "RpcFrameworkError", id="unreadable_json"),
    pytest.param('{"not": "an array"}', "-1", "RpcFrameworkError", id="not_an_array"),
    pytest.param([2, 12345, "Heartbeat", {}], "-1", "RpcFrameworkError", id="id_not_a_string"),
    pytest.param([2, LONG_ID, "Heartbeat", {}], "-1", "RpcFrameworkError", id="id_over_36_chars"),
    pytest.param([2, "len-1", "Heartbeat"], "len-1", "RpcFrameworkError", id="call_too_short"),
    pytest.param(
        [7, "type-1", "Heartbeat", {}], "type-1", "MessageTypeNotSupported", id="unknown_type"
    ),
    pytest.param([2, "ni-1", "FlyToTheMoon", {}], "ni-1", "NotImplemented", id="unknown_action"),
    pytest.param(
        [2, "ns-1", "GetVariables", GET_VARIABLES],
        "ns-1",
        "NotSupported",
        id="action_csms_never_receives",
    ),
    pytest.param(
        [
            2,
            "tc-1",
            "BootNotification",
            {"reason": "PowerUp", "chargingStation": {"model": 12, "vendorName": "V1"}},
        ],
        "tc-1",
        "TypeConstraintViolation",
        id="wrong_type",
    ),
    pytest.param(
        [2, "oc-1", "BootNotification", {"reason": "PowerUp"}],
        "oc-1",
        "OccurrenceConstraintViolation",
        id="required_missing",
    ),
    pytest.param(
        [2, "pc-1", "BootNotification", {**BOOT, "reason": "Bored"}],
        "pc-1",
        "PropertyConstraintViolation",
        id="enum_value",
    ),
    pytest.param(
        [
            2,
            "pc-2",
            "BootNotification",
            {"reason": "PowerUp", "chargingStation": {"model": "M" * 21, "vendorName": "V1"}},
        ],
        "pc-2",
        "PropertyConstraintViolation",
        id="string_too_long",
    ),
    pytest.param(
        [2, "fv-1", "BootNotification", {**BOOT, "surprise": 1}],
        "fv-1",
        "FormatViolation",
        id="undefined_property",
    ),
    pytest.param([2, "fv-2", "Heartbeat", []], "fv-2", "FormatViolation", id="payload_not_object"),
]


@pytest.mark.parametrize(("frame", "answer_id", "error_code"), CALLERROR_CASES)
async def test_callerror_generation_4_2_3_table_8(
    shim: ShimDouble,
    csms: Csms,
    station: ClientConnection,
    frame: Any,
    answer_id: str,
    error_code: str,
) -> None:
    """A bad frame is answered [4, id|"-1", code, description, {}], reported as a
    warning, never reaches the flow, and the connection stays usable."""
    await station.send(frame if isinstance(frame, str) else json.dumps(frame))
    answer = await recv_frame(station)
    assert answer[:3] == [4, answer_id, error_code], answer
    assert len(answer) == 5
    assert isinstance(answer[3], str) and len(answer[3]) <= 255
    assert answer[4] == {}
    await shim.wait_for(lambda: warnings(shim, csms.node))
    assert csms.requests() == []
    await csms.assert_heartbeat_works(station)


async def test_message_id_of_exactly_36_chars_is_accepted(
    csms: Csms, station: ClientConnection
) -> None:
    """string[36] (4.1.3 / table 5): the boundary itself is valid."""
    message_id = "y" * 36
    await station.send(json.dumps([2, message_id, "Heartbeat", {}]))
    request = await csms.received_request(message_id)
    csms.answer(request, {"currentTime": DATE_TIME})
    assert await recv_frame(station) == [3, message_id, {"currentTime": DATE_TIME}]


async def test_duplicate_id_of_pending_call_gets_callerror_4_2_3(
    shim: ShimDouble, csms: Csms, station: ClientConnection
) -> None:
    """ "an existing call with the same unique identifier is being handled already":
    CALLERROR with that id; the first CALL stays answerable; connection stays up."""
    await station.send(json.dumps([2, "dup-1", "BootNotification", BOOT]))
    first = await csms.received_request("dup-1")
    await station.send(json.dumps([2, "dup-1", "BootNotification", BOOT]))
    answer = await recv_frame(station)
    assert answer[:3] == [4, "dup-1", "RpcFrameworkError"], answer
    await shim.wait_for(lambda: warnings(shim, csms.node))
    assert len(csms.requests("dup-1")) == 1
    seq = csms.answer(first, BOOT_ANSWER)
    assert await recv_frame(station) == [3, "dup-1", BOOT_ANSWER]
    assert (await shim.done(seq)).get("error") is None
    await csms.assert_heartbeat_works(station)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param([3, "nobody-asked", {}], id="callresult"),
        pytest.param([4, "nobody-asked", "GenericError", "", {}], id="callerror"),
        pytest.param([3, "nobody-asked"], id="malformed_callresult"),
    ],
)
async def test_answers_are_never_answered_4_2_3(
    shim: ShimDouble, csms: Csms, station: ClientConnection, frame: list[Any]
) -> None:
    """CALLERROR answers a CALL only: a stray CALLRESULT / CALLERROR is dropped with a
    warning, nothing goes back, nothing reaches the flow."""
    await station.send(json.dumps(frame))
    await shim.wait_for(lambda: warnings(shim, csms.node))
    await assert_nothing_arrives(station)
    assert shim.sent(csms.node, 0) == []
    await csms.assert_heartbeat_works(station)


# -- 2. CALLERRORs from the station reach the flow --


@pytest.mark.parametrize("via_link_call", [False, True], ids=["port1", "link_call_port2"])
async def test_received_callerror_reaches_flow(
    shim: ShimDouble, csms: Csms, station: ClientConnection, via_link_call: bool
) -> None:
    link = [{"id": "link-call-1", "node": "n1"}]
    extra: dict[str, Any] = {"customData": {"order": 7}}
    if via_link_call:
        extra["_linkSource"] = link
    seq = csms.call("GetVariables", GET_VARIABLES, MessageId="gv-err-1", **extra)
    call = await recv_frame(station)
    assert call == [2, "gv-err-1", "GetVariables", GET_VARIABLES]
    await station.send(json.dumps([4, "gv-err-1", "InternalError", "boom", {"why": "x"}]))
    assert (await shim.done(seq)).get("error") is None
    port = 1 if via_link_call else 0
    msgs = [m for m in shim.sent(csms.node, port) if m.get("topic") == "CP1/Error"]
    assert len(msgs) == 1
    msg = msgs[0]
    assert msg["payload"] == {
        "command": "GetVariables",
        "errorCode": "InternalError",
        "errorDescription": "boom",
        "errorDetails": {"why": "x"},
    }
    assert msg["customData"] == {"order": 7}
    assert msg["ocpp"]["MessageId"] == "gv-err-1" and msg["ocpp"]["cbId"] == "CP1"
    if via_link_call:
        assert msg["_linkSource"] == link
        assert not [m for m in shim.sent(csms.node, 0) if m.get("topic") == "CP1/Error"]
    else:
        assert "_linkSource" not in msg


# -- 3. the flow answers a received request with a CALLERROR --


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param(
            {"errorCode": "SecurityError", "errorDescription": "no", "errorDetails": {"a": 1}},
            ["SecurityError", "no", {"a": 1}],
            id="full",
        ),
        pytest.param({"errorCode": "NotSupported"}, ["NotSupported", "", {}], id="defaults"),
    ],
)
async def test_flow_callerror_reply_reaches_station_exactly(
    shim: ShimDouble,
    csms: Csms,
    station: ClientConnection,
    reply: dict[str, Any],
    expected: list[Any],
) -> None:
    """[4, id, code, description, details]; an absent description is "" and absent
    details are {} (table 7)."""
    await station.send(json.dumps([2, "boot-e", "BootNotification", BOOT]))
    request = await csms.received_request("boot-e")
    seq = shim.input(csms.node, {**request, "payload": {"msgType": 4, **reply}})
    assert await recv_frame(station) == [4, "boot-e", *expected]
    assert (await shim.done(seq)).get("error") is None


async def test_flow_callerror_reply_with_code_outside_table_8_is_refused(
    shim: ShimDouble, csms: Csms, station: ClientConnection
) -> None:
    await station.send(json.dumps([2, "boot-x", "BootNotification", BOOT]))
    request = await csms.received_request("boot-x")
    seq = shim.input(csms.node, {**request, "payload": {"msgType": 4, "errorCode": "Oops"}})
    error = (await shim.done(seq)).get("error")
    assert error and "Oops" in error
    await assert_nothing_arrives(station)


# -- 4. outgoing validation --


async def test_invalid_outgoing_request_is_refused_and_not_sent(
    shim: ShimDouble, csms: Csms, station: ClientConnection
) -> None:
    seq = csms.call("GetVariables", {"getVariableData": []})
    error = (await shim.done(seq)).get("error")
    assert error and "getVariableData" in error and "OccurrenceConstraintViolation" in error
    await assert_nothing_arrives(station)


async def test_invalid_outgoing_response_is_refused_and_not_sent(
    shim: ShimDouble, csms: Csms, station: ClientConnection
) -> None:
    await station.send(json.dumps([2, "boot-v", "BootNotification", BOOT]))
    request = await csms.received_request("boot-v")
    seq = csms.answer(request, {"currentTime": DATE_TIME, "status": "Accepted"})
    error = (await shim.done(seq)).get("error")
    assert error and "interval" in error
    await assert_nothing_arrives(station)
    # the request still waits: a valid answer goes out
    seq = csms.answer(request, BOOT_ANSWER)
    assert await recv_frame(station) == [3, "boot-v", BOOT_ANSWER]
    assert (await shim.done(seq)).get("error") is None


async def test_action_the_csms_never_sends_is_refused(
    shim: ShimDouble, csms: Csms, station: ClientConnection
) -> None:
    seq = csms.call("BootNotification", BOOT)
    error = (await shim.done(seq)).get("error")
    assert error and "BootNotification" in error
    await assert_nothing_arrives(station)


# -- 5. synchronicity (4.1.1) --


async def test_one_outstanding_call_at_a_time_4_1_1(shim: ShimDouble, make_csms: MakeCsms) -> None:
    csms = await make_csms(message_timeout=5)
    station = await csms.station()
    seqs = [csms.call("ClearCache", {}, MessageId=f"cc-{i}") for i in range(3)]
    for i, seq in enumerate(seqs):
        call = await recv_frame(station)
        assert call == [2, f"cc-{i}", "ClearCache", {}]
        await assert_nothing_arrives(station, 0.3)  # the next waits for this answer
        assert seq not in shim.dones
        await station.send(json.dumps([3, f"cc-{i}", {"status": "Accepted"}]))
        assert (await shim.done(seq)).get("error") is None
    await station.close()


async def test_queue_overflow_ends_request_with_error(
    shim: ShimDouble, make_csms: MakeCsms
) -> None:
    csms = await make_csms(message_timeout=5, queue_size=1)
    station = await csms.station()
    seqs = [csms.call("ClearCache", {}, MessageId=f"q-{i}") for i in range(3)]
    error = (await shim.done(seqs[2])).get("error")
    assert error
    assert seqs[0] not in shim.dones and seqs[1] not in shim.dones
    for i in range(2):
        assert await recv_frame(station) == [2, f"q-{i}", "ClearCache", {}]
        await station.send(json.dumps([3, f"q-{i}", {"status": "Accepted"}]))
        assert (await shim.done(seqs[i])).get("error") is None
    await assert_nothing_arrives(station)  # the refused third never goes out
    await station.close()


# -- 6. timeouts of our requests --


async def test_unanswered_request_times_out_and_late_answer_is_dropped(
    shim: ShimDouble, csms: Csms, station: ClientConnection
) -> None:
    started = time.monotonic()
    first = csms.call("ClearCache", {}, MessageId="to-1")
    second = csms.call("ClearCache", {}, MessageId="to-2")
    assert (await recv_frame(station))[1] == "to-1"
    error = (await shim.done(first, timeout=5)).get("error")
    elapsed = time.monotonic() - started
    assert error and "ClearCache" in error
    assert 0.9 <= elapsed <= 2.0, elapsed
    assert (await recv_frame(station))[1] == "to-2"  # the queued one goes out now
    warned = len(warnings(shim, csms.node))
    await station.send(json.dumps([3, "to-1", {"status": "Accepted"}]))  # too late
    await shim.wait_for(lambda: len(warnings(shim, csms.node)) > warned)
    assert not [m for m in shim.sent(csms.node, 0) if m.get("ocpp", {}).get("MessageId") == "to-1"]
    await station.send(json.dumps([3, "to-2", {"status": "Accepted"}]))
    assert (await shim.done(second)).get("error") is None
    answers = [m for m in shim.sent(csms.node, 0) if m.get("topic") == "CP1/Response"]
    assert [m["ocpp"]["MessageId"] for m in answers] == ["to-2"]


# -- 7. the flow's answer comes too late --


@pytest.mark.parametrize("msg_type", [3, 4], ids=["callresult", "callerror"])
async def test_answer_after_message_timeout_is_refused(
    shim: ShimDouble, csms: Csms, station: ClientConnection, msg_type: int
) -> None:
    await station.send(json.dumps([2, "late-1", "BootNotification", BOOT]))
    request = await csms.received_request("late-1")
    await shim.wait_for(lambda: warnings(shim, csms.node), timeout=3)  # expired
    if msg_type == 3:
        payload: dict[str, Any] = {"msgType": 3, "data": BOOT_ANSWER}
    else:
        payload = {"msgType": 4, "errorCode": "InternalError"}
    seq = shim.input(csms.node, {**request, "payload": payload})
    error = (await shim.done(seq)).get("error")
    assert error
    if msg_type == 3:
        assert "expired" in error or "no received request" in error
    await assert_nothing_arrives(station, 0.4)


# -- 8. station identity (3.1.1, 3.2) --


async def test_percent_encoded_identity_is_decoded_3_1_1(
    shim: ShimDouble, make_csms: MakeCsms
) -> None:
    csms = await make_csms({"RDAM 123": "pw"})
    async with connect(
        f"ws://127.0.0.1:{csms.port}/ocpp/RDAM%20123",
        subprotocols=OCPP201,
        additional_headers=basic("RDAM 123", "pw"),
    ) as ws:
        await ws.send(json.dumps([2, "id-1", "Heartbeat", {}]))
        request = await csms.received_request("id-1")
        assert request["ocpp"]["cbId"] == "RDAM 123"
        assert request["topic"] == "RDAM 123/Request"
        csms.answer(request, {"currentTime": DATE_TIME})
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
        additional_headers=basic(identity, "pw"),
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
    headers = basic(user, password) if user is not None and password is not None else {}
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


# -- 9. subprotocols (3.1.2, 3.2) --


async def test_csms_selects_ocpp201_among_offered_subprotocols_3_2(csms: Csms) -> None:
    ws = await csms.station(subprotocols=["ocpp1.6", "ocpp2.0.1"])
    assert ws.subprotocol == "ocpp2.0.1"
    assert ws.response is not None
    assert ws.response.headers["Sec-WebSocket-Protocol"] == "ocpp2.0.1"
    await csms.assert_heartbeat_works(ws)
    await ws.close()


@pytest.mark.parametrize("offered", [["ocpp1.6"], None], ids=["only_ocpp16", "none_offered"])
async def test_no_common_subprotocol_handshake_completes_then_closed_3_2(
    csms: Csms, offered: list[str] | None
) -> None:
    ws = await connect(
        csms.url("CP1"),
        subprotocols=offered,  # type: ignore[arg-type]
        additional_headers=basic("CP1", "pw"),
    )
    assert ws.response is not None and ws.response.status_code == 101
    assert "Sec-WebSocket-Protocol" not in ws.response.headers
    assert ws.subprotocol is None
    started = time.monotonic()
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 3)
    assert time.monotonic() - started < 1.0  # closed at once
    assert csms.connected() == 0


# -- 10. compression (3.3) --


async def test_csms_accepts_permessage_deflate_3_3(csms: Csms) -> None:
    ws = await csms.station(compression="deflate")
    assert any(isinstance(ext, PerMessageDeflate) for ext in ws.protocol.extensions)
    await csms.assert_heartbeat_works(ws)  # and compressed frames are understood both ways
    await ws.close()


# -- 11. keep-alive (5.2) --


async def raw_station(csms: Csms) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """CP1 upgraded over a plain TCP stream: a station that answers no ping by itself."""
    reader, writer = await asyncio.open_connection("127.0.0.1", csms.port)
    key = base64.b64encode(b"0123456789abcdef").decode()
    auth = basic("CP1", "pw")["Authorization"]
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


# -- 12. duplicate identity --


async def test_duplicate_identity_newest_wins(shim: ShimDouble, csms: Csms) -> None:
    old = await csms.station()
    new = await connect(
        csms.url("CP1"), subprotocols=OCPP201, additional_headers=basic("CP1", "pw")
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
            csms.url("CP1"), subprotocols=OCPP201, additional_headers=basic("CP1", "pw")
        ):
            pass
    assert info.value.response.status_code == 409
    seq = csms.call("ClearCache", {}, MessageId="first-ok")
    assert await recv_frame(first) == [2, "first-ok", "ClearCache", {}]
    await first.send(json.dumps([3, "first-ok", {"status": "Accepted"}]))
    assert (await shim.done(seq)).get("error") is None
    await csms.assert_heartbeat_works(first)
    await first.close()


# -- 13. message size --


def big_data_transfer(message_id: str, size: int) -> str:
    # varied text so that permessage-deflate cannot shrink it below the limit
    data = "".join(f"{i:05d}" for i in range(size // 5))
    return json.dumps([2, message_id, "DataTransfer", {"vendorId": "V", "data": data}])


@pytest.mark.parametrize("compression", [None, "deflate"], ids=["plain", "deflate"])
async def test_frame_over_max_frame_size_closes_with_1009(
    shim: ShimDouble, make_csms: MakeCsms, compression: str | None
) -> None:
    csms = await make_csms(max_frame_size=1024)
    ws = await csms.station(compression=compression)
    logged = len(logs(shim, csms.node))
    await ws.send(big_data_transfer("big-1", 2000))
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 3)
    assert ws.close_code == 1009
    await shim.wait_for(lambda: len(logs(shim, csms.node)) > logged)
    await csms.wait_connected(0)
    assert csms.requests() == []


async def test_frame_at_max_frame_size_is_accepted(make_csms: MakeCsms) -> None:
    csms = await make_csms(max_frame_size=1024)
    ws = await csms.station(compression=None)
    frame = big_data_transfer("fits", 900)
    assert len(frame.encode()) <= 1024
    await ws.send(frame)
    request = await csms.received_request("fits")
    csms.answer(request, {"status": "Accepted"})
    assert await recv_frame(ws) == [3, "fits", {"status": "Accepted"}]
    await ws.close()


async def test_flow_request_over_max_frame_size_is_refused_and_not_sent(
    shim: ShimDouble, make_csms: MakeCsms
) -> None:
    csms = await make_csms(max_frame_size=1024)
    ws = await csms.station()
    seq = csms.call("DataTransfer", {"vendorId": "V", "data": "z" * 2000})
    error = (await shim.done(seq)).get("error")
    assert error and "1024" in error
    await assert_nothing_arrives(ws)
    await csms.assert_heartbeat_works(ws)
    await ws.close()
