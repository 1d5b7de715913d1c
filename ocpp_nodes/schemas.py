"""Payload validation against the official OCA JSON schemas.

Theory of operation:

1. The schemas are the ones shipped inside the installed ``ocpp`` package
   (``ocpp/v201/schemas/<Action>Request.json`` ...); none is copied into this
   repository. Which package serves which OCPP version, and how a version
   spells its error codes, is the version table's business
   (:mod:`ocpp_nodes.rpc.versions`): a :class:`SchemaRegistry` is told.
2. A registry reads every schema file of its package and compiles every
   validator when it is built, so that nothing on the receive path reads a
   file or compiles code, and a schema that does not compile fails the
   engine's start, not the first message that needs it.
3. Compiling a version's validators takes about a second; the code
   ``fastjsonschema`` generates for them can be kept between engine starts in
   a :class:`CodeCache` (the engine uses a private directory,
   :mod:`ocpp_nodes.schema_cache`), keyed by a digest of everything that
   shapes it.
4. Valid payloads (the common case) are checked by ``fastjsonschema`` code
   alone. Only a payload that it rejects goes to ``jsonschema``, which says
   which fields failed and why: every violation is named (up to
   :data:`MAX_VIOLATIONS_NAMED`, the most relevant first), and the most
   relevant one's keyword gives the version's error code.
5. ``format: date-time`` is checked by one function (RFC 3339) in both
   validators so that they never disagree.

No I/O beyond reading packaged schema files when a registry is built (and
what the code cache it is handed does), no clock.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import partial
from importlib import resources
from types import CodeType
from typing import Any, Protocol

import fastjsonschema
import jsonschema

__all__ = [
    "MAX_VIOLATIONS_NAMED",
    "CodeCache",
    "Direction",
    "SchemaRegistry",
    "SchemaViolation",
    "use_code_cache",
]


class Direction(Enum):
    """Which half of an action a payload belongs to."""

    # A member is its own identity: hashing it (a dict key on every validation)
    # need not run Enum's Python-level __hash__.
    __hash__ = object.__hash__

    REQUEST = "Request"
    RESPONSE = "Response"
    #: (2.1) an unconfirmed message (SEND), the only half of its action
    SEND = "Send"


#: Violations a description names; more are counted ("and 3 more").
MAX_VIOLATIONS_NAMED = 10
#: Characters of one violation's text (a value quoted in it can be long).
_MAX_VIOLATION_TEXT = 255


@dataclass(frozen=True)
class SchemaViolation:
    """Why a payload does not match its schema.

    Attributes:
        error_code: the OCPP-J error code for a CALLERROR, as the version
            spells it (from the most relevant violation).
        description: one line for humans naming every violation, each with
            its field, the most relevant first: ``"a: ...; b: ..."``, at most
            :data:`MAX_VIOLATIONS_NAMED` then ``"and N more"``.
        path: JSON path of the most relevant offending field, ``""`` for the
            payload itself.
        keyword: the JSON-schema keyword that failed there (``"required"`` ...).
    """

    error_code: str
    description: str
    path: str
    keyword: str


class CodeCache(Protocol):
    """Where compiled validator code may be kept between engine starts."""

    def load(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or ``None``."""

    def store(self, key: str, data: bytes) -> None:
        """Keep ``data`` under ``key``; failing quietly is allowed."""


_code_cache: CodeCache | None = None


def use_code_cache(cache: CodeCache | None) -> None:
    """Registries built from now on load and keep their compiled code in ``cache``."""
    global _code_cache
    _code_cache = cache


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _is_date_time(value: object) -> bool:
    return not isinstance(value, str) or bool(_RFC3339.match(value))


_FORMATS = {"date-time": _is_date_time}
_FORMAT_CHECKER = jsonschema.FormatChecker(formats=())
_FORMAT_CHECKER.checks("date-time")(_is_date_time)

# What shapes the generated code besides the schemas: bump when the options
# given to fastjsonschema below change.
_CODE_FORMAT = 1


@dataclass(frozen=True)
class _Validator:
    fast: Callable[[Any], Any]
    detailed: jsonschema.protocols.Validator


