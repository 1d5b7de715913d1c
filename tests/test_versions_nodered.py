"""OCPP 1.6J, 2.0.1 and 2.1 side by side, through a REAL Node-RED, against peers
we did not write (the Python ``ocpp`` package, ocpp-rpc in strict mode) and raw
websockets where no library sends the frame yet. The contract is issue 22's
(one version per connection, chosen at the handshake; ``msg.ocpp.ocppVersion``).

One Node-RED runs one flow for the module:

- CSMS node ``csms`` (``ocpp_versions`` all three, default preference,
  connection events on), ``csms.pref`` (``["ocpp1.6","ocpp2.0.1"]``,
  ``version_preference`` "csms") and ``csms.legacy`` (an older export: no
  ``ocpp_versions``); stations connect to them with websockets (subprotocols
  as each test offers, Basic auth), as ``ocpp`` package ChargePoints, ocpp-rpc
  clients or raw sockets;
- CS nodes ``CS16`` / ``CS21`` / ``CSBOOT16`` (boot rules on) connected to an
  ``ocpp`` package CSMS (v16 / v21 ChargePoints with ``@on`` handlers on a
  websockets server accepting ocpp1.6 and ocpp2.1), ``CSMIX`` (offers
  ocpp2.1 then ocpp2.0.1) to one that accepts only ocpp2.0.1, ``CSRAW21`` and
  ``CSTX16`` (1.6, 2 transaction attempts 1 s apart) to a raw websockets CSMS,
  ``CSRPC16`` to an ocpp-rpc server in 1.6 strict mode (tests/peers/ocpp_rpc.py,
  ``protocols="ocpp1.6"``);
- ``csms.bad`` and ``CSBAD``: an unknown version name in ``ocpp_versions``;
- recorders: output 1 of each node (tag = the node id), a Catch node (tag
  ``catch``: inputs that ended with ``done(err)``), a Complete node (tag
  ``complete``: inputs that ended with ``done()``) and a Status node of the
  two misconfigured nodes (tag ``status``); ``POST /t/in/<id>`` injects
  a msg into a node. The flow answers nothing by itself: the test answers a
  received request by posting back its ``msg.ocpp`` with ``payload {msgType: 3,
  data}`` (or 4 for a CALLERROR).

Every wait is for an event (a record, a frame, a peer's event), bounded;
"nothing was sent" is shown by a later frame being the next one to arrive.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any
from urllib.parse import unquote

import pytest
import pytest_asyncio
import websockets
from ocpp import v16, v21, v201
from ocpp.routing import on
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from tests.common import DATE_TIME, auth_header, recv_frame
from tests.flowkit import (
    Flow,
    Record,
    answer,
    caught,
    has_custom_data,
    http_api,
    marker,
    node,
    online,
    recorder,
    request,
    status_is,
    topic_is,
    until,
    wait_port,
)
from tests.nodered import NodeRed, free_port, running_node_red
from tests.peers.ocpp_rpc import OcppRpcPeer, ocpp_rpc_missing_reason

pytestmark = [pytest.mark.nodered, pytest.mark.asyncio(loop_scope="module")]

TAB = "versions"
PASSWORD = "versions-pw"
_node = partial(node, tab=TAB)

ALL = ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"]

# -- payloads ------------------------------------------------------------------------

BOOT16 = {"chargePointVendor": "Tests", "chargePointModel": "Versions"}
BOOT16_SNAKE = {"charge_point_vendor": "Tests", "charge_point_model": "Versions"}
BOOT2 = {"reason": "PowerUp", "chargingStation": {"model": "Versions", "vendorName": "Tests"}}
BOOT2_SNAKE = {
    "reason": "PowerUp",
    "charging_station": {"model": "Versions", "vendor_name": "Tests"},
}
#: a BootNotification answer valid in every version
BOOT_ANSWER = {"currentTime": DATE_TIME, "interval": 300, "status": "Accepted"}
#: valid in 2.0.1 and 2.1, not in 1.6 (no statusInfo there)
BOOT_ANSWER_2X = {**BOOT_ANSWER, "statusInfo": {"reasonCode": "Fine"}}
HEARTBEAT_ANSWER = {"currentTime": DATE_TIME}
CONFIG_KEYS16 = [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}]
GET_VARIABLE_DATA = [
    {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
]
GET_VARIABLE_RESULT = [
    {
        "attributeStatus": "Accepted",
        "attributeValue": "300",
        "component": {"name": "OCPPCommCtrlr"},
        "variable": {"name": "HeartbeatInterval"},
    }
]
STATUS16 = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
START_TX16 = {"connectorId": 1, "idTag": "TAG1", "meterStart": 0, "timestamp": DATE_TIME}
START_TX16_ANSWER = {"idTagInfo": {"status": "Accepted"}, "transactionId": 7}
#: a valid OCPP 2.1 NotifyPeriodicEventStream (a SEND, message type 6)
STREAM = {"id": 1, "pending": 0, "basetime": DATE_TIME, "data": [{"t": 0, "v": "230.1"}]}

#: error codes only 1.6 spells this way, and only 2.x
CODES16 = {"FormationViolation", "OccurenceConstraintViolation"}
CODES2X = {"FormatViolation", "OccurrenceConstraintViolation"}

# -- the nodes -----------------------------------------------------------------------

#: CSMS node -> (its version settings, the stations it knows)
CSMS_NODES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "csms": (
        {"ocpp_versions": ALL, "connection_events": True},
        (
            "ST16",
            "ST201",
            "ST21",
            "SAME",
            "PICK1",
            "PICK2",
            "RPC16",
            "RAW21",
            "RAW201",
            "RAW16",
        ),
    ),
    "csms.pref": (
        {"ocpp_versions": ["ocpp1.6", "ocpp2.0.1"], "version_preference": "csms"},
        ("PICK3", "NONE1"),
    ),
    "csms.legacy": ({}, ("LEG1",)),
    # an unknown version name: config error
    "csms.bad": ({"ocpp_versions": "ocpp2.1, ocpp9"}, ()),
}
#: CS node -> (target, its own settings)
CS_NODES: dict[str, tuple[str, dict[str, Any]]] = {
    "CS16": ("pkg", {"ocpp_versions": ["ocpp1.6"]}),
    "CS21": ("pkg", {"ocpp_versions": ["ocpp2.1"]}),
    "CSBOOT16": ("pkg", {"ocpp_versions": ["ocpp1.6"], "boot_rules": True}),
    "CSMIX": ("only201", {"ocpp_versions": ["ocpp2.1", "ocpp2.0.1"]}),
    "CSRAW21": ("raw", {"ocpp_versions": ["ocpp2.1"]}),
    "CSTX16": ("raw", {"ocpp_versions": ["ocpp1.6"], "tx_attempts": 2, "tx_attempt_interval": 1}),
    "CSRPC16": ("rpc", {"ocpp_versions": ["ocpp1.6"]}),
    "CSBAD": ("raw", {"ocpp_versions": ["ocpp1.6", "ocpp3.0"]}),
}
#: nodes whose configuration is wrong (not listening / not connecting)
BAD_NODES = ("csms.bad", "CSBAD")


# -- the ocpp package as the CSMS of CS nodes -------------------------------------------


class _RecordingCsms:
    """What the package CSMSs share: the CALLs each station sent, the boot answers."""

    server: PackageCsmsServer
    id: str

    def _record(self, raw_msg: str) -> None:
        frame = json.loads(raw_msg)
        if isinstance(frame, list) and frame and frame[0] == 2:
            self.server.calls.setdefault(self.id, []).append(frame)

    def _boot_answer(self) -> tuple[str, int]:
        answers = self.server.boot_answers.get(self.id) or []
        return answers.pop(0) if answers else ("Accepted", 300)


class Csms16(_RecordingCsms, v16.ChargePoint):  # type: ignore[misc]
    def __init__(self, cb_id: str, ws: ServerConnection, server: PackageCsmsServer) -> None:
        v16.ChargePoint.__init__(self, cb_id, ws, response_timeout=5)
        self.server = server

    async def route_message(self, raw_msg: str) -> None:
        self._record(raw_msg)
        await super().route_message(raw_msg)

    @on("BootNotification")  # type: ignore[untyped-decorator]
    def on_boot(self, **_: Any) -> v16.call_result.BootNotification:
        status, interval = self._boot_answer()
        return v16.call_result.BootNotification(
            current_time=DATE_TIME, interval=interval, status=status
        )

    @on("StatusNotification")  # type: ignore[untyped-decorator]
    def on_status(self, **_: Any) -> v16.call_result.StatusNotification:
        return v16.call_result.StatusNotification()


class Csms21(_RecordingCsms, v21.ChargePoint):  # type: ignore[misc]
    def __init__(self, cb_id: str, ws: ServerConnection, server: PackageCsmsServer) -> None:
        v21.ChargePoint.__init__(self, cb_id, ws, response_timeout=5)
        self.server = server

    async def route_message(self, raw_msg: str) -> None:
        self._record(raw_msg)
        await super().route_message(raw_msg)

    @on("BootNotification")  # type: ignore[untyped-decorator]
    def on_boot(self, **_: Any) -> v21.call_result.BootNotification:
        status, interval = self._boot_answer()
        return v21.call_result.BootNotification(
            current_time=DATE_TIME, interval=interval, status=status
        )


class Csms201(_RecordingCsms, v201.ChargePoint):  # type: ignore[misc]
    def __init__(self, cb_id: str, ws: ServerConnection, server: PackageCsmsServer) -> None:
        v201.ChargePoint.__init__(self, cb_id, ws, response_timeout=5)
        self.server = server

    async def route_message(self, raw_msg: str) -> None:
        self._record(raw_msg)
        await super().route_message(raw_msg)

    @on("Heartbeat")  # type: ignore[untyped-decorator]
    def on_heartbeat(self, **_: Any) -> v201.call_result.Heartbeat:
        return v201.call_result.Heartbeat(current_time=DATE_TIME)


PACKAGE_CSMS: dict[str, type[Any]] = {"ocpp1.6": Csms16, "ocpp2.0.1": Csms201, "ocpp2.1": Csms21}


class PackageCsmsServer:
    """A websockets server accepting ``subprotocols``; each connection on
    /ocpp/<cbId> becomes the package ChargePoint of its subprotocol.

    ``offered[cbId]``: the Sec-WebSocket-Protocol header of its last handshake;
    ``calls[cbId]``: every CALL it sent; ``boot_answers[cbId]``: the
    ``(status, interval)`` its next BootNotifications get (then Accepted, 300).
    """

    def __init__(self) -> None:
        self.port = 0
        self.stations: dict[str, Any] = {}
        self.offered: dict[str, str] = {}
        self.calls: dict[str, list[list[Any]]] = {}
        self.boot_answers: dict[str, list[tuple[str, int]]] = {}

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        cb_id = unquote(ws.request.path.rsplit("/", 1)[-1])
        self.offered[cb_id] = ws.request.headers.get("Sec-WebSocket-Protocol", "")
        station = PACKAGE_CSMS[str(ws.subprotocol)](cb_id, ws, self)
        self.stations[cb_id] = station
        with suppress(websockets.ConnectionClosed):
            await station.start()

    async def station(self, cb_id: str) -> Any:
        return await until(lambda: self.stations.get(cb_id), 20, f"{cb_id} to connect")

    def actions(self, cb_id: str) -> list[str]:
        return [frame[2] for frame in self.calls.get(cb_id, [])]


class RawCsmsServer:
    """A websockets server that only keeps each CS node's connection (by cbId)."""

    def __init__(self) -> None:
        self.port = 0
        self.connections: dict[str, ServerConnection] = {}

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.connections[unquote(ws.request.path.rsplit("/", 1)[-1])] = ws
        await ws.wait_closed()

    async def connection(self, cb_id: str) -> ServerConnection:
        found: ServerConnection = await until(
            lambda: self.connections.get(cb_id), 20, f"{cb_id} to connect to the raw CSMS"
        )
        return found


