"""The OCPP-J core, synchronously: text in, events and frames out, time as an argument.

The bad-frame corpus (tests/corpus.py) runs here in full, for both roles:
each case's answer frame exactly, and the connection usable afterwards.
"""

from __future__ import annotations

import json
import uuid
from itertools import count

import pytest

from ocpp_nodes.rpc import (
    V201,
    Call,
    CallAborted,
    CallError,
    CallReceived,
    CallResult,
    CallTimedOut,
    ConnectionClosed,
    ConnectionState,
    ErrorReceived,
    MalformedFrame,
    OcppConnection,
    OutgoingError,
    PeerError,
    RequestExpired,
    ResultInvalid,
    ResultReceived,
    Role,
    UnexpectedAnswer,
    parse,
    serialize,
)
from tests.common import BOOT, BOOT_ANSWER, HEARTBEAT_ANSWER
from tests.corpus import CORPUS, SIDES, BadFrame, call


def connection(role: Role = Role.CSMS, **options: object) -> OcppConnection:
    """A 2.0.1 connection (a CSMS's by default: it receives BootNotification
    and Heartbeat); ids of our CALLs are id1, id2 ..."""
    ids = count(1)
    return OcppConnection(V201, role, new_message_id=lambda: f"id{next(ids)}", **options)  # type: ignore[arg-type]


def station(**options: object) -> OcppConnection:
    """A station's connection: it sends Heartbeat."""
    return connection(Role.CHARGING_STATION, **options)


# -- frames ---------------------------------------------------------------------


def test_parse_each_frame_type() -> None:
    assert parse('[2,"a","Heartbeat",{}]') == Call("a", "Heartbeat", {})
    assert parse(b'[3,"a",{"x":1}]') == CallResult("a", {"x": 1})
    assert parse('[4,"a","GenericError","boom",{}]') == CallError("a", "GenericError", "boom", {})


def test_parse_rejects_with_the_code_and_id_of_part4() -> None:
    """Over the corpus of 2.0.1 (parse knows no roles: a CSMS's messages): a case the parser
    finds raises with the code and id of its answer, or, for a broken answer,
    with the answer's message type (nothing is owed to it); any other parses."""
    for case in CORPUS:
        message = case.messages(Role.CSMS)[-1]
        if case.found_by == "connection":
            parsed = parse(message, V201.message_types)
            assert isinstance(parsed, Call | CallResult | CallError), case.name
            continue
        with pytest.raises(MalformedFrame) as info:
            parse(message, V201.message_types)
        if case.answer is None:
            assert info.value.message_type in (3, 4), case.name
        else:
            assert (info.value.message_id, info.value.error.value) == case.answer, case.name


def test_serialize_is_compact_json_and_round_trips() -> None:
    frame = CallError("a", "GenericError", "d" * 300, {})
    text = serialize(frame)
    assert text.startswith('[4,"a","GenericError","ddd')
    assert len(json.loads(text)[3]) == 255
    assert parse(serialize(Call("b", "Heartbeat", {}))) == Call("b", "Heartbeat", {})


# -- received CALLs ---------------------------------------------------------------


def test_valid_call_becomes_an_event_and_waits_for_the_answer() -> None:
    conn = connection()
    events = conn.receive_text(json.dumps([2, "m1", "BootNotification", BOOT]), now=0)
    assert events == [CallReceived("m1", "BootNotification", BOOT)]
    assert conn.data_to_send() == []
    conn.send_result("m1", BOOT_ANSWER)
    assert json.loads(conn.data_to_send()[0]) == [3, "m1", BOOT_ANSWER]
    with pytest.raises(OutgoingError, match="already answered"):
        conn.send_result("m1", BOOT_ANSWER)


