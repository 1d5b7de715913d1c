"""The boot rules (OCPP 2.0.1 B01-B03) of ocpp_nodes.rpc.registration, without I/O.

Each end reads the rules for its role: the station's own (what it may send,
what it answers by itself, when it boots again) and the CSMS's view of a
station (what it answers SecurityError, what it may send the station). The
nodes that apply them are tested through Node-RED in
test_boot_rules_nodered.py.
"""

from __future__ import annotations

import pytest

from ocpp_nodes.rpc import V16, V201, ErrorCode, Role
from ocpp_nodes.rpc.registration import (
    DEFAULT_BOOT_WAIT,
    ErrorAnswer,
    Registration,
    RegistrationStatus,
    ResultAnswer,
)

T0 = 1000.0


def booted(role: Role, status: str, interval: int = 10) -> Registration:
    registration = Registration(role)
    registration.boot_answered(
        {"currentTime": "2026-12-07T00:00:00Z", "interval": interval, "status": status}, T0
    )
    return registration


def test_a_station_sends_only_boot_notification_before_it_is_booted() -> None:
    station = Registration(Role.CHARGING_STATION)
    assert station.status is RegistrationStatus.NOT_BOOTED
    assert station.station_refusal(V201, "BootNotification", {}, T0) is None
    refusal = station.station_refusal(V201, "Heartbeat", {}, T0)
    assert refusal is not None and "not booted" in refusal


def test_a_csms_serves_a_station_it_never_saw_booting() -> None:
    # part 4, 5.4: a station that reconnects does not boot again
    assert Registration(Role.CSMS).station_refusal(V201, "Heartbeat", {}, T0) is None


def test_the_answer_sets_status_and_interval_and_says_when_it_changed() -> None:
    registration = Registration(Role.CHARGING_STATION)
    answer = {"currentTime": "x", "interval": 10, "status": "Pending"}
    assert registration.boot_answered(answer, T0) is True
    assert (registration.status, registration.interval) == (RegistrationStatus.PENDING, 10)
    assert registration.boot_allowed_at == T0 + 10
    assert registration.boot_answered(answer, T0 + 20) is False  # the same again
    assert registration.boot_allowed_at == T0 + 30
    assert registration.boot_answered({**answer, "status": "Accepted"}, T0) is True
    assert registration.boot_allowed_at is None


@pytest.mark.parametrize("answer", [None, [], {}, {"status": "Maybe"}, {"status": "NotBooted"}])
def test_an_answer_without_a_known_status_changes_nothing(answer: object) -> None:
    registration = Registration(Role.CHARGING_STATION)
    assert registration.boot_answered(answer, T0) is False
    assert registration.status is RegistrationStatus.NOT_BOOTED


def test_interval_zero_means_the_station_picks_a_wait() -> None:
    registration = booted(Role.CHARGING_STATION, "Rejected", interval=0)
    assert registration.boot_allowed_at == T0 + DEFAULT_BOOT_WAIT


def test_rejected_station_sends_nothing_before_the_interval_then_only_boot() -> None:
    station = booted(Role.CHARGING_STATION, "Rejected", interval=10)
    refusal = station.station_refusal(V201, "BootNotification", {}, T0 + 9.5)
    assert refusal is not None and "in 1 s" in refusal
    assert station.station_refusal(V201, "BootNotification", {}, T0 + 10) is None
    for now in (T0 + 1, T0 + 11):
        refusal = station.station_refusal(V201, "StatusNotification", {}, now)
        assert refusal is not None and "Rejected" in refusal


def test_rejected_station_answers_every_csms_request_security_error() -> None:
    station = booted(Role.CHARGING_STATION, "Rejected")
    for action in ("GetBaseReport", "TriggerMessage", "RequestStartTransaction"):
        answer = station.station_answer(V201, action)
        assert isinstance(answer, ErrorAnswer) and answer.error is ErrorCode.SECURITY_ERROR


def test_pending_station_refuses_remote_start_and_stop_itself() -> None:
    station = booted(Role.CHARGING_STATION, "Pending")
    for action in ("RequestStartTransaction", "RequestStopTransaction"):
        assert station.station_answer(V201, action) == ResultAnswer({"status": "Rejected"})
    assert station.station_answer(V201, "GetVariables") is None  # the flow answers


def test_accepted_station_answers_nothing_itself_and_sends_anything() -> None:
    station = booted(Role.CHARGING_STATION, "Accepted")
    assert station.station_answer(V201, "RequestStartTransaction") is None
    assert station.station_refusal(V201, "StatusNotification", {}, T0) is None


def test_pending_station_sends_what_a_trigger_asked_for_once() -> None:
    for role in (Role.CHARGING_STATION, Role.CSMS):
        registration = booted(role, "Pending", interval=300)
        assert registration.station_refusal(V201, "StatusNotification", {}, T0) is not None
        registration.csms_request(
            V201, "TriggerMessage", {"requestedMessage": "StatusNotification"}
        )
        assert registration.station_refusal(V201, "StatusNotification", {}, T0) is None
        refusal = registration.station_refusal(V201, "StatusNotification", {}, T0)
        assert refusal is not None and "Pending" in refusal


