"""Every action of OCPP 1.6, 2.0.1 and 2.1 through our own nodes, in a REAL Node-RED.

One Node-RED runs one flow for the module:

- CSMS node ``csms`` accepting ``["ocpp1.6", "ocpp2.0.1", "ocpp2.1"]``;
- CS nodes ``cs16``, ``cs201``, ``cs21`` (cbIds ``EA16``, ``EA201``, ``EA21``),
  each offering one version (``ocpp_versions``) and connected to ``csms``;
  no ``boot_rules`` (the property is absent);
- behind output 1 of each node: a recorder (tag = the node's id) and an
  answering function node that gets every ``<cbId>/Request`` and sends back
  ``{ocpp: msg.ocpp, payload: {msgType: 3, data}}`` to the same node, ``data``
  from a JSON table of :func:`tests.payloads.valid_payload` responses
  (version -> action -> payload) holding only the actions that node's role
  receives;
- a Catch node (tag ``catch``: inputs that ended with ``done(err)``);
- ``POST /t/in/<node>`` with a JSON list sends each msg of it into the node.

Every request of a node goes in at once: a node keeps one CALL outstanding
per connection and queues the others (``queue_size``), so this is what a flow
may do. For each version, each action goes in each direction that the version
table allows (``sent_by``), with ``valid_payload(action, "Request", version)``
and ``customData`` naming it; 2.1's SEND (``NotifyPeriodicEventStream``) goes
CS -> CSMS with ``msgType: 6``.

A round trip counts when the receiving node's flow got ``<cbId>/Request``
with the request's action and data and the connection's version, and the
sending node's flow got ``<cbId>/Response`` with the same ``customData``,
action, version and the response's data; a SEND when the CSMS node's flow
got ``<cbId>/Send`` with its data and version, and nothing came back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest

from ocpp_nodes.rpc import V16, V21, V201, OcppVersion, Role
from tests.flowkit import Flow, Record, http_api, node, recorder
from tests.nodered import NodeRed, free_port, running_node_red
from tests.payloads import sent_by, unconfirmed_by, valid_payload

pytestmark = pytest.mark.nodered

TAB = "everyaction"
PASSWORD = "every-action-pw"
_node = partial(node, tab=TAB)

CS, CSMS = Role.CHARGING_STATION, Role.CSMS

#: CS node id -> (cbId, its only version)
STATIONS: dict[str, tuple[str, OcppVersion]] = {
    "cs16": ("EA16", V16),
    "cs201": ("EA201", V201),
    "cs21": ("EA21", V21),
}

# The flow's answer to every received request, from the table (version -> action -> data).
ANSWER_JS = """
const answers = ANSWERS;
if (typeof msg.topic !== "string" || !msg.topic.endsWith("/Request")) return null;
const data = (answers[msg.ocpp.ocppVersion] || {})[msg.ocpp.command];
if (data === undefined) return null;  // not in the table: unanswered (the test says so)
return {ocpp: msg.ocpp, payload: {msgType: 3, data: data}};
"""


@dataclass(frozen=True)
class Case:
    """One message that must go through: ``action`` of ``version`` sent by ``sender``."""

    version: OcppVersion
    sender: Role
    action: str
    send: bool = False  # a SEND (message type 6) rather than a CALL

    @property
    def key(self) -> str:
        kind = "SEND" if self.send else "CALL"
        way = f"{self.sender.value}->{self.sender.peer.value}"
        return f"{self.version.name} {way} {kind} {self.action}"

    @property
    def station(self) -> str:
        return next(sid for sid, (_, v) in STATIONS.items() if v is self.version)

    @property
    def cb_id(self) -> str:
        return STATIONS[self.station][0]

    @property
    def sender_node(self) -> str:
        return self.station if self.sender is CS else "csms"

    @property
    def receiver_node(self) -> str:
        return "csms" if self.sender is CS else self.station

    @property
    def request(self) -> dict[str, Any]:
        return valid_payload(self.action, "Send" if self.send else "Request", self.version)

    @property
    def response(self) -> dict[str, Any]:
        return valid_payload(self.action, "Response", self.version)

    def msg(self) -> dict[str, Any]:
        """The msg the sender's flow puts into its node."""
        payload: dict[str, Any] = {"command": self.action, "data": self.request}
        if self.send:
            payload["msgType"] = 6
        if self.sender is CSMS:
            payload["cbId"] = self.cb_id
        return {"payload": payload, "customData": self.key}


CASES: list[Case] = [
    Case(version, sender, action)
    for _, version in STATIONS.values()
    for sender in (CS, CSMS)
    for action in sent_by(version, sender)
] + [
    Case(version, sender, action, send=True)
    for _, version in STATIONS.values()
    for sender in (CS, CSMS)
    for action in unconfirmed_by(version, sender)
]