def assert_usable(conn: OcppConnection, role: Role) -> None:
    """A CALL of the peer is received and answered; a CALL of ours goes out and is settled."""
    side = SIDES[role]
    action, result = side.empty
    received = conn.receive_text(call("usable-1", action, {}), now=1)
    assert received == [CallReceived("usable-1", action, {})]
    conn.send_result("usable-1", result)
    assert conn.data_to_send() == [serialize(CallResult("usable-1", result))]
    action, payload, result = side.sends
    ours = conn.send_call(action, payload, now=1)
    assert conn.data_to_send() == [serialize(Call(ours.message_id, action, payload))]
    answered = conn.receive_text(serialize(CallResult(ours.message_id, result)), now=2)
    assert answered == [ResultReceived(ours.message_id, action, result)]


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
@pytest.mark.parametrize("role", [Role.CSMS, Role.CHARGING_STATION], ids=["csms", "cs"])
def test_bad_frame_gets_the_answer_of_part_4_and_the_connection_stays_usable(
    role: Role, case: BadFrame
) -> None:
    """The CALLERROR of table 8 as compact JSON [4, id, code, description, {}] (only
    the wording of the description is free), or nothing for a broken or stray
    answer; never an event the flow would get; then the connection works both
    ways, and a CALL received before the bad frame can still be answered."""
    conn = connection(role)
    *before, last = case.messages(role)
    waiting = [event for message in before for event in conn.receive_text(message, now=0)]
    assert all(isinstance(event, CallReceived) for event in waiting), waiting
    assert conn.data_to_send() == []
    (event,) = conn.receive_text(last, now=0)
    sent = conn.data_to_send()
    if case.answer is None:
        assert sent == []
        assert isinstance(event, UnexpectedAnswer) or (
            isinstance(event, PeerError) and event.answer is None
        ), event
    else:
        message_id, code = case.answer
        assert isinstance(event, PeerError) and event.answer is not None, event
        description = event.answer.error_description
        assert isinstance(description, str) and 0 < len(description) <= 255
        assert event.answer == CallError(message_id, code, description, {})
        assert sent == [serialize(event.answer)]
        assert json.loads(sent[0]) == [4, message_id, code, description, {}]
    result = SIDES[role].pending[2]
    for request in waiting:
        assert isinstance(request, CallReceived)
        conn.send_result(request.message_id, result)
        assert conn.data_to_send() == [serialize(CallResult(request.message_id, result))]
    assert_usable(conn, role)


def test_received_call_expires_and_a_late_answer_is_refused() -> None:
    conn = connection(answer_timeout=10)
    conn.receive_text(json.dumps([2, "m1", "Heartbeat", {}]), now=100)
    assert conn.next_deadline() == 110
    assert conn.expire(109.9) == []
    (event,) = conn.expire(110)
    assert event == RequestExpired("m1", "Heartbeat")
    with pytest.raises(OutgoingError):
        conn.send_result("m1", HEARTBEAT_ANSWER)


def test_flow_can_answer_with_a_callerror() -> None:
    conn = connection()
    conn.receive_text(json.dumps([2, "m1", "Heartbeat", {}]), now=0)
    conn.send_error("m1", "NotSupported", "no thanks", {"why": "test"})
    assert json.loads(conn.data_to_send()[0]) == [
        4,
        "m1",
        "NotSupported",
        "no thanks",
        {"why": "test"},
    ]
    conn.receive_text(json.dumps([2, "m2", "Heartbeat", {}]), now=0)
    with pytest.raises(OutgoingError, match="errorCode"):
        conn.send_error("m2", "Bogus")


def test_invalid_response_from_the_flow_is_refused_and_nothing_is_sent() -> None:
    conn = connection()
    conn.receive_text(json.dumps([2, "m1", "BootNotification", BOOT]), now=0)
    with pytest.raises(OutgoingError, match="interval"):
        conn.send_result("m1", {"currentTime": BOOT_ANSWER["currentTime"], "status": "Accepted"})
    assert conn.data_to_send() == []
    conn.send_result("m1", BOOT_ANSWER)  # still answerable


# -- our CALLs ------------------------------------------------------------------


def test_one_outstanding_call_the_rest_queue_in_order() -> None:
    conn = station(call_timeout=30)
    conn.send_call("Heartbeat", {}, now=0)
    conn.send_call("Heartbeat", {}, now=1)
    conn.send_call("Heartbeat", {}, now=2)
    assert [json.loads(t)[1] for t in conn.data_to_send()] == ["id1"]
    (event,) = conn.receive_text('[3,"id1",{"currentTime":"2026-01-01T00:00:00Z"}]', now=5)
    assert isinstance(event, ResultReceived) and (event.message_id, event.action) == (
        "id1",
        "Heartbeat",
    )
    assert [json.loads(t)[1] for t in conn.data_to_send()] == ["id2"]
    assert conn.next_deadline() == 35  # the clock starts when the call is sent


def test_queue_is_bounded() -> None:
    conn = station(max_queued=1)
    conn.send_call("Heartbeat", {}, now=0)
    conn.send_call("Heartbeat", {}, now=0)
    with pytest.raises(OutgoingError, match="wait"):
        conn.send_call("Heartbeat", {}, now=0)


