"""Drop-in compatibility through a real Node-RED: each feature of the user docs of
`@anl-ioc/node-red-contrib-ocpp2` (MessageId, customData, link call port,
topics, log port, commands, connection events, timeouts) as docs/nodes.md
describes it for our nodes.

One Node-RED for the module, with:

- `csms` (port P1, path /ocpp): logging on (3 outputs), connection events on,
  message_timeout 1 s; a responder function answers the stations' requests;
- `csms2` (port P2): an older node's shape: no connection_events, no logging,
  2 outputs, but a third wire to a recorder (it must stay silent);
- one `target-csms` (P1) shared by CS `csA` (logging on, answers GetVariables)
  and CS `csB` (logging off, 2 outputs + a stale third wire);
- CS `csM`: auto_connect off; CS `csR`: aimed at a dead port (back-off);
- `link call` nodes into `csms` and `csA`, whose output 2 goes to `link out`
  (return mode);
- a Catch node and a Status node, recorded;
- the HTTP API of tests/flowkit.py to inject messages and read the records.

Python stations (raw websockets) connect to P1 / P2 where a test needs a peer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.common import recv_frame
from tests.flowkit import Flow, connect_station, http_api, recorder, wait_port
from tests.nodered import free_port, running_node_red

pytestmark = pytest.mark.nodered

TAB = "compat.tab"
AUTHS_P1 = {"CSA": "pwA", "CSB": "pwB", "CSM": "pwM", "PY1": "pw1"}
AUTHS_P2 = {"CSM2": "pwM2", "PYN": "pwN"}

RESPONDER_JS = """
if (!msg.topic || !msg.topic.endsWith('/Request')) return null;
const now = new Date().toISOString();
const answers = {
  BootNotification: {currentTime: now, interval: 300, status: 'Accepted'},
  Heartbeat: {currentTime: now},
  StatusNotification: {},
  Authorize: {idTokenInfo: {status: 'Accepted'}},
};
const data = answers[msg.payload.command];
if (data === undefined) return null;
msg.payload = {msgType: 3, data};
return msg;
"""

CS_RESPONDER_JS = """
if (!msg.topic || !msg.topic.endsWith('/Request')) return null;
if (msg.payload.command !== 'GetVariables') return null;
msg.payload = {msgType: 3, data: {getVariableResult: msg.payload.data.getVariableData.map(
  (d) => ({attributeStatus: 'Accepted', attributeValue: '42',
           component: d.component, variable: d.variable}))}};
