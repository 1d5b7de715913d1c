"""Payload validation against the official OCA JSON schemas.

Theory of operation:

1. The schemas are the ones shipped inside the installed ``ocpp`` package
   (``ocpp/v201/schemas/<Action>Request.json`` ...). They are read through
   :mod:`importlib.resources` the first time an action is used, compiled, and
   kept: no file is read per message and none is copied into this repository.
2. A :class:`SchemaRegistry` serves one OCPP version; :func:`registry` caches
   one per version, so every connection of a version shares the compiled code.
3. Valid payloads (the common case) are checked by ``fastjsonschema`` code
   alone. Only a payload that it rejects goes to ``jsonschema``, which says
   which field failed and why; that reason is mapped to an OCPP-J error code
   (part 4, table 8) by :data:`ERROR_CODE_BY_KEYWORD`.
4. ``format: date-time`` is checked by one function (RFC 3339) in both
   validators so that they never disagree.

No I/O beyond reading packaged schema files once, no clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema
import jsonschema

__all__ = [
    "Direction",
    "ERROR_CODE_BY_KEYWORD",
    "SchemaRegistry",
    "SchemaViolation",
    "UnknownVersion",
    "registry",
]


class Direction(Enum):
    """Which half of an action a payload belongs to."""

    # A member is its own identity: hashing it (a dict key on every validation)
    # need not run Enum's Python-level __hash__.
    __hash__ = object.__hash__

    REQUEST = "Request"
    RESPONSE = "Response"


class UnknownVersion(ValueError):
    """Raised for an OCPP version whose schemas the ``ocpp`` package lacks."""


@dataclass(frozen=True)
class SchemaViolation:
    """Why a payload does not match its schema.

    Attributes:
        error_code: the OCPP-J error code for a CALLERROR (table 8).
        description: one line for humans, naming the field.
        path: JSON path of the offending field, ``""`` for the payload itself.
        keyword: the JSON-schema keyword that failed (``"required"`` ...).
    """

    error_code: str
    description: str
    path: str
    keyword: str


#: JSON-schema keyword that failed -> OCPP-J error code (part 4, table 8).
#: Anything not listed is a ``FormatViolation``.
ERROR_CODE_BY_KEYWORD: dict[str, str] = {
    "type": "TypeConstraintViolation",
    "required": "OccurrenceConstraintViolation",
    "minItems": "OccurrenceConstraintViolation",
    "maxItems": "OccurrenceConstraintViolation",
    "minProperties": "OccurrenceConstraintViolation",
    "maxProperties": "OccurrenceConstraintViolation",
    "enum": "PropertyConstraintViolation",
    "const": "PropertyConstraintViolation",
    "minLength": "PropertyConstraintViolation",
    "maxLength": "PropertyConstraintViolation",
    "minimum": "PropertyConstraintViolation",
    "maximum": "PropertyConstraintViolation",
    "exclusiveMinimum": "PropertyConstraintViolation",
    "exclusiveMaximum": "PropertyConstraintViolation",
    "multipleOf": "PropertyConstraintViolation",
    "pattern": "PropertyConstraintViolation",
    "format": "PropertyConstraintViolation",
    "additionalProperties": "FormatViolation",
}

# OCPP version -> (subpackage of ``ocpp`` holding the schemas, file suffix of a request)
_SCHEMA_PACKAGES: dict[str, tuple[str, str]] = {
    "2.0.1": ("ocpp.v201", "Request"),
    "2.1": ("ocpp.v21", "Request"),
    "1.6": ("ocpp.v16", ""),
}

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _is_date_time(value: object) -> bool:
    return not isinstance(value, str) or bool(_RFC3339.match(value))


_FORMAT_CHECKER = jsonschema.FormatChecker(formats=())
_FORMAT_CHECKER.checks("date-time")(_is_date_time)


@dataclass(frozen=True)
class _Compiled:
    fast: Callable[[Any], Any]
    detailed: jsonschema.protocols.Validator


class SchemaRegistry:
    """The validators of one OCPP version, compiled on first use and kept.

    Args:
        version: ``"2.0.1"``, ``"2.1"`` or ``"1.6"``.

    Raises:
        UnknownVersion: the installed ``ocpp`` package has no schemas for it.
    """

    def __init__(self, version: str) -> None:
        try:
            package, request_suffix = _SCHEMA_PACKAGES[version]
        except KeyError:
            raise UnknownVersion(f"no OCPP schemas for version {version!r}") from None
        self.version = version
        self._folder = resources.files(package).joinpath("schemas")
        self._request_suffix = request_suffix
        names = {entry.name for entry in self._folder.iterdir() if entry.name.endswith(".json")}
        self.actions: frozenset[str] = frozenset(
            name[: -len("Response.json")] for name in names if name.endswith("Response.json")
        )
        self._compiled: dict[tuple[str, Direction], _Compiled] = {}

    def knows(self, action: str) -> bool:
        """True when ``action`` is an action of this version (case-sensitive)."""
        return action in self.actions

    def validate(self, action: str, direction: Direction, payload: Any) -> SchemaViolation | None:
        """Check ``payload`` against the schema of ``action`` in ``direction``.

        Returns:
            ``None`` when valid, else the violation with its OCPP error code.

        Raises:
            KeyError: ``action`` is not an action of this version.
        """
        compiled = self._compiled.get((action, direction))
        if compiled is None:
            compiled = self._compile(action, direction)
        try:
            compiled.fast(payload)
        except fastjsonschema.JsonSchemaException:
            return self._explain(compiled.detailed, payload)
        return None

    def _compile(self, action: str, direction: Direction) -> _Compiled:
        if action not in self.actions:
            raise KeyError(action)
        suffix = self._request_suffix if direction is Direction.REQUEST else "Response"
        schema = json.loads(self._folder.joinpath(f"{action}{suffix}.json").read_text("utf-8"))
        # The OCA files carry a urn $id that neither validator needs to resolve.
        schema.pop("$id", None)
        validator_class = jsonschema.validators.validator_for(schema, jsonschema.Draft6Validator)
        compiled = _Compiled(
            # use_default=False: validation must never add defaults to a payload.
            fast=fastjsonschema.compile(
                schema, formats={"date-time": _is_date_time}, use_default=False
            ),
            detailed=validator_class(schema, format_checker=_FORMAT_CHECKER),
        )
        self._compiled[(action, direction)] = compiled
        return compiled

    @staticmethod
    def _explain(validator: jsonschema.protocols.Validator, payload: Any) -> SchemaViolation:
        error = jsonschema.exceptions.best_match(validator.iter_errors(payload))
        if error is None:  # the two validators disagree; say so rather than guess
            return SchemaViolation("FormatViolation", "payload rejected by schema", "", "")
        path = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path
        ).lstrip(".")
        keyword = str(error.validator)
        code = ERROR_CODE_BY_KEYWORD.get(keyword, "FormatViolation")
        if keyword == "type" and not path:
            code = "FormatViolation"  # the payload is not even a JSON object
        where = path or "payload"
        return SchemaViolation(code, f"{where}: {error.message}"[:255], path, keyword)


@cache
def registry(version: str) -> SchemaRegistry:
    """The shared :class:`SchemaRegistry` of ``version``."""
    return SchemaRegistry(version)
