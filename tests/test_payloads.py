"""tests/payloads.py gives a schema-valid payload for every OCPP 2.0.1 action and half."""

from __future__ import annotations

import pytest

from ocpp_nodes.rpc import V201
from ocpp_nodes.schemas import Direction
from tests.payloads import ACTIONS, CS_TO_CSMS, CSMS_TO_CS, DATE_TIME, valid_payload


def test_direction_lists_cover_every_action_once_and_datatransfer_twice() -> None:
    assert len(ACTIONS) == 64
    assert len(CS_TO_CSMS) == 25 and len(CSMS_TO_CS) == 40
    assert set(CS_TO_CSMS) | set(CSMS_TO_CS) == set(ACTIONS)
    assert set(CS_TO_CSMS) & set(CSMS_TO_CS) == {"DataTransfer"}
    assert len(set(CS_TO_CSMS)) == 25 and len(set(CSMS_TO_CS)) == 40


@pytest.mark.parametrize("half", ["Request", "Response"])
@pytest.mark.parametrize("action", ACTIONS)
def test_generated_payload_is_valid(action: str, half: str) -> None:
    payload = valid_payload(action, half)
    assert isinstance(payload, dict)
    assert V201.schemas.validate(action, Direction(half), payload) is None


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


def test_unknown_action_or_half_is_refused() -> None:
    with pytest.raises(KeyError):
        valid_payload("NoSuchAction", "Request")
    with pytest.raises(ValueError):
        valid_payload("Heartbeat", "Answer")
