"""Property tests (hypothesis) of the code that reads what peers send.

- ``ocpp_nodes.rpc.frames.parse`` on arbitrary text, bytes, JSON-ish values
  and frame-shaped arrays (also truncated) returns a frame or raises
  ``MalformedFrame``, nothing else;
- ``OcppConnection.receive_text`` on a sequence of such messages (and of
  the bad frames of tests/corpus.py) never raises, answers only with
  well-formed CALLERRORs, and leaves the connection usable (a CALL the role
  receives afterwards is received and answered);
- ``ipc.framing.FrameDecoder.feed`` on arbitrary byte chunks (and valid
  frames cut at random places with garbage between) raises only
  ``IpcFrameError``.

A short run here (``FUZZ_EXAMPLES`` each, default 300); ``bench/fuzz.py``
runs the same properties for 100,000+ inputs.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocpp_nodes.ipc.framing import FrameDecoder, IpcFrameError, encode
from ocpp_nodes.rpc import V201, CallReceived, OcppConnection
from ocpp_nodes.rpc.frames import Call, CallError, CallResult, ErrorCode, MalformedFrame, parse
from ocpp_nodes.rpc.roles import Role
from tests.corpus import CORPUS, SIDES

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ERROR_CODES = sorted(V201.error_code_names)
ACTIONS = ["Heartbeat", "BootNotification", "Authorize", "StatusNotification", "Reset",
           "GetVariables", "TransactionEvent", "MeterValues", "FlyToTheMoon", ""]  # fmt: skip
OUR_ID = "our-call-1"

# -- strategies -------------------------------------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=25,
)
message_ids = st.sampled_from([OUR_ID, "dup", "-1", "x" * 36, "x" * 37, ""]) | st.text(max_size=40)
payloads = (
    st.dictionaries(st.text(max_size=12), json_value, max_size=5)
    | st.just({})
    | st.just({"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}})
    | json_value
)
frame_shaped = st.one_of(
    st.tuples(st.just(2), message_ids, st.sampled_from(ACTIONS) | st.text(max_size=20), payloads),
    st.tuples(st.just(3), message_ids, payloads),
    st.tuples(
        st.just(4),
        message_ids,
        st.sampled_from(ERROR_CODES) | json_value,
        st.text(max_size=20) | json_value,
        payloads,
    ),  # fmt: skip
    st.lists(json_value, max_size=6),
    st.tuples(st.integers(min_value=-(2**70), max_value=2**70) | json_value, message_ids),
).map(list)


@st.composite
def texts_of(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> str:
    text = json.dumps(draw(values))
    if draw(st.booleans()):
        return text
    cut = draw(st.integers(min_value=0, max_value=len(text)))  # truncated, or with junk
    return text[:cut] + draw(st.sampled_from(["", "]", "}", ",", '"', "\\", "\x00", "\ud800"]))


peer_messages = st.one_of(
    texts_of(frame_shaped),
    texts_of(json_value),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.sampled_from(
        [
            "NaN",
            '[2,"a","Heartbeat",{"x":Infinity}]',
            "[1e400]",
            "[" + "1" + "0" * 400 + "]",
            "[" * 5000 + "]" * 5000,
        ]
    ),  # fmt: skip
    st.sampled_from([m for case in CORPUS for role in SIDES for m in case.messages(role)]),
)

# -- properties (shared with bench/fuzz.py) ------------------------------------------


def check_parse(message: str | bytes) -> None:
    try:
        frame = parse(message)
    except MalformedFrame as exc:
        assert isinstance(exc.error, ErrorCode)
        assert isinstance(exc.message_id, str) and len(exc.message_id) <= 36
        return
    assert isinstance(frame, (Call, CallResult, CallError))


def check_connection(messages: list[str | bytes], role: Role) -> None:
    connection = OcppConnection(V201, role, new_message_id=lambda: OUR_ID)
    action, data, _ = SIDES[role].sends
    connection.send_call(action, data, 0.0)  # one of ours outstanding: answers may match it
    connection.data_to_send()
    for i, message in enumerate(messages):
        connection.receive_text(message, float(i))
        for text in connection.data_to_send():
            answer = json.loads(text)  # every answer we send is well-formed JSON
            assert answer[0] == 4 and isinstance(answer[1], str), answer
            assert answer[2] in V201.error_code_names and isinstance(answer[3], str), answer
            assert len(answer[3]) <= 255 and isinstance(answer[4], dict), answer
    # still usable: a fresh CALL the role receives is delivered and can be answered
    incoming, answer_data = SIDES[role].empty
    events = connection.receive_text(json.dumps([2, "usable-check", incoming, {}]), 1.0)
    assert events == [CallReceived("usable-check", incoming, {})], events
    connection.send_result("usable-check", answer_data)
    assert connection.data_to_send() == [json.dumps([3, "usable-check", answer_data],
                                                     separators=(",", ":"))]  # fmt: skip


def check_decoder(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    try:
        for chunk in chunks:
            for frame in decoder.feed(chunk):
                assert isinstance(frame, dict)
    except IpcFrameError:
        return


ipc_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
)
frames_ipc = st.dictionaries(st.text(max_size=5), ipc_leaf, max_size=4).map(encode)


@st.composite
def byte_streams(draw: st.DrawFn) -> list[bytes]:
    parts = draw(st.lists(frames_ipc | st.binary(max_size=64), max_size=8))
    stream = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    edges = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in zip(edges, edges[1:], strict=False)]


# -- the short run ---------------------------------------------------------------


@FUZZ
@given(st.text())
def test_parse_arbitrary_text_raises_only_frame_error(message: str) -> None:
    check_parse(message)


@FUZZ
@given(st.binary())
def test_parse_arbitrary_bytes_raises_only_frame_error(message: bytes) -> None:
    check_parse(message)


@FUZZ
@given(peer_messages)
def test_parse_json_ish_and_frame_shaped_raises_only_frame_error(message: str | bytes) -> None:
    check_parse(message)


@FUZZ
@given(st.lists(peer_messages, max_size=8), st.sampled_from([Role.CSMS, Role.CHARGING_STATION]))
def test_receive_text_never_raises_and_the_connection_stays_usable(
    messages: list[str | bytes], role: Role
) -> None:
    check_connection(messages, role)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_frame_decoder_on_arbitrary_chunks_raises_only_frame_error(chunks: list[bytes]) -> None:
    check_decoder(chunks)


@FUZZ
@given(byte_streams())
def test_frame_decoder_on_cut_frames_and_garbage_raises_only_frame_error(
    chunks: list[bytes],
) -> None:
    check_decoder(chunks)


def test_the_properties_can_fail() -> None:
    """The checks are not vacuous: a parser that raises something else is caught."""
    try:
        check_decoder([b"\x00\x00\x00\x01\xc1"])  # 0xc1 is never valid msgpack
    except Exception as exc:  # pragma: no cover - would be a bug
        raise AssertionError(exc) from None
    failed = False
    try:
        check_connection([json.dumps([2, "usable-check", "Heartbeat", {}])], Role.CSMS)
    except AssertionError:
        failed = True  # the same id is now pending: the usability CALL is refused
    assert failed
