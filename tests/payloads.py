"""Deterministic, schema-valid OCPP 2.0.1 payloads for every action, both halves.

Built from the official JSON schemas shipped in the installed ``ocpp`` package
(``ocpp/v201/schemas/<Action>Request.json`` / ``<Action>Response.json``), so a
new package version with changed schemas changes the payloads with it.

Rules (the smallest valid payload): only ``required`` properties; ``$ref`` is
resolved into ``definitions``; an enum takes its first value; a string respects
``minLength`` / ``maxLength`` and ``format: date-time``; an integer or number
takes its ``minimum`` (else 0); an array holds ``max(1, minItems)`` items; a
boolean is ``False``.

The direction lists come from /work/shared/reference/ocpp-2.0.1-actions.md
(OCPP 2.0.1 part 2); ``DataTransfer`` is in both.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

from ocpp_nodes.rpc import V201

__all__ = ["ACTIONS", "CSMS_TO_CS", "CS_TO_CSMS", "DATE_TIME", "valid_payload"]

DATE_TIME = "2026-01-01T00:00:00Z"

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


@cache
def _schema(action: str, half: str) -> dict[str, Any]:
    if half not in ("Request", "Response"):
        raise ValueError(f"half must be 'Request' or 'Response', not {half!r}")
    if action not in V201.schemas.actions:
        raise KeyError(action)
    folder = resources.files("ocpp.v201").joinpath("schemas")
    return json.loads(folder.joinpath(f"{action}{half}.json").read_text("utf-8"))  # type: ignore[no-any-return]


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    seen: set[str] = set()
    while "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/definitions/") or ref in seen:
            raise ValueError(f"unsupported or cyclic $ref {ref!r}")
        seen.add(ref)
        node = root["definitions"][ref[len("#/definitions/") :]]
    return node


def _string(node: dict[str, Any]) -> str:
    if node.get("format") == "date-time":
        return DATE_TIME
    length = max(1, int(node.get("minLength", 1)))
    if "maxLength" in node:
        length = min(length, int(node["maxLength"]))
    return "x" * length


def _build(node: dict[str, Any], root: dict[str, Any]) -> Any:
    node = _resolve(node, root)
    if "enum" in node:
        return node["enum"][0]
    kind = node.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object" or (kind is None and "properties" in node):
        props = node.get("properties", {})
        return {name: _build(props[name], root) for name in node.get("required", [])}
    if kind == "array":
        count = max(1, int(node.get("minItems", 1)))
        items = node.get("items", {})
        if isinstance(items, list):  # tuple form: one of each
            return [_build(item, root) for item in items]
        return [_build(items, root) for _ in range(count)]
    if kind == "string":
        return _string(node)
    if kind == "integer":
        return int(node.get("minimum", 0))
    if kind == "number":
        return node.get("minimum", 0)
    if kind == "boolean":
        return False
    raise ValueError(f"no rule for schema node {node!r}")


@cache
def _payload(action: str, half: str) -> str:
    schema = _schema(action, half)
    return json.dumps(_build(schema, schema))


def valid_payload(action: str, half: str) -> dict[str, Any]:
    """A fresh copy of the smallest schema-valid payload of ``action``'s ``half``.

    Args:
        action: an OCPP 2.0.1 action name, e.g. ``"BootNotification"``.
        half: ``"Request"`` or ``"Response"``.
    """
    return copy.deepcopy(json.loads(_payload(action, half)))
