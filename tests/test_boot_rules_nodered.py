"""The boot rules of OCPP 2.0.1 (B01-B03) through a REAL Node-RED, against
peers we did not write: the Python ``ocpp`` package (v201).

One Node-RED runs one flow for the module:

- CS nodes ``REJ``, ``PEND``, ``NOBOOT``, ``REG``, ``KEEP`` (``boot_rules`` on) and
  ``LEGACY`` (an older export: the property absent) connected to a CSMS built
  with the ``ocpp`` package (``ocpp.v201.ChargePoint`` with ``@on`` handlers
  on a ``websockets`` server); the test decides, per station, what that CSMS
  answers to each BootNotification;
- CSMS node ``csms`` (``boot_rules`` on) and ``csms.legacy`` (absent), to
  which ``ocpp`` package stations connect (``websockets.connect``, subprotocol
  ``ocpp2.0.1``, Basic auth);
- recorders: output 1 of each node (tag = the node's name), a Catch node (tag
  ``catch``: inputs that ended with ``done(err)``) and a Status node (tag
  ``status``); ``POST /t/in/<name>`` injects a msg into a node. The flow
  answers nothing by itself: the test answers each received request by
  sending back its ``msg.ocpp`` with ``payload {msgType: 3, data}``.

What is checked is the behaviour docs/nodes.md ("Boot rules") promises: the
Registration message and state, the ``registration`` command, the status
texts, which requests a node refuses (done(err), nothing on the wire) or
answers itself (CALLERROR ``SecurityError``, CALLRESULT ``Rejected``), the
BootNotification the CS node sends again when the interval has passed, and
that nodes without ``boot_rules`` behave as before.
"""

from __future__ import annotations

import asyncio
import datetime
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
from ocpp.exceptions import SecurityError
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result
from websockets.asyncio.server import ServerConnection, serve

from tests.common import DATE_TIME, GET_VARIABLES_RESULT, OCPP201
from tests.flowkit import (
    Flow,
    Record,
    answer,
    caught,
    connect_station,
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
)
from tests.nodered import NodeRed, free_port, running_node_red

pytestmark = [pytest.mark.nodered, pytest.mark.asyncio(loop_scope="module")]

TAB = "bootrules"
PASSWORD = "boot-pw"
_node = partial(node, tab=TAB)

BOOT = {"reason": "PowerUp", "chargingStation": {"model": "BootRules", "vendorName": "Tests"}}
BOOT_SNAKE = {
    "reason": "PowerUp",
    "charging_station": {"model": "BootRules", "vendor_name": "Tests"},
}
GET_VARIABLE_DATA = [
    {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
]
ID_TOKEN = {"idToken": "TAG1", "type": "ISO14443"}

#: CS nodes: cbId -> boot_rules (None: the property is absent, as in an older export)
CS_NODES: dict[str, bool | None] = {
    "REJ": True,
    "PEND": True,
    "NOBOOT": True,
    "REG": True,
    "KEEP": True,
    "LEGACY": None,
}
#: stations of each CSMS node
CSMS_STATIONS = {"csms": ("ST_P", "ST_R"), "csms.legacy": ("ST_L",)}


def report_data(request_id: int, seq_no: int, tbc: bool) -> dict[str, Any]:
    return {"requestId": request_id, "generatedAt": DATE_TIME, "seqNo": seq_no, "tbc": tbc}


def status_data(status: str = "Available") -> dict[str, Any]:
    return {"timestamp": DATE_TIME, "connectorStatus": status, "evseId": 1, "connectorId": 1}


def parse_time(text: str) -> datetime.datetime:
    parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, f"bootAllowedAt {text!r} has no time zone (must be UTC)"
    assert parsed.utcoffset() == datetime.timedelta(0), f"bootAllowedAt {text!r} is not UTC"
    return parsed


def assert_allowed_in(text: str, seconds: float) -> None:
    """``bootAllowedAt`` is about now + ``seconds`` (it was set a moment ago)."""
    slack = min(10.0, seconds / 2)
    now = datetime.datetime.now(datetime.timezone.utc)
    left = (parse_time(text) - now).total_seconds()
    assert seconds - slack <= left <= seconds + 1, (text, left, seconds)


# -- the ocpp package as the CSMS of our CS nodes -------------------------------------


class PackageCsms(ChargePoint):  # type: ignore[misc]
    """The ``ocpp`` package's CSMS side of one connected CS node."""

    def __init__(self, cb_id: str, ws: ServerConnection, server: CsmsServer) -> None:
        super().__init__(cb_id, ws, response_timeout=5)
        self.server = server

    async def route_message(self, raw_msg: str) -> None:
        frame = json.loads(raw_msg)
        if isinstance(frame, list) and frame and frame[0] == 2:
            self.server.calls.setdefault(self.id, []).append(
                (asyncio.get_running_loop().time(), frame)
            )
        await super().route_message(raw_msg)

    @on("BootNotification")  # type: ignore[untyped-decorator]
    def on_boot(self, **_: Any) -> call_result.BootNotification:
        answers = self.server.boot_answers.get(self.id) or []
        status, interval = answers.pop(0) if answers else ("Accepted", 300)
        self.server.boot_answered.setdefault(self.id, []).append(asyncio.get_running_loop().time())
        return call_result.BootNotification(
            current_time=DATE_TIME, interval=interval, status=status
        )

    @on("StatusNotification")  # type: ignore[untyped-decorator]
    def on_status(self, **_: Any) -> call_result.StatusNotification:
        return call_result.StatusNotification()

    @on("Heartbeat")  # type: ignore[untyped-decorator]
    def on_heartbeat(self, **_: Any) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=DATE_TIME)

    @on("NotifyReport")  # type: ignore[untyped-decorator]
    def on_notify_report(self, **_: Any) -> call_result.NotifyReport:
        return call_result.NotifyReport()

    @on("TransactionEvent")  # type: ignore[untyped-decorator]
    def on_transaction_event(self, **_: Any) -> call_result.TransactionEvent:
        return call_result.TransactionEvent()


