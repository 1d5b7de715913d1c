"""Flows in the shape of `@anl-ioc/node-red-contrib-ocpp2` exports deploy and work.

The flows below are written as that package's editor saved them (compare its
examples/*.json): CS nodes with `csms_url`, `csms_user` and `csms_pw` as plain
properties and no `csms`; a CS with `csms` + the `csms_pw` credential and the
back-off fields as strings; a CSMS with `ws_user`, `ws_pw`, `log`, `logpath`.
None has a property this package added (message_timeout, queue_size,
ping_interval, max_frame_size, connection_events, duplicate_cbid).

Each CS boots the way such flows do it: on its ONLINE message a function sends
BootNotification into the CS. LCS1 and LCS2 boot against the legacy CSMS node;
LCS3 against a Python `ocpp` CSMS running in a thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import websockets
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call_result

from tests.flowkit import Flow, http_api, recorder, wait_port
from tests.nodered import free_port, running_node_red

pytestmark = pytest.mark.nodered

TAB = "legacy.tab"
NEW_PROPERTIES = (
    "message_timeout",
    "queue_size",
    "ping_interval",
    "max_frame_size",
    "connection_events",
    "duplicate_cbid",
)

# what flows written for the old package do on ONLINE
BOOT_ON_ONLINE_JS = """
if (msg.ocpp && msg.ocpp.websocket == "ONLINE") {
    return {payload: {command: "BootNotification", data: {
        reason: "PowerUp", chargingStation: {model: "Legacy", vendorName: "ANL"}}}};
}
return null;
"""

CSMS_ANSWER_JS = """
if (msg.payload.command == "BootNotification") {
    msg.payload = {msgType: 3, data: {currentTime: new Date().toISOString(),
                                      interval: 60, status: "Accepted"}};
    return msg;
}
return null;
"""


def legacy_flow(port: int, py_port: int) -> list[dict[str, Any]]:
    rec = "legacy.rec."
    nodes: list[dict[str, Any]] = [
        {"id": TAB, "type": "tab", "label": "Legacy", "disabled": False, "info": ""},
        {
            "id": "e29e5f8c9f2b32c9",
            "type": "CSMS",
            "z": TAB,
            "name": "CMSM1",
            "port": str(port),
            "path": "/ocpp2",
            "ws_user": "test",
            "ws_pw": "test",
            "log": False,
            "logpath": "",
            "credentials": {"basic_auths": json.dumps({"LCS1": "test", "LCS2": "secret2"})},
            "x": 200,
            "y": 100,
            "wires": [[rec + "csms", "legacy.answer"], []],
        },
        {
            "id": "legacy.answer",
            "type": "function",
            "z": TAB,
            "name": "answer boot",
            "func": CSMS_ANSWER_JS,
            "outputs": 1,
            "noerr": 0,
            "x": 400,
            "y": 100,
            "wires": [["e29e5f8c9f2b32c9"]],
        },
        # CS of the oldest exports: URL (with a trailing slash), user and password inline
        {
            "id": "c5598359111c37d4",
            "type": "CS",
            "z": TAB,
            "csms_url": f"ws://127.0.0.1:{port}/ocpp2/",
            "csms_user": "test",
            "csms_pw": "test",
            "cbId": "LCS1",
            "name": "LCS1",
            "auto_connect": True,
            "x": 200,
            "y": 200,
            "wires": [[rec + "cs1", "boot.1"], []],
        },
        # CS of later exports: a target-csms, the password a credential, back-off strings
        {
            "id": "0b8e3c3d6fb6693f",
            "type": "target-csms",
            "name": "Legacy CSMS",
            "url": f"ws://127.0.0.1:{port}/ocpp2",
        },
        {
            "id": "9dda2db3c8c977b0",
            "type": "CS",
            "z": TAB,
            "name": "",
            "csms": "0b8e3c3d6fb6693f",
            "cbId": "LCS2",
            "ws_rt_minimum": "1",
            "ws_rt_repeat": "3",
            "ws_rt_rnd_range": "0",
            "auto_connect": True,
            "ocpp_logging": True,
            "outputs": 3,
            "credentials": {"csms_pw": "secret2"},
            "x": 200,
            "y": 300,
            "wires": [[rec + "cs2", "boot.2"], [], [rec + "cs2log"]],
        },
        # against a Python ocpp CSMS
        {
            "id": "05b878b39837563c",
            "type": "CS",
            "z": TAB,
            "csms_url": f"ws://127.0.0.1:{py_port}/",
            "csms_user": "test",
            "csms_pw": "pypw",
            "cbId": "LCS3",
            "name": "LCS3",
            "auto_connect": True,
            "x": 200,
            "y": 400,
            "wires": [[rec + "cs3", "boot.3"], []],
        },
    ]
    for n, cs in (("1", "c5598359111c37d4"), ("2", "9dda2db3c8c977b0"), ("3", "05b878b39837563c")):
        nodes.append(
            {
                "id": f"boot.{n}",
                "type": "function",
                "z": TAB,
                "name": "boot on ONLINE",
                "func": BOOT_ON_ONLINE_JS,
                "outputs": 1,
                "x": 400,
                "y": 100 + 100 * int(n),
                "wires": [[cs]],
            }
        )
    nodes += [recorder(rec + t, TAB, t) for t in ("csms", "cs1", "cs2", "cs2log", "cs3")]
    nodes += http_api(TAB, {})
    return nodes


class PythonCsms:
    """An `ocpp` CSMS (ocpp.v201.ChargePoint per connection) in a thread of its own."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.boots: list[tuple[str, dict[str, Any], str | None]] = []
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        boots = self.boots

        class Handler(ChargePoint):  # type: ignore[misc]
            @on("BootNotification")  # type: ignore[misc]
            def on_boot(self, charging_station: dict[str, Any], reason: str, **_: Any) -> Any:
                boots.append((self.id, charging_station, self._auth))
                return call_result.BootNotification(
                    current_time=datetime.now(timezone.utc).isoformat(),
                    interval=60,
                    status="Accepted",
                )

        async def handler(ws: Any) -> None:
            cb_id = ws.request.path.strip("/")
            cp = Handler(cb_id, ws)
            cp._auth = ws.request.headers.get("Authorization")
            try:
                await cp.start()
            except websockets.exceptions.ConnectionClosed:
                pass

        self.stop_event = asyncio.Event()
        async with websockets.serve(
            handler,
            "127.0.0.1",
            self.port,
            subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
        ):
            self.started.set()
            await self.stop_event.wait()

    def __enter__(self) -> PythonCsms:
        self.thread.start()
        assert self.started.wait(10), "python CSMS did not start"
        return self

    def __exit__(self, *_: object) -> None:
        assert self.stop_event is not None
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)


