"""Hostile input: bad frames against a CSMS node and a CS node in a REAL Node-RED.

The entries: one case of tests/corpus.py per CALLERROR code and a stray
answer (the whole corpus runs against the core, both roles, in
tests/test_rpc.py), and what needs a socket and the shim: binary frames,
invalid UTF-8 in a text frame, a 2 MiB frame, a ping flood, 100,000 nested
arrays, a ``__proto__`` key, and the integers beyond 64 bits that once broke
the OCPP log port.

One Node-RED (and so one daemon) serves the whole module:

- a CSMS node (OCPP logging on) whose flow answers Heartbeats; a raw
  websocket client ("hostile station") sends it every entry;
- a CS node (OCPP logging on) connected to a fake CSMS (a `websockets`
  server in this test) that sends it every entry;
- a well-behaved station connected to the CSMS node in parallel, sending a
  Heartbeat every 0.2 s through the flow for the whole module.

For every entry: Node-RED and the daemon keep their pids, the hostile peer
gets the reply OCPP-J part 4 asks for (the CALLERROR of table 8, a close
with 1009 for an oversized frame, 1007 for invalid UTF-8 in a text frame,
nothing for a stray answer, a pong per ping), and the good station gets a
Heartbeat answer after it. A hostile connection that was closed is opened
again (the CS node reconnects by itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ocpp_nodes.rpc import Role
from tests.common import OCPP201, auth_header
from tests.corpus import BY_NAME, ONE_PER_CODE, SIDES, call
from tests.flowkit import Flow, http_api, recorder
from tests.nodered import NodeRed, free_port, running_node_red, wait_until

pytestmark = [pytest.mark.nodered, pytest.mark.asyncio(loop_scope="module")]

PASSWORD = "hostile-test-pw"
TWO_MIB = 2 * 1024 * 1024
ROLES = {"csms": Role.CSMS, "cs": Role.CHARGING_STATION}

# -- the entries ------------------------------------------------------------------


@dataclass
class Case:
    """`send(side)` -> what goes out: str = text frame, bytes = binary frame,
    ("utf8", bytes) = a text frame with raw bytes, ("pings", n), or a list of those.
    `expect`: ("error", id, code) | ("close", code) | ("nothing",) | ("pongs", n)."""

    name: str
    send: Any
    expect: tuple[Any, ...]


def from_corpus(name: str) -> Case:
    """A case of tests/corpus.py, built for the side (``"csms"`` or ``"cs"``) it is sent to."""
    bad = BY_NAME[name]
    expect = ("nothing",) if bad.answer is None else ("error", *bad.answer)
    return Case(name, lambda side: bad.messages(ROLES[side]), expect)


# A valid CALL with a key JavaScript treats specially in its customData, of an
# action the flow never answers (so no reply yet): Node-RED's side of the shim
# must carry it (docs/reliability.md, problem 4).
PROTO = {
    "csms": (
        "Authorize",
        {
            "idToken": {"idToken": "X2", "type": "Central"},
            "customData": {"vendorId": "V", "__proto__": {"polluted": True}},
        },
    ),
    "cs": (
        "GetVariables",
        {
            "getVariableData": [{"component": {"name": "C"}, "variable": {"name": "V"}}],
            "customData": {"vendorId": "V", "__proto__": {"polluted": True}},
        },
    ),
}

# Every case of tests/corpus.py runs against the core for both roles
# (tests/test_rpc.py); here, through Node-RED: one per CALLERROR code, a stray
# answer, what needs a socket (binary and oversized frames, invalid UTF-8,
# pings, deep nesting, a key the shim's msgpack library refuses), and the
# numbers that broke the log port once (docs/reliability.md).
ENTRIES: list[Case] = [
    *(from_corpus(bad.name) for bad in ONE_PER_CODE.values()),
    from_corpus("callresult_for_id_never_sent"),
    from_corpus("binary_garbage"),
    from_corpus("binary_invalid_utf8"),
    Case("text_invalid_utf8", lambda s: ("utf8", b'[2,"tu1","\xc3\x28",{}]'), ("close", 1007)),
    Case(
        "frame_2_mib",
        lambda s: call("big1", SIDES[ROLES[s]].empty[0], {"x": "a" * TWO_MIB}),
        ("close", 1009),
    ),
    Case("ping_flood_2000", lambda s: ("pings", 2000), ("pongs", 2000)),
    Case("proto_key_in_custom_data", lambda s: call("pro1", *PROTO[s]), ("nothing",)),
    from_corpus("nested_100000"),
    from_corpus("int_10e400_extra"),
    from_corpus("int_10e400_as_type"),
    from_corpus("int_10e400_in_int_slot"),
]


def entry_params() -> list[Any]:
    return [pytest.param(case, id=case.name) for case in ENTRIES]


# -- the flow -------------------------------------------------------------------

TAB = "h.tab"
ANSWER_HEARTBEAT = (
    "if (msg.topic && msg.topic.endsWith('/Request') && msg.ocpp.command === 'Heartbeat') {\n"
    "  msg.payload = {msgType: 3, data: {currentTime: new Date().toISOString()}};\n"
    "  return msg;\n"
    "}\n"
    "return null;\n"
)


def hostile_flow(csms_port: int, fake_port: int) -> list[dict[str, Any]]:
    return [
        {"id": TAB, "type": "tab", "label": "hostile"},
        {
            "id": "h.csms",
            "type": "CSMS",
            "z": TAB,
            "name": "CSMS",
            "port": str(csms_port),
            "path": "/ocpp",
            "ocpp_logging": True,
            "message_timeout": 5,
            "outputs": 3,
            "x": 100,
            "y": 100,
            "wires": [["h.answer", "h.rec.csms"], [], []],
            "credentials": {"basic_auths": json.dumps({"GOOD": PASSWORD, "BAD": PASSWORD})},
        },
        {
            "id": "h.answer",
            "type": "function",
            "z": TAB,
            "func": ANSWER_HEARTBEAT,
            "outputs": 1,
            "x": 300,
            "y": 100,
            "wires": [["h.csms"]],
        },
        recorder("h.rec.csms", TAB, "csms"),
        {
            "id": "h.target",
            "type": "target-csms",
            "name": "fake",
            "url": f"ws://127.0.0.1:{fake_port}/ocpp",
        },
        {
            "id": "h.cs",
            "type": "CS",
            "z": TAB,
            "name": "",
            "cbId": "HCS",
            "csms": "h.target",
            "auto_connect": True,
            "ocpp_logging": True,
            "message_timeout": 5,
            "ws_rt_minimum": 0.2,
            "ws_rt_repeat": 0,
            "ws_rt_rnd_range": 0,
            "outputs": 3,
            "x": 100,
            "y": 200,
            "wires": [["h.rec.cs"], [], []],
            "credentials": {"csms_pw": PASSWORD},
        },
        recorder("h.rec.cs", TAB, "cs"),
        *http_api(TAB, {"cs": "h.cs"}),
    ]


# -- peers ----------------------------------------------------------------------


class FakeCsms:
    """A websockets server the CS node connects to; keeps the newest connection."""

    def __init__(self) -> None:
        self.port = free_port()
        self.current: ServerConnection | None = None
        self.connections = 0
        self._new = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        self.current = ws
        self.connections += 1
        self._new.set()
        await ws.wait_closed()

    async def connection(self, timeout: float = 15.0) -> ServerConnection:
        """The open connection from the CS node (waits for a reconnect)."""
        deadline = time.monotonic() + timeout
        while self.current is None or self.current.close_code is not None:
            self._new.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the CS node did not (re)connect to the fake CSMS")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._new.wait(), remaining)
        return self.current


class GoodStation:
    """Sends a Heartbeat every 0.2 s and records each answer's time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answered = 0
        self.failures: list[str] = []
        self.latencies: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.ws = await connect(
            f"{self.url}/GOOD",
            subprotocols=OCPP201,
            additional_headers=auth_header("GOOD", PASSWORD),
            ping_interval=None,
        )
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        for n in range(100_000):  # bounded: ~0.2 s each, the module ends far sooner
            mid = f"good-{n}"
            started = time.monotonic()
            try:
                await self.ws.send(json.dumps([2, mid, "Heartbeat", {}]))
                answer = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            except (ConnectionClosed, asyncio.TimeoutError) as exc:
                self.failures.append(f"{mid}: {exc!r}")
                return
            if answer[:2] != [3, mid] or "currentTime" not in answer[2]:
                self.failures.append(f"{mid}: {answer!r}")
            else:
                self.answered += 1
                self.latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.2)

    async def answered_after(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.answered <= count + 1:  # one more full round trip after the input
            assert not self.failures, self.failures
            assert time.monotonic() < deadline, "the good station got no Heartbeat answer"
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.ws.close()


@dataclass
class Env:
    nodered: NodeRed
    flow: Flow
    csms_url: str
    fake: FakeCsms
    good: GoodStation
    daemons: set[int]
    hostile: ClientConnection | None = None


@pytest.fixture(scope="module")
def nodered_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeRed]:
    user_dir: Path = tmp_path_factory.mktemp("hostile") / "node-red"
    with running_node_red(user_dir, "test_hostile_input") as runtime:
        yield runtime


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(nodered_module: NodeRed) -> AsyncIterator[Env]:
    fake = FakeCsms()
    csms_port = free_port()
    async with serve(
        fake.handler,
        "127.0.0.1",
        fake.port,
        subprotocols=OCPP201,
        max_size=None,
        ping_interval=None,
    ):
        await asyncio.to_thread(nodered_module.deploy, hostile_flow(csms_port, fake.port))
        daemons = {await asyncio.to_thread(ready_daemon_pid, nodered_module)}
        csms_url = f"ws://127.0.0.1:{csms_port}/ocpp"
        good = GoodStation(csms_url)
        for _ in range(100):  # the CSMS node listens soon after the deploy
            try:
                await good.start()
                break
            except OSError:
                await asyncio.sleep(0.2)
        else:
            raise TimeoutError("the CSMS node never listened")
        await fake.connection(timeout=20)
        environment = Env(nodered_module, Flow(nodered_module), csms_url, fake, good, daemons)
        yield environment
        await good.stop()
        print(
            f"\ngood station: {good.answered} Heartbeats answered, "
            f"max latency {max(good.latencies, default=0):.3f} s, failures {good.failures}"
        )
        assert not good.failures, good.failures


