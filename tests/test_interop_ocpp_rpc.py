"""Interoperability with ocpp-rpc (Node.js, strict mode) through the real daemon.

ocpp-rpc validates everything it sends and receives against its own copy of
the OCPP 2.0.1 schemas (``strictMode: true``): a payload of ours it found
invalid would fail its call or show up as a ``strictValidationFailure`` event,
which every test here checks for. The flow is played by the test through
:class:`ShimDouble`, as in tests/test_daemon.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.common import BOOT, BOOT_ANSWER, GET_VARIABLES, GET_VARIABLES_RESULT
from tests.payloads import CS_TO_CSMS, CSMS_TO_CS, valid_payload
from tests.peers.ocpp_rpc import OcppRpcPeer, ocpp_rpc_missing_reason
from tests.shim_double import ShimDouble, free_port

pytestmark = [
    pytest.mark.skipif(
        ocpp_rpc_missing_reason() is not None, reason=ocpp_rpc_missing_reason() or ""
    ),
    # the every-action tests share one daemon and two connections across the module
    pytest.mark.asyncio(loop_scope="module"),
]

CB_ID = "CS1"
PASSWORD = "pw"


def every_response(actions: tuple[str, ...]) -> dict[str, Any]:
    return {action: valid_payload(action, "Response") for action in actions}


@pytest_asyncio.fixture
async def peers() -> AsyncIterator[list[OcppRpcPeer]]:
    """Peers started by a test; all stopped (killed when needed) at teardown."""
    started: list[OcppRpcPeer] = []
    yield started
    for peer in started:
        await peer.stop()


async def start_peer(peers: list[OcppRpcPeer], mode: str, **options: Any) -> OcppRpcPeer:
    peer = OcppRpcPeer(mode, identity=CB_ID, password=PASSWORD, **options)
    peers.append(peer)
    return await peer.start()


async def csms_node_with_station(
    shim: ShimDouble, peers: list[OcppRpcPeer], responses: dict[str, Any]
) -> OcppRpcPeer:
    """Our CSMS node, and an ocpp-rpc station connected to it."""
    port = free_port()
    shim.create(
        "csms",
        "CSMS",
        {"port": str(port), "path": "/ocpp"},
        credentials={"basic_auths": json.dumps({CB_ID: PASSWORD})},
    )
    await shim.wait_for(lambda: "0 connected" in shim.statuses("csms"))
    station = await start_peer(
        peers, "client", endpoint=f"ws://127.0.0.1:{port}/ocpp", responses=responses
    )
    await station.wait_event("connected", protocol="ocpp2.0.1")
    await shim.wait_for(lambda: "1 connected" in shim.statuses("csms"))
    return station


async def cs_node_with_server(
    shim: ShimDouble, peers: list[OcppRpcPeer], responses: dict[str, Any]
) -> OcppRpcPeer:
    """An ocpp-rpc CSMS, and our CS node connected to it."""
    server = await start_peer(peers, "server", port=0, path="/ocpp", responses=responses)
    shim.create(
        "cs",
        "CS",
        {"cbId": CB_ID, "auto_connect": True},
        credentials={"csms_pw": PASSWORD},
        target={"url": f"ws://127.0.0.1:{server.port}/ocpp", "name": "ocpp-rpc"},
    )
    await server.wait_event("connected", identity=CB_ID, protocol="ocpp2.0.1")
    await shim.wait_for(
        lambda: any(m.get("ocpp", {}).get("websocket") == "ONLINE" for m in shim.sent("cs", 0))
    )
    return server


def requests_at(shim: ShimDouble, node: str) -> list[dict[str, Any]]:
    return [m for m in shim.sent(node, 0) if str(m.get("topic", "")).endswith("/Request")]


def answer_of(shim: ShimDouble, node: str, message_id: str) -> dict[str, Any] | None:
    return next(
        (
            m
            for m in shim.sent(node, 0)
            if m.get("ocpp", {}).get("MessageId") == message_id
            and str(m.get("topic", "")).endswith(("/Response", "/Error"))
        ),
        None,
    )


def no_strict_failures(peer: OcppRpcPeer) -> None:
    failures = [e for e in peer.events if e["event"] == "strictValidationFailure"]
    assert not failures, f"ocpp-rpc strict mode rejected something: {failures}"


def reply(msg: dict[str, Any], data: Any) -> dict[str, Any]:
    """The flow's answer to a received request: the same msg, payload msgType 3."""
    return {**msg, "payload": {**msg["payload"], "msgType": 3, "data": data}}


