"""The example flows under flows/ (besides demo.json) work in a real Node-RED.

All eight are deployed together into one Node-RED (each is its own tab), with
their CSMS ports rewritten to free ones (`127.0.0.1:<port>` in URLs follows),
the file node of log-to-file.json aimed at a temp dir, the tls-config nodes
of cs-security-event.json given certificates made for the test (``trustme``:
CSMS A's signed by a CA the station does not trust), and recorders (see
tests/flowkit.py) appended to some outputs. Inject nodes are pressed through
the admin API (`POST /inject/<id>`), as the editor's button does. The live
view (csms-live-view.json) needs the FlowFuse Dashboard, which `make setup`
installs in tools/node; its dashboard widgets are driven in headless Chromium
by tests/browser/test_live_view.py, here the functions behind them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import websockets

from ocpp_nodes.rpc import V16, V21, V201, OcppVersion
from ocpp_nodes.schemas import Direction
from tests.common import auth_header, recv_frame
from tests.flowkit import Flow, connect_station, http_api, recorder, wait_port
from tests.nodered import REPO_ROOT, free_port, running_node_red
from tests.payloads import valid_payload

pytestmark = pytest.mark.nodered

FLOWS = REPO_ROOT / "flows"
EXAMPLES = (
    "csms-basic",
    "csms-mixed-versions",
    "cs-transaction",
    "link-call",
    "commands",
    "log-to-file",
    "cs-security-event",
    "csms-live-view",
)
TEST_TAB = "examples.test.tab"


def load(name: str) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = json.loads((FLOWS / f"{name}.json").read_text())
    return nodes


def by_type(nodes: list[dict[str, Any]], node_type: str) -> list[dict[str, Any]]:
    return [n for n in nodes if n["type"] == node_type]


def by_name(nodes: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [n for n in nodes if n.get("name") == name]
    assert len(found) == 1, (name, found)
    return found[0]


def with_free_ports(nodes: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The flow with each CSMS on a free port (URLs follow); {CSMS name: port}."""
    text = json.dumps(nodes)
    ports: dict[str, int] = {}
    for csms in by_type(nodes, "CSMS"):
        new = free_port()
        text = text.replace(f"127.0.0.1:{csms['port']}", f"127.0.0.1:{new}")
        ports[csms["name"]] = new
    out: list[dict[str, Any]] = json.loads(text)
    for csms in by_type(out, "CSMS"):
        csms["port"] = str(ports[csms["name"]])
    return out, ports


class Examples(Flow):
    flows: dict[str, list[dict[str, Any]]]
    ports: dict[str, dict[str, int]]
    log_file: Path

    def press(self, example: str, inject_name: str) -> None:
        node = by_name(by_type(self.flows[example], "inject"), inject_name)
        status, body = self.runtime.http("POST", f"/inject/{node['id']}")
        assert status == 200, (status, body)