class Legacy(Flow):
    py: PythonCsms


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Legacy]:
    user_dir: Path = tmp_path_factory.mktemp("legacy-node-red")
    port, py_port = free_port(), free_port()
    with PythonCsms(py_port) as py, running_node_red(user_dir, "test_legacy_exports") as runtime:
        nodes = legacy_flow(port, py_port)
        for node in nodes:
            assert not set(NEW_PROPERTIES) & set(node), node
        runtime.deploy(nodes)
        runtime.wait_for_endpoint("GET", "/t/records")
        wait_port(port)
        flow = Legacy(runtime)
        flow.py = py
        yield flow


def _boot_answer(r: dict[str, Any]) -> bool:
    return (
        r.get("topic", "").endswith("/Response") and r["payload"]["command"] == "BootNotification"
    )


def test_legacy_cs_with_inline_url_and_password_boots(legacy: Legacy) -> None:
    answer = legacy.wait("cs1", _boot_answer)
    assert answer["topic"] == "LCS1/Response"
    assert answer["payload"]["data"]["status"] == "Accepted"
    online = [r for r in legacy.records("cs1") if (r.get("ocpp") or {}).get("websocket")]
    assert online[0]["ocpp"]["websocket"] == "ONLINE"
    seen = legacy.wait("csms", lambda r: r.get("topic") == "LCS1/Request")
    assert seen["payload"]["data"]["chargingStation"]["model"] == "Legacy"


def test_legacy_cs_with_target_and_credential_boots(legacy: Legacy) -> None:
    answer = legacy.wait("cs2", _boot_answer)
    assert answer["topic"] == "LCS2/Response"
    assert answer["payload"]["data"]["interval"] == 60
    # its log port (ocpp_logging + outputs 3 as exported) carries both frames
    logged = legacy.wait("cs2log", lambda r: r["payload"][0] == 3)
    assert logged["msgFrom"] == "CSMS" and logged["cbId"] == "LCS2"


def test_legacy_cs_boots_against_python_ocpp_csms(legacy: Legacy) -> None:
    answer = legacy.wait("cs3", _boot_answer)
    assert answer["topic"] == "LCS3/Response"
    assert answer["payload"]["data"]["status"] == "Accepted"
    cb_id, station, auth = legacy.py.boots[0]
    assert cb_id == "LCS3" and station == {"model": "Legacy", "vendor_name": "ANL"}
    # Basic auth as the spec has it: user = cbId (the legacy csms_user is not used)
    import base64

    assert auth == "Basic " + base64.b64encode(b"LCS3:pypw").decode()


def test_legacy_csms_emits_no_connection_events(legacy: Legacy) -> None:
    legacy.wait("cs1", _boot_answer)
    legacy.wait("cs2", _boot_answer)
    assert not [
        r
        for r in legacy.records("csms")
        if str(r.get("topic", "")).endswith("/Connection") or (r.get("ocpp") or {}).get("websocket")
    ]


def test_deploy_logged_no_errors(legacy: Legacy) -> None:
    legacy.wait("cs1", _boot_answer)
    legacy.wait("cs3", _boot_answer)
    log = legacy.runtime.log()
    assert "Started flows" in log
    errors = [line for line in log.splitlines() if "[error]" in line or "Traceback" in line]
    assert not errors, "\n".join(errors)