return msg;
"""


class Compat(Flow):
    p1: int
    p2: int
    dead: int

    @property
    def url1(self) -> str:
        return f"ws://127.0.0.1:{self.p1}/ocpp"

    @property
    def url2(self) -> str:
        return f"ws://127.0.0.1:{self.p2}/ocpp"

    def command(self, name: str, command: str, data: Any = None, **extra: Any) -> None:
        payload: dict[str, Any] = {"msgType": 99, "command": command}
        if data is not None:
            payload["data"] = data
        self.send(name, {"payload": payload, **extra})

    def connections(self, node: str = "csms") -> dict[str, Any]:
        marker = f"conn-{node}-{len(self.records())}"
        tag = "csms1" if node == "csms" else "noev1"
        self.command(node, "connections", customData=marker)
        found = self.wait(tag, lambda r: r.get("customData") == marker)
        connections: dict[str, Any] = found["payload"]["connections"]
        return connections

    def wait_connected(self, cb_id: str, node: str = "csms", timeout: float = 15) -> None:
        def probe() -> bool:
            return cb_id in self.connections(node)

        _until(probe, timeout, f"{cb_id} connected to {node}")

    def wait_disconnected(self, cb_id: str, node: str = "csms", timeout: float = 15) -> None:
        _until(lambda: cb_id not in self.connections(node), timeout, f"{cb_id} gone from {node}")


def _until(probe: Any, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def compat_flow(p1: int, p2: int, dead: int) -> list[dict[str, Any]]:
    rec = "compat.rec."
    nodes: list[dict[str, Any]] = [
        {"id": TAB, "type": "tab", "label": "compat"},
        {
            "id": "csms",
            "type": "CSMS",
            "z": TAB,
            "name": "csms",
            "port": str(p1),
            "path": "/ocpp",
            "ocpp_logging": True,
            "outputs": 3,
            "connection_events": True,
            "message_timeout": 1,
            "credentials": {"basic_auths": json.dumps(AUTHS_P1)},
            "x": 300,
            "y": 100,
            "wires": [
                [rec + "csms1", "responder"],
                [rec + "csms2", "lo.return"],
                [rec + "csmslog"],
            ],
        },
        {
            "id": "responder",
            "type": "function",
            "z": TAB,
            "func": RESPONDER_JS,
            "outputs": 1,
            "x": 500,
            "y": 100,
            "wires": [["csms"]],
        },
        {
            # the shape of an older export: no connection_events, no logging
            "id": "csms2",
            "type": "CSMS",
            "z": TAB,
            "name": "csms2",
            "port": str(p2),
            "path": "/ocpp",
            "credentials": {"basic_auths": json.dumps(AUTHS_P2)},
            "x": 300,
            "y": 200,
            # a stale third wire: nothing may come out of it with logging off
            "wires": [[rec + "noev1"], [rec + "noev2"], [rec + "noevlog"]],
        },
        {"id": "tgt", "type": "target-csms", "name": "P1", "url": f"ws://127.0.0.1:{p1}/ocpp"},
        {
            "id": "csA",
            "type": "CS",
            "z": TAB,
            "name": "",
            "cbId": "CSA",
            "csms": "tgt",
            "auto_connect": True,
            "ocpp_logging": True,
            "outputs": 3,
            "ws_rt_minimum": "1",
            "ws_rt_repeat": "0",
            "ws_rt_rnd_range": "0",
            "credentials": {"csms_pw": "pwA"},
            "x": 300,
            "y": 300,
            "wires": [
                [rec + "csA1", "csA.responder"],
                [rec + "csA2", "lo.return"],
                [rec + "csAlog"],
            ],
        },
        {
            "id": "csA.responder",
            "type": "function",
            "z": TAB,
            "func": CS_RESPONDER_JS,
            "outputs": 1,
            "x": 500,
            "y": 300,
            "wires": [["csA"]],
        },
        {
            "id": "csB",
            "type": "CS",
            "z": TAB,
            "cbId": "CSB",
            "csms": "tgt",
            "auto_connect": True,
            "ocpp_logging": False,
            "outputs": 2,
            "credentials": {"csms_pw": "pwB"},
            "x": 300,
            "y": 400,
            "wires": [[rec + "csB1"], [rec + "csB2"], [rec + "csBlog"]],
        },
        {
            "id": "csM",
            "type": "CS",
            "z": TAB,
            "cbId": "CSM",
            "csms": "tgt",
            "auto_connect": False,
            "outputs": 2,
            "ws_rt_minimum": "1",
            "ws_rt_repeat": "0",
            "ws_rt_rnd_range": "0",
            "credentials": {"csms_pw": "pwM"},
            "x": 300,
            "y": 500,
            "wires": [[rec + "csM1"], []],
        },
        {
            "id": "csR",
            "type": "CS",
            "z": TAB,
            "cbId": "CSR",
            "csms_url": f"ws://127.0.0.1:{dead}/ocpp",
            "auto_connect": True,
            "outputs": 2,
            "ws_rt_minimum": "40",
            "ws_rt_repeat": "0",
            "ws_rt_rnd_range": "0",
            "x": 300,
            "y": 600,
            "wires": [[], []],
        },
        {
            "id": "csR.status",
            "type": "status",
            "z": TAB,
            "scope": ["csR"],
            "x": 100,
            "y": 600,
            "wires": [[rec + "csRstatus"]],
        },
        # link calls into csms and csA, and the return path
        {
            "id": "lc.csms",
            "type": "link call",
            "z": TAB,
            "links": ["li.csms"],
            "linkType": "static",
            "timeout": "10",
            "x": 100,
            "y": 700,
            "wires": [[rec + "lc"]],
        },
        {
            "id": "lc.csA",
            "type": "link call",
            "z": TAB,
            "links": ["li.csA"],
            "linkType": "static",
            "timeout": "10",
            "x": 100,
            "y": 750,
            "wires": [[rec + "lc"]],
        },
        {
            "id": "li.csms",
            "type": "link in",
            "z": TAB,
            "links": [],
            "x": 200,
            "y": 700,
            "wires": [["csms"]],
        },
        {
            "id": "li.csA",
            "type": "link in",
            "z": TAB,
            "links": [],
            "x": 200,
            "y": 750,
            "wires": [["csA"]],
        },
        {
            "id": "lo.return",
            "type": "link out",
            "z": TAB,
            "mode": "return",
            "links": [],
            "x": 600,
            "y": 700,
        },
        {
            "id": "catch",
            "type": "catch",
            "z": TAB,
            "scope": None,
            "uncaught": False,
            "x": 100,
            "y": 800,
            "wires": [[rec + "catch"]],
        },
    ]
    tags = [
        "csms1",
        "csms2",
        "csmslog",
        "noev1",
        "noev2",
        "noevlog",
        "csA1",
        "csA2",
        "csAlog",
        "csB1",
        "csB2",
        "csBlog",
        "csM1",
        "csRstatus",
        "lc",
        "catch",
    ]
    nodes += [recorder(rec + tag, TAB, tag) for tag in tags]
    nodes += http_api(
        TAB,
        {
            "csms": "csms",
            "csms2": "csms2",
            "csA": "csA",
            "csB": "csB",
            "csM": "csM",
            "csR": "csR",
            "lc_csms": "lc.csms",
            "lc_csA": "lc.csA",
        },
    )
    return nodes


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compat]:
    user_dir: Path = tmp_path_factory.mktemp("compat-node-red")
    with running_node_red(user_dir, "test_compat_nodered") as runtime:
        p1, p2, dead = free_port(), free_port(), free_port()
        runtime.deploy(compat_flow(p1, p2, dead))
        runtime.wait_for_endpoint("GET", "/t/records")
        f = Compat(runtime)
        f.p1, f.p2, f.dead = p1, p2, dead
        wait_port(p1)
        wait_port(p2)
        f.wait_connected("CSA")
        yield f


def _is(topic: str, command: str | None = None) -> Any:
    def pred(r: dict[str, Any]) -> bool:
        if r.get("topic") != topic:
            return False
        return command is None or (r.get("payload") or {}).get("command") == command

    return pred


# -- MessageId, customData, topics, msg.ocpp ------------------------------------------


async def test_user_message_id_is_on_the_wire(flow: Compat) -> None:
    """CSMS -> Python station, and CS -> CSMS (seen in the CSMS's raw frame log)."""
    ws = await connect_station(flow.url1, "PY1", "pw1")
    try:
        await flow.await_("csms1", _is("PY1/Connection"))
        await flow.asend(
            "csms",
            {
                "payload": {
                    "command": "ClearCache",
                    "data": {},
                    "MessageId": "user-mid-0001",
                    "cbId": "PY1",
                }
            },
        )
        frame = await recv_frame(ws)
        assert frame[:3] == [2, "user-mid-0001", "ClearCache"], frame
        await ws.send(json.dumps([3, "user-mid-0001", {"status": "Accepted"}]))
        answer = await flow.await_("csms1", _is("PY1/Response", "ClearCache"))
        assert answer["ocpp"]["MessageId"] == "user-mid-0001"
        assert answer["payload"]["data"] == {"status": "Accepted"}
    finally:
        await ws.close()

    await flow.asend(
        "csA", {"payload": {"command": "Heartbeat", "data": {}, "MessageId": "cs-user-mid-2"}}
    )
    logged = await flow.await_(
        "csmslog", lambda r: (r.get("payload") or [None, None])[1] == "cs-user-mid-2"
    )
    assert logged["payload"] == [2, "cs-user-mid-2", "Heartbeat", {}]
    assert logged["msgFrom"] == "CS"


def test_custom_data_round_trip_object_and_string(flow: Compat) -> None:
    obj = {"target": "OCTT1:TransactionEvent", "n": [1, 2], "ok": True}
    flow.send("csA", {"payload": {"command": "Heartbeat", "data": {}}, "customData": obj})
    got = flow.wait("csA1", lambda r: r.get("customData") == obj)
    assert got["topic"] == "CSA/Response" and got["payload"]["command"] == "Heartbeat"
    assert "currentTime" in got["payload"]["data"]

    flow.send(
        "csms",
        {
            "payload": {
                "command": "GetVariables",
                "cbId": "CSA",
                "data": {
                    "getVariableData": [
                        {
                            "component": {"name": "OCPPCommCtrlr"},
                            "variable": {"name": "HeartbeatInterval"},
                        }
                    ]
                },
            },
            "customData": "a plain string",
        },
    )
    got = flow.wait("csms1", lambda r: r.get("customData") == "a plain string")
    assert got["topic"] == "CSA/Response"
    assert got["payload"]["data"]["getVariableResult"][0]["attributeValue"] == "42"


def test_topics_and_ocpp_fields_of_received_messages(flow: Compat) -> None:
    flow.send("csA", {"payload": {"command": "Heartbeat", "data": {}, "MessageId": "topic-hb-1"}})
    req = flow.wait("csms1", lambda r: (r.get("ocpp") or {}).get("MessageId") == "topic-hb-1")
    assert req["topic"] == "CSA/Request"
    assert req["ocpp"] == {
        "ocppVersion": "2.0.1",
        "MessageId": "topic-hb-1",
        "command": "Heartbeat",
        "cbId": "CSA",
    }
    assert req["payload"] == {"command": "Heartbeat", "data": {}, "MessageId": "topic-hb-1"}
    res = flow.wait("csA1", lambda r: (r.get("ocpp") or {}).get("MessageId") == "topic-hb-1")
    assert res["topic"] == "CSA/Response"
    assert res["ocpp"]["command"] == "Heartbeat" and res["ocpp"]["cbId"] == "CSA"
    assert res["payload"]["command"] == "Heartbeat"

    # a request the CS receives carries payload.cbId too
    flow.send(
        "csms",
        {
            "payload": {
                "command": "GetVariables",
                "cbId": "CSA",
                "MessageId": "topic-gv-1",
                "data": {
                    "getVariableData": [{"component": {"name": "C"}, "variable": {"name": "V"}}]
                },
            }
        },
    )
    got = flow.wait("csA1", lambda r: (r.get("ocpp") or {}).get("MessageId") == "topic-gv-1")
    assert got["topic"] == "CSA/Request"
    assert got["payload"]["cbId"] == "CSA" and got["payload"]["MessageId"] == "topic-gv-1"
    assert got["ocpp"]["ocppVersion"] == "2.0.1" and got["ocpp"]["command"] == "GetVariables"


async def test_error_topic_for_a_callerror_answer(flow: Compat) -> None:
    ws = await connect_station(flow.url1, "PY1", "pw1")
    try:
        await flow.asend(
            "csms",
            {
                "payload": {
                    "command": "ClearCache",
                    "data": {},
                    "MessageId": "err-mid-1",
                    "cbId": "PY1",
                }
            },
        )
        frame = await recv_frame(ws)
        await ws.send(json.dumps([4, frame[1], "InternalError", "boom", {"why": "test"}]))
        got = await flow.await_("csms1", lambda r: r.get("topic") == "PY1/Error")
        assert got["payload"] == {
            "command": "ClearCache",
            "errorCode": "InternalError",
            "errorDescription": "boom",
            "errorDetails": {"why": "test"},
        }
        assert got["ocpp"]["MessageId"] == "err-mid-1"
    finally:
        await ws.close()


# -- link call ------------------------------------------------------------------------


def test_link_call_answer_returns_on_output_2(flow: Compat) -> None:
    flow.send(
        "lc_csms",
        {
            "payload": {
                "command": "GetVariables",
                "cbId": "CSA",
                "MessageId": "lc-gv-1",
                "data": {
                    "getVariableData": [{"component": {"name": "C"}, "variable": {"name": "V"}}]
                },
            }
        },
    )
    back = flow.wait("lc", lambda r: (r.get("ocpp") or {}).get("MessageId") == "lc-gv-1")
    assert back["topic"] == "CSA/Response"
    assert back["payload"]["data"]["getVariableResult"][0]["attributeValue"] == "42"
    assert flow.wait("csms2", lambda r: (r.get("ocpp") or {}).get("MessageId") == "lc-gv-1")
    assert not [
        r
        for r in flow.records("csms1")
        if (r.get("ocpp") or {}).get("MessageId") == "lc-gv-1" and r.get("topic") == "CSA/Response"
    ]

    flow.send("lc_csA", {"payload": {"command": "Heartbeat", "data": {}, "MessageId": "lc-hb-1"}})
    back = flow.wait("lc", lambda r: (r.get("ocpp") or {}).get("MessageId") == "lc-hb-1")
    assert back["topic"] == "CSA/Response" and "currentTime" in back["payload"]["data"]
    assert flow.wait("csA2", lambda r: (r.get("ocpp") or {}).get("MessageId") == "lc-hb-1")


# -- log port -------------------------------------------------------------------------


def test_log_port_carries_frames_both_ways(flow: Compat) -> None:
    flow.send("csA", {"payload": {"command": "Heartbeat", "data": {}, "MessageId": "log-hb-1"}})

    def frame_of(kind: int) -> Any:
        return lambda r: (
            isinstance(r.get("payload"), list) and r["payload"][:2] == [kind, "log-hb-1"]
        )

    for tag, own, peer in (("csmslog", "CSMS", "CS"), ("csAlog", "CS", "CSMS")):
        request = flow.wait(tag, frame_of(2))
        answer = flow.wait(tag, frame_of(3))
        for r in (request, answer):
            assert r["cbId"] == "CSA", r
            assert isinstance(r["timestamp"], int) and r["timestamp"] > 1_600_000_000_000
        assert request["payload"] == [2, "log-hb-1", "Heartbeat", {}]
        assert "currentTime" in answer["payload"][2]
        # who sent each frame
        assert request["msgFrom"] == (peer if tag == "csmslog" else own)
        assert answer["msgFrom"] == (own if tag == "csmslog" else peer)


async def test_logging_off_logs_nothing(flow: Compat) -> None:
    flow_b = flow
    await flow_b.asend(
        "csB", {"payload": {"command": "Heartbeat", "data": {}, "MessageId": "nolog-1"}}
    )
    await flow_b.await_("csB1", lambda r: (r.get("ocpp") or {}).get("MessageId") == "nolog-1")
    ws = await connect_station(flow.url2, "PYN", "pwN")
    try:
        await ws.send(json.dumps([2, "nolog-2", "Heartbeat", {}]))
        await flow.await_("noev1", lambda r: (r.get("ocpp") or {}).get("MessageId") == "nolog-2")
    finally:
        await ws.close()
    await asyncio.sleep(0.5)
    assert await flow.arecords("csBlog") == []
    assert await flow.arecords("noevlog") == []
    assert not [r for r in await flow.arecords("noev1") if r.get("msgFrom")]


# -- CS connection control ----------------------------------------------------------


def test_auto_connect_false_waits_for_connect(flow: Compat) -> None:
    import time

    time.sleep(1.0)
    assert "CSM" not in flow.connections()
    assert not flow.records("csM1")
    flow.command("csM", "connect")
    flow.wait_connected("CSM")
    online = flow.wait("csM1", lambda r: (r.get("ocpp") or {}).get("websocket") == "ONLINE")
    assert online["ocpp"] == {"websocket": "ONLINE", "cbId": "CSM"}


def test_connect_overrides_then_close_stays_closed(flow: Compat) -> None:
    import time

    flow.command("csM", "connect", {"cbId": "CSM2", "password": "pwM2", "csmsUrl": flow.url2})
    flow.wait_connected("CSM2", node="csms2")
    flow.wait_disconnected("CSM")  # the old connection (P1 as CSM) is gone
    flow.command("csM", "close")
    flow.wait_disconnected("CSM2", node="csms2")
    offline = flow.wait("csM1", lambda r: (r.get("ocpp") or {}).get("websocket") == "OFFLINE")
    assert offline["ocpp"]["cbId"] in ("CSM", "CSM2")
    time.sleep(3.0)  # longer than the 1 s back-off: it must not come back
    assert "CSM2" not in flow.connections("csms2")
    assert "CSM" not in flow.connections()


def test_retrybackoff_changes_the_wait(flow: Compat) -> None:
    first = flow.wait("csRstatus", lambda r: "retry in" in (r.get("status") or {}).get("text", ""))
    assert first["status"]["text"] == "refused, retry in 40s", first  # nothing listens there
    count = len(flow.records("csRstatus"))
    flow.command(
        "csR",
        "retrybackoff",
        {"RetryBackOffWaitMinimum": 2, "retrybackoffrandomrange": 0, "RetryBackOffRepeatTimes": 0},
    )
    flow.command("csR", "connect")  # try again now; the next wait uses the new values
    again = flow.wait(
        "csRstatus",
        lambda r: "retry in" in (r.get("status") or {}).get("text", ""),
        after=count,
    )
    assert again["status"]["text"] == "refused, retry in 2s", flow.records("csRstatus")[count:]
    assert not [
        r
        for r in flow.records("catch")
        if (r.get("error") or {}).get("source", {}).get("id") == "csR"
    ]


def test_one_target_shared_by_two_cs_nodes(flow: Compat) -> None:
    flow.wait_connected("CSB")
    conns = flow.connections()
    assert "CSA" in conns and "CSB" in conns
    assert conns["CSA"]["remote"].startswith("127.0.0.1") and conns["CSA"]["since"]


# -- commands -------------------------------------------------------------------------


def test_command_forms_and_case(flow: Compat) -> None:
    flow.send("csms", {"payload": {"msgType": 99, "command": "CONNECTIONS"}, "customData": "f99"})
    a = flow.wait("csms1", lambda r: r.get("customData") == "f99")
    assert "CSA" in a["payload"]["connections"] and a["payload"]["command"] == "CONNECTIONS"
    flow.send("csms", {"payload": {"msgType": 4, "command": "Connections"}, "customData": "f4"})
    b = flow.wait("csms1", lambda r: r.get("customData") == "f4")
    assert "CSA" in b["payload"]["connections"]
    # through a link call: output 2 and back to the link call
    flow.send(
        "lc_csms", {"payload": {"msgType": 99, "command": "connections"}, "customData": "flc"}
    )
    c = flow.wait("lc", lambda r: r.get("customData") == "flc")
    assert "CSA" in c["payload"]["connections"]
    assert flow.wait("csms2", lambda r: r.get("customData") == "flc")
    assert not [r for r in flow.records("csms1") if r.get("customData") == "flc"]


async def test_commands_lists_waiting_requests(flow: Compat) -> None:
    ws = await connect_station(flow.url2, "PYN", "pwN")
    try:
        await flow.asend(
            "csms2",
            {
                "payload": {
                    "command": "ClearCache",
                    "data": {},
                    "MessageId": "pending-1",
                    "cbId": "PYN",
                }
            },
        )
        frame = await recv_frame(ws)
        assert frame[1] == "pending-1"
        await flow.asend(
            "csms2", {"payload": {"msgType": 99, "command": "cmds"}, "customData": "cmds-1"}
        )
        got = await flow.await_("noev1", lambda r: r.get("customData") == "cmds-1")
        assert got["payload"]["commands"] == [
            {"cbId": "PYN", "MessageId": "pending-1", "command": "ClearCache", "sent": True}
        ]
        await ws.send(json.dumps([3, "pending-1", {"status": "Accepted"}]))
        await flow.await_("noev1", _is("PYN/Response"))
        await flow.asend(
            "csms2", {"payload": {"msgType": 99, "command": "commands"}, "customData": "cmds-2"}
        )
        got = await flow.await_("noev1", lambda r: r.get("customData") == "cmds-2")
        assert got["payload"]["commands"] == []
    finally:
        await ws.close()


async def test_auth_list_commands(flow: Compat) -> None:
    with pytest.raises(websockets.exceptions.InvalidStatus) as caught:
        await connect_station(flow.url2, "NEW1", "pwNew")
    assert caught.value.response.status_code == 404

    await flow.asend(
        "csms2", {"payload": {"msgType": 99, "command": "get_auth_list"}, "customData": "gal-1"}
    )
    got = await flow.await_("noev1", lambda r: r.get("customData") == "gal-1")
    assert got["payload"]["auth_list"] == AUTHS_P2

    new_list = {**AUTHS_P2, "NEW1": "pwNew"}
    await flow.asend(
        "csms2", {"payload": {"msgType": 99, "command": "set_auth_list", "data": new_list}}
    )
    await flow.asend(
        "csms2", {"payload": {"msgType": 99, "command": "get_auth_list"}, "customData": "gal-2"}
    )
    got = await flow.await_("noev1", lambda r: r.get("customData") == "gal-2")
    assert got["payload"]["auth_list"] == new_list
    ws = await connect_station(flow.url2, "NEW1", "pwNew")
    await ws.close()

    await flow.asend(
        "csms2",
        {
            "payload": {
                "msgType": 99,
                "command": "set_auth_cs",
                "data": {"name": "NEW2", "password": "pw2"},
            }
        },
    )
    await flow.asend(
        "csms2",
        {
            "payload": {"msgType": 99, "command": "get_auth_cs", "data": {"name": "NEW2"}},
            "customData": "gac-1",
        },
    )
    got = await flow.await_("noev1", lambda r: r.get("customData") == "gac-1")
    assert got["payload"]["auth_cs"] == "pw2"
    await flow.asend(
        "csms2",
        {
            "payload": {"msgType": 99, "command": "GET_AUTH_CS", "data": {"name": "nobody"}},
            "customData": "gac-2",
        },
    )
    got = await flow.await_("noev1", lambda r: r.get("customData") == "gac-2")
    assert got["payload"]["auth_cs"] == "NOT FOUND"
    ws = await connect_station(flow.url2, "NEW2", "pw2")
    await ws.close()


async def test_ws_close_one_station(flow: Compat) -> None:
    ws = await connect_station(flow.url1, "PY1", "pw1")
    try:
        await flow.await_(
            "csms1",
            lambda r: r.get("topic") == "PY1/Connection" and r["ocpp"]["websocket"] == "ONLINE",
        )
        await flow.asend(
            "csms", {"payload": {"msgType": 99, "command": "ws_close", "data": {"cbId": "PY1"}}}
        )
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    finally:
        await ws.close()
    conns = await asyncio.to_thread(flow.connections)
    assert "PY1" not in conns and "CSA" in conns


def test_ws_close_station_cs_goes_offline_and_back(flow: Compat) -> None:
    after1 = len(flow.records("csA1"))
    after_ev = len(flow.records("csms1"))
    flow.command("csms", "ws_close", {"cbId": "CSA"})
    off = flow.wait(
        "csA1", lambda r: (r.get("ocpp") or {}).get("websocket") == "OFFLINE", after=after1
    )
    assert off["ocpp"] == {"websocket": "OFFLINE", "cbId": "CSA"}
    on = flow.wait(
        "csA1", lambda r: (r.get("ocpp") or {}).get("websocket") == "ONLINE", after=after1
    )
    assert on["ocpp"] == {"websocket": "ONLINE", "cbId": "CSA"}
    ev_off = flow.wait(
        "csms1",
        lambda r: r.get("topic") == "CSA/Connection" and r["ocpp"]["websocket"] == "OFFLINE",
        after=after_ev,
    )
    assert ev_off["ocpp"]["cbId"] == "CSA" and ev_off["payload"]["reason"]
    ev_on = flow.wait(
        "csms1",
        lambda r: r.get("topic") == "CSA/Connection" and r["ocpp"]["websocket"] == "ONLINE",
        after=after_ev,
    )
    assert ev_on["payload"]["remote"].startswith("127.0.0.1")


def test_unknown_command_error_reaches_catch(flow: Compat) -> None:
    flow.send(
        "csms", {"payload": {"msgType": 99, "command": "frobnicate"}, "customData": "unknown-1"}
    )
    got = flow.wait("catch", lambda r: r.get("customData") == "unknown-1")
    text = got["error"]["message"]
    assert "frobnicate" in text
    for name in (
        "connections",
        "commands",
        "get_auth_list",
        "set_auth_list",
        "get_auth_cs",
        "set_auth_cs",
        "ws_close",
        "ws_open",
    ):
        assert f'"{name}"' in text, text
    assert got["error"]["source"]["id"] == "csms"

    flow.send(
        "csA", {"payload": {"msgType": 99, "command": "frobnicate"}, "customData": "unknown-2"}
    )
    got = flow.wait("catch", lambda r: r.get("customData") == "unknown-2")
    for name in ("connect", "close", "retrybackoff"):
        assert f'"{name}"' in got["error"]["message"]


async def test_request_timeout_reaches_catch_with_custom_data(flow: Compat) -> None:
    ws = await connect_station(flow.url1, "PY1", "pw1")
    try:
        marker = {"marker": "timeout-1"}
        await flow.asend(
            "csms",
            {"payload": {"command": "ClearCache", "data": {}, "cbId": "PY1"}, "customData": marker},
        )
        frame = await recv_frame(ws)  # the station receives it, and stays silent
        assert frame[2] == "ClearCache"
        got = await flow.await_("catch", lambda r: r.get("customData") == marker, timeout=10)
        assert "no answer to ClearCache within 1 s" in got["error"]["message"], got
        assert got["error"]["source"]["id"] == "csms"
        # the late answer is dropped, never delivered as current
        await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
        await asyncio.sleep(0.5)
        assert not [
            r
            for r in await flow.arecords("csms1")
            if (r.get("ocpp") or {}).get("MessageId") == frame[1]
        ]
    finally:
        await ws.close()


# -- connection events ------------------------------------------------------------------


def test_connection_events_only_when_enabled(flow: Compat) -> None:
    on = flow.wait("csms1", lambda r: r.get("topic") == "CSA/Connection")
    assert on["ocpp"] == {"websocket": "ONLINE", "cbId": "CSA"}
    assert on["payload"]["remote"].startswith("127.0.0.1")
    # csms2 (property absent) had stations come and go (PYN, NEW1, CSM2): no events
    assert not [
        r
        for r in flow.records("noev1")
        if str(r.get("topic", "")).endswith("/Connection") or (r.get("ocpp") or {}).get("websocket")
    ]


async def test_ws_close_without_cbid_then_ws_open(flow: Compat) -> None:
    ws = await connect_station(flow.url2, "PYN", "pwN")
    await flow.asend("csms2", {"payload": {"msgType": 99, "command": "ws_close"}})
    with pytest.raises(websockets.exceptions.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    await ws.close()
    with pytest.raises(OSError):
        await connect_station(flow.url2, "PYN", "pwN")
    await flow.asend("csms2", {"payload": {"msgType": 99, "command": "WS_OPEN"}})
    await asyncio.to_thread(wait_port, flow.p2, 10)
    ws = await connect_station(flow.url2, "PYN", "pwN")
    await ws.close()