class CsmsServer:
    """A websockets server; each connection on /ocpp/<cbId> becomes a :class:`PackageCsms`.

    ``calls[cbId]``: every CALL that station sent, ``(loop time, frame)``, across
    connections. ``boot_answers[cbId]``: the ``(status, interval)`` the next
    BootNotifications get, in order (then Accepted, 300).
    """

    def __init__(self) -> None:
        self.port = 0
        self.stations: dict[str, PackageCsms] = {}
        self.calls: dict[str, list[tuple[float, list[Any]]]] = {}
        self.boot_answers: dict[str, list[tuple[str, int]]] = {}
        self.boot_answered: dict[str, list[float]] = {}

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        cb_id = unquote(ws.request.path.rsplit("/", 1)[-1])
        station = PackageCsms(cb_id, ws, self)
        self.stations[cb_id] = station
        with suppress(websockets.ConnectionClosed):
            await station.start()

    async def station(self, cb_id: str) -> PackageCsms:
        found: PackageCsms = await until(
            lambda: self.stations.get(cb_id), 20, f"{cb_id} to connect to the ocpp CSMS"
        )
        return found

    def received(self, cb_id: str, action: str | None = None) -> list[list[Any]]:
        return [
            frame for _, frame in self.calls.get(cb_id, []) if action is None or frame[2] == action
        ]

    def received_at(self, cb_id: str, action: str) -> list[float]:
        return [at for at, frame in self.calls.get(cb_id, []) if frame[2] == action]


# -- ocpp package stations for our CSMS nodes -----------------------------------------


class PackageStation(ChargePoint):  # type: ignore[misc]
    """The ``ocpp`` package's Charging Station side; answers what our CSMS node asks."""

    def __init__(self, cb_id: str, ws: Any) -> None:
        super().__init__(cb_id, ws, response_timeout=5)
        self.received: list[str] = []

    @on("GetVariables")  # type: ignore[untyped-decorator]
    def on_get_variables(self, **_: Any) -> call_result.GetVariables:
        self.received.append("GetVariables")
        return call_result.GetVariables(
            get_variable_result=[
                {
                    "attribute_status": "Accepted",
                    "attribute_value": "42",
                    "component": {"name": "OCPPCommCtrlr"},
                    "variable": {"name": "HeartbeatInterval"},
                }
            ]
        )

    @on("TriggerMessage")  # type: ignore[untyped-decorator]
    def on_trigger(self, **_: Any) -> call_result.TriggerMessage:
        self.received.append("TriggerMessage")
        return call_result.TriggerMessage(status="Accepted")

    @on("RequestStartTransaction")  # type: ignore[untyped-decorator]
    def on_start(self, **_: Any) -> call_result.RequestStartTransaction:
        self.received.append("RequestStartTransaction")
        return call_result.RequestStartTransaction(status="Accepted")

    @on("GetBaseReport")  # type: ignore[untyped-decorator]
    def on_get_base_report(self, **_: Any) -> call_result.GetBaseReport:
        self.received.append("GetBaseReport")
        return call_result.GetBaseReport(status="Accepted")


@asynccontextmanager
async def package_station(port: int, cb_id: str) -> AsyncIterator[PackageStation]:
    async with await connect_station(f"ws://127.0.0.1:{port}/ocpp", cb_id, PASSWORD) as ws:
        station = PackageStation(cb_id, ws)
        reader = asyncio.create_task(station.start())
        try:
            yield station
        finally:
            reader.cancel()
            with suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader


