"""Interoperability with the Python ``ocpp`` package as the CSMS.

Our CS node (the real daemon through :class:`ShimDouble`) connects to a CSMS
built the way that package's documentation shows: ``ocpp.v201.ChargePoint``
on a ``websockets`` server speaking ``ocpp2.0.1``, with ``@on`` handlers. The
package validates what it receives and sends against the same schemas.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result
from websockets.asyncio.server import ServerConnection, basic_auth, serve

from tests.common import DATE_TIME, websocket_events
from tests.shim_double import ShimDouble

CB_ID = "CS 1"  # a space: the CS node percent-encodes it in the URL
PASSWORD = "s3cret"

BOOT_REQUEST = {
    "reason": "PowerUp",
    "chargingStation": {"model": "M1", "vendorName": "V1", "firmwareVersion": "1.0"},
}
GET_VARIABLES_RESULT = [
    {
        "attributeStatus": "Accepted",
        "attributeType": "Actual",
        "attributeValue": "300",
        "component": {"name": "OCPPCommCtrlr"},
        "variable": {"name": "HeartbeatInterval"},
    }
]


class Csms(ChargePoint):  # type: ignore[misc]
    """The package's CSMS side of one station: answers BootNotification."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.boots: list[dict[str, Any]] = []
        self.booted = asyncio.Event()

    @on("BootNotification")  # type: ignore[misc]
    def on_boot_notification(self, **request: Any) -> call_result.BootNotification:
        self.boots.append(request)
        self.booted.set()
        return call_result.BootNotification(current_time=DATE_TIME, interval=300, status="Accepted")


class CsmsServer:
    """A websockets server; each connection on /ocpp/<id> becomes a :class:`Csms`."""

    def __init__(self) -> None:
        self.stations: dict[str, Csms] = {}
        self.paths: list[str] = []
        self.connected = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.paths.append(ws.request.path)
        station = Csms(ws.username, ws, response_timeout=5)
        self.stations[station.id] = station
        self.connected.set()
        await station.start()


@pytest.fixture
async def csms() -> AsyncIterator[tuple[CsmsServer, int]]:
    server = CsmsServer()
    async with serve(
        server.handler,
        "127.0.0.1",
        0,
        subprotocols=["ocpp2.0.1"],
        process_request=basic_auth(credentials=(CB_ID, PASSWORD)),
    ) as ws_server:
        port = next(iter(ws_server.sockets)).getsockname()[1]
        yield server, port


async def test_cs_node_boots_at_ocpp_package_csms_and_answers_get_variables(
    fresh_shim: ShimDouble, csms: tuple[CsmsServer, int]
) -> None:
    server, port = csms
    fresh_shim.create(
        "cs",
        "CS",
        {"cbId": CB_ID, "auto_connect": True},
        credentials={"csms_pw": PASSWORD},
        target={"url": f"ws://127.0.0.1:{port}/ocpp", "name": "ocpp-py"},
    )
    await asyncio.wait_for(server.connected.wait(), 10)
    assert server.paths == ["/ocpp/CS%201"]
    station = server.stations[CB_ID]
    await fresh_shim.wait_for(lambda: "ONLINE" in websocket_events(fresh_shim, "cs"))

    # BootNotification: our CS node -> the package's CSMS -> answer out of port 0
    seq = fresh_shim.input(
        "cs",
        {
            "payload": {"command": "BootNotification", "data": BOOT_REQUEST, "MessageId": "b1"},
            "customData": "boot",
        },
    )
    assert (await fresh_shim.done(seq)).get("error") is None
    assert station.boots == [
        {
            "reason": "PowerUp",
            "charging_station": {"model": "M1", "vendor_name": "V1", "firmware_version": "1.0"},
        }
    ]
    (answer,) = [m for m in fresh_shim.sent("cs", 0) if m.get("topic") == f"{CB_ID}/Response"]
    assert answer["ocpp"]["MessageId"] == "b1" and answer["customData"] == "boot"
    assert answer["payload"] == {
        "command": "BootNotification",
        "data": {"currentTime": "2026-01-01T00:00:00Z", "interval": 300, "status": "Accepted"},
    }

    # GetVariables: the package's CSMS -> our CS node -> the flow answers
    get = asyncio.create_task(
        station.call(
            call.GetVariables(
                get_variable_data=[
                    {
                        "component": {"name": "OCPPCommCtrlr"},
                        "variable": {"name": "HeartbeatInterval"},
                    }
                ]
            )
        )
    )
    (request,) = await fresh_shim.wait_for(
        lambda: [m for m in fresh_shim.sent("cs", 0) if m.get("topic") == f"{CB_ID}/Request"]
    )
    assert request["ocpp"]["command"] == "GetVariables" and request["ocpp"]["cbId"] == CB_ID
    assert request["payload"]["data"] == {
        "getVariableData": [
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
        ]
    }
    reply = {
        **request,
        "payload": {
            **request["payload"],
            "msgType": 3,
            "data": {"getVariableResult": GET_VARIABLES_RESULT},
        },
    }
    seq = fresh_shim.input("cs", reply)
    assert (await fresh_shim.done(seq)).get("error") is None
    result = await asyncio.wait_for(get, 5)
    assert result.get_variable_result == [
        {
            "attribute_status": "Accepted",
            "attribute_type": "Actual",
            "attribute_value": "300",
            "component": {"name": "OCPPCommCtrlr"},
            "variable": {"name": "HeartbeatInterval"},
        }
    ]
    await fresh_shim.close_node("cs")