def _tap(nodes: list[dict[str, Any]], node: dict[str, Any], port: int, tag: str) -> dict[str, Any]:
    """A recorder on output `port` of `node` (in the node's tab)."""
    rec = recorder(f"rec.{tag}", node["z"], tag)
    while len(node["wires"]) <= port:
        node["wires"].append([])
    node["wires"][port].append(rec["id"])
    return rec


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Examples]:
    user_dir: Path = tmp_path_factory.mktemp("examples-node-red")
    log_file = tmp_path_factory.mktemp("examples-log") / "frames.jsonl"
    flows: dict[str, list[dict[str, Any]]] = {}
    ports: dict[str, dict[str, int]] = {}
    extra: list[dict[str, Any]] = [{"id": TEST_TAB, "type": "tab", "label": "test"}]
    for name in EXAMPLES:
        nodes, ports[name] = with_free_ports(load(name))
        flows[name] = nodes

    tx = flows["cs-transaction"]
    extra.append(_tap(tx, by_type(tx, "CS")[0], 0, "tx.cs"))
    extra.append(_tap(tx, by_type(tx, "CSMS")[0], 0, "tx.csms"))
    lc = flows["link-call"]
    extra.append(_tap(lc, by_name(lc, "ask CS200"), 0, "lc.csms"))
    extra.append(_tap(lc, by_name(lc, "ask the CSMS"), 0, "lc.cs"))
    cmd = flows["commands"]
    extra.append(_tap(cmd, by_type(cmd, "CSMS")[0], 0, "cmd.csms"))
    extra.append(_tap(cmd, by_type(cmd, "CS")[0], 0, "cmd.cs"))
    extra.append(_tap(cmd, by_type(cmd, "catch")[0], 0, "cmd.catch"))
    basic = flows["csms-basic"]
    extra.append(_tap(basic, by_type(basic, "CSMS")[0], 0, "basic.csms"))
    mixed = flows["csms-mixed-versions"]
    extra.append(_tap(mixed, by_type(mixed, "CSMS")[0], 0, "mixed.csms"))
    (file_node,) = by_type(flows["log-to-file"], "file")
    file_node["filename"] = str(log_file)
    pki = tmp_path_factory.mktemp("examples-pki")
    signer, trusted = trustme.CA(), trustme.CA()  # the station trusts the other CA
    leaf = signer.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(pki / "a.pem"))
    leaf.private_key_pem.write_to_path(str(pki / "a.key"))
    trusted.cert_pem.write_to_path(str(pki / "trusted.pem"))
    sec = flows["cs-security-event"]
    by_name(sec, "CSMS A certificate").update(cert=str(pki / "a.pem"), key=str(pki / "a.key"))
    by_name(sec, "CAs the station trusts")["ca"] = str(pki / "trusted.pem")
    extra.append(_tap(sec, by_name(sec, "CSMS B :9227"), 0, "sec.csmsb"))
    live = flows["csms-live-view"]
    extra.append(_tap(live, by_name(live, "table, chart, summary"), 0, "lv.table"))
    extra.append(_tap(live, by_name(live, "table, chart, summary"), 1, "lv.chart"))
    extra.append(_tap(live, by_name(live, "select a station"), 0, "lv.selected"))
    extra.append(_tap(live, by_name(live, "Reset request"), 1, "lv.answer"))
    extra.append(_tap(live, by_name(live, "show the Reset answer"), 0, "lv.answer"))
    # what the table's row click and the Reset button send (the browser test clicks them)
    inputs = {
        "lv.click": by_name(live, "select a station")["id"],
        "lv.button": by_name(live, "Reset request")["id"],
    }
    extra += http_api(TEST_TAB, inputs)

    with running_node_red(user_dir, "test_examples") as runtime:
        runtime.deploy([n for name in EXAMPLES for n in flows[name]] + extra)
        runtime.wait_for_endpoint("GET", "/t/records")
        for by_csms in ports.values():
            for port in by_csms.values():
                wait_port(port)
        ex = Examples(runtime)
        ex.flows, ex.ports, ex.log_file = flows, ports, log_file
        yield ex


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_is_self_explaining_and_loopback(name: str) -> None:
    nodes = load(name)
    assert len(by_type(nodes, "tab")) == 1
    assert by_type(nodes, "comment"), f"{name} has no comment node"
    for target in by_type(nodes, "target-csms"):
        assert target["url"].startswith(("ws://127.0.0.1:", "wss://127.0.0.1:")), target
    for csms in by_type(nodes, "CSMS"):
        assert "basic_auths" in csms["credentials"]
    for cs in by_type(nodes, "CS"):
        assert cs["credentials"]["csms_pw"] and cs["csms"]
    assert "localhost" not in json.dumps(nodes) and "0.0.0.0" not in json.dumps(nodes)


CORE_REQUESTS = (
    "BootNotification",
    "Heartbeat",
    "StatusNotification",
    "Authorize",
    "TransactionEvent",
    "MeterValues",
    "NotifyReport",
    "NotifyEvent",
    "SecurityEventNotification",
    "FirmwareStatusNotification",
    "DataTransfer",
)