def answers_of(receiver: Role) -> dict[str, dict[str, Any]]:
    """What a node of role ``receiver`` answers: version -> action -> response data."""
    return {
        case.version.name: {
            other.action: other.response
            for other in CASES
            if other.version is case.version and other.sender is receiver.peer and not other.send
        }
        for case in CASES
    }


def every_action_flow(csms_port: int) -> list[dict[str, Any]]:
    auths = {cb_id: PASSWORD for cb_id, _ in STATIONS.values()}
    nodes: list[dict[str, Any]] = [
        {"id": TAB, "type": "tab", "label": "every action"},
        _node(
            "csms",
            "CSMS",
            [["csms.answer", "rec.csms"], []],
            port=str(csms_port),
            path="/ocpp",
            ocpp_versions=["ocpp1.6", "ocpp2.0.1", "ocpp2.1"],
            ocpp_logging=False,
            outputs=2,
            message_timeout=15,
            credentials={"basic_auths": json.dumps(auths)},
        ),
        _node(
            "csms.answer",
            "function",
            [["csms"]],
            func=ANSWER_JS.replace("ANSWERS", json.dumps(answers_of(CSMS))),
            outputs=1,
        ),
        recorder("rec.csms", TAB, "csms"),
        _node("target", "target-csms", url=f"ws://127.0.0.1:{csms_port}/ocpp", name="our CSMS"),
        _node("catch", "catch", [["rec.catch"]], scope=None, uncaught=False),
        recorder("rec.catch", TAB, "catch"),
    ]
    cs_answers = ANSWER_JS.replace("ANSWERS", json.dumps(answers_of(CS)))
    for station, (cb_id, version) in STATIONS.items():
        nodes += [
            _node(
                station,
                "CS",
                [[f"{station}.answer", f"rec.{station}"], []],
                cbId=cb_id,
                csms="target",
                ocpp_versions=[version.subprotocol],
                auto_connect=True,
                ocpp_logging=False,
                outputs=2,
                ws_rt_minimum=0.5,
                ws_rt_repeat=0,
                ws_rt_rnd_range=0,
                message_timeout=15,
                credentials={"csms_pw": PASSWORD},
            ),
            _node(f"{station}.answer", "function", [[station]], func=cs_answers, outputs=1),
            recorder(f"rec.{station}", TAB, station),
        ]
    return nodes + http_api(TAB, {name: name for name in ("csms", *STATIONS)})


@dataclass
class Run:
    flow: Flow
    records: list[Record]
    seconds: float


def _settled(flow: Flow, timeout: float) -> list[Record]:
    """Every record once each CALL has its Response (or an error) and the SENDs are in,
    or what there is after ``timeout``."""
    calls = {case.key for case in CASES if not case.send}
    sends = {case.key for case in CASES if case.send}
    deadline = time.monotonic() + timeout
    while True:
        records = flow.records()
        done = {
            r.get("customData")
            for r in records
            if r["tag"] == "catch" or str(r.get("topic", "")).endswith(("/Response", "/Error"))
        }
        received_sends = [r for r in records if str(r.get("topic", "")).endswith("/Send")]
        if (calls <= done and len(received_sends) >= len(sends)) or time.monotonic() > deadline:
            return records
        time.sleep(0.25)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeRed]:
    with running_node_red(tmp_path_factory.mktemp("every-action-nr"), "every_action") as started:
        yield started


@pytest.fixture(scope="module")
def run(runtime: NodeRed) -> Run:
    """Deploy, wait until every station is connected, send everything, wait for the answers."""
    runtime.deploy(every_action_flow(free_port()))
    flow = Flow(runtime)
    for station in STATIONS:
        flow.wait(station, lambda r: (r.get("ocpp") or {}).get("websocket") == "ONLINE", timeout=30)
    started = time.monotonic()
    for sender in ("csms", *STATIONS):
        batch = [case.msg() for case in CASES if case.sender_node == sender]
        status, body = runtime.wait_for_endpoint("POST", f"/t/in/{sender}", batch)
        assert status == 200, (status, body)
    records = _settled(flow, timeout=25)
    return Run(flow, records, time.monotonic() - started)


def _find(records: list[Record], tag: str, pred: Any) -> list[Record]:
    return [r for r in records if r["tag"] == tag and pred(r)]


def _error_message(record: Record) -> str:
    return str((record.get("error") or {}).get("message"))


def _failure(case: Case, records: list[Record]) -> str | None:
    """Why ``case`` did not go through (every reason seen, on one line), or None."""
    # done(err) of the sender's input, and of the receiving flow's answer
    reasons = [
        f"{case.sender_node}: {_error_message(r)}"
        for r in _find(records, "catch", lambda r: r.get("customData") == case.key)
    ]
    reasons += [
        f"{case.receiver_node} refused the answer: {_error_message(r)}"
        for r in _find(
            records,
            "catch",
            lambda r: (
                (r.get("ocpp") or {}).get("cbId") == case.cb_id
                and (r.get("ocpp") or {}).get("command") == case.action
                and (r.get("error") or {}).get("source", {}).get("id") == case.receiver_node
            ),
        )
    ]
    reasons.append(_received_wrong(case, records) or "")
    reasons.append(_answered_wrong(case, records) or "")
    found = [reason for reason in reasons if reason]
    return "; ".join(found) if found else None


