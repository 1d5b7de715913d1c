"""What differs between OCPP versions, in one table.

Theory of operation:

1. Each OCPP version the engine speaks is one :class:`OcppVersion` in
   :data:`VERSIONS`: its websocket subprotocol, where its schemas are, the
   message types it has, how it spells each error code (and so which JSON-schema
   failure becomes which code), what it does with a message type it lacks,
   which role sends which action, which actions are transaction-related
   (kept while offline and retried by a station), how it names the
   security events a station reports about its connection, and the facts of
   its boot rules (:class:`BootRules`: what a CSMS may ask for while a
   station is Pending, what a station answers by itself).
2. Nothing outside this module names a version's facts. The transports offer
   and select subprotocols from the table (:func:`select_version`); the version
   a connection negotiated travels with it into its session, its OCPP-J state
   and every message the flow sees (``msg.ocpp.ocppVersion`` is
   :attr:`OcppVersion.name`).
3. Nothing is kept per station: the same station may come back with another
   version.

No I/O, except that a version's :attr:`~OcppVersion.schemas` reads its
packaged schema files once, when first asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property

from ..schemas import SchemaRegistry
from .frames import ErrorCode, MessageType
from .roles import Role

__all__ = [
    "BootRules",
    "KEYWORD_ERRORS",
    "RejectedAnswer",
    "OcppVersion",
    "SecurityEvent",
    "UnknownMessageType",
    "V16",
    "V201",
    "V21",
    "VERSIONS",
    "select_version",
    "version_named",
    "versions_named",
]


class UnknownMessageType(Enum):
    """What a connection does with a frame of a message type its version lacks."""

    #: CALLERROR ``MessageTypeNotSupported`` (OCPP 2.0.1 part 4, 4.2.3).
    ANSWER = "answer"
    #: Nothing goes back; the user is told (OCPP 1.6J, OCPP 2.1).
    IGNORE = "ignore"


class SecurityEvent(Enum):
    """A security event a station reports about its connection to the CSMS,
    whatever the version calls it (``OcppVersion.security_events``)."""

    INVALID_CSMS_CERTIFICATE = "InvalidCsmsCertificate"
    INVALID_TLS_VERSION = "InvalidTLSVersion"
    INVALID_TLS_CIPHER_SUITE = "InvalidTLSCipherSuite"
    FAILED_TO_AUTHENTICATE_AT_CSMS = "FailedToAuthenticateAtCsms"


class RejectedAnswer(Enum):
    """What a station whose boot was Rejected does with a request from the CSMS."""

    #: CALLERROR ``SecurityError`` (OCPP 2.0.1 B03).
    SECURITY_ERROR = "security-error"
    #: No answer at all (OCPP 1.6: "SHALL NOT respond to any Central System
    #: initiated message").
    IGNORE = "ignore"


@dataclass(frozen=True)
class BootRules:
    """The version-specific facts of the boot rules (OCPP 2.0.1 B01-B03).

    The rules themselves, the same for every version, are in
    :mod:`ocpp_nodes.rpc.registration`.

    Attributes:
        triggers: the CSMS requests that ask a station for a message, each
            with the field that names the message (``TriggerMessage``:
            ``requestedMessage``).
        triggered_actions: a ``requestedMessage`` value -> the action it asks
            for, where the two differ (``SignChargingStationCertificate`` ->
            ``SignCertificate``).
        report_requests: the CSMS requests whose report a Pending station may
            send (``GetBaseReport``, ``GetReport``), as ``report_action``
            messages with the same ``requestId``.
        report_action: the action of such a report (``NotifyReport``).
        pending_refusals: CSMS requests a Pending station refuses, and the
            answer it gives by itself (``RequestStartTransaction`` ->
            ``{"status": "Rejected"}``).
        rejected_answer: what a Rejected station does with a CSMS request.
    """

    triggers: Mapping[str, str] = field(default_factory=dict)
    triggered_actions: Mapping[str, str] = field(default_factory=dict)
    report_requests: frozenset[str] = field(default_factory=frozenset)
    report_action: str | None = None
    pending_refusals: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    rejected_answer: RejectedAnswer = RejectedAnswer.SECURITY_ERROR

    def triggered_action(self, requested: object) -> str | None:
        """The action a trigger's ``requestedMessage`` asks for."""
        if not isinstance(requested, str):
            return None
        return self.triggered_actions.get(requested, requested)