async def test_csms_basic_answers_every_core_request(examples: Examples) -> None:
    port = examples.ports["csms-basic"]["CSMS :9221"]
    schemas = V201.schemas
    ws = await connect_station(f"ws://127.0.0.1:{port}/ocpp", "CS001", "cs001-password")
    try:
        requests = [(a, valid_payload(a, "Request")) for a in CORE_REQUESTS]
        started = dict(valid_payload("TransactionEvent", "Request"))
        started.update(eventType="Started", idToken={"idToken": "AB12", "type": "ISO14443"})
        requests.append(("TransactionEvent", started))
        for i, (action, payload) in enumerate(requests):
            await ws.send(json.dumps([2, f"basic-{i}", action, payload]))
            frame = await recv_frame(ws)
            assert frame[:2] == [3, f"basic-{i}"], (action, frame)
            assert schemas.validate(action, Direction.RESPONSE, frame[2]) is None, (action, frame)
            if payload.get("idToken"):
                assert frame[2]["idTokenInfo"]["status"] == "Accepted"
        # anything else gets a CALLERROR, not silence
        await ws.send(
            json.dumps(
                [
                    2,
                    "basic-x",
                    "ClearedChargingLimit",
                    valid_payload("ClearedChargingLimit", "Request"),
                ]
            )
        )
        frame = await recv_frame(ws)
        assert frame[:3] == [4, "basic-x", "NotSupported"], frame
    finally:
        await ws.close()
    seen = await examples.arecords("basic.csms")
    assert {r["payload"]["command"] for r in seen if r.get("topic") == "CS001/Request"} >= set(
        CORE_REQUESTS
    )
    assert [r for r in seen if r.get("topic") == "CS001/Connection"]


#: What each station of the mixed-versions example sends: (action, extra fields).
MIXED_REQUESTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "1.6": [
        ("BootNotification", {}),
        ("Heartbeat", {}),
        ("StatusNotification", {}),
        ("Authorize", {}),
        ("StartTransaction", {}),
        ("MeterValues", {"transactionId": 1}),  # transaction-related in 1.6
        ("StopTransaction", {"idTag": "AB12"}),
    ],
    "2.0.1": [
        ("BootNotification", {}),
        ("Heartbeat", {}),
        ("StatusNotification", {}),
        ("Authorize", {}),
        (
            "TransactionEvent",
            {"eventType": "Started", "idToken": {"idToken": "AB12", "type": "ISO14443"}},
        ),
        ("MeterValues", {}),
        ("TransactionEvent", {}),
    ],
}
MIXED_REQUESTS["2.1"] = MIXED_REQUESTS["2.0.1"]


