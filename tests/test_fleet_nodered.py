"""Fleet mode (docs/fleet.md) through a REAL Node-RED, a real Mosquitto and a real gateway.

One module-wide setup: Mosquitto (MQTT 5, password file), one ``ocpp-nodes
gateway`` process, and one Node-RED whose CSMS node ``csms`` is in fleet mode
(its *CS Auth* list holds a plain password and a hash). Stations are the
Python ``ocpp`` package's ``ChargePoint`` (v201) and raw websockets; a plain
aiomqtt client reads what is on the broker.

Checked: a station behind the gateway is served by the flow as in direct
mode (its requests, the flow's answers, the flow's requests and the
station's answers, the connection events, the status); a request to a
station connected nowhere ends in done(err) at once; logins are checked by
the gateway against hashes (401, 404), and no password is on the broker;
a malformed frame is answered by the gateway; ``ws_close`` of a station
closes its websocket at the gateway; the presence record says where it is.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio
import websockets
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result

from ocpp_nodes.transport.passwords import make_hash
from tests.common import DATE_TIME
from tests.fleetkit import GatewayProcess, Mosquitto, running_mosquitto
from tests.flowkit import (
    Flow,
    Record,
    answer,
    caught,
    connect_station,
    http_api,
    marker,
    node,
    online,
    recorder,
    request,
    status_is,
    topic_is,
)
from tests.nodered import NodeRed, running_node_red

pytestmark = [pytest.mark.nodered, pytest.mark.asyncio(loop_scope="module")]

TAB = "fleet"
GROUP = "fleet"
_node = partial(node, tab=TAB)

PLAIN = {"FL1": "fleet-password-1", "FL2": "fleet-password-2", "FL3": "fleet-password-3"}
HASHED = {"FLH": "fleet-password-hashed"}
WRONG_PASSWORD = "not-the-broker-password-7"
BOOT = {"reason": "PowerUp", "chargingStation": {"model": "Fleet", "vendorName": "Tests"}}


class Station(ChargePoint):  # type: ignore[misc]
    """The ``ocpp`` package's station; answers GetVariables."""

    @on("GetVariables")  # type: ignore[untyped-decorator]
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        return call_result.GetVariables(
            get_variable_result=[
                {
                    "attribute_status": "Accepted",
                    "attribute_value": "fleet",
                    "component": item["component"],
                    "variable": item["variable"],
                }
                for item in get_variable_data
            ]
        )


def fleet_flow(broker: Mosquitto, **csms: Any) -> list[dict[str, Any]]:
    auth = {**PLAIN, **{cb: make_hash(pw, "pbkdf2-sha256", cost=1000) for cb, pw in HASHED.items()}}
    return [
        {"id": TAB, "type": "tab", "label": "fleet"},
        _node(
            "csms",
            "CSMS",
            [["rec.csms"], [], []],
            **{
                "mode": "fleet",
                "fleet_broker": broker.url,
                "fleet_group": GROUP,
                "port": "",
                "path": "",
                "ocpp_versions": ["2.0.1", "1.6", "2.1"],
                "connection_events": True,
                "message_timeout": 5,
                **csms,
            },
            credentials={
                "basic_auths": json.dumps(auth),
                "fleet_username": broker.username,
                "fleet_password": broker.password,
            },
        ),
        recorder("rec.csms", TAB, "csms"),
        # the same broker, a wrong password: it must say so, and never the password
        _node(
            "csms_badlogin",
            "CSMS",
            [[], [], []],
            mode="fleet",
            fleet_broker=broker.url,
            fleet_group="badlogin",
            credentials={"fleet_username": broker.username, "fleet_password": WRONG_PASSWORD},
        ),
        _node("catch", "catch", [["rec.catch"]], scope=None, uncaught=False),
        recorder("rec.catch", TAB, "catch"),
        _node("status", "status", [["rec.status"]], scope=None),
        recorder("rec.status", TAB, "status"),
        *http_api(TAB, {"csms": "csms"}),
    ]


class Fleet:
    def __init__(self, broker: Mosquitto, gateway: GatewayProcess, flow: Flow) -> None:
        self.broker = broker
        self.gateway = gateway
        self.flow = flow


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with running_mosquitto(tmp_path_factory.mktemp("fleet-broker"), "fleet_nodered") as started:
        yield started


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeRed]:
    with running_node_red(tmp_path_factory.mktemp("fleet-nr"), "fleet_nodered") as started:
        yield started


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fleet(
    broker: Mosquitto, runtime: NodeRed, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Fleet]:
    await asyncio.to_thread(runtime.deploy, fleet_flow(broker))
    await asyncio.to_thread(runtime.wait_for_endpoint, "GET", "/t/records")
    flow = Flow(runtime)
    # the node publishes its auth list: the gateway starts once it is there
    await retained(broker, f"ocpp/{GROUP}/auth/FLH")
    gateway = GatewayProcess(Path(tmp_path_factory.mktemp("fleet-gw")), broker, "gw1", GROUP)
    await asyncio.to_thread(gateway.start)
    try:
        yield Fleet(broker, gateway, flow)
    finally:
        gateway.stop()
        gateway.save_log("fleet_nodered")


