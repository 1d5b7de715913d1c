"""Deterministic, schema-valid OCPP payloads for every action of every version.

Built from the official JSON schemas shipped in the installed ``ocpp`` package,
in the folder and with the file names the version table gives
(:class:`ocpp_nodes.rpc.versions.OcppVersion`): ``schema_package`` and
``request_schema_suffix``, so

- 2.0.1 and 2.1: ``<Action>Request.json`` / ``<Action>Response.json``, and
  2.1's SEND messages ``<Action>.json`` (half ``"Send"``);
- 1.6 (draft-04): ``<Action>.json`` / ``<Action>Response.json``.

A new package version with changed schemas changes the payloads with it.

Rules (the smallest valid payload): only ``required`` properties; ``$ref`` is
resolved into ``definitions``; an enum takes its first value (``const`` its
value); ``anyOf`` / ``oneOf`` take their first alternative; a string respects
``minLength`` / ``maxLength``, ``format: date-time`` is :data:`DATE_TIME`,
``format: uri`` is :data:`URI`; an integer or number takes its ``minimum``
(one step above it when exclusive, draft-04 boolean or draft-06 number form;
else 0, or its ``maximum`` when that is below 0); an array holds
``max(1, minItems)`` items; a boolean is ``False``. A schema keyword that no
rule covers (``pattern``, ``allOf``, ``not``, another ``format``) raises
``ValueError`` rather than yield a payload that might be invalid.

Who sends what: the 2.0.1 lists :data:`CS_TO_CSMS` / :data:`CSMS_TO_CS` are
written here from /work/shared/reference/ocpp-2.0.1-actions.md (OCPP 2.0.1
part 2; ``DataTransfer`` is in both), independently of the version table, so
that a test can cross-check the table; those of 1.6 and 2.1 come from the
version table (:func:`sent_by`, :func:`unconfirmed_by`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from ocpp_nodes.rpc import V16, V21, V201, OcppVersion, Role

__all__ = [
    "ACTIONS",
    "ALL_VERSIONS",
    "CSMS_TO_CS",
    "CS_TO_CSMS",
    "DATE_TIME",
    "HALVES",
    "URI",
    "actions",
    "sent_by",
    "unconfirmed_by",
    "valid_payload",
]

DATE_TIME = "2026-01-01T00:00:00Z"
URI = "https://example.com/x"

#: The halves of an action: a CALL's two, and a SEND's only one (2.1).
HALVES: tuple[str, ...] = ("Request", "Response", "Send")

#: Every version, oldest first.
ALL_VERSIONS: tuple[OcppVersion, ...] = (V16, V201, V21)

#: Sent by the Charging Station, answered by the CSMS (25).
CS_TO_CSMS: tuple[str, ...] = (
    "Authorize",
    "BootNotification",
    "ClearedChargingLimit",
    "DataTransfer",
    "FirmwareStatusNotification",
    "Get15118EVCertificate",
    "GetCertificateStatus",
    "Heartbeat",
    "LogStatusNotification",
    "MeterValues",
    "NotifyChargingLimit",
    "NotifyCustomerInformation",
    "NotifyDisplayMessages",
    "NotifyEVChargingNeeds",
    "NotifyEVChargingSchedule",
    "NotifyEvent",
    "NotifyMonitoringReport",
    "NotifyReport",
    "PublishFirmwareStatusNotification",
    "ReportChargingProfiles",
    "ReservationStatusUpdate",
    "SecurityEventNotification",
    "SignCertificate",
    "StatusNotification",
    "TransactionEvent",
)

#: Sent by the CSMS, answered by the Charging Station (40).
CSMS_TO_CS: tuple[str, ...] = (
    "CancelReservation",
    "CertificateSigned",
    "ChangeAvailability",
    "ClearCache",
    "ClearChargingProfile",
    "ClearDisplayMessage",
    "ClearVariableMonitoring",
    "CostUpdated",
    "CustomerInformation",
    "DataTransfer",
    "DeleteCertificate",
    "GetBaseReport",
    "GetChargingProfiles",
    "GetCompositeSchedule",
    "GetDisplayMessages",
    "GetInstalledCertificateIds",
    "GetLocalListVersion",
    "GetLog",
    "GetMonitoringReport",
    "GetReport",
    "GetTransactionStatus",
    "GetVariables",
    "InstallCertificate",
    "PublishFirmware",
    "RequestStartTransaction",
    "RequestStopTransaction",
    "ReserveNow",
    "Reset",
    "SendLocalList",
    "SetChargingProfile",
    "SetDisplayMessage",
    "SetMonitoringBase",
    "SetMonitoringLevel",
    "SetNetworkProfile",
    "SetVariableMonitoring",
    "SetVariables",
    "TriggerMessage",
    "UnlockConnector",
    "UnpublishFirmware",
    "UpdateFirmware",
)

#: Every OCPP 2.0.1 action the schema registry knows, sorted.
ACTIONS: tuple[str, ...] = tuple(sorted(V201.schemas.actions))

_INDEPENDENT: Mapping[Role, tuple[str, ...]] = {
    Role.CHARGING_STATION: CS_TO_CSMS,
    Role.CSMS: CSMS_TO_CS,
}


def actions(version: OcppVersion = V201) -> tuple[str, ...]:
    """Every action (with a request and a response) of ``version``, sorted."""
    return ACTIONS if version is V201 else tuple(sorted(version.schemas.actions))


def sent_by(version: OcppVersion, role: Role) -> tuple[str, ...]:
    """The actions ``role`` sends (CALLs) in ``version``.

    2.0.1: the lists of this module (from the reference, not from the table);
    other versions: the version table's ``sends``, sorted.
    """
    if version is V201:
        return _INDEPENDENT[role]
    return tuple(sorted(version.sends[role]))


def unconfirmed_by(version: OcppVersion, role: Role) -> tuple[str, ...]:
    """The SEND actions (message type 6) ``role`` sends in ``version``, sorted."""
    return tuple(sorted(version.unconfirmed.get(role, ())))


def _file_name(version: OcppVersion, action: str, half: str) -> str:
    if half not in HALVES:
        raise ValueError(f"half must be one of {', '.join(HALVES)}, not {half!r}")
    registry = version.schemas
    if half == "Send":
        if action not in registry.unconfirmed_actions:
            raise KeyError(action)
        return f"{action}.json"
    if action not in registry.actions:
        raise KeyError(action)
    suffix = version.request_schema_suffix if half == "Request" else "Response"
    return f"{action}{suffix}.json"


@cache
def _schema(package: str, name: str) -> dict[str, Any]:
    folder = resources.files(package).joinpath("schemas")
    return json.loads(folder.joinpath(name).read_text("utf-8"))  # type: ignore[no-any-return]


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    seen: set[str] = set()
    while "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/definitions/") or ref in seen:
            raise ValueError(f"unsupported or cyclic $ref {ref!r}")
        seen.add(ref)
        node = root["definitions"][ref[len("#/definitions/") :]]
    return node


_UNSUPPORTED = ("pattern", "allOf", "not", "if", "patternProperties", "dependencies")


def _string(node: dict[str, Any]) -> str:
    fmt = node.get("format")
    if fmt == "date-time":
        return DATE_TIME
    if fmt == "uri":
        text = URI
    elif fmt is None:
        text = "x"
    else:
        raise ValueError(f"no rule for string format {fmt!r}")
    length = max(len(text), int(node.get("minLength", 1)))
    text += "x" * (length - len(text))
    if "maxLength" in node and len(text) > int(node["maxLength"]):
        if fmt is not None:
            raise ValueError(f"{fmt} string cannot fit maxLength {node['maxLength']}")
        text = text[: int(node["maxLength"])]
    return text


def _number(node: dict[str, Any], integer: bool) -> int | float:
    step: int | float = 1 if integer else node.get("multipleOf", 1)
    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        value = node["exclusiveMinimum"] + step  # draft-06
    elif "minimum" in node:
        value = node["minimum"] + (step if node.get("exclusiveMinimum") is True else 0)
    else:
        value = 0
        if "maximum" in node and node["maximum"] < 0:
            value = node["maximum"] - (step if node.get("exclusiveMaximum") is True else 0)
    return int(value) if integer else value


def _build(node: dict[str, Any], root: dict[str, Any]) -> Any:
    node = _resolve(node, root)
    for keyword in _UNSUPPORTED:
        if keyword in node:
            raise ValueError(f"no rule for schema keyword {keyword!r} in {node!r}")
    if "enum" in node:
        return node["enum"][0]
    if "const" in node:
        return node["const"]
    for keyword in ("anyOf", "oneOf"):
        if keyword in node:
            return _build(node[keyword][0], root)
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in node):
        props = node.get("properties", {})
        required = node.get("required", [])
        if not isinstance(required, list):  # draft-03 form; no OCPP schema uses it
            raise ValueError(f"no rule for required {required!r}")
        return {name: _build(props[name], root) for name in required}
    if kind == "array":
        count = max(1, int(node.get("minItems", 1)))
        items = node.get("items", {})
        if isinstance(items, list):  # tuple form: one of each
            return [_build(item, root) for item in items]
        return [_build(items, root) for _ in range(count)]
    if kind == "string":
        return _string(node)
    if kind == "integer":
        return _number(node, integer=True)
    if kind == "number":
        return _number(node, integer=False)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    raise ValueError(f"no rule for schema node {node!r}")


@cache
def _payload(version_name: str, action: str, half: str) -> str:
    version = {v.name: v for v in ALL_VERSIONS}[version_name]
    schema = _schema(version.schema_package, _file_name(version, action, half))
    return json.dumps(_build(schema, schema))


def valid_payload(action: str, half: str, version: OcppVersion = V201) -> dict[str, Any]:
    """A fresh copy of the smallest schema-valid payload of ``action``'s ``half``.

    Args:
        action: an action of ``version``, e.g. ``"BootNotification"``.
        half: ``"Request"`` or ``"Response"``; ``"Send"`` for a SEND message
            (2.1's ``NotifyPeriodicEventStream``).
        version: the OCPP version (2.0.1 when not given).

    Raises:
        KeyError: ``action`` has no such half in ``version``.
        ValueError: ``half`` is none of :data:`HALVES`, or a schema needs a
            rule this module lacks.
    """
    _file_name(version, action, half)  # KeyError / ValueError before the cache
    return copy.deepcopy(json.loads(_payload(version.name, action, half)))
