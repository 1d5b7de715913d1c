"""End to end: flows/demo.json in a real Node-RED, a Python station against its CSMS node.

The demo flow is deployed as `make demo` deploys it, with three changes made
here before deploying: the CSMS port is a free one (and the target-csms URL
follows it), station E2E01 is added to the CSMS authentication list, and a few
test-only nodes are appended that record what reaches some outputs (in global
context) and expose it over HTTP:

- GET  /e2e/records: the recorded messages, as a JSON list of
  `{tag, topic, payload, ocpp, msgFrom, cbId}`;
- POST /e2e/getvars: fires the demo's own `link call` (as its inject does),
  so the test does not wait for the 30 s interval.

Tags: `linkcall` (the link call's output), `csms0` / `csms2` (CSMS outputs 1
and 3), `cs0` (CS output 1).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from ocpp.v201 import ChargePoint, call

from tests.common import auth_header
from tests.nodered import REPO_ROOT, NodeRed, free_port, running_node_red, wait_until

pytestmark = pytest.mark.nodered

DEMO_FLOW = REPO_ROOT / "flows" / "demo.json"
E2E_STATION = "E2E01"
E2E_PASSWORD = "e2e-password"


def _only(nodes: list[dict[str, Any]], node_type: str) -> dict[str, Any]:
    found = [n for n in nodes if n["type"] == node_type]
    assert len(found) == 1, f"demo flow should have one {node_type} node, has {len(found)}"
    return found[0]


def _recorder(node_id: str, tab: str, tag: str) -> dict[str, Any]:
    code = (
        "const records = global.get('e2e_records') || [];\n"
        f"records.push({{tag: {json.dumps(tag)}, topic: msg.topic, payload: msg.payload,\n"
        "    ocpp: msg.ocpp, msgFrom: msg.msgFrom, cbId: msg.cbId});\n"
        "global.set('e2e_records', records);\n"
        "return null;\n"
    )
    return {
        "id": node_id,
        "type": "function",
        "z": tab,
        "name": f"e2e record {tag}",
        "func": code,
        "outputs": 1,
        "x": 1100,
        "y": 1100,
        "wires": [[]],
    }


def demo_flow_for_test(csms_port: int) -> list[dict[str, Any]]:
    """flows/demo.json with a free port, station E2E01 allowed, and the recorders."""
    nodes: list[dict[str, Any]] = json.loads(DEMO_FLOW.read_text())
    tab = _only(nodes, "tab")["id"]
    csms = _only(nodes, "CSMS")
    cs = _only(nodes, "CS")
    target = _only(nodes, "target-csms")
    link_call = _only(nodes, "link call")

    csms["port"] = str(csms_port)
    target["url"] = f"ws://127.0.0.1:{csms_port}{csms['path']}"
    auths = json.loads(csms["credentials"]["basic_auths"])
    auths[E2E_STATION] = E2E_PASSWORD
    csms["credentials"]["basic_auths"] = json.dumps(auths)

    extra = [
        _recorder("e2e.rec.linkcall", tab, "linkcall"),
        _recorder("e2e.rec.csms0", tab, "csms0"),
        _recorder("e2e.rec.csms2", tab, "csms2"),
        _recorder("e2e.rec.cs0", tab, "cs0"),
        {
            "id": "e2e.records.in",
            "type": "http in",
            "z": tab,
            "url": "/e2e/records",
            "method": "get",
            "upload": False,
            "x": 1100,
            "y": 1140,
            "wires": [["e2e.records.fn"]],
        },
        {
            "id": "e2e.records.fn",
            "type": "function",
            "z": tab,
            "func": "msg.payload = global.get('e2e_records') || []; return msg;",
            "outputs": 1,
            "x": 1100,
            "y": 1180,
            "wires": [["e2e.http.out"]],
        },
        {
            "id": "e2e.getvars.in",
            "type": "http in",
            "z": tab,
            "url": "/e2e/getvars",
            "method": "post",
            "upload": False,
            "x": 1100,
            "y": 1220,
            "wires": [["e2e.getvars.fn"]],
        },
        {
            "id": "e2e.getvars.fn",
            "type": "function",
            "z": tab,
            # a fresh message for the link call, the request itself for the answer
            "func": "msg.payload = 'fired'; return [{payload: {}}, msg];",
            "outputs": 2,
            "x": 1100,
            "y": 1260,
            "wires": [[link_call["id"]], ["e2e.http.out"]],
        },
        {"id": "e2e.http.out", "type": "http response", "z": tab, "x": 1100, "y": 1300},
    ]
    extra[-1]["wires"] = []
    link_call["wires"][0].append("e2e.rec.linkcall")
    csms["wires"][0].append("e2e.rec.csms0")
    csms["wires"][2].append("e2e.rec.csms2")
    cs["wires"][0].append("e2e.rec.cs0")
    return nodes + extra


class Demo:
    def __init__(self, runtime: NodeRed, csms_port: int) -> None:
        self.runtime = runtime
        self.csms_port = csms_port
        self.station_url = f"ws://127.0.0.1:{csms_port}/ocpp/{E2E_STATION}"

    def records(self, tag: str | None = None) -> list[dict[str, Any]]:
        status, body = self.runtime.http("GET", "/e2e/records")
        assert status == 200, body
        assert isinstance(body, list), body
        return [r for r in body if tag is None or r["tag"] == tag]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    user_dir: Path = tmp_path_factory.mktemp("demo-node-red")
    with running_node_red(user_dir, "test_e2e_demo") as runtime:
        csms_port = free_port()
        runtime.deploy(demo_flow_for_test(csms_port))
        runtime.wait_for_endpoint("GET", "/e2e/records")
        yield Demo(runtime, csms_port)


async def _connect(url: str, user: str, password: str) -> Any:
    return await websockets.connect(
        url,
        subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
        additional_headers=auth_header(user, password),
        open_timeout=10,
    )


async def _wait_port_open(port: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() >= deadline:
                raise TimeoutError(f"CSMS port {port} not listening after {timeout}s") from None
            await asyncio.sleep(0.2)
        else:
            writer.close()
            await writer.wait_closed()
            return


async def test_python_station_boots_against_the_demo_csms(demo: Demo) -> None:
    await _wait_port_open(demo.csms_port, timeout=20)
    ws = await _connect(demo.station_url, E2E_STATION, E2E_PASSWORD)
    try:
        assert ws.subprotocol == "ocpp2.0.1"
        station = ChargePoint(E2E_STATION, ws, response_timeout=15)
        reader = asyncio.create_task(station.start())
        try:
            response = await asyncio.wait_for(
                station.call(
                    call.BootNotification(
                        charging_station={"model": "E2EModel", "vendor_name": "e2e"},
                        reason="PowerUp",
                    )
                ),
                timeout=20,
            )
            assert response.status == "Accepted"
            assert response.interval == 10
            assert response.current_time

            heartbeat = await asyncio.wait_for(station.call(call.Heartbeat()), timeout=20)
            assert heartbeat.current_time
        finally:
            reader.cancel()
    finally:
        await ws.close()

    seen = demo.records("csms0")
    commands = [
        r["payload"].get("command") for r in seen if r.get("topic") == f"{E2E_STATION}/Request"
    ]
    assert "BootNotification" in commands and "Heartbeat" in commands, seen
    boot = next(
        r
        for r in seen
        if r["payload"].get("command") == "BootNotification"
        and r.get("topic") == f"{E2E_STATION}/Request"
    )
    assert boot["ocpp"]["cbId"] == E2E_STATION
    assert boot["ocpp"]["ocppVersion"] == "2.0.1"
    assert boot["payload"]["data"]["chargingStation"]["model"] == "E2EModel"


async def test_wrong_password_gets_401(demo: Demo) -> None:
    await _wait_port_open(demo.csms_port, timeout=20)
    with pytest.raises(Exception) as caught:
        ws = await _connect(demo.station_url, E2E_STATION, "not-the-password")
        await ws.close()
    err = caught.value
    # websockets >= 14: InvalidStatus(.response.status_code); 13: InvalidStatusCode(.status_code)
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None) or getattr(err, "status_code", None)
    assert status == 401, repr(err)


def test_demo_station_answers_getvariables_through_link_call(demo: Demo) -> None:
    """The CSMS node asks the demo's own CS node, and the answer returns to the link call."""

    def answered() -> list[dict[str, Any]] | None:
        found = [r for r in demo.records("linkcall") if r.get("topic") == "CS001/Response"]
        if found:
            return found
        status, _ = demo.runtime.http("POST", "/e2e/getvars")
        assert status == 200
        return None

    found = wait_until(
        answered, timeout=60, interval=3, what="a GetVariables answer at the link call"
    )
    result = found[0]["payload"]["data"]["getVariableResult"][0]
    assert result["attributeStatus"] == "Accepted"
    assert result["attributeValue"] == "10"
    assert result["variable"]["name"] == "HeartbeatInterval"


def test_demo_station_boots_when_online(demo: Demo) -> None:
    """CS001 sends BootNotification on its ONLINE event and gets the flow's answer."""

    def boot_answer() -> dict[str, Any] | None:
        for r in demo.records("cs0"):
            payload = r.get("payload") or {}
            if r.get("topic") == "CS001/Response" and payload.get("command") == "BootNotification":
                return r
        return None

    found = wait_until(boot_answer, timeout=30, what="CS001's BootNotification answer")
    assert found["payload"]["data"]["status"] == "Accepted"
    assert found["payload"]["data"]["interval"] == 10


def test_csms_logs_raw_frames(demo: Demo) -> None:
    def frames() -> list[dict[str, Any]] | None:
        return [r for r in demo.records("csms2") if isinstance(r.get("payload"), list)] or None

    logged = wait_until(frames, timeout=30, what="raw OCPP frames on CSMS output 3")
    first = logged[0]
    assert first["payload"][0] in (2, 3, 4), first
    assert first["cbId"], first
    assert first["msgFrom"], first