# -- ocpp package stations for the CSMS node ----------------------------------------------


class _RecordingStation:
    """The actions of the CALLs a package station received."""

    received: list[str]

    def _record(self, raw_msg: str) -> None:
        frame = json.loads(raw_msg)
        if isinstance(frame, list) and frame and frame[0] == 2:
            self.received.append(frame[2])


class Station16(_RecordingStation, v16.ChargePoint):  # type: ignore[misc]
    def __init__(self, cb_id: str, ws: Any) -> None:
        v16.ChargePoint.__init__(self, cb_id, ws, response_timeout=5)
        self.received = []

    async def route_message(self, raw_msg: str) -> None:
        self._record(raw_msg)
        await super().route_message(raw_msg)

    @on("GetConfiguration")  # type: ignore[untyped-decorator]
    def on_get_configuration(self, **_: Any) -> v16.call_result.GetConfiguration:
        return v16.call_result.GetConfiguration(configuration_key=CONFIG_KEYS16)

    @on("ChangeConfiguration")  # type: ignore[untyped-decorator]
    def on_change_configuration(self, **_: Any) -> v16.call_result.ChangeConfiguration:
        return v16.call_result.ChangeConfiguration(status="Accepted")


class Station201(_RecordingStation, v201.ChargePoint):  # type: ignore[misc]
    def __init__(self, cb_id: str, ws: Any) -> None:
        v201.ChargePoint.__init__(self, cb_id, ws, response_timeout=5)
        self.received = []

    async def route_message(self, raw_msg: str) -> None:
        self._record(raw_msg)
        await super().route_message(raw_msg)

    @on("GetVariables")  # type: ignore[untyped-decorator]
    def on_get_variables(self, **_: Any) -> v201.call_result.GetVariables:
        return v201.call_result.GetVariables(get_variable_result=GET_VARIABLE_RESULT)


