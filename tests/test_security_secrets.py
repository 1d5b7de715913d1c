"""Passwords stay secret (docs/security.md, "Passwords").

Through a real Node-RED (tests/nodered.py): a CSMS whose *CS Auth* list and a
CS whose password hold distinctive strings go through a boot, wrong-password
logins, ``set_auth_cs``, bad ``set_auth_list`` commands and ``connect``
commands with new passwords; then no password may appear in the Node-RED log,
a status, the OCPP log port, an error a Catch node got, or the flows export.
The replies of ``get_auth_list`` / ``get_auth_cs`` carry passwords by design:
they are the positive control (the secrets do reach the recorded flow when a
node gives them out) and are left out of the search.

With the daemon alone (tests/shim_double.py): ``allow_auth_list_read: false``
turns the reading commands off, and every wrong password gets the same 401.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect

from tests.common import OCPP201, auth_header, start_csms
from tests.flowkit import Flow, connect_station, http_api, recorder, wait_port
from tests.nodered import NodeRed, free_port, running_node_red, wait_until
from tests.shim_double import ShimDouble

# Distinctive, so any appearance is a leak and not a coincidence.
PW_CSX = "Zq9csmsSecret7781"  # CSX's entry in the CSMS's list = the CS node's csms_pw
PW_PYS = "Kp3stationSecret4402"  # a Python station's entry
PW_WRONG_PY = "Wr0ngLoginSecret6612"  # what an intruder tries
PW_NEW = "Np7newSecret5530"  # set by set_auth_cs, then used by the CS's connect command
PW_WRONG_CS = "Hx4wrongCsSecret2209"  # a CS connect command with a wrong password
PW_BAD_LIST_1 = "Bx2badListSecret9911"  # inside a set_auth_list that is not valid JSON
PW_BAD_LIST_2 = "Vm8badListSecret3317"  # inside a set_auth_list with a non-text password
SECRETS = [PW_CSX, PW_PYS, PW_WRONG_PY, PW_NEW, PW_WRONG_CS, PW_BAD_LIST_1, PW_BAD_LIST_2]


def secret_forms(secret: str) -> list[str]:
    """The password, and the Basic auth tokens it travels in."""
    forms = [secret]
    for user in ("CSX", "PYS"):
        forms.append(base64.b64encode(f"{user}:{secret}".encode()).decode())
    return forms


def leaks(text: str) -> list[str]:
    return [form for secret in SECRETS for form in secret_forms(secret) if form in text]


TAB = "secrets.tab"
BOOT = {"reason": "PowerUp", "chargingStation": {"model": "M1", "vendorName": "V1"}}
RESPONDER_JS = """
if (!msg.topic || !msg.topic.endsWith('/Request')) return null;
const answers = {
  BootNotification: {currentTime: new Date().toISOString(), interval: 300, status: 'Accepted'},
};
const data = answers[msg.payload.command];
if (data === undefined) return null;
msg.payload = {msgType: 3, data};
return msg;
"""
TAGS = ["csms1", "csms2", "csmslog", "cs1", "cs2", "cslog", "status", "catch"]
READ_MARKERS = ("read-list", "read-cs")  # customData of the reading commands


def secrets_flow(port: int) -> list[dict[str, Any]]:
    rec = "sec.rec."
    nodes: list[dict[str, Any]] = [
        {"id": TAB, "type": "tab", "label": "secrets"},
        {
            "id": "csms",
            "type": "CSMS",
            "z": TAB,
            "port": str(port),
            "path": "/ocpp",
            "ocpp_logging": True,
            "outputs": 3,
            "connection_events": True,
            "credentials": {"basic_auths": json.dumps({"CSX": PW_CSX, "PYS": PW_PYS})},
            "x": 300,
            "y": 100,
            "wires": [[rec + "csms1", "responder"], [rec + "csms2"], [rec + "csmslog"]],
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
        {"id": "tgt", "type": "target-csms", "name": "P", "url": f"ws://127.0.0.1:{port}/ocpp"},
        {
            "id": "cs",
            "type": "CS",
            "z": TAB,
            "cbId": "CSX",
            "csms": "tgt",
            "auto_connect": True,
            "ocpp_logging": True,
            "outputs": 3,
            "ws_rt_minimum": "1",
            "ws_rt_repeat": "0",
            "ws_rt_rnd_range": "0",
            "credentials": {"csms_pw": PW_CSX},
            "x": 300,
            "y": 300,
            "wires": [[rec + "cs1"], [rec + "cs2"], [rec + "cslog"]],
        },
        {
            "id": "status",
            "type": "status",
            "z": TAB,
            "scope": None,
            "x": 100,
            "y": 600,
            "wires": [[rec + "status"]],
        },
        {
            "id": "catch",
            "type": "catch",
            "z": TAB,
            "scope": None,
            "uncaught": False,
            "x": 100,
            "y": 700,
            "wires": [[rec + "catch"]],
        },
    ]
    nodes += [recorder(rec + tag, TAB, tag) for tag in TAGS]
    nodes += http_api(TAB, {"csms": "csms", "cs": "cs"})
    return nodes


def command(flow: Flow, node: str, name: str, data: Any = None, marker: str | None = None) -> None:
    payload: dict[str, Any] = {"msgType": 99, "command": name}
    if data is not None:
        payload["data"] = data
    msg: dict[str, Any] = {"payload": payload}
    if marker is not None:
        msg["customData"] = marker
    flow.send(node, msg)


def online_count(flow: Flow) -> int:
    return sum(1 for r in flow.records("cs1") if (r.get("ocpp") or {}).get("websocket") == "ONLINE")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeRed, Flow]]:
    """Runs the whole story once; the tests below search what it left behind."""
    import asyncio

    user_dir: Path = tmp_path_factory.mktemp("secrets-node-red")
    with running_node_red(user_dir, "test_security_secrets") as runtime:
        port = free_port()
        runtime.deploy(secrets_flow(port))
        runtime.wait_for_endpoint("GET", "/t/records")
        flow = Flow(runtime)
        wait_port(port)

        # 1. the CS boots with its password
        flow.wait("cs1", lambda r: (r.get("ocpp") or {}).get("websocket") == "ONLINE")
        flow.send("cs", {"payload": {"command": "BootNotification", "data": BOOT}})
        flow.wait("cs1", lambda r: r.get("topic") == "CSX/Response")

        # 2. wrong-password logins, then a good one, from a Python station
        async def stations() -> None:
            for password in (PW_WRONG_PY, PW_PYS[:-1], PW_PYS + "x", PW_CSX):
                with pytest.raises(websockets.InvalidStatus) as info:
                    await connect_station(f"ws://127.0.0.1:{port}/ocpp", "PYS", password)
                assert info.value.response.status_code == 401
            ws = await connect_station(f"ws://127.0.0.1:{port}/ocpp", "PYS", PW_PYS)
            await ws.close()

        asyncio.run(stations())

        # 3. set_auth_cs, and two bad set_auth_list (each must end with an error)
        command(flow, "csms", "set_auth_cs", {"name": "CSX", "password": PW_NEW})
        command(flow, "csms", "set_auth_list", '{"CSX": "' + PW_BAD_LIST_1, marker="bad-1")
        command(flow, "csms", "set_auth_list", {"CSX": 5, "PYS": [PW_BAD_LIST_2]}, marker="bad-2")
        for marker in ("bad-1", "bad-2"):
            flow.wait("catch", lambda r, m=marker: r.get("customData") == m)

        # 4. the CS: connect with a wrong password (refused), then with the new one
        before = online_count(flow)
        command(flow, "cs", "connect", {"password": PW_WRONG_CS})
        runtime.wait_for_log("HTTP 401", timeout=20)
        command(flow, "cs", "connect", {"password": PW_NEW})
        wait_until(lambda: online_count(flow) > before, 20, what="CSX back online")
        flow.send("cs", {"payload": {"command": "BootNotification", "data": BOOT}})
        wait_until(
            lambda: len([r for r in flow.records("cs1") if r.get("topic") == "CSX/Response"]) >= 2,
            15,
            what="the second boot",
        )

        # 5. the reading commands: by design they answer the flow with passwords
        command(flow, "csms", "get_auth_list", marker="read-list")
        command(flow, "csms", "get_auth_cs", {"name": "CSX"}, marker="read-cs")
        flow.wait("csms1", lambda r: r.get("customData") == "read-cs")
        yield runtime, flow


def searchable_records(flow: Flow, tag: str) -> list[dict[str, Any]]:
    return [r for r in flow.records(tag) if r.get("customData") not in READ_MARKERS]


@pytest.mark.nodered
def test_reading_commands_do_hand_out_passwords(scenario: tuple[NodeRed, Flow]) -> None:
    """The positive control: the search below would see a password that got out."""
    _runtime, flow = scenario
    read = {
        r["customData"]: r for r in flow.records("csms1") if r.get("customData") in READ_MARKERS
    }
    assert read["read-list"]["payload"]["auth_list"] == {"CSX": PW_NEW, "PYS": PW_PYS}
    assert read["read-cs"]["payload"]["auth_cs"] == PW_NEW
    assert leaks(json.dumps(read)), "the leak search does not find a password in plain sight"


@pytest.mark.nodered
def test_no_password_in_the_node_red_log(scenario: tuple[NodeRed, Flow]) -> None:
    runtime, _flow = scenario
    log = runtime.log()
    assert "HTTP 401" in log  # the refusals are logged ...
    assert not leaks(log), [line for line in log.splitlines() if leaks(line)]  # ... bare


@pytest.mark.nodered
def test_no_password_in_any_status(scenario: tuple[NodeRed, Flow]) -> None:
    _runtime, flow = scenario
    statuses = searchable_records(flow, "status")
    assert len(statuses) >= 3, statuses
    text = json.dumps([r.get("status") for r in statuses])
    assert not leaks(text), leaks(text)


@pytest.mark.nodered
def test_no_password_on_the_log_port(scenario: tuple[NodeRed, Flow]) -> None:
    _runtime, flow = scenario
    logged = searchable_records(flow, "csmslog") + searchable_records(flow, "cslog")
    assert any(r.get("msgFrom") for r in logged), "the log ports recorded nothing"
    text = json.dumps(logged)
    assert not leaks(text), leaks(text)


@pytest.mark.nodered
def test_no_password_in_caught_errors(scenario: tuple[NodeRed, Flow]) -> None:
    _runtime, flow = scenario
    caught = searchable_records(flow, "catch")
    markers = {r.get("customData") for r in caught}
    assert {"bad-1", "bad-2"} <= markers, caught
    text = json.dumps([r.get("error") for r in caught])
    assert not leaks(text), leaks(text)


@pytest.mark.nodered
def test_no_password_in_the_other_outputs(scenario: tuple[NodeRed, Flow]) -> None:
    """Port 1 and 2 of both nodes (requests, answers, connection events, command replies)."""
    _runtime, flow = scenario
    text = json.dumps([searchable_records(flow, tag) for tag in ("csms1", "csms2", "cs1", "cs2")])
    assert not leaks(text), leaks(text)


@pytest.mark.nodered
def test_flows_export_and_file_hold_no_credentials(scenario: tuple[NodeRed, Flow]) -> None:
    runtime, _flow = scenario
    exported = runtime.flows()
    text = json.dumps(exported)
    assert not leaks(text), leaks(text)
    for node in exported:
        if node.get("type") in ("CS", "CSMS"):
            credentials = node.get("credentials") or {}
            assert set(credentials) <= {"has_csms_pw"}, credentials
            assert "basic_auths" not in node and "csms_pw" not in node, node
    # the flows file (credentials live in their own file, which Node-RED encrypts
    # unless its settings say otherwise, as the test harness does)
    flow_files = [p for p in runtime.user_dir.glob("flows*.json") if "_cred" not in p.name]
    assert flow_files
    for path in flow_files:
        assert not leaks(path.read_text()), path


# -- the daemon alone ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allow", "readable"),
    [({"allow_auth_list_read": False}, False), ({"allow_auth_list_read": True}, True), ({}, True)],
    ids=["off", "on", "absent"],
)
async def test_allow_auth_list_read_switch(
    fresh_shim: ShimDouble, allow: dict[str, Any], readable: bool
) -> None:
    await start_csms(fresh_shim, "csms", {"CP1": PW_CSX}, allow)
    answers = {}
    for name, data in (
        ("get_auth_list", None),
        ("get_auth_cs", {"name": "CP1"}),
        ("get_auth_user", {"name": "CP1"}),
    ):
        payload: dict[str, Any] = {"msgType": 99, "command": name}
        if data is not None:
            payload["data"] = data
        answers[name] = await fresh_shim.done(fresh_shim.input("csms", {"payload": payload}))
    replies = fresh_shim.sent("csms", 0)
    if readable:
        assert all("error" not in done for done in answers.values()), answers
        assert PW_CSX in json.dumps(replies)
    else:
        for name, done in answers.items():
            assert "turned off" in done.get("error", ""), (name, done)
            assert PW_CSX not in done["error"]
        assert PW_CSX not in json.dumps(fresh_shim.frames["csms"]), "a password reached the flow"
        # writing stays allowed, and reading stays off after it
        seq = fresh_shim.input(
            "csms",
            {
                "payload": {
                    "msgType": 99,
                    "command": "set_auth_cs",
                    "data": {"name": "CP2", "password": PW_NEW},
                }
            },
        )
        assert "error" not in await fresh_shim.done(seq)
        seq = fresh_shim.input(
            "csms", {"payload": {"msgType": 99, "command": "get_auth_cs", "data": {"name": "CP2"}}}
        )
        assert "turned off" in (await fresh_shim.done(seq)).get("error", "")
        assert PW_NEW not in json.dumps(fresh_shim.frames["csms"])


@pytest.mark.asyncio(loop_scope="module")  # the loop of the module's shim (tests/conftest.py)
async def test_every_wrong_password_gets_the_same_401(shim: ShimDouble) -> None:
    port = await start_csms(shim, "csms", {"CP1": PW_CSX})
    url = f"ws://127.0.0.1:{port}/ocpp/CP1"
    wrong = {
        "same length": PW_CSX[:-1] + chr(ord(PW_CSX[-1]) ^ 1),
        "same length, first char": chr(ord(PW_CSX[0]) ^ 1) + PW_CSX[1:],
        "shorter": "x",
        "longer": PW_CSX * 3,
        "prefix": PW_CSX[:-1],
        "extension": PW_CSX + "0",
        "empty": "",
        "other case": PW_CSX.swapcase(),
        "non-ascii": PW_CSX[:-1] + "é",
    }
    answers = {}
    for name, password in wrong.items():
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(
                url,
                subprotocols=OCPP201,
                additional_headers=auth_header("CP1", password),
                open_timeout=5,
            ):
                pass
        response = info.value.response
        answers[name] = (
            response.status_code,
            bytes(response.body or b""),
            response.headers.get("WWW-Authenticate"),
        )
    # the right password for the wrong user, and no header at all
    for name, headers in (("user mismatch", auth_header("CP2", PW_CSX)), ("no header", {})):
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(
                url,
                subprotocols=OCPP201,
                additional_headers=headers,
                open_timeout=5,
            ):
                pass
        response = info.value.response
        answers[name] = (
            response.status_code,
            bytes(response.body or b""),
            response.headers.get("WWW-Authenticate"),
        )
    assert {a[0] for a in answers.values()} == {401}, answers
    # no answer tells more than another (nothing about length or prefix)
    assert len(set(answers.values())) == 1, answers
    async with connect(
        url,
        subprotocols=OCPP201,
        additional_headers=auth_header("CP1", PW_CSX),
        open_timeout=5,
    ) as ws:
        assert ws.subprotocol == "ocpp2.0.1"