@pytest.mark.parametrize(
    ("cb_id", "offered", "version"),
    [
        pytest.param("CS16", ["ocpp1.6"], V16, id="1.6"),
        pytest.param("CS201", ["ocpp2.0.1", "ocpp1.6"], V201, id="2.0.1"),
        pytest.param("CS21", ["ocpp2.1", "ocpp2.0.1"], V21, id="2.1"),
    ],
)
async def test_csms_mixed_versions_answers_each_station_in_its_version(
    examples: Examples, cb_id: str, offered: list[str], version: OcppVersion
) -> None:
    port = examples.ports["csms-mixed-versions"]["CSMS :9228"]
    ws = await websockets.connect(
        f"ws://127.0.0.1:{port}/ocpp/{cb_id}",
        subprotocols=offered,  # type: ignore[arg-type]
        additional_headers=auth_header(cb_id, f"{cb_id.lower()}-password"),
        open_timeout=10,
        ping_interval=None,
    )
    try:
        assert ws.subprotocol == version.subprotocol  # the station's first choice
        for i, (action, extra) in enumerate(MIXED_REQUESTS[version.name]):
            payload = {**valid_payload(action, "Request", version), **extra}
            assert version.schemas.validate(action, Direction.REQUEST, payload) is None
            await ws.send(json.dumps([2, f"mixed-{i}", action, payload]))
            frame = await recv_frame(ws)
            assert frame[:2] == [3, f"mixed-{i}"], (action, frame)
            answer = frame[2]
            assert version.schemas.validate(action, Direction.RESPONSE, answer) is None, (
                action,
                frame,
            )
            if action == "BootNotification":
                assert answer["status"] == "Accepted"
            if action == "StartTransaction":
                assert isinstance(answer["transactionId"], int)
        # another version's action is refused by the node: the flow never sees it
        other = "TransactionEvent" if version is V16 else "StartTransaction"
        await ws.send(json.dumps([2, "mixed-other", other, {}]))
        frame = await recv_frame(ws)
        assert frame[:3] == [4, "mixed-other", "NotImplemented"], frame
    finally:
        await ws.close()
    last = f"mixed-{len(MIXED_REQUESTS[version.name]) - 1}"
    await examples.await_(
        "mixed.csms",
        lambda r: r.get("topic") == f"{cb_id}/Request" and r["ocpp"]["MessageId"] == last,
    )
    seen = [
        r for r in await examples.arecords("mixed.csms") if r.get("topic") == f"{cb_id}/Request"
    ]
    assert [r["payload"]["command"] for r in seen] == [a for a, _ in MIXED_REQUESTS[version.name]]
    assert {r["ocpp"]["ocppVersion"] for r in seen} == {version.name}


def test_cs_transaction_runs_the_whole_session(examples: Examples) -> None:
    examples.wait(
        "tx.cs",
        lambda r: r.get("topic") == "CS100/Response" and r["payload"]["command"] == "MeterValues",
        timeout=20,
    )
    answers = [
        r["payload"]["command"]
        for r in examples.records("tx.cs")
        if r.get("topic") == "CS100/Response"
    ]
    assert answers == [
        "BootNotification",
        "StatusNotification",
        "Authorize",
        "TransactionEvent",
        "TransactionEvent",
        "TransactionEvent",
        "MeterValues",
    ]
    assert not [r for r in examples.records("tx.cs") if r.get("topic") == "CS100/Error"]
    events = [
        r["payload"]["data"]
        for r in examples.records("tx.csms")
        if r.get("topic") == "CS100/Request" and r["payload"]["command"] == "TransactionEvent"
    ]
    assert [e["eventType"] for e in events] == ["Started", "Updated", "Ended"]
    assert len({e["transactionInfo"]["transactionId"] for e in events}) == 1
    assert events[1]["meterValue"][0]["sampledValue"][0]["value"] == 1500


def test_link_call_example_both_ways(examples: Examples) -> None:
    lc = examples.flows["link-call"]
    cs200 = by_type(lc, "CS")[0]["cbId"]

    def answered(tag: str, inject: str, topic: str) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while True:
            found = [r for r in examples.records(tag) if r.get("topic") == topic]
            if found:
                return found[0]
            assert time.monotonic() < deadline, examples.runtime.log_tail(30)
            examples.press("link-call", inject)  # until CS200 is connected
            time.sleep(1)

    got = answered("lc.csms", "GetVariables to CS200", f"{cs200}/Response")
    result = got["payload"]["data"]["getVariableResult"][0]
    assert result["attributeStatus"] == "Accepted" and result["attributeValue"] == "300"
    assert got["linked"] is False  # the link call strips _linkSource on the way back
    got = answered("lc.cs", "Heartbeat to the CSMS", f"{cs200}/Response")
    assert got["payload"]["command"] == "Heartbeat" and got["payload"]["data"]["currentTime"]


