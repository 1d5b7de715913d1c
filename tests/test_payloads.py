"""tests/payloads.py gives a schema-valid payload for every action and half of
every OCPP version (1.6, 2.0.1, 2.1), checked with the version's own validator."""

from __future__ import annotations

from typing import Any

import pytest

from ocpp_nodes.rpc import V16, V21, V201, OcppVersion, Role
from ocpp_nodes.schemas import Direction
from tests.payloads import (
    ACTIONS,
    ALL_VERSIONS,
    CS_TO_CSMS,
    CSMS_TO_CS,
    DATE_TIME,
    actions,
    sent_by,
    unconfirmed_by,
    valid_payload,
)

CS, CSMS = Role.CHARGING_STATION, Role.CSMS


def test_direction_lists_cover_every_action_once_and_datatransfer_twice() -> None:
    assert len(ACTIONS) == 64
    assert len(CS_TO_CSMS) == 25 and len(CSMS_TO_CS) == 40
    assert set(CS_TO_CSMS) | set(CSMS_TO_CS) == set(ACTIONS)
    assert set(CS_TO_CSMS) & set(CSMS_TO_CS) == {"DataTransfer"}
    assert len(set(CS_TO_CSMS)) == 25 and len(set(CSMS_TO_CS)) == 40


def test_the_independent_201_lists_match_the_version_table() -> None:
    assert sent_by(V201, CS) == CS_TO_CSMS and sent_by(V201, CSMS) == CSMS_TO_CS
    assert V201.sends[CS] == set(CS_TO_CSMS) and V201.sends[CSMS] == set(CSMS_TO_CS)
    assert actions(V201) == ACTIONS


@pytest.mark.parametrize(
    ("version", "by_cs", "by_csms", "total", "sends"),
    [
        (V16, 14, 26, 39, set()),
        (V201, 25, 40, 64, set()),
        (V21, 36, 55, 90, {"NotifyPeriodicEventStream"}),
    ],
    ids=lambda v: v.name if isinstance(v, OcppVersion) else None,
)
def test_every_version_lists_every_action_of_its_schemas(
    version: OcppVersion, by_cs: int, by_csms: int, total: int, sends: set[str]
) -> None:
    assert len(sent_by(version, CS)) == by_cs and len(sent_by(version, CSMS)) == by_csms
    assert len(actions(version)) == total
    # every action with a request and a response goes one way or both, and
    # only DataTransfer goes both ways
    assert set(sent_by(version, CS)) | set(sent_by(version, CSMS)) == set(actions(version))
    assert set(sent_by(version, CS)) & set(sent_by(version, CSMS)) == {"DataTransfer"}
    # the SEND messages: only the station's in 2.1, none elsewhere
    assert set(unconfirmed_by(version, CS)) == sends
    assert unconfirmed_by(version, CSMS) == ()
    assert set(version.schemas.unconfirmed_actions) == sends


def _every_half() -> list[tuple[OcppVersion, str, str]]:
    cases = [
        (version, action, half)
        for version in ALL_VERSIONS
        for action in actions(version)
        for half in ("Request", "Response")
    ]
    cases += [
        (version, action, "Send")
        for version in ALL_VERSIONS
        for action in sorted(version.schemas.unconfirmed_actions)
    ]
    return cases


EVERY_HALF = _every_half()


def test_every_half_is_counted() -> None:
    # 1.6: 39 x 2, 2.0.1: 64 x 2, 2.1: 90 x 2 + 1 SEND
    assert len(EVERY_HALF) == 78 + 128 + 181


@pytest.mark.parametrize(
    ("version", "action", "half"),
    EVERY_HALF,
    ids=[f"{v.name}-{a}-{h}" for v, a, h in EVERY_HALF],
)
def test_generated_payload_is_valid(version: OcppVersion, action: str, half: str) -> None:
    payload = valid_payload(action, half, version)
    assert isinstance(payload, dict)
    assert version.schemas.validate(action, Direction(half), payload) is None


def test_the_version_defaults_to_201() -> None:
    for action in ACTIONS:
        assert valid_payload(action, "Request") == valid_payload(action, "Request", V201)


def test_generator_is_deterministic_and_returns_fresh_copies() -> None:
    first = valid_payload("BootNotification", "Request")
    first["reason"] = "changed"
    assert valid_payload("BootNotification", "Request") == {
        "reason": "ApplicationReset",
        "chargingStation": {"model": "x", "vendorName": "x"},
    }
    assert valid_payload("BootNotification", "Response") == {
        "currentTime": DATE_TIME,
        "interval": 0,
        "status": "Accepted",
    }


def test_16_payloads_follow_16_schemas() -> None:
    # 1.6 request files are <Action>.json: a flat BootNotification
    assert valid_payload("BootNotification", "Request", V16) == {
        "chargePointModel": "x",
        "chargePointVendor": "x",
    }
    # format uri
    assert valid_payload("GetDiagnostics", "Request", V16)["location"].startswith("https://")
    # an action only 1.6 has
    assert valid_payload("RemoteStartTransaction", "Request", V16) == {"idTag": "x"}
    with pytest.raises(KeyError):
        valid_payload("TransactionEvent", "Request", V16)


def test_the_21_send_message_has_one_half() -> None:
    payload = valid_payload("NotifyPeriodicEventStream", "Send", V21)
    assert V21.schemas.validate("NotifyPeriodicEventStream", Direction.SEND, payload) is None
    for half in ("Request", "Response"):
        with pytest.raises(KeyError):
            valid_payload("NotifyPeriodicEventStream", half, V21)
    with pytest.raises(KeyError):
        valid_payload("Heartbeat", "Send", V21)
    with pytest.raises(KeyError):
        valid_payload("NotifyPeriodicEventStream", "Send", V201)


def test_rules_the_installed_schemas_do_not_exercise() -> None:
    """Draft-04 and draft-06 exclusive bounds, ``anyOf``, and a refusal to guess."""
    from tests.payloads import _build

    schema: dict[str, Any] = {
        "type": "object",
        "required": ["a", "b", "c", "d", "e", "f"],
        "properties": {
            "a": {"type": "integer", "minimum": 0, "exclusiveMinimum": True},  # draft-04
            "b": {"type": "integer", "exclusiveMinimum": 5},  # draft-06
            "c": {"type": "number", "maximum": -2},
            "d": {"anyOf": [{"type": "string", "minLength": 3}, {"type": "integer"}]},
            "e": {"const": "fixed"},
            "f": {"type": ["null", "boolean"]},
        },
    }
    assert _build(schema, schema) == {"a": 1, "b": 6, "c": -2, "d": "xxx", "e": "fixed", "f": False}
    for unsupported in (
        {"type": "string", "pattern": "^[0-9]+$"},
        {"type": "string", "format": "email"},
        {"allOf": [{"type": "string"}]},
    ):
        with pytest.raises(ValueError):
            _build(unsupported, unsupported)


def test_unknown_action_or_half_is_refused() -> None:
    with pytest.raises(KeyError):
        valid_payload("NoSuchAction", "Request")
    with pytest.raises(ValueError):
        valid_payload("Heartbeat", "Answer")
    with pytest.raises(ValueError):
        valid_payload("Heartbeat", "Answer", V16)
