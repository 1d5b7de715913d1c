"""The table of OCPP versions (ocpp_nodes/rpc/versions.py), and that a second
entry in it is picked up by the transports and nodes without touching them.

The second entry is made here for the test (``ocpp9.9``, on the 1.6 schema
set, with its own spelling of two error codes and the "ignore" rule for
unknown message types). Real CS and CSMS nodes, in this process, on loopback
websockets, meet raw websockets peers offering it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve

from ocpp_nodes.nodes import CsmsNode, CsNode, NodeServices, NodeSpec
from ocpp_nodes.nodes.base import versions_setting
from ocpp_nodes.rpc import (
    V16,
    V21,
    V201,
    VERSIONS,
    ErrorCode,
    MessageType,
    OcppConnection,
    OcppVersion,
    OutgoingError,
    PeerError,
    ResultInvalid,
    ResultRefused,
    Role,
    SendReceived,
    UnknownMessageType,
    select_version,
)
from ocpp_nodes.rpc.versions import SecurityEvent, versions_named
from ocpp_nodes.transport.csms_server import basic_auth_credentials
from tests.common import RecordingHost, auth_header
from tests.payloads import CS_TO_CSMS, CSMS_TO_CS
from tests.shim_double import free_port

DATE_TIME = "2026-01-01T00:00:00Z"

TEST_VERSION = OcppVersion(
    name="9.9",
    subprotocol="ocpp9.9",
    schema_package="ocpp.v16",
    request_schema_suffix="",
    message_types=frozenset({MessageType.CALL, MessageType.CALLRESULT, MessageType.CALLERROR}),
    error_codes={
        **V201.error_codes,
        ErrorCode.FORMAT_VIOLATION: "FormationViolation",
        ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION: "OccurenceConstraintViolation",
    },
    unknown_message_type=UnknownMessageType.IGNORE,
    sends={
        Role.CHARGING_STATION: frozenset({"Heartbeat", "BootNotification"}),
        Role.CSMS: frozenset({"Reset", "ClearCache"}),
    },
    transaction_actions={"StartTransaction": None},
)


# -- the table ---------------------------------------------------------------------


def test_ocpp_2_0_1_is_in_the_table_with_the_facts_of_its_spec() -> None:
    assert VERSIONS["2.0.1"] is V201
    assert V201.subprotocol == "ocpp2.0.1"
    assert V201.schema_package == "ocpp.v201"
    assert V201.message_types == {2, 3, 4}
    assert V201.unknown_message_type is UnknownMessageType.ANSWER
    assert V201.error_code_names == {  # part 4, table 8
        "FormatViolation",
        "GenericError",
        "InternalError",
        "MessageTypeNotSupported",
        "NotImplemented",
        "NotSupported",
        "OccurrenceConstraintViolation",
        "PropertyConstraintViolation",
        "ProtocolError",
        "RpcFrameworkError",
        "SecurityError",
        "TypeConstraintViolation",
    }
    # shared/reference/ocpp-2.0.1-actions.md, through tests/payloads.py
    assert V201.sends[Role.CHARGING_STATION] == set(CS_TO_CSMS)
    assert V201.sends[Role.CSMS] == set(CSMS_TO_CS)
    assert V201.receives(Role.CSMS) == set(CS_TO_CSMS)
    assert V201.transaction_actions == {"TransactionEvent": None}
    assert V201.schemas.actions == set(CS_TO_CSMS) | set(CSMS_TO_CS)


def test_ocpp_1_6_is_in_the_table_with_the_facts_of_its_spec() -> None:
    assert VERSIONS["1.6"] is V16
    assert (V16.subprotocol, V16.schema_package, V16.request_schema_suffix) == (
        "ocpp1.6",
        "ocpp.v16",
        "",
    )
    assert V16.message_types == {2, 3, 4}
    assert V16.unknown_message_type is UnknownMessageType.IGNORE  # OCPP-J 1.6, 4.1.3
    assert V16.error_code_names == {  # OCPP-J 1.6 table 7, typos kept (errata 5.1, 5.2)
        "NotImplemented",
        "NotSupported",
        "InternalError",
        "ProtocolError",
        "SecurityError",
        "FormationViolation",
        "PropertyConstraintViolation",
        "OccurenceConstraintViolation",
        "TypeConstraintViolation",
        "GenericError",
    }
    every_action = V16.sends[Role.CHARGING_STATION] | V16.sends[Role.CSMS]
    assert every_action == V16.schemas.actions
    assert V16.sends[Role.CHARGING_STATION] & V16.sends[Role.CSMS] == {"DataTransfer"}
    assert V16.is_transaction_message("StartTransaction", {})
    assert V16.is_transaction_message("MeterValues", {"connectorId": 1, "transactionId": 5})
    assert not V16.is_transaction_message("MeterValues", {"connectorId": 1})
    assert V16.security_events[SecurityEvent.INVALID_CSMS_CERTIFICATE] == (
        "InvalidCentralSystemCertificate"
    )


def test_ocpp_2_1_is_in_the_table_with_the_facts_of_its_spec() -> None:
    assert VERSIONS["2.1"] is V21
    assert (V21.subprotocol, V21.schema_package) == ("ocpp2.1", "ocpp.v21")
    assert V21.message_types == {2, 3, 4, 5, 6}
    assert V21.unknown_message_type is UnknownMessageType.IGNORE  # part 4 of 2.1, 4.1.3
    assert V21.error_code_names == V201.error_code_names
    every_action = V21.sends[Role.CHARGING_STATION] | V21.sends[Role.CSMS]
    assert every_action == V21.schemas.actions
    assert V21.sends[Role.CHARGING_STATION] & V21.sends[Role.CSMS] == {"DataTransfer"}
    assert V21.unconfirmed[Role.CHARGING_STATION] == V21.schemas.unconfirmed_actions
    assert V21.unconfirmed[Role.CHARGING_STATION] == {"NotifyPeriodicEventStream"}
    # everything 2.0.1 has, each the same way round
    for role in Role:
        assert V201.sends[role] <= V21.sends[role]


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        pytest.param(["ocpp2.0.1"], "2.0.1", id="only"),
        pytest.param(["ocpp9.9", "ocpp2.0.1"], "9.9", id="station_prefers_9.9"),
        pytest.param(["ocpp2.0.1", "ocpp9.9"], "2.0.1", id="station_prefers_2.0.1"),
        pytest.param(["ocpp1.6", " ocpp9.9"], "9.9", id="unknown_skipped_spaces_ignored"),
        pytest.param(["ocpp1.6"], None, id="none_in_common"),
        pytest.param([], None, id="none_offered"),
    ],
)
def test_the_station_s_order_of_preference_picks_the_version(
    offered: list[str], chosen: str | None
) -> None:
    version = select_version(offered, [V201, TEST_VERSION])
    assert (version.name if version else None) == chosen


def test_a_connection_answers_and_spells_as_its_version_says() -> None:
    conn = OcppConnection(TEST_VERSION, Role.CSMS)
    assert conn.receive_text('[7,"m1","Heartbeat",{}]', 0)[0].answer is None  # ignored
    assert conn.data_to_send() == []
    conn.receive_text('[2,"m2","BootNotification",{"chargePointModel":"M"}]', 0)
    answer = json.loads(conn.data_to_send()[0])
    assert answer[:3] == [4, "m2", "OccurenceConstraintViolation"]
    conn.receive_text('[2,"m3","Reset",{"type":"Hard"}]', 0)  # a CSMS never receives Reset
    assert json.loads(conn.data_to_send()[0])[:3] == [4, "m3", "NotSupported"]
    v201 = OcppConnection(V201, Role.CSMS)
    v201.receive_text('[7,"m1","Heartbeat",{}]', 0)
    assert json.loads(v201.data_to_send()[0])[:3] == [4, "m1", "MessageTypeNotSupported"]


# -- a second entry, through the real transports and nodes --------------------------


@pytest.fixture
def with_test_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(VERSIONS, TEST_VERSION.name, TEST_VERSION)  # type: ignore[arg-type]


@pytest.fixture
async def csms(with_test_version: None) -> AsyncIterator[tuple[CsmsNode, RecordingHost, int]]:
    host = RecordingHost()
    port = free_port()
    node = CsmsNode(
        NodeSpec(
            "csms",
            {"port": str(port), "path": "/ocpp", "ocpp_versions": ["ocpp2.0.1", "ocpp9.9"]},
            {"basic_auths": '{"CP1": "pw"}'},
        ),
        host,
        NodeServices(),
    )
    await node.start()
    yield node, host, port
    await node.stop()


async def test_the_csms_node_serves_a_new_table_entry_per_connection(
    csms: tuple[CsmsNode, RecordingHost, int],
) -> None:
    node, host, port = csms
    url = f"ws://127.0.0.1:{port}/ocpp/CP1"
    # the same cbId, three connections, each with the version its offer picks
    for offered, version, message_id in [
        (["ocpp9.9", "ocpp2.0.1"], "9.9", "a"),
        (["ocpp2.0.1", "ocpp9.9"], "2.0.1", "b"),
        (["ocpp9.9"], "9.9", "c"),
    ]:
        async with websockets.connect(
            url,
            subprotocols=offered,  # type: ignore[arg-type]
            additional_headers=auth_header("CP1", "pw"),
        ) as ws:
            assert ws.subprotocol == f"ocpp{version}"
            await ws.send(json.dumps([2, message_id, "Heartbeat", {}]))
            (request,) = await host.wait_for(
                lambda mid=message_id: [m for m in host.requests() if m["ocpp"]["MessageId"] == mid]
            )
            assert request["ocpp"]["ocppVersion"] == version
            node.input(
                1, {**request, "payload": {"msgType": 3, "data": {"currentTime": DATE_TIME}}}
            )
            assert json.loads(await ws.recv()) == [3, message_id, {"currentTime": DATE_TIME}]
            if version == "9.9":  # its own rules: unknown types ignored, its spellings
                await ws.send('[7,"x","Heartbeat",{}]')
                await ws.send(json.dumps([2, "bad", "BootNotification", {"chargePointModel": 1}]))
                answer = json.loads(await ws.recv())
                assert answer[:3] == [4, "bad", "OccurenceConstraintViolation"], answer
            # the flow's request is checked against the connection's version:
            # {"type": "Hard"} is a 1.6 Reset, not a 2.0.1 one
            node.input(
                2, {"payload": {"command": "Reset", "cbId": "CP1", "data": {"type": "Hard"}}}
            )
            if version == "2.0.1":
                ((_, error),) = await host.wait_for(lambda: [d for d in host.dones if d[0] == 2])
                assert error and error.startswith("Reset request is invalid"), error
            else:
                call = json.loads(await ws.recv())
                assert call[2:] == ["Reset", {"type": "Hard"}]
                await ws.send(json.dumps([3, call[1], {"status": "Accepted"}]))
                assert await host.wait_for(lambda: (2, None) in host.dones)
                (response,) = [m for _, m in host.sent if m.get("topic") == "CP1/Response"]
                assert response["ocpp"]["ocppVersion"] == "9.9"
            host.dones.clear()
            host.sent.clear()


async def test_the_cs_node_offers_every_table_entry_and_takes_the_one_selected(
    with_test_version: None,
) -> None:
    connections: asyncio.Queue[ServerConnection] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        await connections.put(ws)
        await ws.wait_closed()

    def only_test_version(ws: ServerConnection, subprotocols: list[str]) -> str | None:
        return "ocpp9.9" if "ocpp9.9" in subprotocols else None

    offered: list[list[str]] = []

    def record(ws: ServerConnection, request: Any) -> None:
        offered.append(request.headers.get("Sec-WebSocket-Protocol", "").split(", "))
        assert basic_auth_credentials(request.headers.get("Authorization")) == ("CS9", "pw")

    port = free_port()
    async with serve(
        handler,
        "127.0.0.1",
        port,
        subprotocols=["ocpp9.9"],  # type: ignore[list-item]
        select_subprotocol=only_test_version,  # type: ignore[arg-type]
        process_request=record,
    ):
        host = RecordingHost()
        node = CsNode(
            NodeSpec(
                "cs",
                {"cbId": "CS9", "auto_connect": True, "ocpp_versions": "ocpp2.0.1, ocpp9.9"},
                {"csms_pw": "pw"},
                target={"url": f"ws://127.0.0.1:{port}/ocpp"},
            ),
            host,
            NodeServices(),
        )
        await node.start()
        try:
            ws = await asyncio.wait_for(connections.get(), 5)
            assert offered == [["ocpp2.0.1", "ocpp9.9"]]  # the node's versions, in its order
            await ws.send(json.dumps([2, "r1", "ClearCache", {}]))
            (request,) = await host.wait_for(host.requests)
            assert request["ocpp"]["ocppVersion"] == "9.9"
            node.input(1, {**request, "payload": {"msgType": 3, "data": {"status": "Accepted"}}})
            assert json.loads(await ws.recv()) == [3, "r1", {"status": "Accepted"}]
        finally:
            await node.stop()


# -- each version's frames, raw (no library sends types 5 and 6 yet) ------------------

NOTIFY_STREAM = {"id": 1, "pending": 0, "basetime": DATE_TIME, "data": [{"t": 0, "v": "1"}]}


def sent(conn: OcppConnection) -> list[list[Any]]:
    return [json.loads(text) for text in conn.data_to_send()]


def test_1_6_answers_with_its_own_spellings_and_ignores_other_types() -> None:
    conn = OcppConnection(V16, Role.CSMS)
    conn.receive_text('[2,"b1","BootNotification",{"chargePointModel":"M"}]', 0)
    assert sent(conn)[0][:3] == [4, "b1", "OccurenceConstraintViolation"]
    conn.receive_text('[2,"b2","BootNotification",', 0)  # not JSON: 1.6 has no RpcFrameworkError
    assert sent(conn)[0][:3] == [4, "-1", "FormationViolation"]
    conn.receive_text('[2,"b3","BootNotification",[]]', 0)
    assert sent(conn)[0][:3] == [4, "b3", "FormationViolation"]
    for frame in ('[5,"x","GenericError","",{}]', '[6,"y","Heartbeat",{}]', '[7,"z"]'):
        (event,) = conn.receive_text(frame, 0)
        assert isinstance(event, PeerError) and event.answer is None, frame
    assert conn.data_to_send() == []
    (received,) = conn.receive_text('[2,"t1","TransactionEvent",{}]', 0)
    assert isinstance(received, PeerError)  # a 2.0.1 action is not a 1.6 one
    assert sent(conn)[0][:3] == [4, "t1", "NotImplemented"]


def test_1_6_refuses_a_2_0_1_error_code_from_the_flow() -> None:
    conn = OcppConnection(V16, Role.CSMS)
    conn.receive_text('[2,"h1","Heartbeat",{}]', 0)
    with pytest.raises(OutgoingError, match="not an OCPP 1.6 error code"):
        conn.send_error("h1", "FormatViolation")
    conn.send_error("h1", "FormationViolation")
    assert sent(conn)[0][:3] == [4, "h1", "FormationViolation"]


def test_2_1_refuses_a_1_6_error_code_from_the_flow() -> None:
    conn = OcppConnection(V21, Role.CSMS)
    conn.receive_text('[2,"h1","Heartbeat",{}]', 0)
    with pytest.raises(OutgoingError, match="not an OCPP 2.1 error code"):
        conn.send_error("h1", "OccurenceConstraintViolation")


def test_2_1_answers_an_invalid_callresult_with_a_callresulterror() -> None:
    conn = OcppConnection(V21, Role.CSMS, new_message_id=lambda: "c1")
    conn.send_call("GetTariffs", {"evseId": 1}, 0)
    conn.data_to_send()
    (event,) = conn.receive_text('[3,"c1",{"bad":1}]', 0)
    assert isinstance(event, ResultInvalid)
    answer = sent(conn)
    assert len(answer) == 1 and answer[0][:3] == [5, "c1", "FormatViolation"]
    assert answer[0][3].startswith("GetTariffs response:") and answer[0][4] == {}


def test_2_0_1_drops_an_invalid_callresult_without_a_word_to_the_peer() -> None:
    conn = OcppConnection(V201, Role.CSMS, new_message_id=lambda: "c1")
    conn.send_call("ClearCache", {}, 0)
    conn.data_to_send()
    (event,) = conn.receive_text('[3,"c1",{"bad":1}]', 0)
    assert isinstance(event, ResultInvalid) and conn.data_to_send() == []


def test_2_1_a_callresulterror_names_the_request_the_flow_answered() -> None:
    conn = OcppConnection(V21, Role.CSMS)
    conn.receive_text('[2,"h1","Heartbeat",{}]', 0)
    conn.send_result("h1", {"currentTime": DATE_TIME})
    conn.data_to_send()
    (event,) = conn.receive_text('[5,"h1","FormatViolation","no",{"why":1}]', 0)
    assert event == ResultRefused("h1", "Heartbeat", "FormatViolation", "no", {"why": 1})
    (unknown,) = conn.receive_text('[5,"zz","GenericError","",{}]', 0)
    assert isinstance(unknown, ResultRefused) and unknown.action == ""
    assert conn.data_to_send() == []  # never answered


def test_2_1_send_is_received_without_an_answer_and_a_bad_one_is_ignored() -> None:
    conn = OcppConnection(V21, Role.CSMS)
    frame = json.dumps([6, "s1", "NotifyPeriodicEventStream", NOTIFY_STREAM])
    assert conn.receive_text(frame, 0) == [
        SendReceived("s1", "NotifyPeriodicEventStream", NOTIFY_STREAM)
    ]
    for bad in (
        '[6,"s2","NotifyPeriodicEventStream",{}]',  # breaks its schema
        '[6,"s3","Heartbeat",{}]',  # not a SEND message
        '[6,"s4","NotifyPeriodicEventStream"]',  # not a SEND frame
    ):
        (event,) = conn.receive_text(bad, 0)
        assert isinstance(event, PeerError) and event.answer is None, bad
    assert conn.data_to_send() == []
    # a CSMS never receives it from... a CSMS: the station side ignores it too
    station = OcppConnection(V21, Role.CHARGING_STATION)
    (event,) = station.receive_text(frame, 0)
    assert isinstance(event, PeerError) and station.data_to_send() == []


def test_2_1_send_goes_out_at_once_even_behind_an_outstanding_call() -> None:
    ids = iter(["c1", "c2", "s1"])
    conn = OcppConnection(V21, Role.CHARGING_STATION, new_message_id=lambda: next(ids))
    conn.send_call("Heartbeat", {}, 0)
    conn.send_call("Heartbeat", {}, 0)  # queued behind c1
    assert [frame[1] for frame in sent(conn)] == ["c1"]
    assert conn.send_unconfirmed("NotifyPeriodicEventStream", NOTIFY_STREAM) == "s1"
    assert sent(conn) == [[6, "s1", "NotifyPeriodicEventStream", NOTIFY_STREAM]]
    with pytest.raises(OutgoingError, match="not a SEND message"):
        conn.send_unconfirmed("Heartbeat", {})
    with pytest.raises(OutgoingError, match="invalid"):
        conn.send_unconfirmed("NotifyPeriodicEventStream", {})
    csms = OcppConnection(V21, Role.CSMS)
    with pytest.raises(OutgoingError, match="not a SEND message a CSMS sends"):
        csms.send_unconfirmed("NotifyPeriodicEventStream", NOTIFY_STREAM)
    v201 = OcppConnection(V201, Role.CHARGING_STATION)
    with pytest.raises(OutgoingError, match="OCPP 2.0.1"):
        v201.send_unconfirmed("NotifyPeriodicEventStream", NOTIFY_STREAM)


def test_2_0_1_answers_types_5_and_6_message_type_not_supported() -> None:
    conn = OcppConnection(V201, Role.CSMS)
    conn.receive_text('[6,"s1","NotifyPeriodicEventStream",{}]', 0)
    conn.receive_text('[5,"r1","GenericError","",{}]', 0)
    assert [frame[:3] for frame in sent(conn)] == [
        [4, "s1", "MessageTypeNotSupported"],
        [4, "r1", "MessageTypeNotSupported"],
    ]


def test_2_1_ignores_a_message_type_it_lacks() -> None:
    conn = OcppConnection(V21, Role.CSMS)
    (event,) = conn.receive_text('[7,"x","Heartbeat",{}]', 0)
    assert isinstance(event, PeerError) and event.answer is None
    assert conn.data_to_send() == []


@pytest.mark.parametrize(
    ("offered", "own_order", "chosen"),
    [
        pytest.param(["ocpp2.0.1", "ocpp1.6"], False, "2.0.1", id="station_order"),
        pytest.param(["ocpp1.6", "ocpp2.0.1"], False, "1.6", id="station_order_1.6_first"),
        pytest.param(["ocpp2.0.1", "ocpp1.6"], True, "1.6", id="own_order"),
        pytest.param(["ocpp2.1"], True, None, id="own_order_none_in_common"),
    ],
)
def test_a_node_may_prefer_its_own_order(
    offered: list[str], own_order: bool, chosen: str | None
) -> None:
    version = select_version(offered, [V16, V201], own_order=own_order)
    assert (version.name if version else None) == chosen


def test_the_versions_setting_names_them_in_order_and_refuses_unknown_ones() -> None:
    assert versions_named(["ocpp2.1", "1.6", "ocpp2.1"]) == (V21, V16)
    assert versions_named("ocpp1.6, ocpp2.0.1") == (V16, V201)
    assert versions_setting({}) == (V201,)  # older exports: 2.0.1 only
    assert versions_setting({"ocpp_versions": []}) == (V201,)
    with pytest.raises(ValueError, match="'ocpp3' is not one of ocpp1.6, ocpp2.0.1, ocpp2.1"):
        versions_named(["ocpp3"])
    with pytest.raises(ValueError, match="list"):
        versions_named(16)
