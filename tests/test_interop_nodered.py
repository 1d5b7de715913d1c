"""Interoperability through a real Node-RED: our CS and CSMS nodes against OCPP
implementations we did not write, the Python ``ocpp`` package (v201) and the
npm ``ocpp-rpc`` package in strict mode.

One Node-RED runs one flow for the module:

- a CSMS node whose flow answers BootNotification and Heartbeat;
- CS node ``NRPY`` connected to a CSMS built with the ``ocpp`` package, and
  CS node ``NRRPC`` connected to an ``ocpp-rpc`` server; each CS's flow
  answers GetVariables and Reset;
- ``POST /t/send/<node>`` puts the posted JSON as ``msg.payload`` into that
  node; recorders keep what each node's outputs emit, ``GET /t/records``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import pytest
import websockets
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result

from tests.common import DATE_TIME, GET_VARIABLES, OCPP201, auth_header
from tests.flowkit import node
from tests.nodered import NodeRed, free_port, running_node_red
from tests.peers.ocpp_rpc import OcppRpcPeer, ocpp_rpc_missing_reason

pytestmark = [
    pytest.mark.nodered,
    pytest.mark.skipif(
        ocpp_rpc_missing_reason() is not None, reason=str(ocpp_rpc_missing_reason())
    ),
]

TAB = "interop"
PASSWORD = "interop-pw"
GET_VARIABLES_RESULT = {
    "getVariableResult": [
        {
            "attributeStatus": "Accepted",
            "component": {"name": "OCPPCommCtrlr"},
            "variable": {"name": "HeartbeatInterval"},
            "attributeValue": "77",
        }
    ]
}
BOOT = {"reason": "PowerUp", "chargingStation": {"model": "Interop", "vendorName": "Tests"}}

# The flow's answers, as function-node code: a received request gets msgType 3.
CSMS_ANSWERS = """
const answers = {
  BootNotification: {currentTime: new Date().toISOString(), interval: 77, status: "Accepted"},
  Heartbeat: {currentTime: new Date().toISOString()},
};
if (!msg.topic || !msg.topic.endsWith("/Request")) return null;
msg.payload = {msgType: 3, data: answers[msg.payload.command] || {}};
return msg;
"""
CS_ANSWERS = """
const answers = {
  GetVariables: GET_VARIABLES_RESULT,
  Reset: {status: "Accepted"},
};
if (!msg.topic || !msg.topic.endsWith("/Request")) return null;
msg.payload = {msgType: 3, data: answers[msg.payload.command]};
return msg;
""".replace("GET_VARIABLES_RESULT", json.dumps(GET_VARIABLES_RESULT))


_node = partial(node, tab=TAB)


def _recorder(tag: str) -> dict[str, Any]:
    code = (
        "const records = global.get('records') || [];\n"
        f"records.push({{tag: {json.dumps(tag)}, topic: msg.topic, payload: msg.payload,"
        " ocpp: msg.ocpp, customData: msg.customData});\n"
        "global.set('records', records);\nreturn null;"
    )
    return _node(f"rec.{tag}", "function", [[]], func=code, outputs=1)


def _sender(target: str) -> list[dict[str, Any]]:
    return [
        _node(
            f"in.{target}", "http in", [[f"fn.{target}"]], url=f"/t/send/{target}", method="post"
        ),
        _node(
            f"fn.{target}",
            "function",
            [[target], ["http.out"]],
            outputs=2,
            func="const body = msg.payload; msg.payload = 'sent';\n"
            "return [{payload: body.payload, customData: body.customData}, msg];",
        ),
    ]


def interop_flow(csms_port: int, py_port: int, rpc_port: int) -> list[dict[str, Any]]:
    auths = {"RPC1": PASSWORD, "PY1": PASSWORD}
    nodes: list[dict[str, Any]] = [
        {"id": TAB, "type": "tab", "label": "interop"},
        _node(
            "csms",
            "CSMS",
            [["csms.answer", "rec.csms0"], ["rec.csms1"]],
            port=str(csms_port),
            path="/ocpp",
            ocpp_logging=False,
            outputs=2,
            credentials={"basic_auths": json.dumps(auths)},
        ),
        _node("csms.answer", "function", [["csms"]], func=CSMS_ANSWERS, outputs=1),
        _node("t.py", "target-csms", url=f"ws://127.0.0.1:{py_port}/ocpp", name="python ocpp"),
        _node("t.rpc", "target-csms", url=f"ws://127.0.0.1:{rpc_port}/ocpp", name="ocpp-rpc"),
        _node("http.out", "http response"),
        _node("in.records", "http in", [["fn.records"]], url="/t/records", method="get"),
        _node(
            "fn.records",
            "function",
            [["http.out"]],
            outputs=1,
            func="msg.payload = global.get('records') || []; return msg;",
        ),
        {**_recorder("csms0")},
        {**_recorder("csms1")},
    ]
    for cs_id, cb_id, target in (("cs_py", "NRPY", "t.py"), ("cs_rpc", "NRRPC", "t.rpc")):
        nodes += [
            _node(
                cs_id,
                "CS",
                [[f"{cs_id}.answer", f"rec.{cs_id}"], []],
                cbId=cb_id,
                csms=target,
                auto_connect=True,
                ocpp_logging=False,
                outputs=2,
                ws_rt_minimum=0.5,
                ws_rt_repeat=0,
                ws_rt_rnd_range=0,
                credentials={"csms_pw": PASSWORD},
            ),
            _node(f"{cs_id}.answer", "function", [[cs_id]], func=CS_ANSWERS, outputs=1),
            _recorder(cs_id),
        ]
    for target in ("csms", "cs_py", "cs_rpc"):
        nodes += _sender(target)
    return nodes


class PythonCsms(ChargePoint):
    """A CSMS-side ChargePoint of the ``ocpp`` package for one connected station."""

    @on("BootNotification")
    def on_boot(self, reason: str, charging_station: dict[str, Any], **_: Any) -> Any:
        return call_result.BootNotification(current_time=DATE_TIME, interval=55, status="Accepted")


class Setup:
    def __init__(self, runtime: NodeRed, csms_port: int) -> None:
        self.runtime = runtime
        self.csms_port = csms_port
        self.python_station: PythonCsms | None = None

    def records(self, tag: str) -> list[dict[str, Any]]:
        status, body = self.runtime.http("GET", "/t/records")
        assert status == 200, body
        return [r for r in body if r["tag"] == tag]

    def send(self, node: str, payload: dict[str, Any], custom_data: Any = None) -> None:
        status, body = self.runtime.http(
            "POST", f"/t/send/{node}", {"payload": payload, "customData": custom_data}
        )
        assert status == 200, body

    async def wait_online(self, tag: str, timeout: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not any(
            (r.get("ocpp") or {}).get("websocket") == "ONLINE" for r in self.records(tag)
        ):
            if loop.time() > deadline:
                raise AssertionError(f"{tag} never came ONLINE; records: {self.records(tag)}")
            await asyncio.sleep(0.1)

    async def wait_record(self, tag: str, topic: str, timeout: float = 15.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = [r for r in self.records(tag) if r.get("topic") == topic]
            if found:
                return found[-1]
            if loop.time() > deadline:
                raise AssertionError(f"no {topic} on {tag}; records: {self.records(tag)}")
            await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
def node_red(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeRed]:
    with running_node_red(tmp_path_factory.mktemp("interop"), "test_interop_nodered") as runtime:
        yield runtime


@pytest.fixture
async def setup(node_red: NodeRed) -> AsyncIterator[Setup]:
    """Peers for our CS nodes (python ocpp CSMS, ocpp-rpc server), then the flow."""
    py_port = free_port()
    connected: asyncio.Queue[PythonCsms] = asyncio.Queue()
    python_tasks: list[asyncio.Task[None]] = []

    async def on_station(ws: Any) -> None:
        station = PythonCsms(ws.request.path.rsplit("/", 1)[-1], ws)
        await connected.put(station)
        await station.start()

    async def serve_station(ws: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        python_tasks.append(task)
        try:
            await on_station(ws)
        except websockets.ConnectionClosed:
            pass

    python_server = await websockets.serve(
        serve_station,
        "127.0.0.1",
        py_port,
        subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
    )
    rpc_server = OcppRpcPeer(
        "server",
        {"BootNotification": {"currentTime": DATE_TIME, "interval": 66, "status": "Accepted"}},
        port=0,
        path="/ocpp",
        identity="NRRPC",
        password=PASSWORD,
    )
    await rpc_server.start()
    csms_port = free_port()
    node_red.deploy(interop_flow(csms_port, py_port, rpc_server.port or 0))
    node_red.wait_for_endpoint("GET", "/t/records")
    result = Setup(node_red, csms_port)
    result.python_station = await asyncio.wait_for(connected.get(), 20)
    result.rpc_server = rpc_server  # type: ignore[attr-defined]
    await rpc_server.wait_event("connected", timeout=20)
    # The servers see the connection before our CS nodes do: wait for ONLINE.
    for tag in ("cs_py", "cs_rpc"):
        await result.wait_online(tag)
    try:
        yield result
    finally:
        await rpc_server.stop()
        python_server.close()
        for task in python_tasks:
            task.cancel()


async def test_our_cs_node_against_a_csms_of_the_ocpp_package(setup: Setup) -> None:
    setup.send("cs_py", {"command": "BootNotification", "data": BOOT}, custom_data={"n": 1})
    answer = await setup.wait_record("cs_py", "NRPY/Response")
    assert answer["payload"]["data"]["interval"] == 55
    assert answer["customData"] == {"n": 1}
    assert setup.python_station is not None
    result = await setup.python_station.call(
        call.GetVariables(get_variable_data=GET_VARIABLES["getVariableData"])
    )
    assert result.get_variable_result[0]["attribute_value"] == "77"


async def test_our_cs_node_against_an_ocpp_rpc_server_in_strict_mode(setup: Setup) -> None:
    server: OcppRpcPeer = setup.rpc_server  # type: ignore[attr-defined]
    setup.send("cs_rpc", {"command": "BootNotification", "data": BOOT})
    answer = await setup.wait_record("cs_rpc", "NRRPC/Response")
    assert answer["payload"]["data"]["interval"] == 66
    assert server.received("BootNotification")[0]["params"] == BOOT
    reset = await server.call("Reset", {"type": "Immediate"})
    assert reset == {**reset, "event": "result", "result": {"status": "Accepted"}}


async def test_ocpp_rpc_station_in_strict_mode_against_our_csms_node(setup: Setup) -> None:
    station = OcppRpcPeer(
        "client",
        {"GetVariables": GET_VARIABLES_RESULT},
        endpoint=f"ws://127.0.0.1:{setup.csms_port}/ocpp",
        identity="RPC1",
        password=PASSWORD,
    )
    await station.start()
    try:
        await station.wait_event("connected", timeout=20)
        boot = await station.call("BootNotification", BOOT)
        assert boot["event"] == "result" and boot["result"]["interval"] == 77
        setup.send("csms", {"command": "GetVariables", "cbId": "RPC1", "data": GET_VARIABLES})
        answer = await setup.wait_record("csms0", "RPC1/Response")
        assert answer["payload"]["data"] == GET_VARIABLES_RESULT
    finally:
        await station.stop()


async def test_ocpp_package_station_against_our_csms_node(setup: Setup) -> None:
    async with websockets.connect(
        f"ws://127.0.0.1:{setup.csms_port}/ocpp/PY1",
        subprotocols=OCPP201,
        additional_headers=auth_header("PY1", PASSWORD),
    ) as ws:
        station = ChargePoint("PY1", ws, response_timeout=10)
        reader = asyncio.create_task(station.start())
        try:
            result = await station.call(call.Heartbeat())
            assert result.current_time
        finally:
            reader.cancel()