def ready_daemon_pid(runtime: NodeRed, after: int = 0, timeout: float = 30) -> int:
    """The pid of the daemon the shim reported ready (log offset `after` on), once it runs."""

    def probe() -> int | None:
        found = re.findall(r"ready \(pid (\d+)\)", runtime.log()[after:])
        if found and int(found[-1]) in runtime.daemon_pids():
            return int(found[-1])
        return None

    return wait_until(probe, timeout, what="the daemon ready")


async def hostile_station(env: Env) -> ClientConnection:
    if env.hostile is None or env.hostile.close_code is not None:
        env.hostile = await connect(
            f"{env.csms_url}/BAD",
            subprotocols=OCPP201,
            additional_headers=auth_header("BAD", PASSWORD),
            ping_interval=None,
            max_size=None,
        )
    return env.hostile


async def send_all(ws: Any, what: Any) -> None:
    items = what if isinstance(what, list) else [what]
    for item in items:
        if isinstance(item, tuple) and item[0] == "utf8":
            await ws.send(item[1], text=True)
        elif isinstance(item, tuple) and item[0] == "pings":
            raise AssertionError("pings are handled by the caller")
        else:
            await ws.send(item)


async def check_reply(ws: Any, case: Case, sent: Any) -> None:
    kind = case.expect[0]
    if kind == "pongs":
        count = case.expect[1]
        waiters = [await ws.ping(i.to_bytes(4, "big")) for i in range(count)]
        _, pending = await asyncio.wait(waiters, timeout=20)
        assert not pending, f"{len(pending)} of {count} pings got no pong"
        return
    if kind == "close":
        try:
            text = await asyncio.wait_for(ws.recv(), 10)
            raise AssertionError(f"expected a close {case.expect[1]}, got {text!r}"[:300])
        except ConnectionClosed:
            pass
        received = ws.protocol.close_rcvd
        assert received is not None and received.code == case.expect[1], (
            ws.protocol.close_rcvd,
            ws.protocol.close_sent,
        )
        return
    if kind == "nothing":
        with pytest.raises(asyncio.TimeoutError):
            text = await asyncio.wait_for(ws.recv(), 0.7)
            raise AssertionError(f"a stray answer was answered: {text!r}")
        return
    _, mid, code = case.expect
    try:
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
    except ConnectionClosed as exc:
        raise AssertionError(f"the connection was closed instead of answered: {exc}") from None
    assert answer[:3] == [4, mid, code], answer
    assert isinstance(answer[3], str) and len(answer[3]) <= 255 and answer[4] == {}, answer


