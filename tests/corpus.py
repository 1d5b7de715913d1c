"""The bad-frame corpus: what a peer may send, and the answer OCPP-J part 4 asks for.

Each :class:`BadFrame` is one or more websocket messages (text, or bytes for a
binary frame) that a peer sends to a connection of either role, and the
answer: the CALLERROR of table 8 (its message id, ``"-1"`` when unreadable,
and its code), or ``None`` when nothing may go back (an answer is never
answered, 4.2.3). The messages are built from the role's :class:`Side`:
what that role receives, so that a schema case breaks a schema that role
really checks.

Where it runs:

- every case, both roles, synchronously against ``OcppConnection(V201,
  role)``: tests/test_rpc.py (the answer frame exactly, and the connection
  still usable afterwards); the cases :func:`parse` itself rejects also
  against ``parse``;
- one case per error code (:data:`ONE_PER_CODE`) end to end through the real
  daemon for both roles (tests/test_conformance.py) and through a real
  Node-RED (tests/test_hostile_input.py, which adds the cases that need a
  socket: sizes, binary frames, invalid UTF-8, pings, deep nesting).

No I/O here: data and the functions that build it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ocpp_nodes.rpc import Role
from tests.common import BOOT, BOOT_ANSWER, DATE_TIME, GET_VARIABLES

__all__ = ["BY_NAME", "CORPUS", "ONE_PER_CODE", "SIDES", "BadFrame", "Side", "call"]

Message = str | bytes


@dataclass(frozen=True)
class Side:
    """What one role receives and sends: the material of its bad frames and checks.

    Attributes:
        role: the role of the connection that gets the bad frames.
        empty: an action it receives and accepts with an empty payload, and
            the flow's answer to it.
        pending: a valid CALL it receives and the flow answers later (action,
            payload, answer); its id stays pending until then.
        sends: a CALL it sends, and the peer's answer.
        never_receives: a valid CALL of an action this role never receives.
        never_sends: a valid request of an action this role never sends.
        invalid_request: a request it sends, with a payload that breaks the
            schema, and the field the refusal names.
        invalid_answer: an invalid answer to ``pending`` and the field the
            refusal names.
        schema: per fault, a CALL it receives whose payload breaks its schema
            that way; ``int_slot`` has ``"@"`` where an integer belongs.
    """

    role: Role
    empty: tuple[str, dict[str, Any]]
    pending: tuple[str, dict[str, Any], dict[str, Any]]
    sends: tuple[str, dict[str, Any], dict[str, Any]]
    never_receives: tuple[str, dict[str, Any]]
    never_sends: tuple[str, dict[str, Any]]
    invalid_request: tuple[str, dict[str, Any], str]
    invalid_answer: tuple[dict[str, Any], str]
    schema: dict[str, tuple[str, dict[str, Any]]]


SIDES: dict[Role, Side] = {
    Role.CSMS: Side(
        role=Role.CSMS,
        empty=("Heartbeat", {"currentTime": DATE_TIME}),
        pending=("BootNotification", BOOT, BOOT_ANSWER),
        sends=("ClearCache", {}, {"status": "Accepted"}),
        never_receives=("GetVariables", GET_VARIABLES),
        never_sends=("BootNotification", BOOT),
        invalid_request=("GetVariables", {"getVariableData": []}, "getVariableData"),
        invalid_answer=({"currentTime": DATE_TIME, "status": "Accepted"}, "interval"),
        schema={
            "int_slot": (
                "StatusNotification",
                {
                    "timestamp": DATE_TIME,
                    "connectorStatus": "Available",
                    "evseId": "@",
                    "connectorId": 1,
                },
            ),
            "wrong_type": ("BootNotification", {**BOOT, "reason": 5}),
            "wrong_type_nested": (
                "BootNotification",
                {"reason": "PowerUp", "chargingStation": {"model": 12, "vendorName": "V1"}},
            ),
            "missing": ("BootNotification", {"reason": "PowerUp"}),
            "too_few_items": ("MeterValues", {"evseId": 1, "meterValue": []}),
            "enum": ("BootNotification", {**BOOT, "reason": "Bored"}),
            "too_long": (
                "BootNotification",
                {"reason": "PowerUp", "chargingStation": {"model": "M" * 21, "vendorName": "V1"}},
            ),
            "extra_property": ("BootNotification", {**BOOT, "surprise": 1}),
        },
    ),
    Role.CHARGING_STATION: Side(
        role=Role.CHARGING_STATION,
        empty=("ClearCache", {"status": "Accepted"}),
        pending=("Reset", {"type": "Immediate"}, {"status": "Accepted"}),
        sends=("Heartbeat", {}, {"currentTime": DATE_TIME}),
        never_receives=("BootNotification", BOOT),
        never_sends=("GetVariables", GET_VARIABLES),
        invalid_request=("BootNotification", {"reason": "PowerUp"}, "chargingStation"),
        invalid_answer=({"status": "Maybe"}, "status"),
        schema={
            "int_slot": ("Reset", {"type": "Immediate", "evseId": "@"}),
            "wrong_type": ("Reset", {"type": 5}),
            "wrong_type_nested": ("GetVariables", {"getVariableData": "all"}),
            "missing": ("Reset", {}),
            "too_few_items": ("GetVariables", {"getVariableData": []}),
            "enum": ("Reset", {"type": "Sideways"}),
            "too_long": (
                "GetVariables",
                {"getVariableData": [{"component": {"name": "C" * 51}, "variable": {"name": "V"}}]},
            ),
            "extra_property": ("Reset", {"type": "Immediate", "surprise": 1}),
        },
    ),
}


def call(message_id: str, action: str, payload: Any) -> str:
    """A CALL as compact JSON text."""
    return json.dumps([2, message_id, action, payload], separators=(",", ":"))


@dataclass(frozen=True)
class BadFrame:
    """Messages a peer sends and the answer due to the last of them.

    Attributes:
        name: says what is wrong; the test id.
        build: the messages, from the receiving role's :class:`Side`.
        answer: ``(message id, error code)`` of the CALLERROR due, or ``None``
            when nothing may go back.
        found_by: ``"parse"`` when :func:`ocpp_nodes.rpc.parse` rejects the
            (last) message itself; ``"connection"`` when it reads as a frame
            and the connection finds the fault (action, role, schema, ids).
    """

    name: str
    build: Callable[[Side], Message | list[Message]]
    answer: tuple[str, str] | None
    found_by: Literal["parse", "connection"] = "parse"

    def messages(self, role: Role) -> list[Message]:
        built = self.build(SIDES[role])
        return built if isinstance(built, list) else [built]


def _empty(side: Side) -> str:
    return side.empty[0]


def _text(template: str) -> Callable[[Side], str]:
    """A message from a template in which ``{a}`` is the role's empty-payload action."""
    return lambda side: template.replace("{a}", _empty(side))