# -- the flow ---------------------------------------------------------------------------


def boot_flow(csms_url: str, ports: dict[str, int]) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = [
        {"id": TAB, "type": "tab", "label": "boot rules"},
        _node("target", "target-csms", url=csms_url, name="ocpp package CSMS"),
        _node("catch", "catch", [["rec.catch"]], scope=None, uncaught=False),
        recorder("rec.catch", TAB, "catch"),
        recorder("rec.status", TAB, "status"),
    ]
    watched: list[str] = []
    for cb_id, rules in CS_NODES.items():
        config: dict[str, Any] = {
            "cbId": cb_id,
            "csms": "target",
            "auto_connect": True,
            "ocpp_logging": False,
            "outputs": 2,
            "ws_rt_minimum": 0.5,
            "ws_rt_repeat": 0,
            "ws_rt_rnd_range": 0,
            "message_timeout": 5,
            "credentials": {"csms_pw": PASSWORD},
        }
        if rules is not None:
            config["boot_rules"] = rules
        nodes += [
            _node(cb_id, "CS", [[f"rec.{cb_id}"], []], **config),
            recorder(f"rec.{cb_id}", TAB, cb_id),
        ]
        watched.append(cb_id)
    for name, stations in CSMS_STATIONS.items():
        config = {
            "port": str(ports[name]),
            "path": "/ocpp",
            "ocpp_logging": False,
            "outputs": 2,
            "message_timeout": 5,
            "credentials": {"basic_auths": json.dumps(dict.fromkeys(stations, PASSWORD))},
        }
        if name == "csms":
            config["boot_rules"] = True
        nodes += [
            _node(name, "CSMS", [[f"rec.{name}"], []], **config),
            recorder(f"rec.{name}", TAB, name),
        ]
        watched.append(name)
    nodes.append(_node("status", "status", [["rec.status"]], scope=watched))
    return nodes + http_api(TAB, {name: name for name in watched})


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def csms_server() -> AsyncIterator[CsmsServer]:
    server = CsmsServer()
    async with serve(
        server.handler,
        "127.0.0.1",
        0,
        subprotocols=OCPP201,
        ping_interval=None,
    ) as ws_server:
        server.port = next(iter(ws_server.sockets)).getsockname()[1]
        yield server


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeRed]:
    with running_node_red(tmp_path_factory.mktemp("boot-rules-nr"), "boot_rules") as started:
        yield started


class Setup:
    def __init__(self, flow: Flow, server: CsmsServer, ports: dict[str, int]) -> None:
        self.flow = flow
        self.server = server
        self.ports = ports


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def setup(runtime: NodeRed, csms_server: CsmsServer) -> Setup:
    ports = {name: free_port() for name in CSMS_STATIONS}
    url = f"ws://127.0.0.1:{csms_server.port}/ocpp"
    await asyncio.to_thread(runtime.deploy, boot_flow(url, ports))
    await asyncio.to_thread(runtime.wait_for_endpoint, "GET", "/t/records")
    return Setup(Flow(runtime), csms_server, ports)


# -- reading the flow -------------------------------------------------------------------


async def count(flow: Flow, tag: str, pred: Callable[[Record], bool]) -> int:
    return len([r for r in await flow.arecords(tag) if pred(r)])


async def await_next(
    flow: Flow, tag: str, pred: Callable[[Record], bool], seen: int, timeout: float = 15.0
) -> Record:
    """The record of ``tag`` that ``pred`` accepts after the ``seen`` it accepted before."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        matching = [r for r in await flow.arecords(tag) if pred(r)]
        if len(matching) > seen:
            return matching[seen]
        if loop.time() >= deadline:
            raise TimeoutError(
                f"no new {tag} record matched within {timeout}s; got {matching}"
                f"\n--- log tail ---\n{flow.runtime.log_tail(30)}"
            )
        await asyncio.sleep(0.1)


async def registration_command(
    flow: Flow, name: str, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The payload of the node's answer to the ``registration`` command."""
    tag = marker(f"{name}-registration")
    payload: dict[str, Any] = {"msgType": 99, "command": "registration"}
    if data is not None:
        payload["data"] = data
    await flow.asend(name, {"payload": payload, "customData": tag})
    record = await flow.await_(name, has_custom_data(tag), timeout=10)
    answered: dict[str, Any] = record["payload"]
    return answered


def registration_of(record: Record, cb_id: str, status: str, interval: int) -> None:
    """``record`` is the Registration message of the contract."""
    assert record["topic"] == f"{cb_id}/Registration", record
    assert record["ocpp"] == {**record["ocpp"], "cbId": cb_id, "registration": status}, record
    payload = record["payload"]
    assert payload["status"] == status and payload["interval"] == interval, record
    if status in ("Pending", "Rejected"):
        assert_allowed_in(payload["bootAllowedAt"], interval or 60)
    else:
        assert "bootAllowedAt" not in payload, record


