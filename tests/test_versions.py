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
from ocpp_nodes.rpc import (
    V201,
    VERSIONS,
    ErrorCode,
    MessageType,
    OcppConnection,
    OcppVersion,
    Role,
    UnknownMessageType,
    select_version,
)
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
    transaction_actions=frozenset({"StartTransaction"}),
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
    assert V201.transaction_actions == {"TransactionEvent"}
    assert V201.schemas.actions == set(CS_TO_CSMS) | set(CSMS_TO_CS)


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
        NodeSpec("csms", {"port": str(port), "path": "/ocpp"}, {"basic_auths": '{"CP1": "pw"}'}),
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
                {"cbId": "CS9", "auto_connect": True},
                {"csms_pw": "pw"},
                target={"url": f"ws://127.0.0.1:{port}/ocpp"},
            ),
            host,
            NodeServices(),
        )
        await node.start()
        try:
            ws = await asyncio.wait_for(connections.get(), 5)
            assert offered == [["ocpp2.0.1", "ocpp9.9"]]  # every entry, in the table's order
            await ws.send(json.dumps([2, "r1", "ClearCache", {}]))
            (request,) = await host.wait_for(host.requests)
            assert request["ocpp"]["ocppVersion"] == "9.9"
            node.input(1, {**request, "payload": {"msgType": 3, "data": {"status": "Accepted"}}})
            assert json.loads(await ws.recv()) == [3, "r1", {"status": "Accepted"}]
        finally:
            await node.stop()