async def assert_everything_up(env: Env, good_before: int) -> None:
    assert env.nodered.proc is not None and env.nodered.proc.poll() is None, "Node-RED died"
    daemons = await asyncio.to_thread(env.nodered.daemon_pids)
    assert daemons == env.daemons, f"daemon pids changed: {env.daemons} -> {daemons}"
    await env.good.answered_after(good_before)


@pytest.mark.parametrize("case", entry_params())
async def test_station_sends_hostile_input_to_csms_node(env: Env, case: Case) -> None:
    good_before = env.good.answered
    ws = await hostile_station(env)
    sent = case.send("csms")
    records_before = len(await env.flow.arecords("csms"))
    if not (isinstance(sent, tuple) and sent[0] == "pings"):
        await send_all(ws, sent)
    await check_reply(ws, case, sent)
    await assert_everything_up(env, good_before)
    # nothing hostile reached the flow as a request (only the pending Authorize may)
    new = [
        r
        for r in (await env.flow.arecords("csms"))[records_before:]
        if r.get("topic") == "BAD/Request" and r["ocpp"]["command"] != "Authorize"
    ]
    assert new == [], new


@pytest.mark.parametrize("case", entry_params())
async def test_csms_sends_hostile_input_to_cs_node(env: Env, case: Case) -> None:
    good_before = env.good.answered
    ws = await env.fake.connection()
    sent = case.send("cs")
    records_before = len(await env.flow.arecords("cs"))
    if not (isinstance(sent, tuple) and sent[0] == "pings"):
        await send_all(ws, sent)
    await check_reply(ws, case, sent)
    await assert_everything_up(env, good_before)
    new = [
        r
        for r in (await env.flow.arecords("cs"))[records_before:]
        if str(r.get("topic")).endswith("/Request") and r["ocpp"]["command"] != "GetVariables"
    ]
    assert new == [], new
    await env.fake.connection()  # the CS node is (back) online for the next case


async def test_a_proto_key_from_a_station_reaches_the_flow(env: Env) -> None:
    """The request with the key is delivered, and nothing restarts.

    The key itself arrives as an own key (tests/shim/framing.test.js); it does
    not survive into this recorder: Node-RED clones the message for the second
    wire with lodash.clonedeep 4.5, which assigns "__proto__" (so sets the
    clone's prototype), as it would for the package we replace.
    """
    good_before = env.good.answered
    ws = await hostile_station(env)
    before = len(await env.flow.arecords("csms"))
    await ws.send(call("pro2", *PROTO["csms"]))
    record = await env.flow.await_(
        "csms", lambda r: r.get("ocpp", {}).get("MessageId") == "pro2", after=before
    )
    assert record["payload"]["data"]["customData"]["vendorId"] == "V", record
    await assert_everything_up(env, good_before)