async def retained(broker: Mosquitto, topic: str, timeout: float = 10.0) -> bytes:
    """The retained message on ``topic`` (waits until there is one)."""
    async with aiomqtt.Client(**broker.client_args(), protocol=aiomqtt.ProtocolVersion.V5) as mqtt:
        await mqtt.subscribe(topic, qos=1)
        async with asyncio.timeout(timeout):
            async for message in mqtt.messages:
                payload = message.payload
                if isinstance(payload, bytes | bytearray) and payload:
                    return bytes(payload)
    raise AssertionError("unreachable")


async def all_retained(broker: Mosquitto, quiet: float = 0.5) -> dict[str, bytes]:
    """Every retained message of the fleet's group."""
    found: dict[str, bytes] = {}
    async with aiomqtt.Client(**broker.client_args(), protocol=aiomqtt.ProtocolVersion.V5) as mqtt:
        await mqtt.subscribe(f"ocpp/{GROUP}/#", qos=1)
        with suppress(TimeoutError):
            async with asyncio.timeout(quiet):
                async for message in mqtt.messages:
                    if message.retain and isinstance(message.payload, bytes | bytearray):
                        found[str(message.topic)] = bytes(message.payload)
    return found


@asynccontextmanager
async def package_station(url: str, cb_id: str, password: str) -> AsyncIterator[Station]:
    ws = await connect_station(url, cb_id, password)
    station = Station(cb_id, ws, response_timeout=10)
    task = asyncio.ensure_future(station.start())
    try:
        yield station
    finally:
        task.cancel()
        await ws.close()
        with suppress(asyncio.CancelledError, websockets.ConnectionClosed):
            await task


async def flow_answers(flow: Flow, cb_id: str, action: str, data: dict[str, Any]) -> Record:
    """Wait for the flow's record of ``cb_id``'s ``action`` request, and answer it."""
    received = await flow.await_("csms", topic_is(f"{cb_id}/Request", action))
    await answer(flow, "csms", received, data)
    return received


async def test_a_station_behind_the_gateway_is_served_by_the_flow(fleet: Fleet) -> None:
    flow = fleet.flow
    async with package_station(fleet.gateway.url, "FL1", PLAIN["FL1"]) as station:
        boot = asyncio.ensure_future(
            station.call(
                call.BootNotification(
                    reason="PowerUp", charging_station={"model": "Fleet", "vendor_name": "Tests"}
                )
            )
        )
        received = await flow_answers(
            flow,
            "FL1",
            "BootNotification",
            {"currentTime": DATE_TIME, "interval": 60, "status": "Accepted"},
        )
        assert received["payload"]["data"] == BOOT
        assert received["ocpp"]["ocppVersion"] == "2.0.1"
        result = await boot
        assert result.status == "Accepted" and result.interval == 60
        await flow.await_("csms", lambda r: online(r) and r["ocpp"]["cbId"] == "FL1")
        await flow.await_("status", status_is("csms", "1 connected"))

        # the flow's request reaches the station; its answer reaches the flow
        tag = marker("getvars")
        data = {"getVariableData": [{"component": {"name": "C"}, "variable": {"name": "V"}}]}
        await request(flow, "csms", "GetVariables", data, tag, cbId="FL1")
        response = await flow.await_("csms", lambda r: r.get("customData") == tag)
        assert response["payload"]["data"]["getVariableResult"][0]["attributeValue"] == "fleet"

        # where it is, for anyone reading the broker
        presence = json.loads(await retained(fleet.broker, f"ocpp/{GROUP}/presence/FL1"))
        assert presence["online"] is True and presence["gateway"] == "gw1", presence
        assert presence["version"] == "ocpp2.0.1", presence


async def test_a_request_to_a_station_connected_nowhere_fails_at_once(fleet: Fleet) -> None:
    tag = marker("absent")
    started = time.monotonic()
    await request(fleet.flow, "csms", "Reset", {"type": "Immediate"}, tag, cbId="NOWHERE")
    error = await caught(fleet.flow, "csms", tag)
    assert "not connected" in error, error
    assert time.monotonic() - started < 3, "done(err) came after a timeout, not at once"