def test_commands_example(examples: Examples) -> None:
    def answer(inject: str, field: str) -> Any:
        before = len(examples.records("cmd.csms"))
        examples.press("commands", inject)
        got = examples.wait("cmd.csms", lambda r: field in (r.get("payload") or {}), after=before)
        return got["payload"][field]

    def connections() -> Any:
        return answer("connections", "connections")

    time.sleep(0.5)
    assert connections() == {}  # auto connect is off
    examples.press("commands", "connect")
    examples.wait("cmd.cs", lambda r: (r.get("ocpp") or {}).get("websocket") == "ONLINE")
    assert "CS300" in connections()
    assert "CS300" in answer("connections (msgType 4 form)", "connections")
    assert answer("commands", "commands") == []
    assert answer("get_auth_list", "auth_list") == {"CS300": "cs300-password"}
    examples.press("commands", "set_auth_cs")
    assert answer("get_auth_cs", "auth_cs") == "cs302-password"
    examples.press("commands", "set_auth_list")
    assert answer("get_auth_list", "auth_list") == {
        "CS300": "cs300-password",
        "CS301": "cs301-password",
    }
    examples.press("commands", "retrybackoff")
    examples.press("commands", "close")
    examples.wait("cmd.cs", lambda r: (r.get("ocpp") or {}).get("websocket") == "OFFLINE")
    assert connections() == {}
    after = len(examples.records("cmd.cs"))
    examples.press("commands", "connect with overrides")
    examples.wait(
        "cmd.cs", lambda r: (r.get("ocpp") or {}).get("websocket") == "ONLINE", after=after
    )
    before = len(examples.records("cmd.cs"))
    examples.press("commands", "ws_close CS300")
    examples.wait(
        "cmd.cs", lambda r: (r.get("ocpp") or {}).get("websocket") == "OFFLINE", after=before
    )
    examples.press("commands", "ws_close (stop listening)")
    port = examples.ports["commands"]["CSMS :9224"]
    time.sleep(0.5)
    with pytest.raises(TimeoutError):
        wait_port(port, timeout=1)
    examples.press("commands", "ws_open")
    wait_port(port, timeout=10)
    examples.press("commands", "unknown command")
    err = examples.wait("cmd.catch", lambda r: "frobnicate" in r["error"]["message"])
    assert '"connections"' in err["error"]["message"]
    # every other press ended without an error
    assert len(examples.records("cmd.catch")) == 1, examples.records("cmd.catch")


def test_log_to_file_writes_json_lines(examples: Examples) -> None:
    def lines() -> list[dict[str, Any]]:
        try:
            text = examples.log_file.read_text()
        except OSError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    deadline = time.monotonic() + 20
    while len(lines()) < 2:
        assert time.monotonic() < deadline, f"log file {examples.log_file}: {lines()}"
        time.sleep(0.2)
    first, second = lines()[:2]
    assert first["msgFrom"] == "CS" and first["cbId"] == "LOG1"
    assert first["frame"][0] == 2 and first["frame"][2] == "BootNotification"
    assert second["msgFrom"] == "CSMS" and second["frame"][:2] == [3, first["frame"][1]]
    assert second["frame"][2]["status"] == "Accepted"
    assert first["time"].endswith("Z")


def test_examples_deployed_without_errors(examples: Examples) -> None:
    log = examples.runtime.log()
    errors = [
        line
        for line in log.splitlines()
        if ("[error]" in line or "Traceback" in line) and "frobnicate" not in line
    ]
    assert not errors, "\n".join(errors)


def test_security_event_example_reports_the_untrusted_certificate(examples: Examples) -> None:
    """CS400 fails at CSMS A (a certificate it cannot trust), falls back to
    CSMS B, boots, and reports InvalidCsmsCertificate there."""
    found = examples.wait(
        "sec.csmsb",
        lambda r: (
            r.get("topic") == "CS400/Request"
            and r["payload"]["command"] == "SecurityEventNotification"
        ),
        timeout=30,
    )
    data = found["payload"]["data"]
    assert data["type"] == "InvalidCsmsCertificate"
    assert "not trusted" in data["techInfo"]
    commands = [
        r["payload"]["command"]
        for r in examples.records("sec.csmsb")
        if r.get("topic") == "CS400/Request"
    ]
    assert commands[:2] == ["BootNotification", "SecurityEventNotification"]