class Station21(_RecordingStation, v21.ChargePoint):  # type: ignore[misc]
    def __init__(self, cb_id: str, ws: Any) -> None:
        v21.ChargePoint.__init__(self, cb_id, ws, response_timeout=5)
        self.received = []

    async def route_message(self, raw_msg: str) -> None:
        self._record(raw_msg)
        await super().route_message(raw_msg)

    @on("GetTariffs")  # type: ignore[untyped-decorator]
    def on_get_tariffs(self, **_: Any) -> v21.call_result.GetTariffs:
        return v21.call_result.GetTariffs(status="NoTariff")


def subprotocols(*names: str) -> list[Subprotocol]:
    return [Subprotocol(name) for name in names]


async def raw_station(port: int, cb_id: str, offered: list[str]) -> ClientConnection:
    """A websocket to CSMS node port ``port`` as ``cb_id``, offering ``offered`` (Basic auth)."""
    return await websockets.connect(
        f"ws://127.0.0.1:{port}/ocpp/{cb_id}",
        subprotocols=subprotocols(*offered),
        additional_headers=auth_header(cb_id, PASSWORD),
        open_timeout=10,
        ping_interval=None,
    )


@asynccontextmanager
async def package_station(
    cls: type[Any], port: int, cb_id: str, subprotocol: str
) -> AsyncIterator[Any]:
    async with await raw_station(port, cb_id, [subprotocol]) as ws:
        assert ws.subprotocol == subprotocol, (cb_id, ws.subprotocol)
        station = cls(cb_id, ws)
        reader = asyncio.create_task(station.start())
        try:
            yield station
        finally:
            reader.cancel()
            with suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader


# -- the flow -----------------------------------------------------------------------------


def versions_flow(ports: dict[str, int], targets: dict[str, int]) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = [
        {"id": TAB, "type": "tab", "label": "OCPP versions"},
        _node("catch", "catch", [["rec.catch"]], scope=None, uncaught=False),
        recorder("rec.catch", TAB, "catch"),
        recorder("rec.complete", TAB, "complete"),
        recorder("rec.status", TAB, "status"),
    ]
    for name, port in targets.items():
        nodes.append(_node(f"target.{name}", "target-csms", url=f"ws://127.0.0.1:{port}/ocpp"))
    common = {"ocpp_logging": False, "outputs": 2, "message_timeout": 5, "ping_interval": 0}
    for name, (settings, stations) in CSMS_NODES.items():
        config = {
            "port": str(ports[name]),
            "path": "/ocpp",
            **common,
            **settings,
            "credentials": {"basic_auths": json.dumps(dict.fromkeys(stations, PASSWORD))},
        }
        nodes += [
            _node(name, "CSMS", [[f"rec.{name}"], []], **config),
            recorder(f"rec.{name}", TAB, name),
        ]
    for cb_id, (target, settings) in CS_NODES.items():
        config = {
            "cbId": cb_id,
            "csms": f"target.{target}",
            "auto_connect": True,
            "ws_rt_minimum": 0.5,
            "ws_rt_repeat": 0,
            "ws_rt_rnd_range": 0,
            **common,
            **settings,
            "credentials": {"csms_pw": PASSWORD},
        }
        nodes += [
            _node(cb_id, "CS", [[f"rec.{cb_id}"], []], **config),
            recorder(f"rec.{cb_id}", TAB, cb_id),
        ]
    ocpp_nodes = [*CSMS_NODES, *CS_NODES]
    nodes.append(_node("complete", "complete", [["rec.complete"]], scope=ocpp_nodes))
    nodes.append(_node("status", "status", [["rec.status"]], scope=list(BAD_NODES)))
    return nodes + http_api(TAB, {name: name for name in ocpp_nodes})


class Setup:
    def __init__(
        self,
        flow: Flow,
        ports: dict[str, int],
        package: PackageCsmsServer,
        only201: PackageCsmsServer,
        raw: RawCsmsServer,
        rpc: OcppRpcPeer | None,
    ) -> None:
        self.flow = flow
        self.ports = ports
        self.package = package
        self.only201 = only201
        self.raw = raw
        self.rpc = rpc


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeRed]:
    with running_node_red(tmp_path_factory.mktemp("versions-nr"), "versions") as started:
        yield started


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def setup(runtime: NodeRed) -> AsyncIterator[Setup]:
    package, only201, raw = PackageCsmsServer(), PackageCsmsServer(), RawCsmsServer()
    rpc: OcppRpcPeer | None = None
    served = partial(serve, host="127.0.0.1", port=0, ping_interval=None)
    async with (
        served(package.handler, subprotocols=subprotocols("ocpp1.6", "ocpp2.1")) as package_ws,
        served(only201.handler, subprotocols=subprotocols("ocpp2.0.1")) as only201_ws,
        served(raw.handler, subprotocols=subprotocols("ocpp2.1", "ocpp1.6")) as raw_ws,
    ):
        targets: dict[str, int] = {}
        for name, server in (("pkg", package_ws), ("only201", only201_ws), ("raw", raw_ws)):
            targets[name] = next(iter(server.sockets)).getsockname()[1]
        try:
            if ocpp_rpc_missing_reason() is None:
                rpc = OcppRpcPeer(
                    "server",
                    {"BootNotification": BOOT_ANSWER},
                    port=0,
                    path="/ocpp",
                    identity="CSRPC16",
                    protocols="ocpp1.6",
                    password=PASSWORD,
                )
                await rpc.start()
                assert rpc.port is not None
                targets["rpc"] = rpc.port
            else:
                targets["rpc"] = free_port()  # nothing listens: CSRPC16 only retries
            ports = {name: free_port() for name in CSMS_NODES}
            await asyncio.to_thread(runtime.deploy, versions_flow(ports, targets))
            await asyncio.to_thread(runtime.wait_for_endpoint, "GET", "/t/records")
            for name, port in ports.items():
                if name not in BAD_NODES:
                    await asyncio.to_thread(wait_port, port)
            yield Setup(Flow(runtime), ports, package, only201, raw, rpc)
        finally:
            if rpc is not None:
                await rpc.stop()