async def booted_cs(setup: Setup, cb_id: str) -> PackageCsms:
    """Wait until CS node ``cb_id`` is connected; its CSMS side."""
    await setup.flow.await_(cb_id, online, timeout=20)
    return await setup.server.station(cb_id)


async def csms_side_call(station: PackageCsms, payload: Any) -> Any:
    return await station.call(payload, suppress=False)


async def answer_station_request(
    flow: Flow,
    name: str,
    cb_id: str,
    command: str,
    data: dict[str, Any],
    send: Callable[[], Coroutine[Any, Any, Any]],
) -> Any:
    """A station's request that reaches the flow of CSMS node ``name``, answered with ``data``."""
    pred = topic_is(f"{cb_id}/Request", command)
    seen = await count(flow, name, pred)
    sent = asyncio.create_task(send())
    try:
        received = await await_next(flow, name, pred, seen)
        await answer(flow, name, received, data)
        return await asyncio.wait_for(sent, 10)
    finally:
        if not sent.done():
            sent.cancel()


# -- CS node (boot_rules on) against the ocpp package's CSMS -----------------------------


async def test_cs_rejected_refuses_everything_and_boots_again_after_the_interval(
    setup: Setup,
) -> None:
    flow, server, interval = setup.flow, setup.server, 3
    csms = await booted_cs(setup, "REJ")
    server.boot_answers["REJ"] = [("Rejected", interval), ("Accepted", 300)]

    boot_tag = marker("rej-boot")
    await request(flow, "REJ", "BootNotification", BOOT, boot_tag)
    first = await flow.await_("REJ", topic_is("REJ/Response", "BootNotification"))
    assert first["customData"] == boot_tag and first["payload"]["data"]["status"] == "Rejected"
    rejected = await flow.await_("REJ", topic_is("REJ/Registration"))
    registration_of(rejected, "REJ", "Rejected", interval)

    # Within the interval (both at once: it is only 3 s): a flow request is
    # refused, a CSMS request is answered SecurityError by the node.
    refused_tag = marker("rej-status")

    async def flow_status() -> str:
        await request(flow, "REJ", "StatusNotification", status_data("Faulted"), refused_tag)
        return await caught(flow, "REJ", refused_tag)

    async def csms_report() -> None:
        with pytest.raises(SecurityError):
            await csms_side_call(
                csms, call.GetBaseReport(request_id=7, report_base="FullInventory")
            )

    error, _ = await asyncio.gather(flow_status(), csms_report())
    assert "rejected" in error.lower(), error
    assert not server.received_at("REJ", "BootNotification")[1:], (
        "the machine was too slow: the interval passed before the refusals were checked"
    )

    # After the interval the node itself sends the flow's BootNotification again.
    await until(
        lambda: len(server.received("REJ", "BootNotification")) >= 2,
        interval + 10,
        "the second BootNotification",
    )
    boots = server.received("REJ", "BootNotification")
    assert len(boots) == 2, boots
    assert boots[1][3] == boots[0][3] == BOOT
    assert boots[1][1] != boots[0][1], "the second BootNotification reused the MessageId"
    waited = server.received_at("REJ", "BootNotification")[1] - server.boot_answered["REJ"][0]
    assert waited >= interval - 0.1, f"BootNotification again after {waited:.2f}s < {interval}s"

    second = await await_next(flow, "REJ", topic_is("REJ/Response", "BootNotification"), 1)
    assert second["payload"]["data"]["status"] == "Accepted"
    assert second["customData"] == boot_tag, "the answer lost the original msg's customData"
    accepted = await await_next(flow, "REJ", topic_is("REJ/Registration"), 1)
    registration_of(accepted, "REJ", "Accepted", 300)

    # Accepted: a StatusNotification of the flow reaches the CSMS; the refused
    # one never did.
    ok_tag = marker("rej-status-ok")
    await request(flow, "REJ", "StatusNotification", status_data("Available"), ok_tag)
    await flow.await_("REJ", has_custom_data(ok_tag))
    sent = [frame[3] for frame in server.received("REJ", "StatusNotification")]
    assert sent == [status_data("Available")], sent
    assert not [r for r in await flow.arecords("REJ") if topic_is("REJ/Request")(r)], (
        "a CSMS request reached the flow while Rejected"
    )