async def node_sends(
    shim: ShimDouble, node: str, peer: OcppRpcPeer, action: str, request: dict[str, Any]
) -> str | None:
    """Our node sends ``action``; None when the peer got it and its answer came back intact."""
    message_id = f"rt-{action}"
    payload: dict[str, Any] = {"command": action, "data": request, "MessageId": message_id}
    if node == "csms":
        payload["cbId"] = CB_ID
    seq = shim.input(node, {"_msgid": message_id, "payload": payload})
    try:
        done = await shim.done(seq, timeout=5)
    except asyncio.TimeoutError:
        return "no done within 5 s"
    if done.get("error"):
        return f"done error: {done['error']}"
    got = peer.received(action)
    if not got or got[-1]["params"] != request or got[-1]["messageId"] != message_id:
        return f"peer received {got[-1:] or 'nothing'}, expected {request}"
    answer = answer_of(shim, node, message_id)
    if answer is None:
        return "no answer on port 0"
    expected = peer.responses[action]
    if answer["topic"] != f"{CB_ID}/Response" or answer["payload"] != {
        "command": action,
        "data": expected,
    }:
        return f"answer {answer['topic']} {answer['payload']}, expected data {expected}"
    return None


async def peer_sends(
    shim: ShimDouble, node: str, peer: OcppRpcPeer, action: str, request: dict[str, Any]
) -> str | None:
    """The peer sends ``action`` to our node, the flow answers; None when it all arrived.

    Whatever the node emitted is answered, so that the peer's call always ends
    before the next action (ocpp-rpc sends one call at a time)."""
    before = len(requests_at(shim, node))
    call = asyncio.create_task(peer.call(action, request, timeout=5))
    try:
        emitted = await shim.wait_for(
            lambda: requests_at(shim, node)[before:] or call.done(), timeout=5
        )
    except asyncio.TimeoutError:
        call.cancel()
        return "nothing reached the node's port 0 within 5 s"
    if emitted is True:  # the call ended before the node emitted anything
        return f"peer call ended first: {call.result()}"
    msg = emitted[0]
    problems = []
    if msg["ocpp"]["command"] != action or msg["payload"]["command"] != action:
        problems.append(f"node emitted command {msg['ocpp']['command']}")
    if msg["payload"]["data"] != request:
        problems.append(f"node emitted data {msg['payload']['data']}, peer sent {request}")
    if msg["topic"] != f"{CB_ID}/Request" or msg["ocpp"]["cbId"] != CB_ID:
        problems.append(f"node emitted topic {msg['topic']} ocpp {msg['ocpp']}")
    response = valid_payload(action, "Response")
    seq = shim.input(node, reply(msg, response))
    done = await shim.done(seq, timeout=5)
    if done.get("error"):
        problems.append(f"the flow's answer failed: {done['error']}")
    result = await call
    if result["event"] != "result" or result["result"] != response:
        problems.append(f"peer got {result}, expected {response}")
    return "; ".join(problems) or None


# --- basic round trips ---------------------------------------------------------