async def test_logins_are_checked_against_hashes_and_no_password_is_on_the_broker(
    fleet: Fleet,
) -> None:
    url = fleet.gateway.url
    for cb_id, password, status in (
        ("FL2", "wrong-password", 401),
        ("UNKNOWN", "whatever-pass", 404),
    ):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await connect_station(url, cb_id, password)
        assert refused.value.response.status_code == status, (cb_id, refused.value)
    # the hashed entry logs in too
    async with package_station(url, "FLH", HASHED["FLH"]):
        await fleet.flow.await_("csms", lambda r: online(r) and r["ocpp"]["cbId"] == "FLH")
    on_broker = await all_retained(fleet.broker)
    auth = {topic: value for topic, value in on_broker.items() if "/auth/" in topic}
    assert set(auth) == {f"ocpp/{GROUP}/auth/{cb}" for cb in (*PLAIN, *HASHED)}, auth
    everything = b"\n".join(on_broker.values())
    for password in (*PLAIN.values(), *HASHED.values(), fleet.broker.password):
        assert password.encode() not in everything, f"a password is on the broker: {password}"
    assert all(value.startswith(b"$pbkdf2-sha256$") for value in auth.values()), auth


async def test_a_malformed_frame_is_answered_by_the_gateway(fleet: Fleet) -> None:
    async with await connect_station(fleet.gateway.url, "FL3", PLAIN["FL3"]) as ws:
        await ws.send('[2,"bad-1","BootNotification",{"reason":"Nonsense"}]')
        answer_frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        # what a CSMS node in direct mode answers: the missing chargingStation first
        assert answer_frame[:3] == [4, "bad-1", "OccurrenceConstraintViolation"], answer_frame
        assert "'chargingStation' is a required property" in answer_frame[3], answer_frame


async def test_ws_close_of_a_station_closes_its_websocket_at_the_gateway(fleet: Fleet) -> None:
    async with await connect_station(fleet.gateway.url, "FL2", PLAIN["FL2"]) as ws:
        await fleet.flow.await_("csms", lambda r: online(r) and r["ocpp"]["cbId"] == "FL2")
        await fleet.flow.asend(
            "csms", {"payload": {"msgType": 99, "command": "ws_close", "data": {"cbId": "FL2"}}}
        )
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1000, ws.close_code


async def test_a_redeploy_keeps_the_fleet_and_a_new_group_leaves_it(fleet: Fleet) -> None:
    flow, runtime = fleet.flow, fleet.flow.runtime
    before = len(await flow.arecords("csms"))
    async with package_station(fleet.gateway.url, "FL3", PLAIN["FL3"]):
        await flow.await_("csms", lambda r: online(r) and r["ocpp"]["cbId"] == "FL3", after=before)
        seen = len(await flow.arecords("csms"))

        # a redeploy with another timeout: the node goes on with the same links
        await asyncio.to_thread(runtime.deploy, fleet_flow(fleet.broker, message_timeout=6))
        await asyncio.to_thread(runtime.wait_for_log, "station(s) kept connected", 20)
        tag = marker("after-redeploy")
        data = {"getVariableData": [{"component": {"name": "C"}, "variable": {"name": "V"}}]}
        await request(flow, "csms", "GetVariables", data, tag, cbId="FL3")
        await flow.await_("csms", lambda r: r.get("customData") == tag)
        events = [r for r in (await flow.arecords("csms"))[seen:] if r["ocpp"].get("websocket")]
        assert events == [], f"the redeploy was seen as a disconnect: {events}"

        # another group: the node leaves this fleet and sees none of its stations
        statuses = len(await flow.arecords("status"))
        await asyncio.to_thread(runtime.deploy, fleet_flow(fleet.broker, fleet_group="elsewhere"))
        await flow.await_("status", status_is("csms", "0 connected"), after=statuses)
        tag = marker("other-group")
        await request(flow, "csms", "Reset", {"type": "Immediate"}, tag, cbId="FL3")
        assert "not connected" in await caught(flow, "csms", tag)

        # and back: FL3, still at its gateway, is served again
        statuses = len(await flow.arecords("status"))
        await asyncio.to_thread(runtime.deploy, fleet_flow(fleet.broker))
        tag = marker("back")
        await flow.await_("status", status_is("csms", "1 connected"), after=statuses)
        await request(flow, "csms", "GetVariables", data, tag, cbId="FL3")
        await flow.await_("csms", lambda r: r.get("customData") == tag)


async def test_a_broker_that_refuses_the_login_is_named_without_the_password(
    fleet: Fleet,
) -> None:
    runtime = fleet.flow.runtime
    await fleet.flow.await_("status", status_is("csms_badlogin", "connecting to broker"))
    await asyncio.to_thread(runtime.wait_for_log, "refused the connection: Not authorized", 20)
    await asyncio.to_thread(runtime.wait_for_log, "[CSMS:csms_badlogin] fleet: the broker", 20)
    told = [
        line
        for line in runtime.log().splitlines()
        if "[CSMS:csms_badlogin]" in line and "Not authorized" in line
    ]
    assert len(told) == 1 and "[warn]" in told[0], f"told once, as a warning: {told}"
    assert WRONG_PASSWORD not in runtime.log()
