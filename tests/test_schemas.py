"""Schema registry: every action of a schema set, loaded from the ocpp package,
compiled when the registry is built (or loaded from the code cache)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ocpp_nodes import schemas
from ocpp_nodes.rpc import V21, V201
from ocpp_nodes.schema_cache import DiskCodeCache
from ocpp_nodes.schemas import Direction, SchemaRegistry

CODES = {"type": "T", "required": "O", "enum": "P", "format": "P", "additionalProperties": "F"}


def small_registry(package: str = "ocpp.v16", suffix: str = "") -> SchemaRegistry:
    """A registry of 1.6's schemas (the fewest: the quickest to compile)."""
    return SchemaRegistry(package, suffix, CODES, "F")


def test_all_64_actions_of_2_0_1_with_both_directions() -> None:
    reg = V201.schemas
    assert len(reg.actions) == 64
    for action in reg.actions:
        for direction in (Direction.REQUEST, Direction.RESPONSE):
            reg.validate(action, direction, {})  # {} may or may not be valid
    assert reg.unconfirmed_actions == set()


def test_the_send_messages_of_2_1_have_their_own_schemas() -> None:
    reg = V21.schemas
    assert reg.unconfirmed_actions == {"NotifyPeriodicEventStream"}
    assert "NotifyPeriodicEventStream" not in reg.actions
    violation = reg.validate("NotifyPeriodicEventStream", Direction.SEND, {})
    assert violation is not None and violation.keyword == "required"
    valid = {
        "id": 1,
        "pending": 0,
        "basetime": "2026-01-01T00:00:00Z",
        "data": [{"t": 0, "v": "1"}],
    }
    assert reg.validate("NotifyPeriodicEventStream", Direction.SEND, valid) is None


def test_the_schema_set_is_a_parameter() -> None:
    v16 = small_registry()
    assert "ChangeConfiguration" in v16.actions  # a 1.6 action, not 2.0.1's
    assert "ChangeConfiguration" not in V201.schemas.actions
    assert "SetVariables" in V201.schemas.actions and "SetVariables" not in v16.actions


def test_every_validator_is_compiled_when_the_registry_is_built(monkeypatch) -> None:
    """Nothing on the receive path compiles code or reads a file."""
    compiled: list[str] = []
    real = schemas.fastjsonschema.compile_to_code
    monkeypatch.setattr(
        schemas.fastjsonschema,
        "compile_to_code",
        lambda *a, **k: compiled.append("x") or real(*a, **k),
    )
    reg = small_registry()
    assert len(compiled) == 2 * len(reg.actions) == 2 * 39
    monkeypatch.setattr(schemas.resources, "files", None)  # no file may be read from here on
    for _ in range(3):
        reg.validate("Heartbeat", Direction.REQUEST, {})
        reg.validate("BootNotification", Direction.RESPONSE, {})
    assert len(compiled) == 2 * 39


def test_the_code_cache_spares_the_next_build_its_compiling(tmp_path: Path, monkeypatch) -> None:
    cache = DiskCodeCache(str(tmp_path / "cache"))
    monkeypatch.setattr(schemas, "_code_cache", cache)
    first = small_registry()
    (kept,) = (tmp_path / "cache").iterdir()
    assert stat.S_IMODE(os.stat(tmp_path / "cache").st_mode) == 0o700
    monkeypatch.setattr(schemas.fastjsonschema, "compile_to_code", None)  # must not be needed
    second = small_registry()
    for reg in (first, second):
        violation = reg.validate("Heartbeat", Direction.RESPONSE, {"currentTime": "yesterday"})
        assert violation is not None and violation.keyword == "format"
        assert reg.validate("Heartbeat", Direction.RESPONSE, {"currentTime": DATE}) is None
    assert kept.exists()


def test_a_cache_others_may_write_is_not_used(tmp_path: Path, monkeypatch) -> None:
    directory = tmp_path / "cache"
    cache = DiskCodeCache(str(directory))
    monkeypatch.setattr(schemas, "_code_cache", cache)
    small_registry()
    (kept,) = directory.iterdir()
    os.chmod(kept, 0o666)  # anyone could have put code there
    assert cache.load(kept.name.removeprefix("validators-").removesuffix(".marshal")) is None
    os.chmod(kept, 0o600)
    os.chmod(directory, 0o777)
    assert cache.load(kept.name.removeprefix("validators-").removesuffix(".marshal")) is None


def test_a_damaged_cache_entry_is_compiled_again(tmp_path: Path, monkeypatch) -> None:
    directory = tmp_path / "cache"
    monkeypatch.setattr(schemas, "_code_cache", DiskCodeCache(str(directory)))
    small_registry()
    (kept,) = directory.iterdir()
    kept.write_bytes(b"not marshal")
    reg = small_registry()
    assert reg.validate("Heartbeat", Direction.REQUEST, {}) is None


DATE = "2026-01-01T00:00:00.123Z"


def test_date_time_format_is_checked_the_same_way_by_both_validators() -> None:
    reg = V201.schemas
    assert reg.validate("Heartbeat", Direction.RESPONSE, {"currentTime": DATE}) is None
    violation = reg.validate("Heartbeat", Direction.RESPONSE, {"currentTime": "yesterday"})
    assert violation is not None
    assert (violation.error_code, violation.path, violation.keyword) == (
        "PropertyConstraintViolation",
        "currentTime",
        "format",
    )


def test_the_error_codes_are_the_ones_the_registry_is_given() -> None:
    reg = small_registry()
    violation = reg.validate("BootNotification", Direction.REQUEST, {"chargePointModel": "M"})
    assert violation is not None and violation.error_code == "O"
    assert reg.validate("Heartbeat", Direction.REQUEST, []).error_code == "F"  # type: ignore[union-attr]


def test_violation_names_the_nested_field() -> None:
    violation = V201.schemas.validate(
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
        V201.schemas.validate("Nope", Direction.REQUEST, {})


def test_validation_never_adds_schema_defaults_to_the_payload() -> None:
    payload = {"requestId": 0}
    assert V201.schemas.validate("NotifyDisplayMessages", Direction.REQUEST, payload) is None
    assert payload == {"requestId": 0}  # the schema's `tbc` default must not appear


def test_a_violation_names_every_field_that_fails_up_to_ten() -> None:
    """The most relevant first (its keyword gives the code), then the others by
    where they are; past ten, how many more."""
    reg = V201.schemas
    bad = {"reason": "Nope", "chargingStation": {"model": 1, "vendorName": "V"}, "extra": 1}
    violation = reg.validate("BootNotification", Direction.REQUEST, bad)
    assert violation is not None
    parts = violation.description.split("; ")
    assert len(parts) == 3, violation.description
    assert parts[0].startswith(f"{violation.path or 'payload'}: ")
    assert any(p.startswith("chargingStation.model: 1 is not of type") for p in parts)
    assert any(p.startswith("reason: 'Nope' is not one of") for p in parts)
    assert any("'extra' was unexpected" in p for p in parts)
    samples = [{"timestamp": "x", "sampledValue": [{"value": "1"}]}] * 15
    many = reg.validate("MeterValues", Direction.REQUEST, {"evseId": 1, "meterValue": samples})
    assert many is not None
    parts = many.description.split("; ")
    assert len(parts) == schemas.MAX_VIOLATIONS_NAMED + 1 and parts[-1] == "and 20 more", parts
    # after the most relevant, array items in their order: [2] before [10]
    items = [part.split(".", 1)[0] for part in parts[1:-1]]
    assert items == [f"meterValue[{n // 2}]" for n in range(9)], items