# -- reading and driving the flow ------------------------------------------------------------


def message_id_is(message_id: str) -> Callable[[Record], bool]:
    return lambda record: (record.get("ocpp") or {}).get("MessageId") == message_id


async def reply_error(flow: Flow, name: str, received: Record, code: str, custom_data: str) -> None:
    """The flow's CALLERROR reply ``code`` to a received request."""
    await flow.asend(
        name,
        {
            "ocpp": received["ocpp"],
            "payload": {"msgType": 4, "errorCode": code, "errorDescription": "refused"},
            "customData": custom_data,
        },
    )


async def response_to(flow: Flow, name: str, custom_data: str) -> Record:
    """The answer of the flow's request with ``custom_data`` (on node ``name``'s output 1)."""
    return await flow.await_(name, has_custom_data(custom_data))


def version_of(record: Record) -> Any:
    return (record.get("ocpp") or {}).get("ocppVersion")


async def answered_by_flow(
    flow: Flow,
    name: str,
    message_id: str,
    data: dict[str, Any],
    send: Coroutine[Any, Any, Any],
) -> tuple[Record, Any]:
    """A peer's request ``message_id`` that reaches node ``name``'s flow, answered with
    ``data``: (the flow's record of it, what the peer's call returned)."""
    sent = asyncio.create_task(send)
    try:
        received = await flow.await_(name, message_id_is(message_id))
        await answer(flow, name, received, data)
        return received, await asyncio.wait_for(sent, 10)
    finally:
        if not sent.done():
            sent.cancel()


async def raw_call_answered(
    flow: Flow, ws: ClientConnection, cb_id: str, message_id: str
) -> Record:
    """The raw station ``ws`` sends a Heartbeat that CSMS node ``csms`` answers
    through the flow; the NEXT frame it receives is that answer (so nothing
    else was sent to it before). Returns the flow's record of the request."""
    await ws.send(json.dumps([2, message_id, "Heartbeat", {}]))
    received = await flow.await_("csms", message_id_is(message_id))
    assert received["topic"] == f"{cb_id}/Request", received
    await answer(flow, "csms", received, HEARTBEAT_ANSWER)
    assert await recv_frame(ws) == [3, message_id, HEARTBEAT_ANSWER]
    return received


