"""Schema registry: every 2.0.1 action, loaded from the ocpp package, compiled once."""

from __future__ import annotations

import pytest

from ocpp_nodes import schemas
from ocpp_nodes.schemas import Direction, SchemaRegistry, UnknownVersion, registry


def test_all_64_actions_of_2_0_1_with_both_directions() -> None:
    reg = registry("2.0.1")
    assert len(reg.actions) == 64
    for action in reg.actions:
        for direction in Direction:
            reg.validate(action, direction, {})  # compiles; {} may or may not be valid


def test_version_is_a_parameter() -> None:
    assert "BootNotification" in registry("1.6").actions
    assert "AFRRSignal" in registry("2.1").actions
    assert "AFRRSignal" not in registry("2.0.1").actions
    with pytest.raises(UnknownVersion):
        SchemaRegistry("9.9")


def test_registry_is_shared_and_validators_are_compiled_once(monkeypatch) -> None:
    reg = SchemaRegistry("2.0.1")
    compiled = []
    real = schemas.fastjsonschema.compile
    monkeypatch.setattr(
        schemas.fastjsonschema, "compile", lambda *a, **k: compiled.append(1) or real(*a, **k)
    )
    for _ in range(3):
        reg.validate("Heartbeat", Direction.REQUEST, {})
    assert compiled == [1]
    assert registry("2.0.1") is registry("2.0.1")


def test_date_time_format_is_checked_the_same_way_by_both_validators() -> None:
    reg = registry("2.0.1")
    assert (
        reg.validate("Heartbeat", Direction.RESPONSE, {"currentTime": "2026-01-01T00:00:00.123Z"})
        is None
    )
    violation = reg.validate("Heartbeat", Direction.RESPONSE, {"currentTime": "yesterday"})
    assert violation is not None
    assert (violation.error_code, violation.path, violation.keyword) == (
        "PropertyConstraintViolation",
        "currentTime",
        "format",
    )


def test_violation_names_the_nested_field() -> None:
    violation = registry("2.0.1").validate(
        "BootNotification",
        Direction.REQUEST,
        {"reason": "PowerUp", "chargingStation": {"model": 5, "vendorName": "V"}},
    )
    assert violation is not None
    assert violation.path == "chargingStation.model"
    assert violation.error_code == "TypeConstraintViolation"
    assert "chargingStation.model" in violation.description


def test_unknown_action_raises_key_error() -> None:
    with pytest.raises(KeyError):
        registry("2.0.1").validate("Nope", Direction.REQUEST, {})


def test_validation_never_adds_schema_defaults_to_the_payload() -> None:
    payload = {"requestId": 0}
    assert registry("2.0.1").validate("NotifyDisplayMessages", Direction.REQUEST, payload) is None
    assert payload == {"requestId": 0}  # the schema's `tbc` default must not appear