async def test_cs_pending_sends_only_what_the_csms_asked_for(setup: Setup) -> None:
    flow, server = setup.flow, setup.server
    csms = await booted_cs(setup, "PEND")
    server.boot_answers["PEND"] = [("Pending", 300)]

    await request(flow, "PEND", "BootNotification", BOOT, marker("pend-boot"))
    pending = await flow.await_("PEND", topic_is("PEND/Registration"))
    registration_of(pending, "PEND", "Pending", 300)
    await flow.await_("status", status_is("PEND", "connected, pending"))

    # Not asked for: refused, nothing on the wire.
    heartbeat_tag = marker("pend-heartbeat")
    await request(flow, "PEND", "Heartbeat", {}, heartbeat_tag)
    error = await caught(flow, "PEND", heartbeat_tag)
    assert "pending" in error.lower(), error
    boot_again = marker("pend-boot-again")
    await request(flow, "PEND", "BootNotification", BOOT, boot_again)
    await caught(flow, "PEND", boot_again)  # before the interval has passed

    # A CSMS request reaches the flow, and the flow's answer the CSMS.
    asked = asyncio.create_task(
        csms_side_call(csms, call.GetVariables(get_variable_data=GET_VARIABLE_DATA))
    )
    received = await flow.await_("PEND", topic_is("PEND/Request", "GetVariables"))
    await answer(flow, "PEND", received, GET_VARIABLES_RESULT)
    result = await asyncio.wait_for(asked, 10)
    assert result.get_variable_result[0]["attribute_value"] == "300"

    # TriggerMessage(StatusNotification): one StatusNotification may go, not two.
    asked = asyncio.create_task(
        csms_side_call(
            csms,
            call.TriggerMessage(
                requested_message="StatusNotification", evse={"id": 1, "connector_id": 1}
            ),
        )
    )
    received = await flow.await_("PEND", topic_is("PEND/Request", "TriggerMessage"))
    assert received["payload"]["data"]["requestedMessage"] == "StatusNotification"
    await answer(flow, "PEND", received, {"status": "Accepted"})
    assert (await asyncio.wait_for(asked, 10)).status == "Accepted"

    first_tag, second_tag = marker("pend-status"), marker("pend-status-again")
    await request(flow, "PEND", "StatusNotification", status_data("Available"), first_tag)
    response = await flow.await_("PEND", has_custom_data(first_tag))
    assert response["topic"] == "PEND/Response", response
    await request(flow, "PEND", "StatusNotification", status_data("Occupied"), second_tag)
    await caught(flow, "PEND", second_tag)

    # GetBaseReport: its NotifyReports (same requestId) may go until one with tbc false.
    asked = asyncio.create_task(
        csms_side_call(csms, call.GetBaseReport(request_id=11, report_base="FullInventory"))
    )
    received = await flow.await_("PEND", topic_is("PEND/Request", "GetBaseReport"))
    await answer(flow, "PEND", received, {"status": "Accepted"})
    assert (await asyncio.wait_for(asked, 10)).status == "Accepted"
    other_tag = marker("pend-report-other")
    await request(flow, "PEND", "NotifyReport", report_data(12, 0, False), other_tag)
    await caught(flow, "PEND", other_tag)  # not the requestId asked for
    for seq_no, tbc in ((0, True), (1, False)):
        tag = marker("pend-report")
        await request(flow, "PEND", "NotifyReport", report_data(11, seq_no, tbc), tag)
        response = await flow.await_("PEND", has_custom_data(tag))
        assert response["topic"] == "PEND/Response", response
    last_tag = marker("pend-report-after-last")
    await request(flow, "PEND", "NotifyReport", report_data(11, 2, False), last_tag)
    await caught(flow, "PEND", last_tag)

    # RequestStart/StopTransaction: the node answers Rejected, the flow never sees them.
    started = await asyncio.wait_for(
        csms_side_call(
            csms,
            call.RequestStartTransaction(
                id_token={"id_token": "TAG1", "type": "ISO14443"}, remote_start_id=1
            ),
        ),
        10,
    )
    assert started.status == "Rejected"
    stopped = await asyncio.wait_for(
        csms_side_call(csms, call.RequestStopTransaction(transaction_id="tx-1")), 10
    )
    assert stopped.status == "Rejected"
    seen = [
        r["payload"]["command"] for r in await flow.arecords("PEND") if topic_is("PEND/Request")(r)
    ]
    assert seen == ["GetVariables", "TriggerMessage", "GetBaseReport"], seen
    assert [frame[2] for frame in server.received("PEND")] == [
        "BootNotification",
        "StatusNotification",
        "NotifyReport",
        "NotifyReport",
    ], server.received("PEND")
    assert server.received("PEND", "StatusNotification")[0][3] == status_data("Available")
    assert [frame[3] for frame in server.received("PEND", "NotifyReport")] == [
        report_data(11, 0, True),
        report_data(11, 1, False),
    ]