class SchemaRegistry:
    """Every validator of one schema set, compiled when the registry is built.

    Args:
        package: the subpackage of ``ocpp`` holding the schemas (``"ocpp.v201"``).
        request_suffix: what follows the action in a request's file name
            (``"Request"``; ``""`` in 1.6, whose requests are ``<Action>.json``).
        error_codes: JSON-schema keyword that failed -> the error code to
            answer with, as the version spells it.
        format_violation: the code for anything else (and for a payload that
            is not an object at all).
    """

    def __init__(
        self,
        package: str,
        request_suffix: str,
        error_codes: Mapping[str, str],
        format_violation: str,
    ) -> None:
        self.package = package
        self.error_codes = dict(error_codes)
        self.format_violation = format_violation
        # Found from the top package: importing ``ocpp.v21`` itself would build
        # its hundreds of dataclasses (most of the time of a start from the cache).
        top, *subpackages = package.split(".")
        folder = resources.files(top).joinpath(*subpackages, "schemas")
        texts = {
            entry.name: entry.read_text("utf-8")
            for entry in folder.iterdir()
            if entry.name.endswith(".json")
        }
        self.actions: frozenset[str] = frozenset(
            name[: -len("Response.json")] for name in texts if name.endswith("Response.json")
        )
        # A set whose requests carry a suffix may have files with neither: SEND messages.
        self.unconfirmed_actions: frozenset[str] = frozenset(
            name[: -len(".json")]
            for name in texts
            if request_suffix and not name.endswith(("Response.json", f"{request_suffix}.json"))
        )
        files = {
            (
                action,
                direction,
            ): f"{action}{request_suffix if direction is Direction.REQUEST else 'Response'}.json"
            for action in self.actions
            for direction in (Direction.REQUEST, Direction.RESPONSE)
        }
        files.update(
            {(action, Direction.SEND): f"{action}.json" for action in self.unconfirmed_actions}
        )
        schemas: dict[tuple[str, Direction], dict[str, Any]] = {}
        for key, name in sorted(files.items(), key=lambda item: item[1]):
            schema = json.loads(texts[name])
            # The OCA files carry a urn $id that neither validator needs to resolve.
            schema.pop("$id", None)
            schemas[key] = schema
        fast = _compile_all(schemas, _code_cache)
        self._validators: dict[tuple[str, Direction], _Validator] = {
            key: _Validator(
                fast[key],
                jsonschema.validators.validator_for(schema, jsonschema.Draft6Validator)(
                    schema, format_checker=_FORMAT_CHECKER
                ),
            )
            for key, schema in schemas.items()
        }

    def knows(self, action: str) -> bool:
        """True when ``action`` is an action of this schema set (case-sensitive)."""
        return action in self.actions

    def validate(self, action: str, direction: Direction, payload: Any) -> SchemaViolation | None:
        """Check ``payload`` against the schema of ``action`` in ``direction``.

        Returns:
            ``None`` when valid, else the violation with its OCPP error code.

        Raises:
            KeyError: ``action`` is not an action of this schema set.
        """
        validator = self._validators[(action, direction)]
        try:
            validator.fast(payload)
        except fastjsonschema.JsonSchemaException:
            return self._explain(validator.detailed, payload)
        return None

    def _explain(self, validator: jsonschema.protocols.Validator, payload: Any) -> SchemaViolation:
        errors = list(validator.iter_errors(payload))
        error = jsonschema.exceptions.best_match(errors)
        if error is None:  # the two validators disagree; say so rather than guess
            return SchemaViolation(self.format_violation, "payload rejected by schema", "", "")
        path = _json_path(error)
        keyword = str(error.validator)
        code = self.error_codes.get(keyword, self.format_violation)
        if keyword == "type" and not path:
            code = self.format_violation  # the payload is not even a JSON object
        others = sorted((other for other in errors if other is not error), key=_path_order)
        named = [
            f"{_json_path(each) or 'payload'}: {each.message}"[:_MAX_VIOLATION_TEXT]
            for each in [error, *others][:MAX_VIOLATIONS_NAMED]
        ]
        if len(errors) > MAX_VIOLATIONS_NAMED:
            named.append(f"and {len(errors) - MAX_VIOLATIONS_NAMED} more")
        return SchemaViolation(code, "; ".join(named), path, keyword)


def _path_order(error: jsonschema.ValidationError) -> list[tuple[int, int | str]]:
    """Sorts errors by where they are, array items in numeric order."""
    return [(0, part) if isinstance(part, int) else (1, str(part)) for part in error.path]


def _json_path(error: jsonschema.ValidationError) -> str:
    """Where ``error`` is, as ``a.b[0].c`` (``""``: the payload itself)."""
    return "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path
    ).lstrip(".")


def _compile_all(
    schemas: dict[tuple[str, Direction], dict[str, Any]], cache: CodeCache | None
) -> dict[tuple[str, Direction], Callable[[Any], Any]]:
    """The ``fastjsonschema`` validator of every schema, from ``cache`` when it has them."""
    keys = list(schemas)
    digest = hashlib.sha256(
        json.dumps(
            [
                _CODE_FORMAT,
                fastjsonschema.VERSION,
                sys.version,
                [
                    [action, direction.value, schemas[(action, direction)]]
                    for action, direction in keys
                ],
            ],
            sort_keys=True,
        ).encode()
    ).hexdigest()
    codes: list[CodeType] | None = None
    data = cache.load(digest) if cache is not None else None
    if data is not None:
        try:
            loaded = marshal.loads(data)
        except (EOFError, ValueError, TypeError):
            loaded = None
        if isinstance(loaded, list) and len(loaded) == len(keys):
            codes = loaded
    if codes is None:
        codes = [
            compile(
                fastjsonschema.compile_to_code(schemas[key], formats=_FORMATS, use_default=False),
                f"<schema {key[0]}{key[1].value}>",
                "exec",
            )
            for key in keys
        ]
        if cache is not None:
            cache.store(digest, marshal.dumps(codes))
    validators: dict[tuple[str, Direction], Callable[[Any], Any]] = {}
    for key, code in zip(keys, codes, strict=True):
        namespace: dict[str, Any] = {}
        exec(code, namespace)
        # use_default=False: validation must never add defaults to a payload.
        validators[key] = partial(namespace["validate"], custom_formats=_FORMATS)
    return validators