@pytest.mark.asyncio(loop_scope="function")  # with a daemon of its own
async def test_ocpp_rpc_station_boots_at_csms_node_and_answers_get_variables(
    fresh_shim: ShimDouble, peers: list[OcppRpcPeer]
) -> None:
    station = await csms_node_with_station(
        fresh_shim, peers, {"GetVariables": GET_VARIABLES_RESULT}
    )

    boot = asyncio.create_task(station.call("BootNotification", BOOT))
    (msg,) = await fresh_shim.wait_for(lambda: requests_at(fresh_shim, "csms"))
    assert msg["topic"] == f"{CB_ID}/Request"
    assert msg["ocpp"]["command"] == "BootNotification" and msg["ocpp"]["cbId"] == CB_ID
    assert msg["payload"]["data"] == BOOT
    seq = fresh_shim.input("csms", reply(msg, BOOT_ANSWER))
    assert (await fresh_shim.done(seq)).get("error") is None
    assert await boot == {"event": "result", "id": 1, "result": BOOT_ANSWER}

    seq = fresh_shim.input(
        "csms",
        {"payload": {"command": "GetVariables", "cbId": CB_ID, "data": GET_VARIABLES}},
    )
    assert (await fresh_shim.done(seq)).get("error") is None
    (received,) = station.received("GetVariables")
    assert received["params"] == GET_VARIABLES
    answer = answer_of(fresh_shim, "csms", received["messageId"])
    assert answer is not None and answer["topic"] == f"{CB_ID}/Response"
    assert answer["payload"] == {"command": "GetVariables", "data": GET_VARIABLES_RESULT}
    no_strict_failures(station)


@pytest.mark.asyncio(loop_scope="function")  # with a daemon of its own
async def test_cs_node_boots_at_ocpp_rpc_server_and_answers_reset(
    fresh_shim: ShimDouble, peers: list[OcppRpcPeer]
) -> None:
    server = await cs_node_with_server(fresh_shim, peers, {"BootNotification": BOOT_ANSWER})

    seq = fresh_shim.input("cs", {"payload": {"command": "BootNotification", "data": BOOT}})
    assert (await fresh_shim.done(seq)).get("error") is None
    (received,) = server.received("BootNotification")
    assert received["params"] == BOOT
    answer = answer_of(fresh_shim, "cs", received["messageId"])
    assert answer is not None and answer["topic"] == f"{CB_ID}/Response"
    assert answer["payload"] == {"command": "BootNotification", "data": BOOT_ANSWER}

    reset = asyncio.create_task(server.call("Reset", {"type": "Immediate"}))
    (msg,) = await fresh_shim.wait_for(lambda: requests_at(fresh_shim, "cs"))
    assert msg["topic"] == f"{CB_ID}/Request"
    assert msg["payload"]["command"] == "Reset" and msg["payload"]["data"] == {"type": "Immediate"}
    seq = fresh_shim.input("cs", reply(msg, {"status": "Scheduled"}))
    assert (await fresh_shim.done(seq)).get("error") is None
    assert (await reset)["result"] == {"status": "Scheduled"}
    no_strict_failures(server)


# --- every action, every direction ----------------------------------------------
#
# One daemon and two connections for the whole module (CS node <-> ocpp-rpc
# server, ocpp-rpc station <-> CSMS node), each used both ways; every action is
# its own test so that a failure names it. Actions go one after another.


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_peers() -> AsyncIterator[list[OcppRpcPeer]]:
    started: list[OcppRpcPeer] = []
    yield started
    for peer in started:
        await peer.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rpc_server(
    shim: ShimDouble, module_peers: list[OcppRpcPeer]
) -> AsyncIterator[OcppRpcPeer]:
    """Our CS node connected to an ocpp-rpc CSMS that answers every CS_TO_CSMS action."""
    server = await cs_node_with_server(shim, module_peers, every_response(CS_TO_CSMS))
    yield server
    no_strict_failures(server)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rpc_station(
    shim: ShimDouble, module_peers: list[OcppRpcPeer]
) -> AsyncIterator[OcppRpcPeer]:
    """An ocpp-rpc station answering every CSMS_TO_CS action, connected to our CSMS node."""
    station = await csms_node_with_station(shim, module_peers, every_response(CSMS_TO_CS))
    yield station
    no_strict_failures(station)


@pytest.mark.parametrize("action", CS_TO_CSMS)
async def test_cs_node_sends_to_ocpp_rpc_server(
    shim: ShimDouble, rpc_server: OcppRpcPeer, action: str
) -> None:
    why = await node_sends(shim, "cs", rpc_server, action, valid_payload(action, "Request"))
    assert why is None, f"{action} CS node -> ocpp-rpc CSMS: {why}"
    no_strict_failures(rpc_server)