def _received_wrong(case: Case, records: list[Record]) -> str | None:
    topic = f"{case.cb_id}/{'Send' if case.send else 'Request'}"
    got = _find(
        records,
        case.receiver_node,
        lambda r: (
            r.get("topic") == topic and (r.get("payload") or {}).get("command") == case.action
        ),
    )
    if len(got) != 1:
        return f"{len(got)} x {topic} {case.action} at {case.receiver_node}'s flow"
    received = got[0]
    if received["payload"].get("data") != case.request:
        return f"{topic} data {received['payload'].get('data')!r} != sent {case.request!r}"
    version = (received.get("ocpp") or {}).get("ocppVersion")
    if version != case.version.name:
        return f"{topic} has ocppVersion {version!r}"
    return None


def _answered_wrong(case: Case, records: list[Record]) -> str | None:
    answers = _find(records, case.sender_node, lambda r: r.get("customData") == case.key)
    if case.send:
        return f"a SEND was answered: {answers}" if answers else None
    if len(answers) != 1:
        return f"{len(answers)} answers at {case.sender_node}'s flow"
    answer = answers[0]
    if answer.get("topic") != f"{case.cb_id}/Response":
        return f"answer {answer.get('topic')}: {answer.get('payload')}"
    if answer["payload"].get("command") != case.action:
        return f"answer for command {answer['payload'].get('command')!r}"
    if answer["payload"].get("data") != case.response:
        return f"answer data {answer['payload'].get('data')!r} != {case.response!r}"
    if (answer.get("ocpp") or {}).get("ocppVersion") != case.version.name:
        return f"answer has ocppVersion {(answer.get('ocpp') or {}).get('ocppVersion')!r}"
    return None


def test_the_cases_are_every_action_in_every_direction_the_versions_allow() -> None:
    counted = {
        (version.name, sender): len(
            [c for c in CASES if c.version is version and c.sender is sender]
        )
        for _, version in STATIONS.values()
        for sender in (CS, CSMS)
    }
    # 1.6: 14 + 26; 2.0.1: 25 + 40; 2.1: 36 + 55, and the one SEND of the station
    assert counted == {
        ("1.6", CS): 14,
        ("1.6", CSMS): 26,
        ("2.0.1", CS): 25,
        ("2.0.1", CSMS): 40,
        ("2.1", CS): 37,
        ("2.1", CSMS): 55,
    }
    assert [c.key for c in CASES if c.send] == ["2.1 CS->CSMS SEND NotifyPeriodicEventStream"]
    assert len({c.key for c in CASES}) == len(CASES)


def test_every_action_round_trips_through_our_nodes(run: Run) -> None:
    failures = {case.key: why for case in CASES if (why := _failure(case, run.records))}
    assert not failures, (
        f"{len(failures)} of {len(CASES)} did not round-trip (after {run.seconds:.1f} s):\n"
        + "\n".join(f"  {key}: {why}" for key, why in sorted(failures.items()))
    )


def test_nothing_else_reached_the_flows(run: Run) -> None:
    """No request nobody sent, no CALLERROR, no done(err) of an input that is not a case."""
    keys = {case.key for case in CASES}
    unexplained = [
        r
        for r in run.records
        if (r["tag"] == "catch" and r.get("customData") not in keys)
        or str(r.get("topic", "")).endswith("/Error")
    ]
    requests = len([r for r in run.records if str(r.get("topic", "")).endswith("/Request")])
    assert not unexplained, unexplained
    assert requests == len([c for c in CASES if not c.send]), requests


def test_a_csms_node_refuses_to_send_the_stations_send_message(run: Run) -> None:
    """2.1: only the Charging Station sends NotifyPeriodicEventStream."""
    key = "refused SEND from the CSMS"
    data = valid_payload("NotifyPeriodicEventStream", "Send", V21)
    msg = {
        "payload": {
            "msgType": 6,
            "command": "NotifyPeriodicEventStream",
            "data": data,
            "cbId": STATIONS["cs21"][0],
        },
        "customData": key,
    }
    status, body = run.flow.runtime.wait_for_endpoint("POST", "/t/in/csms", [msg])
    assert status == 200, (status, body)
    error = run.flow.wait("catch", lambda r: r.get("customData") == key, timeout=10)
    assert (error.get("error") or {}).get("source", {}).get("id") == "csms", error
    time.sleep(0.5)
    assert not [r for r in run.flow.records("cs21") if str(r.get("topic", "")).endswith("/Send")]
