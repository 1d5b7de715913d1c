"""Mistakes named where the user looks (issue 23 item 6), in a REAL Node-RED.

Each test deploys its own flow on one shared Node-RED and reads what a user
would: the node's status (a status node), the Node-RED log, and the error a
Catch node gets when an input ends with done(err).

- a CS Auth list that is not valid JSON, or has a password that is not a
  string: red ring ``bad CS Auth list``, one error naming what is wrong, and
  the node does not listen; ``set_auth_list`` / ``set_auth_cs`` say the same;
- the summary of refused logins names the cbIds;
- a CS that is refused or cannot connect shows why in its status
  (``401, retry in 1s``, ``refused, retry in 1s``), and names the URL it
  tried in the log and in the Catch message of a request (never a password);
- a busy port is tried again until it is free (one warning), then green; a
  redeploy ends the retrying with nothing left bound;
- answering a request twice, late, or one never received is told which;
- an invalid payload the flow sends is told every violation.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing
from functools import partial
from typing import Any

import pytest
import websockets

from tests.common import OCPP201, auth_header
from tests.flowkit import (
    Flow,
    Record,
    caught,
    http_api,
    marker,
    node,
    recorder,
    status_is,
    topic_is,
)
from tests.nodered import NodeRed, free_port, running_node_red

pytestmark = [pytest.mark.nodered, pytest.mark.asyncio(loop_scope="module")]

TAB = "mistakes"
_node = partial(node, tab=TAB)
PASSWORD = "right-password"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeRed]:
    with running_node_red(tmp_path_factory.mktemp("mistakes-nr"), "mistakes") as started:
        yield started


def csms(node_id: str, port: int, auth_list: str, **extra: Any) -> dict[str, Any]:
    return _node(
        node_id,
        "CSMS",
        [[f"rec.{node_id}"], []],
        port=str(port),
        path="/ocpp",
        outputs=2,
        credentials={"basic_auths": auth_list},
        **extra,
    )


def cs(node_id: str, password: str) -> dict[str, Any]:
    return _node(
        node_id,
        "CS",
        [[f"rec.{node_id}"], []],
        cbId=node_id,
        csms=f"target.{node_id}",
        auto_connect=True,
        outputs=2,
        ws_rt_minimum=1,
        ws_rt_repeat=0,
        ws_rt_rnd_range=0,
        credentials={"csms_pw": password},
    )


async def deploy(runtime: NodeRed, nodes: list[dict[str, Any]]) -> Flow:
    """Deploy ``nodes`` with a status recorder and a Catch node for every node."""
    watched = [n["id"] for n in nodes if n["type"] in ("CS", "CSMS")]
    flow_nodes = [
        {"id": TAB, "type": "tab", "label": "mistakes"},
        _node("catch", "catch", [["rec.catch"]], scope=None, uncaught=False),
        recorder("rec.catch", TAB, "catch"),
        _node("status", "status", [["rec.status"]], scope=watched),
        recorder("rec.status", TAB, "status"),
        *nodes,
        *(recorder(f"rec.{name}", TAB, name) for name in watched),
        *http_api(TAB, {name: name for name in watched}),
    ]
    await asyncio.to_thread(runtime.deploy, flow_nodes)
    await asyncio.to_thread(runtime.wait_for_endpoint, "GET", "/t/records")
    return Flow(runtime)


def status_of(record: Record, node_id: str) -> dict[str, Any] | None:
    status = record.get("status") or {}
    return status if (status.get("source") or {}).get("id") == node_id else None


def status_starts(node_id: str, text: str) -> Any:
    def pred(record: Record) -> bool:
        status = status_of(record, node_id)
        return status is not None and str(status.get("text", "")).startswith(text)

    return pred


def log_lines(runtime: NodeRed, text: str) -> list[str]:
    return [line for line in runtime.log().splitlines() if text in line]


def refuses_connections(port: int) -> bool:
    with closing(socket.socket()) as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def hold_port(port: int) -> socket.socket:
    """A listening socket on ``port``, as another program would hold it."""
    held = socket.socket()
    held.bind(("0.0.0.0", port))
    held.listen()
    return held


# -- the CS Auth list -----------------------------------------------------------------


async def test_a_cs_auth_list_that_is_not_valid_is_a_red_status_and_nothing_listens(
    runtime: NodeRed,
) -> None:
    not_json, not_string = free_port(), free_port()
    flow = await deploy(
        runtime,
        [
            csms("NOTJSON", not_json, '{"CS1": "pw",}'),
            csms("NOTSTRING", not_string, '{"CS1": 1234, "CS2": "pw"}'),
        ],
    )
    for node_id in ("NOTJSON", "NOTSTRING"):
        record = await flow.await_("status", status_is(node_id, "bad CS Auth list"))
        assert (record["status"]["fill"], record["status"]["shape"]) == ("red", "ring")
    await asyncio.to_thread(runtime.wait_for_log, "CS Auth list: the password of 'CS1'")
    (line,) = log_lines(runtime, "the password of 'CS1'")
    assert "[error]" in line and "must be a string, not a number" in line, line
    assert "1234" not in line  # the value, which may be a password, is never quoted
    (line,) = log_lines(runtime, "CS Auth list is not valid JSON")
    assert "[error]" in line and "not listening" in line, line
    # nothing listens: a station would otherwise get 404 from a green "0 connected"
    assert refuses_connections(not_json) and refuses_connections(not_string)
    statuses = [status_of(r, "NOTJSON") for r in await flow.arecords("status")]
    assert not [s for s in statuses if s and "connected" in str(s.get("text"))], statuses


async def test_set_auth_list_and_set_auth_cs_say_exactly_what_is_wrong(runtime: NodeRed) -> None:
    flow = await deploy(runtime, [csms("AUTH", free_port(), json.dumps({"CS1": PASSWORD}))])
    await flow.await_("status", status_is("AUTH", "0 connected"))
    cases = [
        ("set_auth_list", '{"CS2": 5}', "the password of 'CS2' must be a string, not a number"),
        ("set_auth_list", '["CS2"]', "must be a JSON object"),
        ("set_auth_list", "{CS2: x}", "is not valid JSON"),
        ("set_auth_cs", {"name": "CS3", "password": 77}, "must be a string, not a number"),
    ]
    for command, data, words in cases:
        tag = marker(command)
        await flow.asend(
            "AUTH",
            {"payload": {"msgType": 99, "command": command, "data": data}, "customData": tag},
        )
        message = await caught(flow, "AUTH", tag)
        assert words in message, (command, data, message)
    # none of them changed the list
    tag = marker("get")
    await flow.asend(
        "AUTH", {"payload": {"msgType": 99, "command": "get_auth_list"}, "customData": tag}
    )
    answer = await flow.await_("AUTH", lambda r: r.get("customData") == tag)
    assert answer["payload"]["auth_list"] == {"CS1": PASSWORD}


# -- refusals and the CS's status -----------------------------------------------------


async def test_refused_logins_are_summed_up_by_cbid_and_each_cs_shows_why(
    runtime: NodeRed,
) -> None:
    port, closed = free_port(), free_port()
    url = f"ws://127.0.0.1:{port}/ocpp"
    flow = await deploy(
        runtime,
        [
            csms("REFUSER", port, json.dumps({"WRONGPW": PASSWORD, "CS1": PASSWORD})),
            _node("target.WRONGPW", "target-csms", url=url),
            cs("WRONGPW", "not-the-password"),
            _node("target.UNKNOWN", "target-csms", url=url),
            cs("UNKNOWN", PASSWORD),
            _node("target.NOBODY", "target-csms", url=f"ws://127.0.0.1:{closed}/ocpp"),
            cs("NOBODY", PASSWORD),
        ],
    )
    for node_id, why in (("WRONGPW", "401"), ("UNKNOWN", "404"), ("NOBODY", "refused")):
        record = await flow.await_("status", status_starts(node_id, f"{why}, retry in "), 20)
        assert record["status"]["text"] == f"{why}, retry in 1s", record
        assert (record["status"]["fill"], record["status"]["shape"]) == ("red", "ring")
    # the CSMS node's summary names the cbIds refused, per reason
    await asyncio.to_thread(runtime.wait_for_log, "refused connection attempts:", 25)
    (summary, *_) = log_lines(runtime, "refused connection attempts:")
    assert "HTTP 401 (wrong or missing credentials): 'WRONGPW'" in summary, summary
    assert "HTTP 404 (unknown identity): 'UNKNOWN'" in summary, summary
    assert "from 127.0.0.1" in summary, summary


async def test_a_connection_failure_names_the_url_tried_but_never_a_password(
    runtime: NodeRed,
) -> None:
    closed = free_port()
    tried = f"ws://127.0.0.1:{closed}/ocpp/OFFLINE"
    flow = await deploy(
        runtime,
        [
            _node("target.OFFLINE", "target-csms", url=f"ws://127.0.0.1:{closed}/ocpp"),
            cs("OFFLINE", PASSWORD),
            # a user name and password in the URL itself: the password is masked
            _node("target.INURL", "target-csms", url=f"ws://me:s3cret@127.0.0.1:{closed}/ocpp"),
            cs("INURL", PASSWORD),
        ],
    )
    await flow.await_("status", status_starts("OFFLINE", "refused, retry in"), 20)
    await flow.await_("status", status_starts("INURL", "refused, retry in"), 20)
    line = log_lines(runtime, "OFFLINE: the CSMS refused the connection")[-1]
    assert f"(tried {tried})" in line, line
    # a request while not connected: the Catch message says why, with the URL
    tag = marker("offline")
    await flow.asend(
        "OFFLINE",
        {"payload": {"msgType": 2, "command": "Heartbeat", "data": {}}, "customData": tag},
    )
    message = await caught(flow, "OFFLINE", tag)
    assert "not connected" in message and "refused the connection" in message, message
    assert tried in message, message
    masked = log_lines(runtime, "INURL: the CSMS refused the connection")[-1]
    assert f"(tried ws://me:***@127.0.0.1:{closed}/ocpp/INURL)" in masked, masked
    assert "s3cret" not in runtime.log()
    assert PASSWORD not in runtime.log()


# -- a busy port ----------------------------------------------------------------------


async def test_a_busy_port_is_tried_again_until_free_then_the_node_is_green(
    runtime: NodeRed,
) -> None:
    port = free_port()
    held = hold_port(port)
    try:
        flow = await deploy(runtime, [csms("BUSY", port, json.dumps({"CS1": PASSWORD}))])
        first = await flow.await_("status", status_starts("BUSY", f"port {port} busy"))
        assert first["status"]["text"] == f"port {port} busy, retry in 1s", first
        assert (first["status"]["fill"], first["status"]["shape"]) == ("red", "ring")
        # three tries (after 1, 2 and 4 s): one warning for the streak, not one per try
        await flow.await_("status", status_is("BUSY", f"port {port} busy, retry in 4s"), 20)
    finally:
        held.close()
    record = await flow.await_("status", status_is("BUSY", "0 connected"), 20)
    assert record["status"]["fill"] == "green"
    warned = log_lines(runtime, f"cannot listen on port {port}")
    assert len(warned) == 1 and "[warn]" in warned[0], warned
    assert log_lines(runtime, f"port {port} is free again: listening")
    async with station(port, "CS1"):  # and stations are served
        await flow.await_("status", status_is("BUSY", "1 connected"))


async def test_a_redeploy_ends_the_retrying_of_a_busy_port_and_nothing_stays_bound(
    runtime: NodeRed,
) -> None:
    port = free_port()
    held = hold_port(port)
    try:
        flow = await deploy(runtime, [csms("BUSY2", port, json.dumps({"CS1": PASSWORD}))])
        await flow.await_("status", status_is("BUSY2", f"port {port} busy, retry in 2s"), 20)
        await deploy(runtime, [])  # the node is removed while it waits to try again
    finally:
        held.close()
    # its next try was due within 2 s: a retry that outlived the node would bind the port
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while loop.time() < deadline:
        assert refuses_connections(port), "a removed CSMS node still listens"
        await asyncio.sleep(0.1)
    # and the port serves the next node at once
    flow = await deploy(runtime, [csms("AGAIN", port, json.dumps({"CS1": PASSWORD}))])
    await flow.await_("status", status_is("AGAIN", "0 connected"))
    assert not [r for r in await flow.arecords("status") if status_starts("AGAIN", "port")(r)]


# -- answers and payloads the flow sends ----------------------------------------------


@asynccontextmanager
async def station(port: int, cb_id: str) -> AsyncIterator[Any]:
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/ocpp/{cb_id}",
        subprotocols=OCPP201,
        additional_headers=auth_header(cb_id, PASSWORD),
        open_timeout=10,
        ping_interval=None,
    ) as ws:
        yield ws


async def test_an_answer_is_told_whether_its_request_was_answered_expired_or_never_received(
    runtime: NodeRed,
) -> None:
    """ANSWERS waits 30 s for the flow's answer (no race with a loaded
    machine); LATE waits 1 s, so its request expires before the flow answers."""
    ports = {"ANSWERS": free_port(), "LATE": free_port()}
    flow = await deploy(
        runtime,
        [
            csms("ANSWERS", ports["ANSWERS"], json.dumps({"CS1": PASSWORD})),
            csms("LATE", ports["LATE"], json.dumps({"CS1": PASSWORD}), message_timeout=1),
        ],
    )
    for node_id in ports:
        await flow.await_("status", status_is(node_id, "0 connected"))

    async def request_from_station(ws: Any, node_id: str, message_id: str) -> Record:
        await ws.send(json.dumps([2, message_id, "Heartbeat", {}]))
        return await flow.await_(
            node_id,
            lambda r: topic_is("CS1/Request")(r) and r["ocpp"]["MessageId"] == message_id,
        )

    async def answer(node_id: str, received: Record, msg_type: int = 3, **ocpp: str) -> str:
        tag = marker("answer")
        payload: dict[str, Any] = {"msgType": msg_type}
        if msg_type == 3:
            payload["data"] = {"currentTime": "2026-01-01T00:00:00Z"}
        else:
            payload["errorCode"] = "GenericError"
        await flow.asend(
            node_id,
            {"ocpp": {**received["ocpp"], **ocpp}, "payload": payload, "customData": tag},
        )
        return tag

    async with station(ports["ANSWERS"], "CS1") as ws:
        received = await request_from_station(ws, "ANSWERS", "twice-1")
        await answer("ANSWERS", received)
        assert json.loads(await ws.recv())[:2] == [3, "twice-1"]
        message = await caught(flow, "ANSWERS", await answer("ANSWERS", received))
        assert "the Heartbeat request 'twice-1' was already answered" in message, message
        tag = await answer("ANSWERS", received, MessageId="never-1")
        message = await caught(flow, "ANSWERS", tag)
        assert "no request with MessageId 'never-1' was received" in message, message

    async with station(ports["LATE"], "CS1") as ws:
        received = await request_from_station(ws, "LATE", "late-1")
        await asyncio.to_thread(runtime.wait_for_log, "late-1 was not answered in time")
        message = await caught(flow, "LATE", await answer("LATE", received))
        assert "the Heartbeat request 'late-1' expired: it waited 1 s" in message, message
        # a CALLERROR reply is told the same
        message = await caught(flow, "LATE", await answer("LATE", received, msg_type=4))
        assert "the Heartbeat request 'late-1' expired" in message, message


async def test_an_invalid_payload_the_flow_sends_is_told_every_violation(
    runtime: NodeRed,
) -> None:
    port = free_port()
    flow = await deploy(runtime, [csms("SCHEMA", port, json.dumps({"CS1": PASSWORD}))])
    await flow.await_("status", status_is("SCHEMA", "0 connected"))
    async with station(port, "CS1"):
        await flow.await_("status", status_is("SCHEMA", "1 connected"))
        tag = marker("invalid")
        await flow.asend(
            "SCHEMA",
            {
                "payload": {
                    "cbId": "CS1",
                    "command": "Reset",
                    "data": {"type": "Sometimes", "evseId": "one", "colour": "red"},
                },
                "customData": tag,
            },
        )
        message = await caught(flow, "SCHEMA", tag)
    assert "Reset request is invalid" in message, message
    for words in ("'colour' was unexpected", "evseId: 'one' is not of type", "type: 'Sometimes'"):
        assert words in message, message