async def test_cs_not_booted_sends_only_boot_notification(setup: Setup) -> None:
    flow, server = setup.flow, setup.server
    await booted_cs(setup, "NOBOOT")

    heartbeat_tag = marker("noboot-heartbeat")
    await request(flow, "NOBOOT", "Heartbeat", {}, heartbeat_tag)
    error = await caught(flow, "NOBOOT", heartbeat_tag)
    assert re.search(r"not\s?booted|boot", error, re.IGNORECASE), error
    assert server.received("NOBOOT") == []

    # Once Accepted the same request goes: the refused one never went before it.
    server.boot_answers["NOBOOT"] = [("Accepted", 300)]
    await request(flow, "NOBOOT", "BootNotification", BOOT, marker("noboot-boot"))
    await flow.await_("NOBOOT", topic_is("NOBOOT/Registration"))
    await flow.await_("status", status_is("NOBOOT", "connected, accepted"))
    ok_tag = marker("noboot-heartbeat-ok")
    await request(flow, "NOBOOT", "Heartbeat", {}, ok_tag)
    await flow.await_("NOBOOT", has_custom_data(ok_tag))
    assert [frame[2] for frame in server.received("NOBOOT")] == ["BootNotification", "Heartbeat"]


async def test_cs_registration_command_and_status_text(setup: Setup) -> None:
    flow, server = setup.flow, setup.server
    await booted_cs(setup, "REG")
    await flow.await_("status", status_is("REG", "connected, not booted"))
    before = (await registration_command(flow, "REG"))["registration"]
    assert before["status"] == "NotBooted", before
    assert "bootAllowedAt" not in before, before

    server.boot_answers["REG"] = [("Rejected", 60)]
    await request(flow, "REG", "BootNotification", BOOT, marker("reg-boot"))
    registration_of(await flow.await_("REG", topic_is("REG/Registration")), "REG", "Rejected", 60)
    await flow.await_("status", status_is("REG", "connected, rejected"))
    state = (await registration_command(flow, "REG"))["registration"]
    assert state["status"] == "Rejected" and state["interval"] == 60, state
    assert_allowed_in(state["bootAllowedAt"], 60)


async def test_cs_without_boot_rules_sends_after_rejected_as_before(setup: Setup) -> None:
    flow, server = setup.flow, setup.server
    await booted_cs(setup, "LEGACY")
    server.boot_answers["LEGACY"] = [("Rejected", 300)]
    await request(flow, "LEGACY", "BootNotification", BOOT, marker("legacy-boot"))
    answered = await flow.await_("LEGACY", topic_is("LEGACY/Response", "BootNotification"))
    assert answered["payload"]["data"]["status"] == "Rejected"

    tag = marker("legacy-status")
    await request(flow, "LEGACY", "StatusNotification", status_data(), tag)
    response = await flow.await_("LEGACY", has_custom_data(tag))
    assert response["topic"] == "LEGACY/Response", response
    assert [frame[2] for frame in server.received("LEGACY")] == [
        "BootNotification",
        "StatusNotification",
    ]
    records = await flow.arecords("LEGACY")
    assert not [r for r in records if str(r.get("topic", "")).endswith("/Registration")], records
    texts = [
        r["status"]["text"]
        for r in await flow.arecords("status")
        if r["status"]["source"]["id"] == "LEGACY"
    ]
    assert "connected" in texts and not [t for t in texts if "," in t], texts


async def test_cs_keeps_transaction_events_until_accepted_and_boots_when_triggered(
    setup: Setup,
) -> None:
    """A TransactionEvent while Pending is kept, not refused, and goes once Accepted;
    a TriggerMessage(BootNotification) lets BootNotification go before the interval."""
    flow, server = setup.flow, setup.server
    csms = await booted_cs(setup, "KEEP")
    server.boot_answers["KEEP"] = [("Pending", 300), ("Accepted", 300)]
    await request(flow, "KEEP", "BootNotification", BOOT, marker("keep-boot"))
    await flow.await_("KEEP", topic_is("KEEP/Registration"))

    kept_tag = marker("keep-tx")
    event = {
        "eventType": "Started",
        "timestamp": DATE_TIME,
        "triggerReason": "Authorized",
        "seqNo": 0,
        "transactionInfo": {"transactionId": "KEEP-1"},
    }
    await flow.asend(
        "KEEP",
        {"payload": {"command": "TransactionEvent", "data": event}, "customData": kept_tag},
    )
    # its input ends without an error (it is kept): a refused one would reach the Catch node
    completed = marker("keep-heartbeat")
    await request(flow, "KEEP", "Heartbeat", {}, completed)
    await caught(flow, "KEEP", completed)  # the refusal after it: the kept one came first
    assert not [r for r in await flow.arecords("catch") if has_custom_data(kept_tag)(r)]
    assert server.received("KEEP", "TransactionEvent") == []

    # The CSMS asks for a BootNotification: the flow sends it before the interval.
    asked = asyncio.create_task(
        csms_side_call(csms, call.TriggerMessage(requested_message="BootNotification"))
    )
    received = await flow.await_("KEEP", topic_is("KEEP/Request", "TriggerMessage"))
    await answer(flow, "KEEP", received, {"status": "Accepted"})
    assert (await asyncio.wait_for(asked, 10)).status == "Accepted"
    await request(flow, "KEEP", "BootNotification", BOOT, marker("keep-boot-triggered"))
    accepted = await await_next(flow, "KEEP", topic_is("KEEP/Registration"), 1)
    registration_of(accepted, "KEEP", "Accepted", 300)

    # Accepted: the kept TransactionEvent goes, and its answer reaches the flow.
    answered = await flow.await_("KEEP", topic_is("KEEP/Response", "TransactionEvent"))
    assert answered["customData"] == kept_tag, answered
    assert [frame[3] for frame in server.received("KEEP", "TransactionEvent")] == [event]
    assert [frame[2] for frame in server.received("KEEP")] == [
        "BootNotification",
        "BootNotification",
        "TransactionEvent",
    ], server.received("KEEP")


