"""Hashed CS Auth entries through a real Node-RED (docs/security.md, "Password hashes").

One Node-RED for the module. Before it starts, its user directory gets a
flows file and a credentials file as an earlier version of this package
saved them (``basic_auths`` stored while it was a ``text`` credential): a
plain entry, a scrypt hash made by ``ocpp-nodes hash-password`` and a
PBKDF2 hash printed in passlib's documentation. Then stations of the Python
``ocpp`` package log in; the admin API is asked for the credentials; a
deploy carries ``__PWRD__`` (what the editor sends for an unchanged
password field); the flow reads, writes and makes hashes with commands. At
the end no password, hash, salt or digest may be in the Node-RED log, a
status, the log port, a caught error or the flows file.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from ocpp.v201 import ChargePoint, call

from tests.flowkit import Flow, connect_station, http_api, node, recorder, wait_port
from tests.nodered import NodeRed, free_port, running_node_red, wait_until

pytestmark = pytest.mark.nodered

TAB = "pw.tab"
# Distinctive, so that any appearance is a leak and not a coincidence.
PW_PLAIN = "Pl4inStationSecret0917"
PW_SCRYPT = "Sc7ryptStationSecret2231"
PW_PASSLIB = "password"  # passlib's documented example: too common to search for
PW_SET = "St9setByFlowSecret5121"
PW_MADE = "Md3madeByFlowSecret6674"
PW_WRONG = "Wr0ngStationSecret4410"
PASSLIB_PBKDF2 = (
    "$pbkdf2-sha256$6400$0ZrzXitFSGltTQnBWOsdAw$Y11AchqV4b0sUisdZd0Xr97KWoymNE0LNNrnEgY4H9M"
)
BROKEN_HASH = "$scrypt$ln=14,r=8,p=1$Br0kenSaltPart9$tooShortDigest"
SEARCHED = [PW_PLAIN, PW_SCRYPT, PW_SET, PW_MADE, PW_WRONG, "Br0kenSaltPart9", "tooShortDigest"]
RESPONDER_JS = """
if (!msg.topic || !msg.topic.endsWith('/Request')) return null;
if (msg.payload.command !== 'BootNotification') return null;
msg.payload = {msgType: 3, data: {currentTime: new Date().toISOString(), interval: 300,
  status: 'Accepted'}};
