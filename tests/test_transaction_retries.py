"""OCPP 2.0.1 E13 (transaction-related messages not accepted by the CSMS) in the CS node,
through a REAL Node-RED against a CSMS that is not our code.

Each CS node of the module's flow connects to its own CSMS: a raw `websockets`
server scripted here (answer a TransactionEvent with CALLRESULT {}, with
CALLERROR InternalError, or not at all) that records every frame with its
arrival time (`loop.time()`). The node's config: `tx_attempts` (tries in all),
`tx_attempt_interval` (wait interval x attempts so far before the next try),
`message_timeout` (s); `boot_rules` absent, so boot does not matter.

Per node, the flow records output 1 (tag `out.<cbId>`), a Catch node scoped to
the node (`catch.<cbId>`: inputs ended with done(err)) and a Complete node
scoped to it (`complete.<cbId>`: inputs ended with done()).

The rules (OCPP 2.0.1 part 2, E13, as the CS node implements it for issue 21):

- a TransactionEvent not accepted (CALLERROR, or no answer within the message
  timeout) goes again with the SAME MessageId after interval x attempts so far,
  up to `tx_attempts` tries; a CALLRESULT ends it with the usual Response;
- then it is dropped: `<cbId>/Dropped` on output 1 (reason, attempts, the msg's
  customData) and the input, when still open, ends with done(err);
- later TransactionEvents wait behind it, other requests do not;
- stored (offline) ones follow the same rules, in order;
- a lost connection is not an attempt: the message goes again on the new one;
- the `messageattempts` command changes attempts and interval at run time; bad
  values end its input with done(err).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tests.flowkit import Flow, Record, http_api, node, recorder
from tests.nodered import NodeRed, free_port, running_node_red
from tests.payloads import DATE_TIME

pytestmark = [pytest.mark.nodered, pytest.mark.asyncio(loop_scope="module")]

TAB = "txretry"
_node = partial(node, tab=TAB)

#: a frame's arrival may be measured a little late (the first) or early (the next)
SLACK = 0.1
#: generous: the machine is shared with other test runs
LATE = 6.0

# The CS nodes of the module, one per test: cbId -> config beyond the common part.
NODES: dict[str, dict[str, Any]] = {
    "TXERR": {"tx_attempts": 3, "tx_attempt_interval": 1, "message_timeout": 5},
    "TXSILENT": {"tx_attempts": 3, "tx_attempt_interval": 1, "message_timeout": 1},
    "TXORDER": {"tx_attempts": 3, "tx_attempt_interval": 2, "message_timeout": 5},
    "TXOFFLINE": {"tx_attempts": 3, "tx_attempt_interval": 1, "message_timeout": 5},
    "TXCMD": {"tx_attempts": 3, "tx_attempt_interval": 5, "message_timeout": 5},
    "TXBADCMD": {"tx_attempts": 3, "tx_attempt_interval": 1, "message_timeout": 5},
    "TXLOST": {"tx_attempts": 3, "tx_attempt_interval": 1, "message_timeout": 5},
}
#: its CSMS is started by the test, after the flow sent while disconnected
STARTED_LATER = {"TXOFFLINE"}

ANSWERS: dict[str, dict[str, Any]] = {
    "BootNotification": {"currentTime": DATE_TIME, "interval": 300, "status": "Accepted"},
    "Heartbeat": {"currentTime": DATE_TIME},
    "TransactionEvent": {},
}


def transaction_event(seq_no: int, event_type: str = "Updated") -> dict[str, Any]:
    return {
        "eventType": event_type,
        "timestamp": DATE_TIME,
        "triggerReason": "MeterValuePeriodic",
        "seqNo": seq_no,
        "transactionInfo": {"transactionId": "T-E13"},
    }


def tx_request(seq_no: int, custom_data: Any, message_id: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"command": "TransactionEvent", "data": transaction_event(seq_no)}
    if message_id is not None:
        payload["MessageId"] = message_id
    return {"payload": payload, "customData": custom_data}


# -- the CSMS: a raw websockets server ---------------------------------------------------

#: what the CSMS does with a CALL: "ok" (CALLRESULT), "error" (CALLERROR InternalError),
#: "close" (closes the connection), None (no answer). Given the action, the payload and
#: how many times this MessageId arrived so far (1 for the first).
Script = Callable[[str, dict[str, Any], int], "str | None"]


def answer_all(action: str, payload: dict[str, Any], nth: int) -> str | None:
    return "ok"


@dataclass
class Frame:
    at: float  # loop.time() at arrival
    frame: list[Any]

    @property
    def action(self) -> str | None:
        return self.frame[2] if self.frame[0] == 2 else None

    @property
    def message_id(self) -> str:
        return str(self.frame[1])

    @property
    def payload(self) -> dict[str, Any]:
        return self.frame[3] if self.frame[0] == 2 else {}

    @property
    def seq_no(self) -> int | None:
        return self.payload.get("seqNo") if self.action == "TransactionEvent" else None


@dataclass
class Reply:
    at: float  # loop.time() when sent
    message_id: str
    kind: str  # "ok" | "error"


@dataclass
class ScriptedCsms:
    """One CS node's CSMS: answers as `script` says and records both directions."""

    port: int
    script: Script = answer_all
    frames: list[Frame] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    connections: int = 0
    server: Server | None = None

    async def start(self) -> None:
        self.server = await serve(
            self.handler,
            "127.0.0.1",
            self.port,
            subprotocols=[Subprotocol("ocpp2.0.1")],
            ping_interval=None,
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def handler(self, ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        self.connections += 1
        try:
            async for raw in ws:
                received = Frame(loop.time(), json.loads(raw))
                self.frames.append(received)
                if received.action is None:
                    continue
                nth = sum(1 for f in self.frames if f.message_id == received.message_id)
                kind = self.script(received.action, received.payload, nth)
                if kind == "ok":
                    answer = [3, received.message_id, ANSWERS.get(received.action, {})]
                elif kind == "error":
                    answer = [4, received.message_id, "InternalError", "scripted", {}]
                elif kind == "close":
                    await ws.close()
                    return
                else:
                    continue
                await ws.send(json.dumps(answer))
                self.replies.append(Reply(loop.time(), received.message_id, kind))
        except ConnectionClosed:
            return

    def calls(self, action: str | None = "TransactionEvent") -> list[Frame]:
        return [f for f in self.frames if f.action is not None and action in (None, f.action)]

    def with_id(self, message_id: str) -> list[Frame]:
        return [f for f in self.calls(None) if f.message_id == message_id]

    def reply_times(self, message_id: str) -> list[float]:
        return [r.at for r in self.replies if r.message_id == message_id]

    async def wait(self, pred: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = pred()
            if value:
                return value
            if loop.time() >= deadline:
                raise TimeoutError(
                    f"CSMS on port {self.port}: no {what or 'match'} within {timeout}s; "
                    f"frames: {[(round(f.at, 2), f.frame) for f in self.frames]}"
                )
            await asyncio.sleep(0.02)


# -- the flow ---------------------------------------------------------------------------


def retries_flow(ports: dict[str, int]) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = [{"id": TAB, "type": "tab", "label": "E13 retries"}]
    for cb_id, config in NODES.items():
        cs = f"cs.{cb_id}"
        nodes += [
            _node(f"t.{cb_id}", "target-csms", url=f"ws://127.0.0.1:{ports[cb_id]}/ocpp"),
            _node(
                cs,
                "CS",
                [[f"rec.out.{cb_id}"], []],
                cbId=cb_id,
                csms=f"t.{cb_id}",
                auto_connect=True,
                outputs=2,
                ws_rt_minimum=0.3,
                ws_rt_repeat=0,
                ws_rt_rnd_range=0,
                credentials={"csms_pw": "pw"},
                **config,
            ),
            recorder(f"rec.out.{cb_id}", TAB, f"out.{cb_id}"),
            _node(f"catch.{cb_id}", "catch", [[f"rec.catch.{cb_id}"]], scope=[cs]),
            recorder(f"rec.catch.{cb_id}", TAB, f"catch.{cb_id}"),
            _node(f"complete.{cb_id}", "complete", [[f"rec.complete.{cb_id}"]], scope=[cs]),
            recorder(f"rec.complete.{cb_id}", TAB, f"complete.{cb_id}"),
        ]
    return nodes + http_api(TAB, {cb_id: f"cs.{cb_id}" for cb_id in NODES})


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeRed]:
    with running_node_red(tmp_path_factory.mktemp("txretry-nr"), "transaction_retries") as rt:
        yield rt


@dataclass
class Setup:
    flow: Flow
    csms: dict[str, ScriptedCsms]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def setup(runtime: NodeRed) -> AsyncIterator[Setup]:
    csms = {cb_id: ScriptedCsms(free_port()) for cb_id in NODES}
    for cb_id, server in csms.items():
        if cb_id not in STARTED_LATER:
            await server.start()
    await asyncio.to_thread(runtime.deploy, retries_flow({k: v.port for k, v in csms.items()}))
    await asyncio.to_thread(runtime.wait_for_endpoint, "GET", "/t/records")
    flow = Flow(runtime)
    try:
        yield Setup(flow, csms)
    finally:
        for server in csms.values():
            await server.stop()


# -- reading the flow's records ---------------------------------------------------------


def topic_is(cb_id: str, kind: str) -> Callable[[Record], bool]:
    return lambda r: r.get("topic") == f"{cb_id}/{kind}"


def with_custom(custom: Any) -> Callable[[Record], bool]:
    return lambda r: r.get("customData") == custom


async def online(flow: Flow, cb_id: str) -> None:
    await flow.await_(
        f"out.{cb_id}", lambda r: (r.get("ocpp") or {}).get("websocket") == "ONLINE", 20
    )


def gaps(frames: list[Frame]) -> list[float]:
    return [b.at - a.at for a, b in zip(frames[:-1], frames[1:], strict=True)]


def error_text(record: Record) -> str:
    error = record.get("error") or {}
    return str(error.get("message") if isinstance(error, dict) else error)


# -- the tests --------------------------------------------------------------------------


async def test_a_callerror_is_retried_with_the_same_message_id_and_then_accepted(
    setup: Setup,
) -> None:
    cb_id, interval = "TXERR", 1
    flow, csms = setup.flow, setup.csms[cb_id]
    csms.script = lambda action, payload, nth: "error" if nth == 1 else "ok"
    await online(flow, cb_id)
    await flow.asend(cb_id, tx_request(0, {"test": 1}))

    response = await flow.await_(f"out.{cb_id}", topic_is(cb_id, "Response"), 20)
    tries = csms.calls()
    assert len(tries) == 2, [t.frame for t in tries]
    assert tries[0].message_id == tries[1].message_id  # the SAME MessageId
    assert tries[0].payload == tries[1].payload
    assert interval - SLACK <= gaps(tries)[0] <= interval + LATE, gaps(tries)
    assert response["ocpp"]["MessageId"] == tries[0].message_id
    assert response["payload"]["command"] == "TransactionEvent"
    assert response["customData"] == {"test": 1}

    # the input ends without error once accepted
    await flow.await_(f"complete.{cb_id}", with_custom({"test": 1}), 10)
    out = await flow.arecords(f"out.{cb_id}")
    assert len([r for r in out if topic_is(cb_id, "Response")(r)]) == 1
    assert not [r for r in out if topic_is(cb_id, "Error")(r)], out  # intermediate: logged only
    assert f"[warn] [CS:cs.{cb_id}]" in flow.runtime.log()
    assert not [r for r in out if topic_is(cb_id, "Dropped")(r)], out
    assert await flow.arecords(f"catch.{cb_id}") == []


async def test_no_answer_is_retried_then_dropped_after_tx_attempts(setup: Setup) -> None:
    cb_id, attempts, interval, timeout = "TXSILENT", 3, 1, 1
    flow, csms = setup.flow, setup.csms[cb_id]
    csms.script = lambda action, payload, nth: (
        None if action == "TransactionEvent" and payload["seqNo"] == 0 else "ok"
    )
    await online(flow, cb_id)
    custom = {"test": 2, "keep": ["me"]}
    await flow.asend(cb_id, tx_request(0, custom))

    dropped = await flow.await_(f"out.{cb_id}", topic_is(cb_id, "Dropped"), 30)
    tries = csms.calls()
    assert len(tries) == attempts, [(round(t.at, 2), t.frame) for t in tries]
    assert len({t.message_id for t in tries}) == 1  # the SAME MessageId each time
    for k, gap in enumerate(gaps(tries), start=1):  # timeout, then interval x attempts so far
        assert timeout + interval * k - SLACK <= gap <= timeout + interval * k + LATE, gaps(tries)

    assert dropped["ocpp"]["MessageId"] == tries[0].message_id
    assert dropped["ocpp"]["command"] == "TransactionEvent"
    assert dropped["ocpp"]["cbId"] == cb_id
    payload = dropped["payload"]
    assert payload["command"] == "TransactionEvent"
    assert payload["data"]["seqNo"] == 0
    assert isinstance(payload["reason"], str) and payload["reason"].strip()
    assert payload["attempts"] == attempts
    assert "errorCode" not in payload  # never answered: no CALLERROR to quote
    assert f"[warn] [CS:cs.{cb_id}]" in flow.runtime.log()  # the timeouts before: logged
    assert dropped["customData"] == custom

    # the input (sent while online) ends with done(err)
    caught = await flow.await_(f"catch.{cb_id}", with_custom(custom), 10)
    assert error_text(caught).strip()
    assert [
        r for r in await flow.arecords(f"complete.{cb_id}") if r.get("customData") == custom
    ] == []
    assert not [r for r in await flow.arecords(f"out.{cb_id}") if topic_is(cb_id, "Response")(r)]

    # dropped, not tried again: the next TransactionEvent is the next frame
    await flow.asend(cb_id, tx_request(1, {"test": "2b"}))
    await flow.await_(f"out.{cb_id}", topic_is(cb_id, "Response"), 20)
    after = csms.calls()
    assert [t.seq_no for t in after] == [0] * attempts + [1]
    assert after[-1].message_id != tries[0].message_id


async def test_later_transaction_events_wait_behind_a_retried_one_other_requests_do_not(
    setup: Setup,
) -> None:
    cb_id, interval = "TXORDER", 2
    flow, csms = setup.flow, setup.csms[cb_id]
    csms.script = lambda action, payload, nth: (
        "error" if action == "TransactionEvent" and payload["seqNo"] == 0 and nth == 1 else "ok"
    )
    await online(flow, cb_id)
    await flow.asend(cb_id, tx_request(0, {"seq": 0}))
    await flow.asend(cb_id, tx_request(1, {"seq": 1}))  # right after
    first = (await csms.wait(lambda: csms.calls(), what="TransactionEvent seqNo 0"))[0]
    await csms.wait(lambda: csms.reply_times(first.message_id), what="its CALLERROR sent")
    await flow.asend(cb_id, {"payload": {"command": "Heartbeat", "data": {}}, "customData": "hb"})

    await csms.wait(
        lambda: [t for t in csms.calls() if t.seq_no == 1], 20, what="TransactionEvent seqNo 1"
    )
    await flow.await_(f"out.{cb_id}", lambda r: r.get("customData") == {"seq": 1}, 20)
    tx = csms.calls()
    assert [t.seq_no for t in tx] == [0, 0, 1], [t.frame for t in tx]
    assert tx[0].message_id == tx[1].message_id != tx[2].message_id
    assert gaps(tx)[0] >= interval - SLACK
    # seqNo 1 went only once seqNo 0 had been accepted
    accepted_at = csms.reply_times(tx[1].message_id)[-1]
    assert tx[2].at >= accepted_at

    # the Heartbeat was not held up by the wait before the retry
    (heartbeat,) = csms.calls("Heartbeat")
    assert tx[0].at < heartbeat.at < tx[1].at, (tx[0].at, heartbeat.at, tx[1].at)
    await flow.await_(f"out.{cb_id}", lambda r: r.get("customData") == "hb", 10)

    out = await flow.arecords(f"out.{cb_id}")
    responses = [r for r in out if topic_is(cb_id, "Response")(r)]
    # the Heartbeat's answer first: seqNo 0 was accepted only at its retry
    assert [r["customData"] for r in responses] == ["hb", {"seq": 0}, {"seq": 1}]
    assert not [r for r in out if topic_is(cb_id, "Error")(r) or topic_is(cb_id, "Dropped")(r)]
    for custom in ({"seq": 0}, {"seq": 1}):
        await flow.await_(f"complete.{cb_id}", with_custom(custom), 10)
    assert await flow.arecords(f"catch.{cb_id}") == []


async def test_stored_transaction_events_are_retried_in_order_and_dropped_after_tx_attempts(
    setup: Setup,
) -> None:
    cb_id, attempts, interval = "TXOFFLINE", 3, 1
    flow, csms = setup.flow, setup.csms[cb_id]
    csms.script = lambda action, payload, nth: (
        "error" if action == "TransactionEvent" and payload["seqNo"] == 1 else "ok"
    )
    assert csms.server is None  # its CSMS is down: the node keeps trying to connect
    await flow.asend(cb_id, tx_request(0, {"n": 0}))
    await flow.asend(cb_id, tx_request(1, {"n": 1}, message_id="tx-offline-1"))
    await flow.asend(cb_id, tx_request(2, {"n": 2}))
    for n in range(3):  # kept on disk: the inputs end at once, without error
        await flow.await_(f"complete.{cb_id}", with_custom({"n": n}), 10)
    assert csms.connections == 0

    await csms.start()
    await online(flow, cb_id)
    await flow.await_(f"out.{cb_id}", lambda r: r.get("customData") == {"n": 2}, 30)
    tx = csms.calls()
    assert [t.seq_no for t in tx] == [0, 1, 1, 1, 2], [(round(t.at, 2), t.frame) for t in tx]
    assert all(t.payload.get("offline") is True for t in tx)
    retried = tx[1:4]
    assert {t.message_id for t in retried} == {"tx-offline-1"}  # the flow's, kept each time
    assert len({tx[0].message_id, "tx-offline-1", tx[4].message_id}) == 3
    for k, gap in enumerate(gaps(retried), start=1):
        assert interval * k - SLACK <= gap <= interval * k + LATE, gaps(retried)
    # seqNo 2 went only once seqNo 1 was dropped
    assert tx[4].at >= csms.reply_times("tx-offline-1")[-1]

    out = await flow.arecords(f"out.{cb_id}")
    dropped = [r for r in out if topic_is(cb_id, "Dropped")(r)]
    assert len(dropped) == 1, out
    assert dropped[0]["customData"] == {"n": 1}
    assert dropped[0]["ocpp"]["MessageId"] == "tx-offline-1"
    payload = dropped[0]["payload"]
    assert payload["command"] == "TransactionEvent" and payload["data"]["seqNo"] == 1
    assert payload["attempts"] == attempts
    assert payload["errorCode"] == "InternalError"
    assert isinstance(payload["reason"], str) and payload["reason"].strip()
    responses = [r for r in out if topic_is(cb_id, "Response")(r)]
    assert [r["customData"] for r in responses] == [{"n": 0}, {"n": 2}]
    assert not [r for r in out if topic_is(cb_id, "Error")(r)], out
    assert await flow.arecords(f"catch.{cb_id}") == []  # the inputs had ended when stored


async def test_messageattempts_command_changes_the_attempts_at_run_time(setup: Setup) -> None:
    cb_id = "TXCMD"  # configured: 3 attempts, 5 s apart
    flow, csms = setup.flow, setup.csms[cb_id]
    csms.script = lambda action, payload, nth: (
        "error" if action == "TransactionEvent" and payload["seqNo"] == 0 else "ok"
    )
    await online(flow, cb_id)
    command = {
        "msgType": 99,
        "command": "messageattempts",
        "data": {"MessageAttemptsTransactionEvent": 1, "MessageAttemptIntervalTransactionEvent": 0},
    }
    await flow.asend(cb_id, {"payload": command, "customData": "cmd"})
    await flow.await_(f"complete.{cb_id}", with_custom("cmd"), 10)

    await flow.asend(cb_id, tx_request(0, {"test": 5}))
    dropped = await flow.await_(f"out.{cb_id}", topic_is(cb_id, "Dropped"), 10)
    tries = csms.calls()
    assert len(tries) == 1, [t.frame for t in tries]  # dropped at the first CALLERROR
    assert dropped["payload"]["attempts"] == 1
    assert dropped["payload"]["errorCode"] == "InternalError"
    assert dropped["ocpp"]["MessageId"] == tries[0].message_id
    assert dropped["customData"] == {"test": 5}
    caught = await flow.await_(f"catch.{cb_id}", with_custom({"test": 5}), 10)
    assert error_text(caught).strip()

    # not tried again: the next TransactionEvent is the next frame
    await flow.asend(cb_id, tx_request(1, {"test": "5b"}))
    await flow.await_(f"out.{cb_id}", lambda r: r.get("customData") == {"test": "5b"}, 10)
    assert [t.seq_no for t in csms.calls()] == [0, 1]
    assert (await flow.arecords(f"catch.{cb_id}"))[0]["customData"] == {"test": 5}
    assert len(await flow.arecords(f"catch.{cb_id}")) == 1


BAD_VALUES: list[dict[str, Any]] = [
    {"MessageAttemptsTransactionEvent": -1},
    {"MessageAttemptsTransactionEvent": "x"},
    {"MessageAttemptsTransactionEvent": 0},
    {"MessageAttemptIntervalTransactionEvent": -1},
    {"MessageAttemptIntervalTransactionEvent": "x"},
]


async def test_messageattempts_command_with_a_bad_value_ends_with_an_error(setup: Setup) -> None:
    cb_id = "TXBADCMD"
    flow = setup.flow

    def command(data: dict[str, Any]) -> dict[str, Any]:
        return {"msgType": 99, "command": "messageattempts", "data": data}

    # the command exists: good values end its input without error
    good = {"MessageAttemptsTransactionEvent": 2, "MessageAttemptIntervalTransactionEvent": 1}
    await flow.asend(cb_id, {"payload": command(good), "customData": "good"})
    await flow.await_(f"complete.{cb_id}", with_custom("good"), 10)
    assert await flow.arecords(f"catch.{cb_id}") == []

    for n, data in enumerate(BAD_VALUES):
        await flow.asend(cb_id, {"payload": command(data), "customData": {"bad": n}})
    for n, data in enumerate(BAD_VALUES):
        caught = await flow.await_(f"catch.{cb_id}", with_custom({"bad": n}), 10)
        text = error_text(caught)
        assert text.strip() and "unknown command" not in text.lower(), (data, text)
    completed = await flow.arecords(f"complete.{cb_id}")
    assert [r["customData"] for r in completed] == ["good"], completed


async def test_a_lost_connection_is_not_an_attempt(setup: Setup) -> None:
    cb_id, attempts, interval = "TXLOST", 3, 1
    flow, csms = setup.flow, setup.csms[cb_id]
    # the first try: the CSMS hangs up; then a CALLERROR each time
    csms.script = lambda action, payload, nth: (
        ("close" if nth == 1 else "error") if action == "TransactionEvent" else "ok"
    )
    await online(flow, cb_id)
    await flow.asend(cb_id, tx_request(0, {"test": 7}))

    dropped = await flow.await_(f"out.{cb_id}", topic_is(cb_id, "Dropped"), 30)
    tries = csms.calls()
    assert csms.connections == 2
    # the one the connection lost went again on the new one, then tx_attempts tries
    assert len(tries) == 1 + attempts, [(round(t.at, 2), t.frame) for t in tries]
    assert len({t.message_id for t in tries}) == 1  # the SAME MessageId, across connections
    for k, gap in enumerate(gaps(tries[1:]), start=1):
        assert interval * k - SLACK <= gap <= interval * k + LATE, gaps(tries)
    assert dropped["payload"]["attempts"] == attempts
    assert dropped["payload"]["errorCode"] == "InternalError"
    assert dropped["ocpp"]["MessageId"] == tries[0].message_id
    assert dropped["customData"] == {"test": 7}