# -- CSMS node (boot_rules on) against ocpp package stations ----------------------------


async def boot_station(
    flow: Flow, name: str, station: PackageStation, status: str, interval: int
) -> None:
    """The station's BootNotification, answered by the flow with ``status``."""
    result = await answer_station_request(
        flow,
        name,
        station.id,
        "BootNotification",
        {"currentTime": DATE_TIME, "interval": interval, "status": status},
        lambda: station.call(call.BootNotification(**BOOT_SNAKE), suppress=False),
    )
    assert result.status == status and result.interval == interval


async def registered(
    flow: Flow, station: PackageStation, status: str, interval: int, counts: str
) -> dict[str, Any]:
    """Boot ``station`` at CSMS node ``csms`` with ``status``; the node shows it
    (Registration message, status text ``counts``); its ``registration`` command
    answers it, which is returned."""
    cb_id = station.id
    await boot_station(flow, "csms", station, status, interval)
    registration_of(
        await flow.await_("csms", topic_is(f"{cb_id}/Registration")), cb_id, status, interval
    )
    await flow.await_("status", status_is("csms", counts))
    state: dict[str, Any] = (await registration_command(flow, "csms", {"cbId": cb_id}))[
        "registration"
    ]
    assert state["status"] == status and state["interval"] == interval, state
    return state


def flow_requests_of(records: list[Record], cb_id: str, command: str) -> list[Record]:
    return [r for r in records if topic_is(f"{cb_id}/Request", command)(r)]


async def test_csms_pending_station_may_send_only_what_it_was_asked_for(setup: Setup) -> None:
    flow, port = setup.flow, setup.ports["csms"]
    async with package_station(port, "ST_P") as station:
        await registered(flow, station, "Pending", 300, "1 connected, 1 pending")

        # Not asked for: SecurityError from the node, the flow does not see it.
        with pytest.raises(SecurityError):
            await station.call(call.StatusNotification(**_snake_status()), suppress=False)
        assert not flow_requests_of(await flow.arecords("csms"), "ST_P", "StatusNotification")

        # The flow's request reaches the station, its answer the flow.
        tag = marker("st-p-getvariables")
        await request(
            flow, "csms", "GetVariables", {"getVariableData": GET_VARIABLE_DATA}, tag, cbId="ST_P"
        )
        response = await flow.await_("csms", has_custom_data(tag))
        assert response["topic"] == "ST_P/Response", response
        assert response["payload"]["data"]["getVariableResult"][0]["attributeValue"] == "42"

        # Asked for with TriggerMessage: one StatusNotification reaches the flow.
        tag = marker("st-p-trigger")
        await request(
            flow,
            "csms",
            "TriggerMessage",
            {"requestedMessage": "StatusNotification", "evse": {"id": 1, "connectorId": 1}},
            tag,
            cbId="ST_P",
        )
        response = await flow.await_("csms", has_custom_data(tag))
        assert response["topic"] == "ST_P/Response", response
        assert response["payload"]["data"]["status"] == "Accepted"
        await answer_station_request(
            flow,
            "csms",
            "ST_P",
            "StatusNotification",
            {},
            lambda: station.call(call.StatusNotification(**_snake_status()), suppress=False),
        )
        with pytest.raises(SecurityError):  # a second one was not asked for
            await station.call(call.StatusNotification(**_snake_status()), suppress=False)
        assert len(flow_requests_of(await flow.arecords("csms"), "ST_P", "StatusNotification")) == 1

        # GetBaseReport: the station's NotifyReport with its requestId reaches the flow.
        tag = marker("st-p-report")
        await request(
            flow,
            "csms",
            "GetBaseReport",
            {"requestId": 21, "reportBase": "FullInventory"},
            tag,
            cbId="ST_P",
        )
        response = await flow.await_("csms", has_custom_data(tag))
        assert response["payload"]["data"]["status"] == "Accepted", response
        with pytest.raises(SecurityError):  # another requestId was not asked for
            await station.call(call.NotifyReport(**_snake_report(22, 0, False)), suppress=False)
        await answer_station_request(
            flow,
            "csms",
            "ST_P",
            "NotifyReport",
            {},
            lambda: station.call(call.NotifyReport(**_snake_report(21, 0, False)), suppress=False),
        )
        with pytest.raises(SecurityError):  # the report ended (tbc false)
            await station.call(call.NotifyReport(**_snake_report(21, 1, False)), suppress=False)
        assert len(flow_requests_of(await flow.arecords("csms"), "ST_P", "NotifyReport")) == 1

        # RequestStartTransaction to a Pending station: done(err), nothing on the wire.
        tag = marker("st-p-start")
        await request(
            flow,
            "csms",
            "RequestStartTransaction",
            {"idToken": ID_TOKEN, "remoteStartId": 1},
            tag,
            cbId="ST_P",
        )
        await caught(flow, "csms", tag)
        assert station.received == ["GetVariables", "TriggerMessage", "GetBaseReport"], (
            station.received
        )