def test_a_trigger_names_sign_certificate_by_its_own_name() -> None:
    station = booted(Role.CHARGING_STATION, "Pending")
    station.csms_request(
        V201, "TriggerMessage", {"requestedMessage": "SignChargingStationCertificate"}
    )
    assert station.station_refusal(V201, "SignCertificate", {}, T0) is None


def test_a_triggered_boot_notification_may_go_before_the_interval() -> None:
    station = booted(Role.CHARGING_STATION, "Pending", interval=300)
    assert station.station_refusal(V201, "BootNotification", {}, T0 + 1) is not None
    station.csms_request(V201, "TriggerMessage", {"requestedMessage": "BootNotification"})
    assert station.station_refusal(V201, "BootNotification", {}, T0 + 1) is None


def test_pending_station_sends_the_report_asked_for_until_its_last_part() -> None:
    station = booted(Role.CHARGING_STATION, "Pending")
    station.csms_request(V201, "GetBaseReport", {"requestId": 7, "reportBase": "FullInventory"})
    other = {"requestId": 8, "tbc": False}
    assert station.station_refusal(V201, "NotifyReport", other, T0) is not None
    assert station.station_refusal(V201, "NotifyReport", {"requestId": 7, "tbc": True}, T0) is None
    assert station.station_refusal(V201, "NotifyReport", {"requestId": 7}, T0) is None
    assert station.station_refusal(V201, "NotifyReport", {"requestId": 7}, T0) is not None


def test_requests_of_the_csms_count_only_while_pending() -> None:
    station = booted(Role.CHARGING_STATION, "Accepted")
    station.csms_request(V201, "TriggerMessage", {"requestedMessage": "StatusNotification"})
    station.boot_answered({"currentTime": "x", "interval": 10, "status": "Pending"}, T0)
    assert station.station_refusal(V201, "StatusNotification", {}, T0) is not None


def test_a_new_answer_forgets_what_was_asked_for() -> None:
    station = booted(Role.CHARGING_STATION, "Pending")
    station.csms_request(V201, "TriggerMessage", {"requestedMessage": "StatusNotification"})
    station.boot_answered({"currentTime": "x", "interval": 20, "status": "Pending"}, T0)
    assert station.station_refusal(V201, "StatusNotification", {}, T0) is not None


def test_csms_lets_a_boot_notification_through_in_every_state() -> None:
    for status in ("Pending", "Rejected"):
        csms = booted(Role.CSMS, status, interval=300)
        assert csms.station_refusal(V201, "BootNotification", {}, T0 + 1) is None
        assert csms.station_refusal(V201, "Heartbeat", {}, T0 + 1) is not None


def test_csms_sends_nothing_to_a_rejected_station() -> None:
    csms = booted(Role.CSMS, "Rejected")
    for action in ("GetVariables", "TriggerMessage"):
        refusal = csms.csms_refusal(V201, action)
        assert refusal is not None and "Rejected" in refusal


def test_csms_sends_a_pending_station_no_remote_start_or_stop() -> None:
    csms = booted(Role.CSMS, "Pending")
    assert csms.csms_refusal(V201, "GetVariables") is None
    assert csms.csms_refusal(V201, "RequestStartTransaction") is not None
    assert csms.csms_refusal(V201, "RequestStopTransaction") is not None
    assert booted(Role.CSMS, "Accepted").csms_refusal(V201, "RequestStartTransaction") is None


# -- the same rules in 1.6's words (the version table's BootRules) ---------------------


def test_1_6_pending_station_refuses_remote_start_and_stop_itself() -> None:
    station = booted(Role.CHARGING_STATION, "Pending")
    for action in ("RemoteStartTransaction", "RemoteStopTransaction"):
        assert station.station_answer(V16, action) == ResultAnswer({"status": "Rejected"})
    csms = booted(Role.CSMS, "Pending")
    assert csms.csms_refusal(V16, "RemoteStartTransaction") is not None
    assert csms.csms_refusal(V16, "GetConfiguration") is None


def test_1_6_extended_trigger_message_asks_for_sign_certificate() -> None:
    station = booted(Role.CHARGING_STATION, "Pending")
    station.csms_request(
        V16, "ExtendedTriggerMessage", {"requestedMessage": "SignChargePointCertificate"}
    )
    assert station.station_refusal(V16, "SignCertificate", {}, T0) is None
    station.csms_request(V16, "TriggerMessage", {"requestedMessage": "StatusNotification"})
    assert station.station_refusal(V16, "StatusNotification", {}, T0) is None
    assert station.station_refusal(V16, "StatusNotification", {}, T0) is not None


def test_1_6_rejected_station_does_not_answer_at_all() -> None:
    station = booted(Role.CHARGING_STATION, "Rejected")
    answer = station.station_answer(V16, "GetConfiguration")
    assert answer == ErrorAnswer(None, "")  # 1.6, 4.2: "SHALL NOT respond"
