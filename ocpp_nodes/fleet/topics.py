"""Fleet mode on the broker: every topic, property and record, in one place.

docs/fleet.md describes the same for users who write their own consumer;
both follow this module. All topics of a fleet start with ``ocpp/<group>/``.

============================  ==========================  =====================================
topic                         published by                carries
============================  ==========================  =====================================
``station/<cbId>/up``         the gateway holding cbId    the station's CALLs and SENDs (frame
                                                          text); a CALL has ResponseTopic
                                                          ``station/<cbId>/down`` and
                                                          CorrelationData = its MessageId
``station/<cbId>/down``       a Node-RED instance         CALLs (ResponseTopic = its
                                                          ``node/<instance>/answers``,
                                                          MessageExpiryInterval = call
                                                          timeout), SENDs, answers to the
                                                          station's CALLs; a close request
``node/<instance>/answers``   the gateway holding cbId    the station's answer to that
                                                          instance's CALL
``presence/<cbId>``           gateways (retained)         :class:`Presence` as JSON
``gateway/<id>``              a gateway (retained); its   ``{"online": true|false, "since"}``
                              last will says offline
``auth/<cbId>``               CSMS nodes (retained)       the station's password hash
``auth-index``                CSMS nodes (retained)       ``{"stations": [cbId, ...]}``: whose
                                                          ``auth/<cbId>`` entries there are
============================  ==========================  =====================================

Everything is QoS 1. A cbId may hold characters that MQTT gives a meaning in
topics (``/``, ``+``, ``#``): :func:`topic_level` escapes them as ``%XX``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "GROUP_PATTERN",
    "Presence",
    "Topics",
    "cb_id_of",
    "group_problem",
    "topic_level",
]

#: A fleet group's name: it is a topic level and an MQTT shared-subscription name.
GROUP_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")

#: QoS of every fleet message: at least once.
QOS = 1

#: MQTT 5 user properties of fleet messages (name -> what it holds).
CONNECTION = "connection"  # the id a gateway gave the station's websocket connection
VERSION = "version"  # the connection's OCPP subprotocol, e.g. "ocpp2.0.1"
GATEWAY = "gateway"  # the id of the gateway holding the station
CONTROL = "control"  # on ``down``: "close" (payload {"code", "reason"}) instead of a frame

_ESCAPED = {"%": "%25", "/": "%2F", "+": "%2B", "#": "%23", "\0": "%00"}
_ESCAPE = re.compile("[%/+#\0]")
_UNESCAPE = re.compile("%(25|2F|2B|23|00)")
_UNESCAPED = {code[1:]: char for char, code in _ESCAPED.items()}


def topic_level(cb_id: str) -> str:
    """``cb_id`` as one topic level: ``/``, ``+``, ``#``, ``%`` and NUL escaped as ``%XX``."""
    return _ESCAPE.sub(lambda match: _ESCAPED[match.group()], cb_id)


def cb_id_of(level: str) -> str:
    """The cbId a topic level (:func:`topic_level`) stands for."""
    return _UNESCAPE.sub(lambda match: _UNESCAPED[match.group(1)], level)


def group_problem(group: Any) -> str | None:
    """Why ``group`` cannot name a fleet, or ``None``."""
    if not isinstance(group, str) or not GROUP_PATTERN.fullmatch(group):
        return (
            f"fleet group {group!r} must be 1-64 letters, digits, '_', '-' or '.' "
            "(it is a topic level and a shared-subscription name)"
        )
    return None


class Topics:
    """The topics of one fleet group."""

    def __init__(self, group: str) -> None:
        problem = group_problem(group)
        if problem is not None:
            raise ValueError(problem)
        self.group = group
        self.prefix = f"ocpp/{group}/"
        #: what Node-RED instances subscribe to share the stations' traffic
        self.shared_up = f"$share/{group}/{self.prefix}station/+/up"
        self.all_presence = f"{self.prefix}presence/+"
        self.all_gateways = f"{self.prefix}gateway/+"
        self.all_auth = f"{self.prefix}auth/+"
        #: the cbIds of the ``auth/<cbId>`` entries: a gateway that got fewer when it
        #: subscribed (a broker dropped retained messages) fetches the others
        self.auth_index = f"{self.prefix}auth-index"

    def up(self, cb_id: str) -> str:
        return f"{self.prefix}station/{topic_level(cb_id)}/up"

    def down(self, cb_id: str) -> str:
        return f"{self.prefix}station/{topic_level(cb_id)}/down"

    def answers(self, instance: str) -> str:
        return f"{self.prefix}node/{instance}/answers"

    def presence(self, cb_id: str) -> str:
        return f"{self.prefix}presence/{topic_level(cb_id)}"

    def gateway(self, gateway_id: str) -> str:
        return f"{self.prefix}gateway/{gateway_id}"

    def auth(self, cb_id: str) -> str:
        return f"{self.prefix}auth/{topic_level(cb_id)}"

    def parse(self, topic: str) -> tuple[str, str] | None:
        """``(kind, name)`` of a fleet topic: ``("up", cbId)``, ``("presence", cbId)``,
        ``("gateway", id)``, ``("auth", cbId)``, ``("auth-index", "")``,
        ``("down", cbId)``, ``("answers", instance)``; ``None`` for any other topic."""
        if not topic.startswith(self.prefix):
            return None
        levels = topic[len(self.prefix) :].split("/")
        if len(levels) == 3 and levels[0] == "station" and levels[2] in ("up", "down"):
            return levels[2], cb_id_of(levels[1])
        if len(levels) == 2 and levels[0] in ("presence", "auth"):
            return levels[0], cb_id_of(levels[1])
        if len(levels) == 2 and levels[0] == "gateway":
            return "gateway", levels[1]
        if len(levels) == 3 and levels[0] == "node" and levels[2] == "answers":
            return "answers", levels[1]
        if levels == ["auth-index"]:
            return "auth-index", ""
        return None


@dataclass(frozen=True)
class Presence:
    """Where a station is connected (retained on ``presence/<cbId>``).

    ``online`` false: the connection ``connection`` ended (``reason`` why);
    a record naming another connection is not about this one.
    """

    online: bool
    gateway: str
    connection: str
    since: str
    version: str = ""
    remote: str = ""
    reason: str = ""

    def to_json(self) -> bytes:
        record = {key: value for key, value in asdict(self).items() if value != ""}
        return json.dumps(record, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Presence | None:
        """The record in ``data``; ``None`` when empty or not a presence record."""
        if not data:
            return None
        try:
            record = json.loads(data)
            return cls(
                online=bool(record["online"]),
                gateway=str(record["gateway"]),
                connection=str(record["connection"]),
                since=str(record.get("since", "")),
                version=str(record.get("version", "")),
                remote=str(record.get("remote", "")),
                reason=str(record.get("reason", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None
