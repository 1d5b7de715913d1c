"""OCPP-J conformance rules that hold for both roles, end to end, written once.

Every test runs twice, over the ``side`` parameter:

- ``[csms]``: a raw station (a websockets client sending hand-written text
  frames) against a CSMS node of the real daemon;
- ``[cs]``: a fake CSMS (a websockets server sending hand-written text
  frames) that a CS node of the real daemon connects to.

The daemon is driven through :class:`tests.shim_double.ShimDouble` as
Node-RED would; :class:`Link` is one connection seen from both ends: the raw
peer's text frames, and the flow's requests and answers at our node. What a
role sends and receives comes from its :class:`tests.corpus.Side`. Each test
is named after the rule of OCPP 2.0.1 part 4 (OCPP-J) it checks; the rules
of one role only (identity, Basic auth, subprotocols, compression,
keep-alive, duplicate identity, reconnect back-off) are in
tests/test_conformance_csms.py and tests/test_conformance_cs.py.

One daemon serves the whole module; every test makes its own node, peer and
connection and closes them afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from websockets.exceptions import ConnectionClosed

from ocpp_nodes.rpc import Role
from tests.common import (
    DaemonCs,
    DaemonCsms,
    MakeCs,
    MakeCsms,
    MakeFakeCsms,
    Peer,
    assert_nothing_arrives,
    next_number,
    recv_frame,
)
from tests.corpus import ONE_PER_CODE, SIDES, BadFrame, Side

pytestmark = pytest.mark.asyncio(loop_scope="module")

LINK_SOURCE = [{"id": "link-call-1", "node": "n1"}]


@dataclass
class Link:
    """One connection: our node (``ours``) of role ``side.role`` and the raw ``peer``."""

    side: Side
    ours: DaemonCsms | DaemonCs
    peer: Peer

    async def send(self, message: Any) -> None:
        """The peer sends ``message``: text or bytes as they are, anything else as JSON."""
        await self.peer.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def recv(self, timeout: float = 3.0) -> list[Any]:
        """The next frame the peer gets."""
        return await recv_frame(self.peer, timeout)

    async def nothing_arrives(self, wait: float = 0.3) -> None:
        await assert_nothing_arrives(self.peer, wait)

    def call(self, action: str, data: Any, **fields: Any) -> int:
        """The flow sends a request to the peer."""
        return self.ours.call(action, data, **fields)

    def delivered(self, port: int = 0) -> list[dict[str, Any]]:
        """What our node put out on ``port`` for the flow, websocket events left out."""
        return [
            m
            for m in self.ours.shim.sent(self.ours.node, port)
            if "websocket" not in m.get("ocpp", {})
        ]

    async def wait_disconnected(self) -> None:
        if isinstance(self.ours, DaemonCsms):
            await self.ours.wait_connected(0)
        else:
            ours = self.ours
            await ours.shim.wait_for(lambda: "OFFLINE" in ours.websocket_events())

    def oversize_reported(self, lines: list[str]) -> bool:
        """One of the log ``lines`` says the peer was dropped for a frame over the
        limit (1024 bytes): by the limit (CSMS) or by the close code (CS)."""
        return any("disconnected" in t and ("1024" in t or "1009" in t) for t in lines)

    async def assert_usable(self) -> None:
        """The connection still works both ways: a CALL of the peer goes through the
        flow and back, and a CALL of the flow through the peer and back.

        Also the check that nothing went out before: our node writes in order,
        so anything it sent to the peer earlier (an answer to an answer, a
        refused request or reply) arrives first and fails this.
        """
        action, payload, result = self.side.pending
        message_id = f"in-{next_number()}"
        await self.send([2, message_id, action, payload])
        seq = self.ours.answer(await self.ours.received_request(message_id), result)
        assert await self.recv() == [3, message_id, result]
        assert await self.ours.error(seq) is None
        action, payload, result = self.side.sends
        message_id = f"out-{next_number()}"
        seq = self.call(action, payload, MessageId=message_id)
        assert await self.recv() == [2, message_id, action, payload]
        await self.send([3, message_id, result])
        assert await self.ours.error(seq) is None


MakeLink = Callable[..., Awaitable[Link]]


@pytest.fixture(params=[Role.CSMS, Role.CHARGING_STATION], ids=["csms", "cs"])
def side(request: pytest.FixtureRequest) -> Side:
    """Which of our nodes is tested: ``csms`` (against a raw station) or ``cs``
    (against a fake CSMS)."""
    return SIDES[request.param]


@pytest_asyncio.fixture(loop_scope="module")
async def make_link(
    side: Side, make_csms: MakeCsms, make_cs: MakeCs, make_fake_csms: MakeFakeCsms
) -> MakeLink:
    """Factory of links: our node (identity CP1, 1 s message timeout; other keywords
    are node config) connected to a raw peer; ``compression`` "deflate" or None."""

    async def make(compression: str | None = "deflate", **config: Any) -> Link:
        config.setdefault("message_timeout", 1)
        if side.role is Role.CSMS:
            csms = await make_csms(**config)
            return Link(side, csms, await csms.station(compression=compression))
        fake = await make_fake_csms(compression=compression)
        cs = await make_cs(fake.url, **config)
        peer = await fake.accept()
        await cs.wait_online()
        return Link(side, cs, peer)

    return make


@pytest_asyncio.fixture(loop_scope="module")
async def link(make_link: MakeLink) -> Link:
    return await make_link()


# -- 1. CALLERROR generation (4.2.3, 4.3 table 8, 4.4) --


@pytest.mark.parametrize("case", ONE_PER_CODE.values(), ids=ONE_PER_CODE.keys())
async def test_callerror_generation_4_2_3_table_8(link: Link, case: BadFrame) -> None:
    """A bad frame is answered [4, id|"-1", code, description, {}], reported as a
    warning, never reaches the flow; the connection stays usable.

    One case per error code here; every case of tests/corpus.py, both roles,
    against the core in tests/test_rpc.py.
    """
    assert case.answer is not None
    for message in case.messages(link.side.role):
        await link.send(message)
    answer = await link.recv()
    assert answer[:3] == [4, *case.answer], answer
    assert len(answer) == 5
    assert isinstance(answer[3], str) and len(answer[3]) <= 255
    assert answer[4] == {}
    await link.ours.shim.wait_for(link.ours.warnings)
    assert link.ours.requests() == []
    await link.assert_usable()


async def test_message_id_of_exactly_36_chars_is_accepted(link: Link) -> None:
    """string[36] (4.1.3 / table 5): the boundary itself is valid."""
    message_id = "y" * 36
    action, payload, result = link.side.pending
    await link.send([2, message_id, action, payload])
    link.ours.answer(await link.ours.received_request(message_id), result)
    assert await link.recv() == [3, message_id, result]


async def test_duplicate_id_of_pending_call_gets_callerror_4_2_3(link: Link) -> None:
    """ "an existing call with the same unique identifier is being handled already":
    CALLERROR with that id; the first CALL stays answerable; connection stays up."""
    action, payload, result = link.side.pending
    await link.send([2, "dup-1", action, payload])
    first = await link.ours.received_request("dup-1")
    await link.send([2, "dup-1", action, payload])
    answer = await link.recv()
    assert answer[:3] == [4, "dup-1", "RpcFrameworkError"], answer
    await link.ours.shim.wait_for(link.ours.warnings)
    assert len(link.ours.requests("dup-1")) == 1
    seq = link.ours.answer(first, result)
    assert await link.recv() == [3, "dup-1", result]
    assert await link.ours.error(seq) is None
    await link.assert_usable()


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param([3, "nobody-asked", {}], id="callresult"),
        pytest.param([4, "nobody-asked", "GenericError", "", {}], id="callerror"),
        pytest.param([3, "nobody-asked"], id="malformed_callresult"),
    ],
)
async def test_answers_are_never_answered_4_2_3(link: Link, frame: list[Any]) -> None:
    """CALLERROR answers a CALL only: a stray CALLRESULT / CALLERROR is dropped with a
    warning, nothing goes back, nothing reaches the flow."""
    await link.send(frame)
    await link.ours.shim.wait_for(link.ours.warnings)
    assert link.delivered() == []
    await link.assert_usable()


# -- 2. CALLERRORs from the peer reach the flow --


@pytest.mark.parametrize("via_link_call", [False, True], ids=["port1", "link_call_port2"])
async def test_received_callerror_reaches_flow(link: Link, via_link_call: bool) -> None:
    """On output 1 (topic "<cbId>/Error") or, for a link call, output 2 with
    ``_linkSource``; ``customData`` comes back with it."""
    extra: dict[str, Any] = {"customData": {"order": 7, "note": "keep me"}}
    if via_link_call:
        extra["_linkSource"] = LINK_SOURCE
    action, payload, _ = link.side.sends
    seq = link.call(action, payload, MessageId="err-1", **extra)
    assert await link.recv() == [2, "err-1", action, payload]
    await link.send([4, "err-1", "InternalError", "boom", {"why": "x"}])
    assert await link.ours.error(seq) is None
    port = 1 if via_link_call else 0
    msgs = [m for m in link.delivered(port) if m.get("topic") == "CP1/Error"]
    assert len(msgs) == 1
    msg = msgs[0]
    assert msg["payload"] == {
        "command": action,
        "errorCode": "InternalError",
        "errorDescription": "boom",
        "errorDetails": {"why": "x"},
    }
    assert msg["customData"] == extra["customData"]
    assert msg["ocpp"]["MessageId"] == "err-1" and msg["ocpp"]["cbId"] == "CP1"
    if via_link_call:
        assert msg["_linkSource"] == LINK_SOURCE
        assert not [m for m in link.delivered(0) if m.get("topic") == "CP1/Error"]
    else:
        assert "_linkSource" not in msg


# -- 3. the flow answers a received request with a CALLERROR (table 7) --


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param(
            {"errorCode": "SecurityError", "errorDescription": "no", "errorDetails": {"a": 1}},
            ["SecurityError", "no", {"a": 1}],
            id="full",
        ),
        pytest.param({"errorCode": "NotSupported"}, ["NotSupported", "", {}], id="defaults"),
    ],
)
async def test_flow_callerror_reply_reaches_peer_exactly(
    link: Link, reply: dict[str, Any], expected: list[Any]
) -> None:
    """[4, id, code, description, details]; an absent description is "" and absent
    details are {} (table 7)."""
    action, payload, _ = link.side.pending
    await link.send([2, "reply-e", action, payload])
    request = await link.ours.received_request("reply-e")
    seq = link.ours.reply(request, {"msgType": 4, **reply})
    assert await link.recv() == [4, "reply-e", *expected]
    assert await link.ours.error(seq) is None


async def test_flow_callerror_reply_with_code_outside_table_8_is_refused(link: Link) -> None:
    action, payload, _ = link.side.pending
    await link.send([2, "reply-x", action, payload])
    request = await link.ours.received_request("reply-x")
    error = await link.ours.error(link.ours.reply(request, {"msgType": 4, "errorCode": "Oops"}))
    assert error and "Oops" in error
    await link.assert_usable()


# -- 4. outgoing validation (4.1.7) --


async def test_invalid_outgoing_request_is_refused_and_not_sent(link: Link) -> None:
    """A request missing a required item ends with done(err) naming the field."""
    action, payload, field = link.side.invalid_request
    error = await link.ours.error(link.call(action, payload))
    assert error and field in error and "OccurrenceConstraintViolation" in error
    await link.assert_usable()


async def test_invalid_outgoing_response_is_refused_and_not_sent(link: Link) -> None:
    action, payload, result = link.side.pending
    await link.send([2, "answer-v", action, payload])
    request = await link.ours.received_request("answer-v")
    invalid, field = link.side.invalid_answer
    error = await link.ours.error(link.ours.answer(request, invalid))
    assert error and field in error
    # the request still waits: a valid answer goes out
    seq = link.ours.answer(request, result)
    assert await link.recv() == [3, "answer-v", result]
    assert await link.ours.error(seq) is None


async def test_action_the_role_never_sends_is_refused(link: Link) -> None:
    """Part 2: a CSMS never sends BootNotification, a station never GetVariables."""
    action, payload = link.side.never_sends
    error = await link.ours.error(link.call(action, payload))
    assert error and action in error
    await link.assert_usable()


# -- 5. synchronicity (4.1.1) --


async def test_one_outstanding_call_at_a_time_4_1_1(make_link: MakeLink) -> None:
    link = await make_link(message_timeout=5)
    action, payload, result = link.side.sends
    seqs = [link.call(action, payload, MessageId=f"one-{i}") for i in range(3)]
    for i, seq in enumerate(seqs):
        assert await link.recv() == [2, f"one-{i}", action, payload]
        await link.nothing_arrives()  # the next waits for this answer
        assert seq not in link.ours.shim.dones
        await link.send([3, f"one-{i}", result])
        assert await link.ours.error(seq) is None


async def test_queue_overflow_ends_request_with_error(make_link: MakeLink) -> None:
    link = await make_link(message_timeout=5, queue_size=1)
    action, payload, result = link.side.sends
    seqs = [link.call(action, payload, MessageId=f"q-{i}") for i in range(3)]
    assert await link.ours.error(seqs[2])
    assert seqs[0] not in link.ours.shim.dones and seqs[1] not in link.ours.shim.dones
    for i in range(2):
        assert await link.recv() == [2, f"q-{i}", action, payload]
        await link.send([3, f"q-{i}", result])
        assert await link.ours.error(seqs[i]) is None
    await link.nothing_arrives()  # the refused third never goes out


# -- 6. timeouts of our requests --


async def test_unanswered_request_times_out_and_late_answer_is_dropped(link: Link) -> None:
    """message_timeout 1 s: done(err) naming the action, the queued one goes out, the
    late answer is dropped with a warning and reaches no output."""
    action, payload, result = link.side.sends
    started = time.monotonic()
    first = link.call(action, payload, MessageId="to-1")
    second = link.call(action, payload, MessageId="to-2")
    assert (await link.recv())[1] == "to-1"
    error = (await link.ours.shim.done(first, timeout=5)).get("error")
    elapsed = time.monotonic() - started
    assert error and action in error
    assert 0.9 <= elapsed <= 2.0, elapsed
    assert (await link.recv())[1] == "to-2"  # the queued one goes out now
    warned = len(link.ours.warnings())
    await link.send([3, "to-1", result])  # too late
    await link.ours.shim.wait_for(lambda: len(link.ours.warnings()) > warned)
    assert not [m for m in link.delivered() if m.get("ocpp", {}).get("MessageId") == "to-1"]
    await link.send([3, "to-2", result])
    assert await link.ours.error(second) is None
    answers = [m for m in link.delivered() if m.get("topic") == "CP1/Response"]
    assert [m["ocpp"]["MessageId"] for m in answers] == ["to-2"]


# -- 7. the flow's answer comes too late --


@pytest.mark.parametrize("msg_type", [3, 4], ids=["callresult", "callerror"])
async def test_answer_after_message_timeout_is_refused(make_link: MakeLink, msg_type: int) -> None:
    link = await make_link(message_timeout=0.5)
    action, payload, result = link.side.pending
    await link.send([2, "late-1", action, payload])
    request = await link.ours.received_request("late-1")
    await link.ours.shim.wait_for(link.ours.warnings, timeout=3)  # expired
    if msg_type == 3:
        answer: dict[str, Any] = {"msgType": 3, "data": result}
    else:
        answer = {"msgType": 4, "errorCode": "InternalError"}
    error = await link.ours.error(link.ours.reply(request, answer))
    assert error
    if msg_type == 3:
        assert "expired" in error or "no received request" in error
    await link.assert_usable()


# -- 8. message size --


def big_data_transfer(message_id: str, size: int) -> str:
    # varied text so that permessage-deflate cannot shrink it below the limit
    data = "".join(f"{i:05d}" for i in range(size // 5))
    return json.dumps([2, message_id, "DataTransfer", {"vendorId": "V", "data": data}])


@pytest.mark.parametrize("compression", [None, "deflate"], ids=["plain", "deflate"])
async def test_frame_over_max_frame_size_closes_with_1009(
    make_link: MakeLink, compression: str | None
) -> None:
    link = await make_link(compression=compression, max_frame_size=1024)
    logged = len(link.ours.logs())
    await link.send(big_data_transfer("big-1", 2000))
    with pytest.raises(ConnectionClosed):
        await link.recv()
    assert link.peer.close_code == 1009
    await link.ours.shim.wait_for(lambda: link.oversize_reported(link.ours.logs()[logged:]))
    await link.wait_disconnected()
    assert link.ours.requests() == []


async def test_frame_at_max_frame_size_is_accepted(make_link: MakeLink) -> None:
    link = await make_link(compression=None, max_frame_size=1024)
    frame = big_data_transfer("fits", 900)
    assert len(frame.encode()) <= 1024
    await link.send(frame)
    link.ours.answer(await link.ours.received_request("fits"), {"status": "Accepted"})
    assert await link.recv() == [3, "fits", {"status": "Accepted"}]


async def test_flow_request_over_max_frame_size_is_refused_and_not_sent(
    make_link: MakeLink,
) -> None:
    link = await make_link(max_frame_size=1024)
    error = await link.ours.error(link.call("DataTransfer", {"vendorId": "V", "data": "z" * 2000}))
    assert error and "1024" in error
    await link.assert_usable()