def _snake_report(request_id: int, seq_no: int, tbc: bool) -> dict[str, Any]:
    return {"request_id": request_id, "generated_at": DATE_TIME, "seq_no": seq_no, "tbc": tbc}


def _snake_status() -> dict[str, Any]:
    return {
        "timestamp": DATE_TIME,
        "connector_status": "Available",
        "evse_id": 1,
        "connector_id": 1,
    }


async def test_csms_rejected_station_may_only_boot_again(setup: Setup) -> None:
    flow, port = setup.flow, setup.ports["csms"]
    async with package_station(port, "ST_R") as station:
        state = await registered(flow, station, "Rejected", 300, "1 connected, 1 rejected")
        assert_allowed_in(state["bootAllowedAt"], 300)

        with pytest.raises(SecurityError):
            await station.call(call.Heartbeat(), suppress=False)
        assert not flow_requests_of(await flow.arecords("csms"), "ST_R", "Heartbeat")

        tag = marker("st-r-getvariables")
        await request(
            flow, "csms", "GetVariables", {"getVariableData": GET_VARIABLE_DATA}, tag, cbId="ST_R"
        )
        error = await caught(flow, "csms", tag)
        assert "rejected" in error.lower(), error
        assert station.received == []

        # A new BootNotification still reaches the flow; Accepted opens the way.
        boots = len(flow_requests_of(await flow.arecords("csms"), "ST_R", "BootNotification"))
        settled = status_is("csms", "1 connected")
        settled_before = await count(flow, "status", settled)
        await boot_station(flow, "csms", station, "Accepted", 300)
        assert (
            len(flow_requests_of(await flow.arecords("csms"), "ST_R", "BootNotification"))
            == boots + 1
        )
        registration_of(
            await flow.await_(
                "csms", lambda r: topic_is("ST_R/Registration")(r) and _status_of(r) == "Accepted"
            ),
            "ST_R",
            "Accepted",
            300,
        )
        result = await answer_station_request(
            flow,
            "csms",
            "ST_R",
            "Heartbeat",
            {"currentTime": DATE_TIME},
            lambda: station.call(call.Heartbeat(), suppress=False),
        )
        assert result.current_time == DATE_TIME
        state = (await registration_command(flow, "csms", {"cbId": "ST_R"}))["registration"]
        assert state["status"] == "Accepted" and state["interval"] == 300, state
        every = (await registration_command(flow, "csms"))["registrations"]
        assert every["ST_R"]["status"] == "Accepted", every
        await await_next(flow, "status", settled, settled_before)


def _status_of(record: Record) -> Any:
    payload = record.get("payload")
    return payload.get("status") if isinstance(payload, dict) else None


async def test_csms_without_boot_rules_passes_a_pending_stations_requests(setup: Setup) -> None:
    flow, port = setup.flow, setup.ports["csms.legacy"]
    async with package_station(port, "ST_L") as station:
        await boot_station(flow, "csms.legacy", station, "Pending", 300)
        await answer_station_request(
            flow,
            "csms.legacy",
            "ST_L",
            "StatusNotification",
            {},
            lambda: station.call(call.StatusNotification(**_snake_status()), suppress=False),
        )
    records = await flow.arecords("csms.legacy")
    assert not [r for r in records if str(r.get("topic", "")).endswith("/Registration")], records