def test_call_timeout_frees_the_queue_and_a_late_answer_is_dropped() -> None:
    conn = station(call_timeout=30)
    conn.send_call("Heartbeat", {}, now=0)
    conn.send_call("Heartbeat", {}, now=0)
    conn.data_to_send()
    (event,) = conn.expire(30)
    assert event == CallTimedOut("id1", "Heartbeat")
    assert [json.loads(t)[1] for t in conn.data_to_send()] == ["id2"]
    (late,) = conn.receive_text('[3,"id1",{"currentTime":"2026-01-01T00:00:00Z"}]', now=31)
    assert isinstance(late, UnexpectedAnswer)


def test_callerror_from_peer_settles_the_call() -> None:
    conn = station()
    conn.send_call("Heartbeat", {}, now=0)
    (event,) = conn.receive_text('[4,"id1","InternalError","sorry",{"k":1}]', now=1)
    assert isinstance(event, ErrorReceived)
    assert (event.error_code, event.error_description, event.error_details) == (
        "InternalError",
        "sorry",
        {"k": 1},
    )


def test_invalid_callresult_is_reported_not_delivered() -> None:
    conn = station()
    conn.send_call("Heartbeat", {}, now=0)
    conn.data_to_send()
    (event,) = conn.receive_text('[3,"id1",{}]', now=1)
    assert isinstance(event, ResultInvalid) and event.error_code == "OccurrenceConstraintViolation"
    assert conn.data_to_send() == []  # an answer is never answered


@pytest.mark.parametrize(
    ("action", "payload", "options", "match"),
    [
        ("Nope", {}, {}, "not an OCPP 2.0.1 action"),
        ("BootNotification", {"reason": "PowerUp"}, {}, "chargingStation"),
        ("Heartbeat", {}, {"message_id": "x" * 37}, "MessageId"),
        ("Heartbeat", {"x": float("nan")}, {}, "invalid"),
    ],
)
def test_outgoing_call_is_checked_and_nothing_goes_out(
    action: str, payload: dict, options: dict, match: str
) -> None:
    conn = station()
    with pytest.raises(OutgoingError, match=match):
        conn.send_call(action, payload, now=0, **options)
    assert conn.data_to_send() == []


def test_user_message_id_is_used_and_must_be_unique_while_pending() -> None:
    conn = station()
    conn.send_call("Heartbeat", {}, now=0, message_id="mine")
    assert json.loads(conn.data_to_send()[0])[1] == "mine"
    with pytest.raises(OutgoingError, match="already used"):
        conn.send_call("Heartbeat", {}, now=0, message_id="mine")


def test_connection_lost_aborts_every_call_in_order() -> None:
    conn = station()
    for name in "abc":
        conn.send_call("Heartbeat", {}, now=0, message_id=name)
    events = conn.connection_lost("gone")
    assert events == [CallAborted(name, "Heartbeat", "gone") for name in "abc"]
    assert conn.next_deadline() is None


def test_a_closed_connection_refuses_to_send_instead_of_queueing() -> None:
    conn = station()
    conn.receive_text(json.dumps([2, "m1", "Reset", {"type": "Immediate"}]), now=0)
    conn.connection_lost("gone")
    assert conn.state is ConnectionState.CLOSED
    with pytest.raises(ConnectionClosed, match="closed"):
        conn.send_call("Heartbeat", {}, now=1)
    with pytest.raises(ConnectionClosed):
        conn.send_result("m1", {"status": "Accepted"})
    with pytest.raises(ConnectionClosed):
        conn.send_error("m1", "GenericError")
    assert conn.calls.all() == [] and conn.data_to_send() == []


def test_known_action_at_the_wrong_role_is_not_supported_and_cannot_be_sent() -> None:
    station = OcppConnection(V201, Role.CHARGING_STATION)
    station.receive_text(json.dumps([2, "m1", "BootNotification", BOOT]), now=0)
    assert json.loads(station.data_to_send()[0])[:3] == [4, "m1", "NotSupported"]
    station.receive_text(json.dumps([2, "m2", "Reset", {"type": "Immediate"}]), now=0)
    assert station.data_to_send() == []  # a CSMS sends Reset: accepted
    with pytest.raises(OutgoingError, match="not an action a CS sends"):
        station.send_call("Reset", {"type": "Immediate"}, now=0)
    csms = OcppConnection(V201, Role.CSMS)
    with pytest.raises(OutgoingError, match="not an action a CSMS sends"):
        csms.send_call("BootNotification", BOOT, now=0)
    csms.send_call("DataTransfer", {"vendorId": "v"}, now=0)  # both roles send it