return msg;
"""
TAGS = ["csms1", "csms2", "csmslog", "status", "catch"]


def hash_with_cli(password: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ocpp_nodes", "hash-password"],
        input=password + "\n",
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def material(hash_text: str) -> list[str]:
    """The salt and digest of a hash string: what must never come out."""
    return hash_text.split("$")[-2:]


def flow_nodes(port: int) -> list[dict[str, Any]]:
    rec = "pw.rec."
    nodes: list[dict[str, Any]] = [
        {"id": TAB, "type": "tab", "label": "passwords"},
        node(
            "csms",
            "CSMS",
            [[rec + "csms1", "responder"], [rec + "csms2"], [rec + "csmslog"]],
            tab=TAB,
            port=str(port),
            path="/ocpp",
            ocpp_logging=True,
            outputs=3,
            connection_events=True,
        ),
        node("responder", "function", [["csms"]], tab=TAB, func=RESPONDER_JS, outputs=1),
        node("status", "status", [[rec + "status"]], tab=TAB, scope=None),
        node("catch", "catch", [[rec + "catch"]], tab=TAB, scope=None, uncaught=False),
    ]
    nodes += [recorder(rec + tag, TAB, tag) for tag in TAGS]
    nodes += http_api(TAB, {"csms": "csms"})
    return nodes


async def boot(port: int, cb_id: str, password: str) -> str:
    """A station of the ``ocpp`` package logs in and boots; the CSMS's answer's status."""
    async with await connect_station(f"ws://127.0.0.1:{port}/ocpp", cb_id, password) as ws:
        station = ChargePoint(cb_id, ws, response_timeout=15)
        reader = asyncio.create_task(station.start())
        try:
            result = await station.call(
                call.BootNotification(
                    charging_station={"model": "M", "vendor_name": "V"}, reason="PowerUp"
                )
            )
        finally:
            reader.cancel()
        return str(result.status)


async def refused(port: int, cb_id: str, password: str) -> int:
    """The HTTP status a login with ``password`` gets (it must be refused)."""
    with pytest.raises(websockets.InvalidStatus) as info:
        await boot(port, cb_id, password)
    return int(info.value.response.status_code)


def command(flow: Flow, name: str, data: Any = None, marker: str | None = None) -> None:
    payload: dict[str, Any] = {"msgType": 99, "command": name}
    if data is not None:
        payload["data"] = data
    flow.send("csms", {"payload": payload, "customData": marker})


def reply(flow: Flow, marker: str) -> dict[str, Any]:
    return flow.wait("csms1", lambda r: r.get("customData") == marker)


class Story:
    def __init__(self, runtime: NodeRed, flow: Flow, port: int, scrypt_hash: str) -> None:
        self.runtime = runtime
        self.flow = flow
        self.port = port
        self.scrypt_hash = scrypt_hash
        self.results: dict[str, Any] = {}
        self.hashes: list[str] = [scrypt_hash, PASSLIB_PBKDF2]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    user_dir: Path = tmp_path_factory.mktemp("passwords-node-red")
    port = free_port()
    scrypt_hash = hash_with_cli(PW_SCRYPT)
    auths = {"PLAIN1": PW_PLAIN, "SCRYPT1": scrypt_hash, "PBKDF1": PASSLIB_PBKDF2}
    # as an earlier version saved them: credentials in their own (here unencrypted) file
    (user_dir / "flows.json").write_text(json.dumps(flow_nodes(port)))
    (user_dir / "flows_cred.json").write_text(
        json.dumps({"csms": {"basic_auths": json.dumps(auths)}})
    )
    with running_node_red(user_dir, "test_passwords_nodered") as runtime:
        flow = Flow(runtime)
        wait_port(port)
        story = Story(runtime, flow, port, scrypt_hash)
        results = story.results

        async def logins() -> None:
            results["plain"] = await boot(port, "PLAIN1", PW_PLAIN)
            results["scrypt"] = await boot(port, "SCRYPT1", PW_SCRYPT)
            results["scrypt again"] = await boot(port, "SCRYPT1", PW_SCRYPT)  # remembered
            results["passlib"] = await boot(port, "PBKDF1", PW_PASSLIB)
            results["wrong"] = [
                await refused(port, "SCRYPT1", PW_WRONG),
                await refused(port, "SCRYPT1", scrypt_hash),  # the hash is not the password
                await refused(port, "PLAIN1", PW_WRONG),
                await refused(port, "PBKDF1", PW_WRONG),
            ]

        asyncio.run(logins())

        # the admin API, then a deploy as the editor makes it with the field unchanged
        results["credentials"] = runtime.http("GET", "/credentials/CSMS/csms")
        nodes = runtime.flows()
        for item in nodes:
            if item["id"] == "csms":
                item["credentials"] = {"basic_auths": "__PWRD__"}
                item["name"] = "redeployed"
        runtime.deploy(nodes)
        wait_until(
            lambda: any(n.get("name") == "redeployed" for n in runtime.flows()), 20, what="deploy"
        )
        wait_port(port)
        results["after __PWRD__"] = asyncio.run(boot(port, "SCRYPT1", PW_SCRYPT))
        results["cred file"] = json.loads((user_dir / "flows_cred.json").read_text())

        # the commands
        command(flow, "get_auth_list", marker="read-list")
        command(flow, "get_auth_cs", {"name": "SCRYPT1"}, marker="read-cs")
        results["read-list"] = reply(flow, "read-list")["payload"]["auth_list"]
        results["read-cs"] = reply(flow, "read-cs")["payload"]["auth_cs"]
        # read, change, write back: the masked hashes keep their hashes
        written = {**results["read-list"], "SET1": PW_SET}
        command(flow, "set_auth_list", written, marker="write-list")
        command(flow, "hash_password", {"password": PW_MADE}, marker="made")
        made = reply(flow, "made")
        results["made reply"] = made
        made_hash = made["payload"]["hash"]
        story.hashes.append(made_hash)
        command(flow, "set_auth_cs", {"name": "MADE1", "password": made_hash}, marker="set-cs")
        command(flow, "get_auth_cs", {"name": "MADE1"}, marker="read-made")
        results["read-made"] = reply(flow, "read-made")["payload"]["auth_cs"]

        async def logins_after_commands() -> None:
            results["after set_auth_list"] = [
                await boot(port, "SCRYPT1", PW_SCRYPT),
                await boot(port, "PBKDF1", PW_PASSLIB),
                await boot(port, "SET1", PW_SET),
                await boot(port, "MADE1", PW_MADE),
            ]

        asyncio.run(logins_after_commands())

        # mistakes: a broken hash by command, and a deploy with one
        command(flow, "set_auth_cs", {"name": "BAD", "password": BROKEN_HASH}, marker="bad-cs")
        command(flow, "hash_password", {}, marker="bad-made")
        for marker in ("bad-cs", "bad-made"):
            flow.wait("catch", lambda r, m=marker: r.get("customData") == m)
        nodes = runtime.flows()
        for item in nodes:
            if item["id"] == "csms":
                item["credentials"] = {"basic_auths": json.dumps({"BAD": BROKEN_HASH})}
        runtime.deploy(nodes)
        runtime.wait_for_log("the entry of 'BAD'")
        yield story


def test_older_credentials_and_hashes_log_in(story: Story) -> None:
    results = story.results
    assert results["plain"] == "Accepted"
    assert results["scrypt"] == results["scrypt again"] == "Accepted"
    assert results["passlib"] == "Accepted"  # a hash another tool made, pasted in
    assert results["wrong"] == [401, 401, 401, 401]


def test_admin_api_does_not_give_the_list_back(story: Story) -> None:
    status, body = story.results["credentials"]
    assert status == 200
    # the list: only that there is one (the fleet mode broker login's: empty here)
    assert body == {"has_basic_auths": True, "fleet_username": "", "has_fleet_password": False}


def test_a_deploy_with_pwrd_keeps_the_list(story: Story) -> None:
    assert story.results["after __PWRD__"] == "Accepted"
    stored = json.loads(story.results["cred file"]["csms"]["basic_auths"])
    assert stored["SCRYPT1"] == story.scrypt_hash and stored["PLAIN1"] == PW_PLAIN


def test_reading_commands_mask_hashes(story: Story) -> None:
    results = story.results
    assert results["read-list"] == {
        "PLAIN1": PW_PLAIN,
        "SCRYPT1": "$scrypt$ln=14,r=8,p=1$*$*",
        "PBKDF1": "$pbkdf2-sha256$6400$*$*",
    }
    assert results["read-cs"] == "$scrypt$ln=14,r=8,p=1$*$*"
    assert results["read-made"] == "$scrypt$ln=14,r=8,p=1$*$*"


def test_written_lists_and_made_hashes_log_in(story: Story) -> None:
    assert story.results["after set_auth_list"] == ["Accepted"] * 4
    made = story.results["made reply"]
    assert made["payload"]["hash"].startswith("$scrypt$ln=14,r=8,p=1$")
    assert "password" not in made["payload"].get("data", {})


def test_a_broken_hash_is_a_clear_error(story: Story) -> None:
    errors = {
        r["customData"]: r["error"]["message"]
        for r in story.flow.records("catch")
        if r.get("customData") in ("bad-cs", "bad-made")
    }
    assert "the entry of 'BAD'" in errors["bad-cs"] and "digest" in errors["bad-cs"]
    assert "needs data.password" in errors["bad-made"]
    assert "the entry of 'BAD'" in story.runtime.log()


def leaks(text: str, story: Story) -> list[str]:
    secrets = SEARCHED + [part for h in story.hashes for part in material(h)]
    return [secret for secret in secrets if secret in text]


def test_no_secret_material_anywhere(story: Story) -> None:
    flow = story.flow
    masked_reads = {"read-list", "read-cs", "read-made", "made"}
    outputs: list[Any] = [
        r
        for tag in ("csms1", "csms2", "csmslog", "status")
        for r in flow.records(tag)
        if r.get("customData") not in masked_reads
    ]
    # a caught msg is the flow's own input (it holds what the flow sent): its error only
    outputs += [r.get("error") for r in flow.records("catch")]
    assert any(r.get("msgFrom") for r in outputs), "the log port recorded nothing"
    for where, text in (
        ("outputs, statuses, caught errors", json.dumps(outputs)),
        ("Node-RED log", story.runtime.log()),
        ("flows export", json.dumps(story.runtime.flows())),
        ("flows file", (story.runtime.user_dir / "flows.json").read_text()),
    ):
        assert not leaks(text, story), (where, leaks(text, story))
    # the masked replies hold no material either (only PLAIN1's plain password, by design)
    read = json.dumps([r for r in flow.records("csms1") if r.get("customData") in masked_reads])
    assert set(leaks(read, story)) <= {PW_PLAIN, *material(story.hashes[-1])}