def _schema(fault: str, message_id: str) -> Callable[[Side], str]:
    return lambda side: call(message_id, *side.schema[fault])


def _int_slot(message_id: str, number_text: str) -> Callable[[Side], str]:
    """The role's integer-slot CALL with ``number_text`` verbatim in that slot."""
    return lambda side: call(message_id, *side.schema["int_slot"]).replace('"@"', number_text)


BIG = "1" + "0" * 400  # 10**400 as JSON text
DEEP = "[" * 100_000 + "]" * 100_000
RFE = "RpcFrameworkError"
MTNS = "MessageTypeNotSupported"
FV = "FormatViolation"
TCV = "TypeConstraintViolation"
OCV = "OccurrenceConstraintViolation"
PCV = "PropertyConstraintViolation"

CORPUS: list[BadFrame] = [
    # not JSON, or JSON that is not a frame
    BadFrame("not_json", _text("this is not json"), ("-1", RFE)),
    BadFrame("empty_text", _text(""), ("-1", RFE)),
    BadFrame("json_object", _text('{"not": "an array"}'), ("-1", RFE)),
    BadFrame("json_string", _text('"2"'), ("-1", RFE)),
    BadFrame("json_number", _text("42"), ("-1", RFE)),
    BadFrame("json_null", _text("null"), ("-1", RFE)),
    BadFrame("empty_array", _text("[]"), ("-1", RFE)),
    BadFrame("nan_literal", _text('[2,"nan1","{a}",{"x":NaN}]'), ("-1", RFE)),
    BadFrame("infinity_literal", _text('[2,"inf1","{a}",{"x":Infinity}]'), ("-1", RFE)),
    # truncated
    BadFrame("truncated_payload", _text('[2,"tr1","{a}",{'), ("-1", RFE)),
    BadFrame("truncated_id", _text('[2,"tr2'), ("-1", RFE)),
    BadFrame("truncated_after_type", _text("[2,"), ("-1", RFE)),
    BadFrame("bare_word_in_array", _text("[2, oops"), ("-1", RFE)),
    BadFrame("type_only", _text("[2]"), ("-1", RFE)),
    # wrong types in each slot
    BadFrame("type_as_string", _text('["2","ty1","{a}",{}]'), ("-1", RFE)),
    BadFrame("type_as_float", _text('[2.0,"ty2","{a}",{}]'), ("-1", RFE)),
    BadFrame("type_as_bool", _text('[true,"ty3","{a}",{}]'), ("-1", RFE)),
    BadFrame("type_as_null", _text('[null,"ty4","{a}",{}]'), ("-1", RFE)),
    BadFrame("id_as_number", _text('[2,12345,"{a}",{}]'), ("-1", RFE)),
    BadFrame("id_as_null", _text('[2,null,"{a}",{}]'), ("-1", RFE)),
    BadFrame("id_as_object", _text('[2,{"a":1},"{a}",{}]'), ("-1", RFE)),
    BadFrame("id_empty", _text('[2,"","{a}",{}]'), ("-1", RFE)),
    BadFrame("id_37_chars", lambda side: call("x" * 37, _empty(side), {}), ("-1", RFE)),
    BadFrame("id_10000_chars", lambda side: call("y" * 10000, _empty(side), {}), ("-1", RFE)),
    BadFrame("action_as_number", _text('[2,"ac1",7,{}]'), ("ac1", RFE)),
    BadFrame("action_as_null", _text('[2,"ac2",null,{}]'), ("ac2", RFE)),
    BadFrame("payload_as_array", _text('[2,"pl1","{a}",[]]'), ("pl1", FV)),
    BadFrame("payload_as_string", _text('[2,"pl2","{a}","x"]'), ("pl2", FV)),
    BadFrame("payload_as_null", _text('[2,"pl3","{a}",null]'), ("pl3", FV)),
    BadFrame("call_too_long", _text('[2,"ln1","{a}",{},"extra"]'), ("ln1", RFE)),
    BadFrame("call_too_short", _text('[2,"ln2","{a}"]'), ("ln2", RFE)),
    # message types and actions
    BadFrame("message_type_5", _text('[5,"mt1","{a}",{}]'), ("mt1", MTNS)),
    BadFrame("message_type_7", _text('[7,"mt3","{a}",{}]'), ("mt3", MTNS)),
    BadFrame("message_type_negative", _text('[-1,"mt2"]'), ("mt2", MTNS)),
    BadFrame(
        "unknown_action",
        lambda side: call("ua1", "FlyToTheMoon", {}),
        ("ua1", "NotImplemented"),
        "connection",
    ),
    BadFrame(
        "action_the_role_never_receives",
        lambda side: call("nr1", *side.never_receives),
        ("nr1", "NotSupported"),
        "connection",
    ),
    # schema violations (part 4, table 8; the mapping in docs/nodes.md)
    BadFrame("schema_wrong_type", _schema("wrong_type", "sv1"), ("sv1", TCV), "connection"),
    BadFrame(
        "schema_wrong_type_nested", _schema("wrong_type_nested", "sv5"), ("sv5", TCV), "connection"
    ),
    BadFrame("schema_missing", _schema("missing", "sv2"), ("sv2", OCV), "connection"),
    BadFrame("schema_too_few_items", _schema("too_few_items", "sv6"), ("sv6", OCV), "connection"),
    BadFrame("schema_enum", _schema("enum", "sv3"), ("sv3", PCV), "connection"),
    BadFrame("schema_string_too_long", _schema("too_long", "sv7"), ("sv7", PCV), "connection"),
    BadFrame("schema_extra_property", _schema("extra_property", "sv4"), ("sv4", FV), "connection"),
    # numbers JSON allows and neither msgpack nor JavaScript carry
    BadFrame("float_1e400_in_int_slot", _int_slot("hn1", "1e400"), ("hn1", TCV), "connection"),
    BadFrame("float_1e400_extra", _text('[2,"hn2","{a}",{"x":1e400}]'), ("hn2", FV), "connection"),
    BadFrame(
        "int_10e400_extra",
        _text('[2,"hn3","{a}",{"x":' + BIG + "}]"),
        ("hn3", FV),
        "connection",
    ),
    BadFrame("int_10e400_as_type", _text("[" + BIG + ',"hn4","{a}",{}]'), ("hn4", MTNS)),
    BadFrame("int_10e400_in_int_slot", _int_slot("hn5", BIG), ("hn5", TCV), "connection"),
    # nesting
    BadFrame(
        "nested_200_in_payload",
        _text('[2,"nest1","{a}",{"a":' + "[" * 200 + "]" * 200 + "}]"),
        ("nest1", FV),
        "connection",
    ),
    BadFrame("nested_100000", _text(DEEP), ("-1", RFE)),
    # bytes: a binary frame, or text that is not UTF-8
    BadFrame("binary_garbage", lambda side: bytes(range(256)) * 4, ("-1", RFE)),
    BadFrame("binary_invalid_utf8", lambda side: b'[2,"bu1","\xff\xfe",{}]', ("-1", RFE)),
    BadFrame(
        "binary_invalid_utf8_in_payload",
        lambda side: _text('[2,"bu2","{a}",{"x":"')(side).encode() + b'\xff"}]',
        ("-1", RFE),
    ),
    # ids
    BadFrame(
        "duplicate_id_of_pending_call",
        lambda side: [call("dup1", *side.pending[:2])] * 2,
        ("dup1", RFE),
        "connection",
    ),
    # answers are never answered (4.2.3)
    BadFrame("callresult_for_id_never_sent", _text('[3,"never-sent-1",{}]'), None, "connection"),
    BadFrame(
        "callerror_for_id_never_sent",
        _text('[4,"never-sent-2","GenericError","",{}]'),
        None,
        "connection",
    ),
    BadFrame("malformed_callresult", _text('[3,"never-sent-3"]'), None),
    BadFrame("malformed_callerror", _text('[4,"never-sent-4"]'), None),
]

BY_NAME: dict[str, BadFrame] = {case.name: case for case in CORPUS}

#: The case that stands for each error code where the whole corpus would be
#: too slow: end to end through the daemon and through Node-RED.
ONE_PER_CODE: dict[str, BadFrame] = {
    code: BY_NAME[name]
    for code, name in {
        RFE: "not_json",
        MTNS: "message_type_5",
        "NotImplemented": "unknown_action",
        "NotSupported": "action_the_role_never_receives",
        TCV: "schema_wrong_type",
        OCV: "schema_missing",
        PCV: "schema_enum",
        FV: "schema_extra_property",
    }.items()
}