async def closed_with(ws: ClientConnection) -> int:
    """The close code the node closed ``ws`` with."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None, closed.value
    return closed.value.rcvd.code


# -- 3. which version a connection gets (first: the refusal log sums up after 10 s) ----------


async def test_version_choice_and_no_version_in_common(setup: Setup) -> None:
    csms, pref, legacy = (setup.ports[n] for n in ("csms", "csms.pref", "csms.legacy"))
    # default preference ("station"): the station's order decides
    async with await raw_station(csms, "PICK1", ["ocpp2.0.1", "ocpp1.6"]) as ws:
        assert ws.subprotocol == "ocpp2.0.1"
    async with await raw_station(csms, "PICK2", ["ocpp1.6", "ocpp2.0.1"]) as ws:
        assert ws.subprotocol == "ocpp1.6"
    # version_preference "csms": the node's order, among the offered ones
    async with await raw_station(pref, "PICK3", ["ocpp2.0.1", "ocpp1.6"]) as ws:
        assert ws.subprotocol == "ocpp1.6"
        await ws.send(json.dumps([2, "pick3-hb", "Heartbeat", {}]))
        received = await setup.flow.await_("csms.pref", message_id_is("pick3-hb"))
        assert version_of(received) == "1.6", received
        await answer(setup.flow, "csms.pref", received, HEARTBEAT_ANSWER)
        assert await recv_frame(ws) == [3, "pick3-hb", HEARTBEAT_ANSWER]
    async with await raw_station(pref, "PICK3", ["ocpp2.1", "ocpp2.0.1"]) as ws:
        assert ws.subprotocol == "ocpp2.0.1"
    # none in common: the upgrade completes without a subprotocol, then close 1002
    async with await raw_station(pref, "NONE1", ["ocpp2.1"]) as ws:
        assert ws.subprotocol is None
        assert await closed_with(ws) == 1002
    # an older export (no ocpp_versions): 2.0.1 only
    for offered in (["ocpp1.6"], ["ocpp2.1"]):
        async with await raw_station(legacy, "LEG1", offered) as ws:
            assert ws.subprotocol is None, offered
            assert await closed_with(ws) == 1002, offered
    async with await raw_station(legacy, "LEG1", ["ocpp2.1", "ocpp1.6", "ocpp2.0.1"]) as ws:
        assert ws.subprotocol == "ocpp2.0.1"


# -- 1. one CSMS node, three versions at once -------------------------------------------------


async def test_csms_node_serves_three_versions_at_once(setup: Setup) -> None:
    flow, port = setup.flow, setup.ports["csms"]
    async with (
        package_station(Station16, port, "ST16", "ocpp1.6") as s16,
        package_station(Station201, port, "ST201", "ocpp2.0.1") as s201,
        package_station(Station21, port, "ST21", "ocpp2.1") as s21,
    ):
        # each BootNotification reaches the flow with its version; each station
        # validates (the package does) the flow's answer against its own schemas
        boots = await asyncio.gather(
            answered_by_flow(
                flow,
                "csms",
                "boot-st16",
                BOOT_ANSWER,
                s16.call(
                    v16.call.BootNotification(**BOOT16_SNAKE), suppress=False, unique_id="boot-st16"
                ),
            ),
            answered_by_flow(
                flow,
                "csms",
                "boot-st201",
                BOOT_ANSWER_2X,
                s201.call(
                    v201.call.BootNotification(**BOOT2_SNAKE),
                    suppress=False,
                    unique_id="boot-st201",
                ),
            ),
            answered_by_flow(
                flow,
                "csms",
                "boot-st21",
                BOOT_ANSWER_2X,
                s21.call(
                    v21.call.BootNotification(**BOOT2_SNAKE), suppress=False, unique_id="boot-st21"
                ),
            ),
        )
        expected = (("ST16", "1.6", BOOT16), ("ST201", "2.0.1", BOOT2), ("ST21", "2.1", BOOT2))
        for (received, result), (cb_id, version, data) in zip(boots, expected, strict=True):
            assert received["topic"] == f"{cb_id}/Request", received
            assert received["ocpp"]["ocppVersion"] == version, received
            assert received["ocpp"]["cbId"] == cb_id, received
            assert received["payload"]["data"] == data, received
            assert result.status == "Accepted" and result.interval == 300, result
        assert boots[1][1].status_info == {"reason_code": "Fine"}, boots[1][1]

        # another version's action on a connection: done(err), nothing sent
        refused: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
            ("ST16", "1.6", "GetVariables", {"getVariableData": GET_VARIABLE_DATA}),
            ("ST201", "2.0.1", "GetTariffs", {"evseId": 0}),
            ("ST21", "2.1", "GetConfiguration", {"key": ["HeartbeatInterval"]}),
        )
        tags = [marker(f"refused-{cb_id}") for cb_id, *_ in refused]
        for (cb_id, _, command, data), tag in zip(refused, tags, strict=True):
            await request(flow, "csms", command, data, tag, cbId=cb_id)
        for (_, version, command, _), tag in zip(refused, tags, strict=True):
            error = await caught(flow, "csms", tag)
            assert command in error and version in error, error

        # each version's request to its station: the answers come back with the version
        asked: dict[str, tuple[str, dict[str, Any]]] = {
            "ST16": ("GetConfiguration", {"key": ["HeartbeatInterval"]}),
            "ST201": ("GetVariables", {"getVariableData": GET_VARIABLE_DATA}),
            "ST21": ("GetTariffs", {"evseId": 0}),
        }
        tags2 = {cb_id: marker(f"ask-{cb_id}") for cb_id in asked}
        for cb_id, (command, data) in asked.items():
            await request(flow, "csms", command, data, tags2[cb_id], cbId=cb_id)
        answers = {cb_id: await response_to(flow, "csms", tag) for cb_id, tag in tags2.items()}
        for cb_id, version in (("ST16", "1.6"), ("ST201", "2.0.1"), ("ST21", "2.1")):
            got = answers[cb_id]
            assert got["topic"] == f"{cb_id}/Response", got
            assert got["ocpp"]["ocppVersion"] == version, got
            assert got["payload"]["command"] == asked[cb_id][0], got
        assert answers["ST16"]["payload"]["data"] == {"configurationKey": CONFIG_KEYS16}
        assert answers["ST201"]["payload"]["data"] == {"getVariableResult": GET_VARIABLE_RESULT}
        assert answers["ST21"]["payload"]["data"] == {"status": "NoTariff"}

        # a 1.6 action (ChangeConfiguration) still reaches the 1.6 station after
        # the refusal; the refused ones never went out
        tag = marker("change-st16")
        await request(
            flow,
            "csms",
            "ChangeConfiguration",
            {"key": "HeartbeatInterval", "value": "60"},
            tag,
            cbId="ST16",
        )
        changed = await response_to(flow, "csms", tag)
        assert changed["payload"]["data"] == {"status": "Accepted"}, changed
        assert version_of(changed) == "1.6", changed
        assert s16.received == ["GetConfiguration", "ChangeConfiguration"], s16.received
        assert s201.received == ["GetVariables"], s201.received
        assert s21.received == ["GetTariffs"], s21.received


# -- 2. the same station, first 1.6 then 2.0.1 ----------------------------------------------


async def test_same_station_with_two_versions_is_validated_by_each(setup: Setup) -> None:
    flow, port = setup.flow, setup.ports["csms"]
    async with await raw_station(port, "SAME", ["ocpp1.6"]) as ws:
        assert ws.subprotocol == "ocpp1.6"
        # a 2.0.1 payload breaks 1.6's schema: a 1.6 CALLERROR
        await ws.send(json.dumps([2, "same-a", "BootNotification", BOOT2]))
        error = await recv_frame(ws)
        assert error[:2] == [4, "same-a"] and error[2] in CODES16, error
        await ws.send(json.dumps([2, "same-b", "BootNotification", BOOT16]))
        received = await flow.await_("csms", message_id_is("same-b"))
        assert version_of(received) == "1.6" and received["payload"]["data"] == BOOT16, received
        # the flow's answer is checked against 1.6 too: statusInfo is 2.x only
        tag = marker("same-answer-2x")
        await flow.asend(
            "csms",
            {
                "ocpp": received["ocpp"],
                "payload": {"msgType": 3, "data": BOOT_ANSWER_2X},
                "customData": tag,
            },
        )
        await caught(flow, "csms", tag)
        await answer(flow, "csms", received, BOOT_ANSWER)
        assert await recv_frame(ws) == [3, "same-b", BOOT_ANSWER]
    async with await raw_station(port, "SAME", ["ocpp2.0.1"]) as ws:
        assert ws.subprotocol == "ocpp2.0.1"
        await ws.send(json.dumps([2, "same-c", "BootNotification", BOOT16]))
        error = await recv_frame(ws)
        assert error[:2] == [4, "same-c"] and error[2] in CODES2X, error
        await ws.send(json.dumps([2, "same-d", "BootNotification", BOOT2]))
        received = await flow.await_("csms", message_id_is("same-d"))
        assert version_of(received) == "2.0.1" and received["payload"]["data"] == BOOT2, received
        await answer(flow, "csms", received, BOOT_ANSWER_2X)
        assert await recv_frame(ws) == [3, "same-d", BOOT_ANSWER_2X]
    seen = {(r.get("ocpp") or {}).get("MessageId") for r in await flow.arecords("csms")}
    assert not seen & {"same-a", "same-c"}, "an invalid request reached the flow"


# -- 4. CS nodes of 1.6 and 2.1 against ocpp package CSMSs ------------------------------------


async def test_cs_nodes_16_and_21_against_ocpp_package_csms(setup: Setup) -> None:
    flow, server = setup.flow, setup.package
    cases = (
        ("CS16", "ocpp1.6", "1.6", BOOT16),
        ("CS21", "ocpp2.1", "2.1", BOOT2),
    )
    for cb_id, subprotocol, version, boot in cases:
        await flow.await_(cb_id, online, timeout=20)
        csms = await server.station(cb_id)
        assert csms._connection.subprotocol == subprotocol
        tag = marker(f"boot-{cb_id}")
        await request(flow, cb_id, "BootNotification", boot, tag)
        response = await response_to(flow, cb_id, tag)
        assert response["topic"] == f"{cb_id}/Response", response
        assert version_of(response) == version, response
        assert response["payload"]["data"] == BOOT_ANSWER, response
        assert server.calls[cb_id][0][3] == boot

    csms16 = await server.station("CS16")
    received, result = await answered_by_flow(
        flow,
        "CS16",
        "getconf-cs16",
        {"configurationKey": CONFIG_KEYS16},
        csms16.call(
            v16.call.GetConfiguration(key=["HeartbeatInterval"]),
            suppress=False,
            unique_id="getconf-cs16",
        ),
    )
    assert received["topic"] == "CS16/Request" and version_of(received) == "1.6", received
    assert received["payload"]["data"] == {"key": ["HeartbeatInterval"]}, received
    assert result.configuration_key == CONFIG_KEYS16, result

    csms21 = await server.station("CS21")
    received, result = await answered_by_flow(
        flow,
        "CS21",
        "tariffs-cs21",
        {"status": "NoTariff"},
        csms21.call(v21.call.GetTariffs(evse_id=0), suppress=False, unique_id="tariffs-cs21"),
    )
    assert received["topic"] == "CS21/Request" and version_of(received) == "2.1", received
    assert received["payload"]["data"] == {"evseId": 0}, received
    assert result.status == "NoTariff", result


async def test_cs_node_offering_21_and_201_gets_201_from_a_201_server(setup: Setup) -> None:
    flow, server = setup.flow, setup.only201
    await flow.await_("CSMIX", online, timeout=20)
    csms = await server.station("CSMIX")
    assert csms._connection.subprotocol == "ocpp2.0.1"
    offered = [p.strip() for p in server.offered["CSMIX"].split(",")]
    assert offered == ["ocpp2.1", "ocpp2.0.1"], offered  # in the node's order
    tag = marker("hb-csmix")
    await request(flow, "CSMIX", "Heartbeat", {}, tag)
    response = await response_to(flow, "CSMIX", tag)
    assert response["topic"] == "CSMIX/Response" and version_of(response) == "2.0.1", response
    assert server.actions("CSMIX") == ["Heartbeat"]


# -- 5. ocpp-rpc in 1.6 strict mode ------------------------------------------------------------


def no_strict_failures(peer: OcppRpcPeer) -> None:
    failures = [e for e in peer.events if e["event"] == "strictValidationFailure"]
    assert not failures, f"ocpp-rpc strict mode rejected something: {failures}"


@pytest.mark.skipif(ocpp_rpc_missing_reason() is not None, reason=str(ocpp_rpc_missing_reason()))
async def test_ocpp_rpc_16_strict_both_ways(setup: Setup) -> None:
    flow = setup.flow
    # ocpp-rpc as a 1.6 station of the CSMS node
    station = OcppRpcPeer(
        "client",
        {"GetConfiguration": {"configurationKey": CONFIG_KEYS16}},
        endpoint=f"ws://127.0.0.1:{setup.ports['csms']}/ocpp",
        identity="RPC16",
        protocols="ocpp1.6",
        password=PASSWORD,
    )
    try:
        await station.start()
        await station.wait_event("connected", protocol="ocpp1.6")
        booted = asyncio.create_task(station.call("BootNotification", BOOT16))
        received = await flow.await_("csms", topic_is("RPC16/Request", "BootNotification"))
        assert version_of(received) == "1.6" and received["payload"]["data"] == BOOT16
        await answer(flow, "csms", received, BOOT_ANSWER)
        result = await asyncio.wait_for(booted, 10)
        assert result == {"event": "result", "id": result["id"], "result": BOOT_ANSWER}, result

        tag = marker("rpc16-getconf")
        await request(
            flow, "csms", "GetConfiguration", {"key": ["HeartbeatInterval"]}, tag, cbId="RPC16"
        )
        response = await response_to(flow, "csms", tag)
        assert response["topic"] == "RPC16/Response" and version_of(response) == "1.6"
        assert response["payload"]["data"] == {"configurationKey": CONFIG_KEYS16}, response
        assert [e["params"] for e in station.received("GetConfiguration")] == [
            {"key": ["HeartbeatInterval"]}
        ]
        no_strict_failures(station)
    finally:
        await station.stop()

    # ocpp-rpc as the 1.6 CSMS of CS node CSRPC16
    server = setup.rpc
    assert server is not None
    await server.wait_event("connected", timeout=20, identity="CSRPC16", protocol="ocpp1.6")
    await flow.await_("CSRPC16", online, timeout=20)
    tag = marker("rpc16-boot")
    await request(flow, "CSRPC16", "BootNotification", BOOT16, tag)
    response = await response_to(flow, "CSRPC16", tag)
    assert response["topic"] == "CSRPC16/Response" and version_of(response) == "1.6", response
    assert response["payload"]["data"] == BOOT_ANSWER, response
    assert [e["params"] for e in server.received("BootNotification")] == [BOOT16]

    changed = asyncio.create_task(
        server.call("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "60"})
    )
    received = await flow.await_("CSRPC16", topic_is("CSRPC16/Request", "ChangeConfiguration"))
    assert version_of(received) == "1.6", received
    assert received["payload"]["data"] == {"key": "HeartbeatInterval", "value": "60"}
    await answer(flow, "CSRPC16", received, {"status": "Accepted"})
    result = await asyncio.wait_for(changed, 10)
    assert result["event"] == "result" and result["result"] == {"status": "Accepted"}, result
    no_strict_failures(server)


# -- 6. raw frames: SEND, CALLRESULTERROR, unknown message types, error codes --------------


async def test_21_send_and_callresulterror_at_the_csms_node(setup: Setup) -> None:
    flow, port = setup.flow, setup.ports["csms"]
    async with await raw_station(port, "RAW21", ["ocpp2.1"]) as ws:
        assert ws.subprotocol == "ocpp2.1"
        # a SEND comes out of output 1; an invalid one is dropped; neither is answered
        await ws.send(json.dumps([6, "send-1", "NotifyPeriodicEventStream", STREAM]))
        bad = {k: v for k, v in STREAM.items() if k != "pending"}
        await ws.send(json.dumps([6, "send-2", "NotifyPeriodicEventStream", bad]))
        sent = await flow.await_("csms", topic_is("RAW21/Send"))
        assert sent["ocpp"] == {
            "ocppVersion": "2.1",
            "MessageId": "send-1",
            "command": "NotifyPeriodicEventStream",
            "cbId": "RAW21",
        }, sent
        assert sent["payload"] == {
            "command": "NotifyPeriodicEventStream",
            "data": STREAM,
            "MessageId": "send-1",
        }, sent
        # a CSMS never sends NotifyPeriodicEventStream: the flow's SEND is refused
        tag = marker("csms-send")
        await flow.asend(
            "csms",
            {
                "payload": {
                    "msgType": 6,
                    "command": "NotifyPeriodicEventStream",
                    "data": STREAM,
                    "cbId": "RAW21",
                },
                "customData": tag,
            },
        )
        await caught(flow, "csms", tag)
        # message types 2.1 does not have are ignored too
        await ws.send(json.dumps([7, "t7-21", "Whatever", {}]))
        await ws.send(json.dumps([9, "t9-21", "Whatever", {}]))
        await raw_call_answered(flow, ws, "RAW21", "raw21-hb-1")  # the next frame: nothing before
        sends = [r for r in await flow.arecords("csms") if topic_is("RAW21/Send")(r)]
        assert len(sends) == 1, sends

        # an invalid CALLRESULT to the flow's request: [5, sameId, ...] back, done(err)
        tag = marker("raw21-tariffs")
        await request(flow, "csms", "GetTariffs", {"evseId": 0}, tag, cbId="RAW21")
        call = await recv_frame(ws)
        assert call[0] == 2 and call[2:] == ["GetTariffs", {"evseId": 0}], call
        await ws.send(json.dumps([3, call[1], {"status": "Bogus"}]))
        refused = await recv_frame(ws)
        assert refused[:3] == [5, call[1], "PropertyConstraintViolation"], refused
        assert refused[3].startswith("GetTariffs response"), refused
        assert refused[4] == {} and len(refused) == 5, refused
        await caught(flow, "csms", tag)

        # a CALLRESULTERROR about the flow's CALLRESULT: output 1, topic <cbId>/Error
        await raw_call_answered(flow, ws, "RAW21", "raw21-hb-2")
        await ws.send(json.dumps([5, "raw21-hb-2", "FormatViolation", "cannot use it", {"a": 1}]))
        error = await flow.await_("csms", topic_is("RAW21/Error"))
        assert error["ocpp"] == {
            "ocppVersion": "2.1",
            "MessageId": "raw21-hb-2",
            "command": "Heartbeat",
            "cbId": "RAW21",
        }, error
        assert error["payload"] == {
            "command": "Heartbeat",
            "msgType": 5,
            "errorCode": "FormatViolation",
            "errorDescription": "cannot use it",
            "errorDetails": {"a": 1},
        }, error

        # a 1.6 error code in the flow's CALLERROR reply on 2.1: done(err), nothing sent
        await ws.send(json.dumps([2, "raw21-hb-3", "Heartbeat", {}]))
        received = await flow.await_("csms", message_id_is("raw21-hb-3"))
        tag = marker("raw21-code16")
        await reply_error(flow, "csms", received, "OccurenceConstraintViolation", tag)
        error_text = await caught(flow, "csms", tag)
        assert "OccurenceConstraintViolation" in error_text, error_text
        await raw_call_answered(flow, ws, "RAW21", "raw21-hb-4")


async def test_cs_node_21_sends_a_send_past_its_outstanding_call(setup: Setup) -> None:
    flow = setup.flow
    await flow.await_("CSRAW21", online, timeout=20)
    ws = await setup.raw.connection("CSRAW21")
    assert ws.subprotocol == "ocpp2.1"
    hb_tag = marker("csraw21-hb")
    await request(flow, "CSRAW21", "Heartbeat", {}, hb_tag)
    call = await recv_frame(ws)
    assert call[0] == 2 and call[2:] == ["Heartbeat", {}], call
    # the Heartbeat waits for its answer; the SEND goes anyway, and its input ends
    send_tag = marker("csraw21-send")
    await flow.asend(
        "CSRAW21",
        {
            "payload": {
                "msgType": 6,
                "command": "NotifyPeriodicEventStream",
                "data": STREAM,
                "MessageId": "cs-send-1",
            },
            "customData": send_tag,
        },
    )
    assert await recv_frame(ws) == [6, "cs-send-1", "NotifyPeriodicEventStream", STREAM]
    completed = await flow.await_("complete", has_custom_data(send_tag))
    assert completed["customData"] == send_tag
    assert not [r for r in await flow.arecords("catch") if has_custom_data(send_tag)(r)]
    assert not [r for r in await flow.arecords("CSRAW21") if has_custom_data(hb_tag)(r)], (
        "the Heartbeat was answered before the CSMS answered it"
    )
    await ws.send(json.dumps([3, call[1], HEARTBEAT_ANSWER]))
    response = await response_to(flow, "CSRAW21", hb_tag)
    assert response["topic"] == "CSRAW21/Response" and version_of(response) == "2.1", response


async def test_unknown_message_types_and_error_codes_by_version(setup: Setup) -> None:
    flow, port = setup.flow, setup.ports["csms"]
    # 2.0.1: types 5 and 6 are MessageTypeNotSupported
    async with await raw_station(port, "RAW201", ["ocpp2.0.1"]) as ws:
        assert ws.subprotocol == "ocpp2.0.1"
        await ws.send(json.dumps([6, "t6-201", "NotifyPeriodicEventStream", STREAM]))
        error = await recv_frame(ws)
        assert error[:3] == [4, "t6-201", "MessageTypeNotSupported"], error
        await ws.send(json.dumps([5, "t5-201", "FormatViolation", "x", {}]))
        error = await recv_frame(ws)
        assert error[:3] == [4, "t5-201", "MessageTypeNotSupported"], error
    # 1.6: types 5, 6 and 7 are ignored; 2.x-only codes are refused; unreadable frames
    # are FormationViolation with id "-1"
    async with await raw_station(port, "RAW16", ["ocpp1.6"]) as ws:
        assert ws.subprotocol == "ocpp1.6"
        await ws.send(json.dumps([6, "t6-16", "NotifyPeriodicEventStream", STREAM]))
        await ws.send(json.dumps([7, "t7-16", "Whatever", {}]))
        await ws.send(json.dumps([5, "t5-16", "FormationViolation", "x", {}]))
        received = await raw_call_answered(flow, ws, "RAW16", "raw16-hb-1")
        assert version_of(received) == "1.6", received

        await ws.send(json.dumps([2, "raw16-hb-2", "Heartbeat", {}]))
        received = await flow.await_("csms", message_id_is("raw16-hb-2"))
        tag = marker("raw16-code2x")
        await reply_error(flow, "csms", received, "FormatViolation", tag)
        error_text = await caught(flow, "csms", tag)
        assert "FormationViolation" in error_text, error_text  # it lists the 1.6 codes
        await raw_call_answered(flow, ws, "RAW16", "raw16-hb-3")  # nothing went out before

        await ws.send("this is not json")
        error = await recv_frame(ws)
        assert error[:3] == [4, "-1", "FormationViolation"], error


# -- 7. 1.6 boot rules and transaction messages ---------------------------------------------


async def test_cs_node_16_rejected_sends_nothing_and_answers_nothing(setup: Setup) -> None:
    flow, server = setup.flow, setup.package
    await flow.await_("CSBOOT16", online, timeout=20)
    csms = await server.station("CSBOOT16")
    server.boot_answers["CSBOOT16"] = [("Rejected", 300)]
    tag = marker("csboot16-boot")
    await request(flow, "CSBOOT16", "BootNotification", BOOT16, tag)
    response = await response_to(flow, "CSBOOT16", tag)
    assert response["payload"]["data"]["status"] == "Rejected" and version_of(response) == "1.6"
    registration = await flow.await_("CSBOOT16", topic_is("CSBOOT16/Registration"))
    assert registration["payload"]["status"] == "Rejected", registration

    tag = marker("csboot16-status")
    await request(flow, "CSBOOT16", "StatusNotification", STATUS16, tag)
    error = await caught(flow, "CSBOOT16", tag)
    assert "rejected" in error.lower(), error

    # 1.6: "SHALL NOT respond": no CALLRESULT, no CALLERROR (2.x would get SecurityError)
    csms._response_timeout = 2
    with pytest.raises(asyncio.TimeoutError):
        await csms.call(v16.call.GetConfiguration(), suppress=False)
    requests = [r for r in await flow.arecords("CSBOOT16") if topic_is("CSBOOT16/Request")(r)]
    assert not requests, requests
    assert server.actions("CSBOOT16") == ["BootNotification"]


async def test_cs_node_16_start_transaction_is_retried_with_the_same_message_id(
    setup: Setup,
) -> None:
    flow = setup.flow
    await flow.await_("CSTX16", online, timeout=20)
    ws = await setup.raw.connection("CSTX16")
    assert ws.subprotocol == "ocpp1.6"
    loop = asyncio.get_running_loop()
    tag = marker("cstx16-start")
    await request(flow, "CSTX16", "StartTransaction", START_TX16, tag)
    first = await recv_frame(ws)
    assert first[0] == 2 and first[2:] == ["StartTransaction", START_TX16], first
    await ws.send(json.dumps([4, first[1], "InternalError", "try again", {}]))
    refused_at = loop.time()
    again = await recv_frame(ws, timeout=10)
    waited = loop.time() - refused_at
    assert again == first, (first, again)
    assert waited >= 0.9, f"sent again after {waited:.2f}s, not after the 1 s interval"
    await ws.send(json.dumps([3, first[1], START_TX16_ANSWER]))
    response = await response_to(flow, "CSTX16", tag)
    assert response["topic"] == "CSTX16/Response" and version_of(response) == "1.6", response
    assert response["payload"]["data"] == START_TX16_ANSWER, response


# -- the refusal log ----------------------------------------------------------------------


async def test_no_version_in_common_is_summed_up_in_the_log(setup: Setup) -> None:
    """Each CSMS node sums its closed connections up in one warning within 10 s
    (with test_version_choice_and_no_version_in_common's, when it ran first)."""
    runtime = setup.flow.runtime
    for name, cb_id in (("csms.pref", "NONE1"), ("csms.legacy", "LEG1")):
        async with await raw_station(setup.ports[name], cb_id, ["ocpp2.1"]) as ws:
            assert await closed_with(ws) == 1002
    pattern = re.compile(
        r"\[CSMS:(csms\.pref|csms\.legacy)\] refused connection attempts: "
        r"\d+ x no OCPP version in common; closed with code 1002"
    )

    def logged() -> set[str]:
        return {m.group(1) for m in pattern.finditer(runtime.log())}

    await until(lambda: logged() == {"csms.pref", "csms.legacy"}, 15, "the refusal warnings")


async def test_unknown_version_name_is_a_config_error(setup: Setup) -> None:
    flow, runtime = setup.flow, setup.flow.runtime
    for node_id in BAD_NODES:
        await flow.await_("status", status_is(node_id, "config error"))
    await asyncio.to_thread(runtime.wait_for_log, "'ocpp9'", 10)
    await asyncio.to_thread(runtime.wait_for_log, "'ocpp3.0'", 10)
    lines = [
        line for line in runtime.log().splitlines() if "'ocpp9'" in line or "'ocpp3.0'" in line
    ]
    assert any("csms.bad" in line and "'ocpp9'" in line for line in lines), lines
    assert any("CSBAD" in line and "'ocpp3.0'" in line for line in lines), lines