@pytest.mark.parametrize("action", CSMS_TO_CS)
async def test_csms_node_sends_to_ocpp_rpc_station(
    shim: ShimDouble, rpc_station: OcppRpcPeer, action: str
) -> None:
    why = await node_sends(shim, "csms", rpc_station, action, valid_payload(action, "Request"))
    assert why is None, f"{action} CSMS node -> ocpp-rpc station: {why}"
    no_strict_failures(rpc_station)


@pytest.mark.parametrize("action", CSMS_TO_CS)
async def test_ocpp_rpc_server_sends_to_cs_node_flow(
    shim: ShimDouble, rpc_server: OcppRpcPeer, action: str
) -> None:
    why = await peer_sends(shim, "cs", rpc_server, action, valid_payload(action, "Request"))
    assert why is None, f"{action} ocpp-rpc CSMS -> CS node flow: {why}"
    no_strict_failures(rpc_server)


@pytest.mark.parametrize("action", CS_TO_CSMS)
async def test_ocpp_rpc_station_sends_to_csms_node_flow(
    shim: ShimDouble, rpc_station: OcppRpcPeer, action: str
) -> None:
    why = await peer_sends(shim, "csms", rpc_station, action, valid_payload(action, "Request"))
    assert why is None, f"{action} ocpp-rpc station -> CSMS node flow: {why}"
    no_strict_failures(rpc_station)


# --- what strict mode would have caught ----------------------------------------


@pytest.mark.asyncio(loop_scope="function")  # with a daemon of its own
async def test_invalid_flow_answer_is_refused_and_never_reaches_ocpp_rpc(
    fresh_shim: ShimDouble, peers: list[OcppRpcPeer]
) -> None:
    """ocpp-rpc in strict mode rejects an invalid CALLRESULT (its call fails with a
    strictValidationFailure). Our node must refuse the invalid answer itself, so
    the peer sees nothing, and the request still waits for a valid answer."""
    server = await cs_node_with_server(fresh_shim, peers, {})
    reset = asyncio.create_task(server.call("Reset", {"type": "OnIdle"}, timeout=8))
    (msg,) = await fresh_shim.wait_for(lambda: requests_at(fresh_shim, "cs"))

    seq = fresh_shim.input("cs", reply(msg, {"status": "Bogus"}))
    error = (await fresh_shim.done(seq)).get("error")
    assert error and "status" in error and "PropertyConstraintViolation" in error, error
    seq = fresh_shim.input("cs", reply(msg, {}))
    error = (await fresh_shim.done(seq)).get("error")
    assert error and "status" in error and "OccurrenceConstraintViolation" in error, error
    await asyncio.sleep(0.3)
    assert not reset.done(), f"something reached ocpp-rpc: {reset.result()}"
    assert not [e for e in server.events if e["event"] in ("answered", "strictValidationFailure")]

    seq = fresh_shim.input("cs", reply(msg, {"status": "Accepted"}))
    assert (await fresh_shim.done(seq)).get("error") is None
    assert (await reset)["result"] == {"status": "Accepted"}
    no_strict_failures(server)


@pytest.mark.asyncio(loop_scope="function")  # with a daemon of its own
async def test_invalid_request_from_flow_never_reaches_ocpp_rpc(
    fresh_shim: ShimDouble, peers: list[OcppRpcPeer]
) -> None:
    station = await csms_node_with_station(fresh_shim, peers, {"Reset": {"status": "Accepted"}})
    seq = fresh_shim.input(
        "csms", {"payload": {"command": "Reset", "cbId": CB_ID, "data": {"type": "Later"}}}
    )
    error = (await fresh_shim.done(seq)).get("error")
    assert error and "type" in error and "PropertyConstraintViolation" in error, error
    seq = fresh_shim.input("csms", {"payload": {"command": "Reset", "cbId": CB_ID, "data": {}}})
    assert "OccurrenceConstraintViolation" in (await fresh_shim.done(seq)).get("error", "")
    # the station is still there and gets the next valid request, and only that
    seq = fresh_shim.input(
        "csms", {"payload": {"command": "Reset", "cbId": CB_ID, "data": {"type": "Immediate"}}}
    )
    assert (await fresh_shim.done(seq)).get("error") is None
    assert [e["params"] for e in station.received()] == [{"type": "Immediate"}]
    no_strict_failures(station)
