"""Who sends which action (OCPP 2.0.1 part 2, the message list).

A CALL for a known action that arrives at the role that never receives it is
"recognized but not supported" (``NotSupported``); an action name that is not
in the version at all is ``NotImplemented``. A flow may not send an action
its node's role never sends.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Role", "actions_sent_by"]


class Role(Enum):
    CHARGING_STATION = "CS"
    CSMS = "CSMS"

    __hash__ = object.__hash__  # a member is its own identity (see schemas.Direction)

    @property
    def peer(self) -> Role:
        return Role.CSMS if self is Role.CHARGING_STATION else Role.CHARGING_STATION


_SENT_BY_CS_201 = frozenset(
    """Authorize BootNotification ClearedChargingLimit DataTransfer FirmwareStatusNotification
    Get15118EVCertificate GetCertificateStatus Heartbeat LogStatusNotification MeterValues
    NotifyChargingLimit NotifyCustomerInformation NotifyDisplayMessages NotifyEVChargingNeeds
    NotifyEVChargingSchedule NotifyEvent NotifyMonitoringReport NotifyReport
    PublishFirmwareStatusNotification ReportChargingProfiles ReservationStatusUpdate
    SecurityEventNotification SignCertificate StatusNotification TransactionEvent""".split()
)

_SENT_BY_CSMS_201 = frozenset(
    """CancelReservation CertificateSigned ChangeAvailability ClearCache ClearChargingProfile
    ClearDisplayMessage ClearVariableMonitoring CostUpdated CustomerInformation DataTransfer
    DeleteCertificate GetBaseReport GetChargingProfiles GetCompositeSchedule
    GetDisplayMessages GetInstalledCertificateIds GetLocalListVersion GetLog
    GetMonitoringReport GetReport GetTransactionStatus GetVariables InstallCertificate
    PublishFirmware RequestStartTransaction RequestStopTransaction ReserveNow Reset
    SendLocalList SetChargingProfile SetDisplayMessage SetMonitoringBase SetMonitoringLevel
    SetNetworkProfile SetVariableMonitoring SetVariables TriggerMessage UnlockConnector
    UnpublishFirmware UpdateFirmware""".split()
)

_SENT_BY: dict[str, dict[Role, frozenset[str]]] = {
    "2.0.1": {Role.CHARGING_STATION: _SENT_BY_CS_201, Role.CSMS: _SENT_BY_CSMS_201},
}


def actions_sent_by(version: str, role: Role) -> frozenset[str] | None:
    """The actions ``role`` sends in ``version``; ``None`` when we have no table for it."""
    table = _SENT_BY.get(version)
    return None if table is None else table[role]