def test_a_frame_over_the_size_limit_is_not_sent() -> None:
    conn = station(max_frame_size=200)
    with pytest.raises(OutgoingError, match="over the limit of 200"):
        conn.send_call("DataTransfer", {"vendorId": "v", "data": "é" * 100}, now=0)
    assert conn.data_to_send() == []
    conn.send_call("DataTransfer", {"vendorId": "v", "data": "é" * 10}, now=0)


def test_default_message_ids_are_distinct_version_4_uuids() -> None:
    connection = OcppConnection(V201, Role.CHARGING_STATION)
    ids = set()
    for _ in range(2000):
        call = connection.send_call("Heartbeat", {}, 0.0)
        connection.calls.settle(call.message_id, 0.0)
        ids.add(call.message_id)
    assert len(ids) == 2000
    for message_id in list(ids)[:50]:
        parsed = uuid.UUID(message_id)
        assert str(parsed) == message_id
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


# -- an answer that cannot go out says why (issue 23 item 6) ------------------------


def test_an_answer_is_told_whether_its_request_was_answered_expired_or_never_received() -> None:
    conn = connection(answer_timeout=5)
    conn.receive_text(json.dumps([2, "done-1", "Heartbeat", {}]), now=0)
    conn.send_result("done-1", HEARTBEAT_ANSWER)
    with pytest.raises(OutgoingError) as answered:
        conn.send_result("done-1", HEARTBEAT_ANSWER)
    assert "the Heartbeat request 'done-1' was already answered" in str(answered.value)
    conn.receive_text(json.dumps([2, "err-1", "Heartbeat", {}]), now=0)
    conn.send_error("err-1", "GenericError")
    with pytest.raises(OutgoingError, match="'err-1' was already answered"):
        conn.send_error("err-1", "GenericError")
    conn.receive_text(json.dumps([2, "late-1", "Heartbeat", {}]), now=0)
    assert conn.expire(now=5) == [RequestExpired("late-1", "Heartbeat")]
    with pytest.raises(OutgoingError) as expired:
        conn.send_result("late-1", HEARTBEAT_ANSWER)
    assert "the Heartbeat request 'late-1' expired: it waited 5 s" in str(expired.value)
    with pytest.raises(OutgoingError) as never:
        conn.send_error("never-1", "GenericError")
    assert str(never.value) == "no request with MessageId 'never-1' was received on this connection"
    assert conn.data_to_send() == [
        serialize(CallResult("done-1", HEARTBEAT_ANSWER)),
        serialize(CallError("err-1", "GenericError")),
    ]


def test_the_record_of_answered_requests_is_bounded_and_says_when_it_forgot() -> None:
    from ocpp_nodes.rpc.connection import SETTLED_KEPT

    conn = connection()
    for n in range(SETTLED_KEPT + 1):
        conn.receive_text(json.dumps([2, f"m{n}", "Heartbeat", {}]), now=0)
        conn.send_result(f"m{n}", HEARTBEAT_ANSWER)
    assert len(conn._answered) == SETTLED_KEPT
    with pytest.raises(OutgoingError, match="'m1' was already answered"):
        conn.send_result("m1", HEARTBEAT_ANSWER)
    with pytest.raises(OutgoingError) as forgotten:
        conn.send_result("m0", HEARTBEAT_ANSWER)
    assert "was received on this connection, or it was answered or expired too long ago" in str(
        forgotten.value
    )


def test_a_callerror_for_a_payload_with_many_violations_keeps_to_255_characters() -> None:
    """errorDescription is string[255] in 2.0.1 and 2.1: the CALLERROR stays
    within it; the user's log (PeerError) hears every violation."""
    conn = connection()
    bad = {"reason": "Nope", "chargingStation": {"model": 1, "vendorName": 2}, "x": "y" * 300}
    (event,) = conn.receive_text(json.dumps([2, "m1", "BootNotification", bad]), now=0)
    (answer,) = conn.data_to_send()
    frame = json.loads(answer)
    assert frame[:3] == [4, "m1", "FormatViolation"]
    assert len(frame[3]) == 255 and frame[3].endswith("...")
    assert isinstance(event, PeerError) and len(event.description) > 255
    for field in ("reason", "chargingStation.model", "chargingStation.vendorName", "'x'"):
        assert field in event.description
    long_action = "A" * 400
    conn.receive_text(json.dumps([2, "m2", long_action, {}]), now=0)
    assert len(json.loads(conn.data_to_send()[0])[3]) == 255
    # the flow's own description too: cut, not refused
    conn.receive_text(json.dumps([2, "m3", "Heartbeat", {}]), now=0)
    conn.send_error("m3", "GenericError", "why " * 100)
    assert json.loads(conn.data_to_send()[0])[3] == ("why " * 100)[:252] + "..."