def _station_row(cb_id: str, **fields: str) -> Callable[[dict[str, Any]], bool]:
    """A table record (the rows the live view sends its table) with `cb_id`'s row so."""

    def pred(record: dict[str, Any]) -> bool:
        rows = [row for row in record["payload"] if row["cbId"] == cb_id]
        return bool(rows) and all(rows[0][k] == v for k, v in fields.items())

    return pred


async def test_csms_live_view_keeps_the_table_and_resets_the_selected_station(
    examples: Examples,
) -> None:
    port = examples.ports["csms-live-view"]["CSMS :9231"]
    url = f"ws://127.0.0.1:{port}/ocpp"
    cs201 = await connect_station(url, "CS001", "cs001-password")
    cs16 = await websockets.connect(
        f"{url}/CS002",
        subprotocols=["ocpp1.6"],  # type: ignore[list-item]
        additional_headers=auth_header("CS002", "cs002-password"),
        open_timeout=10,
        ping_interval=None,
    )
    try:
        for ws, version in ((cs201, V201), (cs16, V16)):
            for i, action in enumerate(("BootNotification", "Heartbeat")):
                await ws.send(
                    json.dumps([2, f"lv-{i}", action, valid_payload(action, "Request", version)])
                )
                frame = await recv_frame(ws)
                assert frame[:2] == [3, f"lv-{i}"], frame
                if action == "BootNotification":
                    assert frame[2]["status"] == "Accepted"
        # the table: state, version, boot status, last message and its time
        for cb_id, version_name in (("CS001", "2.0.1"), ("CS002", "1.6")):
            found = await examples.await_(
                "lv.table",
                _station_row(
                    cb_id,
                    state="connected",
                    version=version_name,
                    boot="Accepted",
                    last="Heartbeat",
                ),
            )
            (row,) = [r for r in found["payload"] if r["cbId"] == cb_id]
            assert len(row["at"]) == len("12:34:56"), row
        await examples.await_("lv.chart", lambda r: r["payload"] > 0)

        async def reset(cb_id: str) -> list[Any] | None:
            """Click `cb_id`'s row, press Reset; the frame the station got, if connected."""
            before = len(await examples.arecords("lv.selected"))
            await examples.asend(
                "lv.click", {"payload": {"cbId": cb_id, "version": "", "state": ""}}
            )
            await examples.await_(
                "lv.selected", lambda r: r["payload"].startswith(cb_id), after=before
            )
            await examples.asend("lv.button", {"payload": ""})
            ws = {"CS001": cs201, "CS002": cs16}.get(cb_id)
            return await recv_frame(ws) if ws else None

        # a 2.0.1 station gets an Immediate Reset and answers it
        frame = await reset("CS001")
        assert frame is not None and frame[0] == 2 and frame[2:] == ["Reset", {"type": "Immediate"}]
        await cs201.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
        await examples.await_(
            "lv.answer", lambda r: r["payload"] == "CS001 answered Reset: Accepted"
        )
        # a 1.6 station gets a Soft one; a CALLERROR answer is shown too
        frame = await reset("CS002")
        assert frame is not None and frame[2:] == ["Reset", {"type": "Soft"}]
        await cs16.send(json.dumps([4, frame[1], "NotSupported", "not today", {}]))
        await examples.await_(
            "lv.answer",
            lambda r: r["payload"] == "CS002 answered Reset with NotSupported: not today",
        )
        # a station that is not connected: the error the CSMS node gives
        assert await reset("CS009") is None
        await examples.await_(
            "lv.answer", lambda r: r["payload"].startswith("Reset to CS009 failed: ")
        )
    finally:
        await cs201.close()
        await cs16.close()
    await examples.await_("lv.table", _station_row("CS001", state="disconnected"))
    await examples.await_("lv.table", _station_row("CS002", state="disconnected"))