#: JSON-schema keyword that failed -> what the CALLERROR says (part 4, table 8).
#: Anything not listed is a format violation.
KEYWORD_ERRORS: Mapping[str, ErrorCode] = {
    "type": ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    "required": ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION,
    "minItems": ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION,
    "maxItems": ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION,
    "minProperties": ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION,
    "maxProperties": ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION,
    "enum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "const": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "minLength": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "maxLength": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "minimum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "maximum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "exclusiveMinimum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "exclusiveMaximum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "multipleOf": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "pattern": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "format": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "additionalProperties": ErrorCode.FORMAT_VIOLATION,
}


@dataclass(frozen=True, eq=False)
class OcppVersion:
    """One OCPP version: everything about it that the engine acts on.

    Attributes:
        name: as the flow sees it in ``msg.ocpp.ocppVersion`` (``"2.0.1"``).
        subprotocol: the websocket subprotocol (``"ocpp2.0.1"``).
        schema_package: the subpackage of the ``ocpp`` package with its schemas.
        request_schema_suffix: what follows the action in a request schema's
            file name (``"Request"``; ``""`` for 1.6's ``<Action>.json``).
        message_types: the OCPP-J message types it has.
        error_codes: how it spells each error it has.
        unknown_message_type: what a frame of another message type gets.
        sends: the actions each role sends; a CALL of an action that the
            receiving role never receives is ``NotSupported``.
        transaction_actions: the transaction-related actions a station keeps
            while offline, delivers in order and retries; each with the
            payload field that makes it one (``None``: always; 1.6's
            MeterValues is one only with a ``transactionId``).
        transaction_retry_settings: what the version calls the number of
            attempts and the retry interval of a transaction-related message
            (the device-model variable or configuration key).
        offline_field: the field of a transaction-related message that says
            it happened while offline (2.x ``offline``; 1.6 has none).
        unconfirmed: the SEND actions (message type 6) each role sends.
        security_events: how it names each security event (the ``type`` of
            a SecurityEventNotification).
        boot_rules: the facts of its boot rules.
    """

    name: str
    subprotocol: str
    schema_package: str
    request_schema_suffix: str
    message_types: frozenset[MessageType]
    error_codes: Mapping[ErrorCode, str]
    unknown_message_type: UnknownMessageType
    sends: Mapping[Role, frozenset[str]]
    transaction_actions: Mapping[str, str | None] = field(default_factory=dict)
    transaction_retry_settings: tuple[str, str] = ("", "")
    offline_field: str | None = None
    unconfirmed: Mapping[Role, frozenset[str]] = field(default_factory=dict)
    security_events: Mapping[SecurityEvent, str] = field(default_factory=dict)
    boot_rules: BootRules = BootRules()

    def __repr__(self) -> str:
        return f"OcppVersion({self.name!r})"

    def code(self, error: ErrorCode) -> str:
        """How this version spells ``error`` on the wire."""
        return self.error_codes[error]

    @cached_property
    def error_code_names(self) -> frozenset[str]:
        """Every error code of this version: what a flow's CALLERROR may use."""
        return frozenset(self.error_codes.values())

    def is_transaction_message(self, action: object, payload: object) -> bool:
        """True when ``action`` with ``payload`` is a transaction-related message."""
        if not isinstance(action, str) or action not in self.transaction_actions:
            return False
        needed = self.transaction_actions[action]
        return needed is None or (isinstance(payload, dict) and needed in payload)

    def receives(self, role: Role) -> frozenset[str]:
        """The actions ``role`` receives: what its peer sends."""
        return self.sends[role.peer]

    @cached_property
    def schemas(self) -> SchemaRegistry:
        """Its validators, every one compiled when first asked for (then kept)."""
        registry = SchemaRegistry(
            self.schema_package,
            self.request_schema_suffix,
            {keyword: self.code(error) for keyword, error in KEYWORD_ERRORS.items()},
            self.code(ErrorCode.FORMAT_VIOLATION),
        )
        missing = (self.sends[Role.CHARGING_STATION] | self.sends[Role.CSMS]) - registry.actions
        missing |= frozenset().union(*self.unconfirmed.values()) - registry.unconfirmed_actions
        if missing:
            raise ValueError(f"OCPP {self.name}: no schemas for {', '.join(sorted(missing))}")
        return registry


_V201_SENT_BY_STATION = frozenset(
    """Authorize BootNotification ClearedChargingLimit DataTransfer FirmwareStatusNotification
    Get15118EVCertificate GetCertificateStatus Heartbeat LogStatusNotification MeterValues
    NotifyChargingLimit NotifyCustomerInformation NotifyDisplayMessages NotifyEVChargingNeeds
    NotifyEVChargingSchedule NotifyEvent NotifyMonitoringReport NotifyReport
    PublishFirmwareStatusNotification ReportChargingProfiles ReservationStatusUpdate
    SecurityEventNotification SignCertificate StatusNotification TransactionEvent""".split()
)

_V201_SENT_BY_CSMS = frozenset(
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

#: OCPP 2.0.1 (part 4 for OCPP-J; part 2 for who sends what).
V201 = OcppVersion(
    name="2.0.1",
    subprotocol="ocpp2.0.1",
    schema_package="ocpp.v201",
    request_schema_suffix="Request",
    message_types=frozenset({MessageType.CALL, MessageType.CALLRESULT, MessageType.CALLERROR}),
    # table 8 of part 4, spelled as ErrorCode's values
    error_codes={error: error.value for error in ErrorCode},
    unknown_message_type=UnknownMessageType.ANSWER,
    sends={Role.CHARGING_STATION: _V201_SENT_BY_STATION, Role.CSMS: _V201_SENT_BY_CSMS},
    transaction_actions={"TransactionEvent": None},
    offline_field="offline",
    # part 2, device model, OCPPCommCtrlr.MessageAttempts[Interval] instance TransactionEvent
    transaction_retry_settings=(
        "MessageAttemptsTransactionEvent",
        "MessageAttemptIntervalTransactionEvent",
    ),
    # part 2, appendix "Security events", spelled as SecurityEvent's values
    security_events={event: event.value for event in SecurityEvent},
    # part 2, B02 and B03
    boot_rules=BootRules(
        triggers={"TriggerMessage": "requestedMessage"},
        triggered_actions={
            "SignChargingStationCertificate": "SignCertificate",
            "SignV2GCertificate": "SignCertificate",
            "SignCombinedCertificate": "SignCertificate",
        },
        report_requests=frozenset({"GetBaseReport", "GetReport"}),
        report_action="NotifyReport",
        pending_refusals={
            "RequestStartTransaction": {"status": "Rejected"},
            "RequestStopTransaction": {"status": "Rejected"},
        },
        rejected_answer=RejectedAnswer.SECURITY_ERROR,
    ),
)

_V16_SENT_BY_STATION = frozenset(
    """Authorize BootNotification DataTransfer DiagnosticsStatusNotification
    FirmwareStatusNotification Heartbeat MeterValues StartTransaction StatusNotification
    StopTransaction LogStatusNotification SecurityEventNotification SignCertificate
    SignedFirmwareStatusNotification""".split()
)

_V16_SENT_BY_CSMS = frozenset(
    """CancelReservation ChangeAvailability ChangeConfiguration ClearCache ClearChargingProfile
    DataTransfer GetCompositeSchedule GetConfiguration GetDiagnostics GetLocalListVersion
    RemoteStartTransaction RemoteStopTransaction ReserveNow Reset SendLocalList
    SetChargingProfile TriggerMessage UnlockConnector UpdateFirmware CertificateSigned
    DeleteCertificate ExtendedTriggerMessage GetInstalledCertificateIds GetLog
    InstallCertificate SignedUpdateFirmware""".split()
)

#: OCPP 1.6J (OCPP-J 1.6 with its errata; the actions of OCPP 1.6 and of the
#: security whitepaper, edition 2).
V16 = OcppVersion(
    name="1.6",
    subprotocol="ocpp1.6",
    schema_package="ocpp.v16",
    request_schema_suffix="",
    message_types=frozenset({MessageType.CALL, MessageType.CALLRESULT, MessageType.CALLERROR}),
    # table 7 of OCPP-J 1.6, typos kept (errata 5.1, 5.2: "do not fix"). It has
    # no RpcFrameworkError: a frame that is not OCPP-J is a FormationViolation
    # ("not conform the PDU structure"); no MessageTypeNotSupported: an unknown
    # type is ignored (4.1.3).
    error_codes={
        ErrorCode.NOT_IMPLEMENTED: "NotImplemented",
        ErrorCode.NOT_SUPPORTED: "NotSupported",
        ErrorCode.INTERNAL_ERROR: "InternalError",
        ErrorCode.PROTOCOL_ERROR: "ProtocolError",
        ErrorCode.SECURITY_ERROR: "SecurityError",
        ErrorCode.FORMAT_VIOLATION: "FormationViolation",
        ErrorCode.RPC_FRAMEWORK_ERROR: "FormationViolation",
        ErrorCode.PROPERTY_CONSTRAINT_VIOLATION: "PropertyConstraintViolation",
        ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION: "OccurenceConstraintViolation",
        ErrorCode.TYPE_CONSTRAINT_VIOLATION: "TypeConstraintViolation",
        ErrorCode.GENERIC_ERROR: "GenericError",
    },
    unknown_message_type=UnknownMessageType.IGNORE,
    sends={Role.CHARGING_STATION: _V16_SENT_BY_STATION, Role.CSMS: _V16_SENT_BY_CSMS},
    # 1.6, 3.7 "Transaction-related messages": MeterValues only with a transactionId
    transaction_actions={
        "StartTransaction": None,
        "StopTransaction": None,
        "MeterValues": "transactionId",
    },
    # 1.6, 9.1 configuration keys
    transaction_retry_settings=("TransactionMessageAttempts", "TransactionMessageRetryInterval"),
    # security whitepaper, edition 2, "Security events"
    security_events={
        SecurityEvent.INVALID_CSMS_CERTIFICATE: "InvalidCentralSystemCertificate",
        SecurityEvent.INVALID_TLS_VERSION: "InvalidTLSVersion",
        SecurityEvent.INVALID_TLS_CIPHER_SUITE: "InvalidTLSCipherSuite",
        SecurityEvent.FAILED_TO_AUTHENTICATE_AT_CSMS: "FailedToAuthenticateAtCentralSystem",
    },
    # 1.6, 4.2: Pending and Rejected; the whitepaper's ExtendedTriggerMessage
    boot_rules=BootRules(
        triggers={
            "TriggerMessage": "requestedMessage",
            "ExtendedTriggerMessage": "requestedMessage",
        },
        triggered_actions={"SignChargePointCertificate": "SignCertificate"},
        pending_refusals={
            "RemoteStartTransaction": {"status": "Rejected"},
            "RemoteStopTransaction": {"status": "Rejected"},
        },
        # "While Rejected, the Charge Point SHALL NOT respond to any Central
        # System initiated message."
        rejected_answer=RejectedAnswer.IGNORE,
    ),
)

_V21_SENT_BY_STATION = _V201_SENT_BY_STATION | frozenset(
    """BatterySwap ClosePeriodicEventStream GetCertificateChainStatus NotifyDERAlarm
    NotifyDERStartStop NotifyPriorityCharging NotifySettlement OpenPeriodicEventStream
    PullDynamicScheduleUpdate ReportDERControl VatNumberValidation""".split()
)

_V21_SENT_BY_CSMS = _V201_SENT_BY_CSMS | frozenset(
    """AFRRSignal AdjustPeriodicEventStream ChangeTransactionTariff ClearDERControl
    ClearTariffs GetDERControl GetPeriodicEventStream GetTariffs NotifyAllowedEnergyTransfer
    NotifyWebPaymentStarted RequestBatterySwap SetDERControl SetDefaultTariff
    UpdateDynamicSchedule UsePriorityCharging""".split()
)

#: OCPP 2.1 (part 4 edition 1 for OCPP-J, with CALLRESULTERROR and SEND).
V21 = OcppVersion(
    name="2.1",
    subprotocol="ocpp2.1",
    schema_package="ocpp.v21",
    request_schema_suffix="Request",
    message_types=frozenset(MessageType),
    error_codes={error: error.value for error in ErrorCode},
    # part 4, 4.1.3: "it SHALL ignore the message payload"
    unknown_message_type=UnknownMessageType.IGNORE,
    sends={Role.CHARGING_STATION: _V21_SENT_BY_STATION, Role.CSMS: _V21_SENT_BY_CSMS},
    unconfirmed={
        Role.CHARGING_STATION: frozenset({"NotifyPeriodicEventStream"}),
        Role.CSMS: frozenset(),
    },
    transaction_actions=V201.transaction_actions,
    offline_field=V201.offline_field,
    transaction_retry_settings=V201.transaction_retry_settings,
    security_events=V201.security_events,
    boot_rules=V201.boot_rules,
)

#: Every version the engine speaks, by name, oldest first.
VERSIONS: Mapping[str, OcppVersion] = {version.name: version for version in (V16, V201, V21)}


def version_named(name: str) -> OcppVersion:
    """The version called ``name`` (``"2.0.1"``). Raises ``KeyError``."""
    return VERSIONS[name]


def select_version(
    offered: Iterable[str], accepted: Sequence[OcppVersion], *, own_order: bool = False
) -> OcppVersion | None:
    """The version of a new connection, or ``None`` when there is none in common.

    Args:
        offered: the subprotocols the station offered, in its order of preference.
        accepted: the versions this end accepts, in its order of preference.
        own_order: pick by ``accepted``'s order instead of the station's.

    Returns:
        The first offered subprotocol that one of ``accepted`` has: the
        station's order of preference decides (part 4 of 2.1, 3.1.2), unless
        ``own_order``: then the first of ``accepted`` that was offered.
    """
    wanted = {subprotocol.strip() for subprotocol in offered} if own_order else None
    if wanted is not None:
        return next((version for version in accepted if version.subprotocol in wanted), None)
    by_subprotocol = {version.subprotocol: version for version in accepted}
    for subprotocol in offered:
        version = by_subprotocol.get(subprotocol.strip())
        if version is not None:
            return version
    return None


def versions_named(names: object) -> tuple[OcppVersion, ...]:
    """The versions a node setting lists, in its order, each once.

    ``names`` is a list of subprotocols or version names (``"ocpp1.6"`` or
    ``"1.6"``), or one string of them separated by commas or spaces.

    Raises:
        ValueError: a name is not one of a version the engine speaks, or
            none is named.
    """
    if isinstance(names, str):
        names = names.replace(",", " ").split()
    if not isinstance(names, (list, tuple)):
        raise ValueError("the OCPP versions must be a list such as ['ocpp1.6', 'ocpp2.0.1']")
    known = {version.subprotocol: version for version in VERSIONS.values()}
    known.update({version.name: version for version in VERSIONS.values()})
    chosen: list[OcppVersion] = []
    for name in names:
        version = known.get(str(name).strip())
        if version is None:
            raise ValueError(
                f"OCPP version {name!r} is not one of "
                + ", ".join(v.subprotocol for v in VERSIONS.values())
            )
        if version not in chosen:
            chosen.append(version)
    if not chosen:
        raise ValueError("no OCPP version is chosen")
    return tuple(chosen)
