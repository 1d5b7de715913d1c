"""A station's registration with its CSMS, and the boot rules that follow from it.

Theory of operation:

1. A station registers with BootNotification; the CSMS's answer puts it in
   ``Accepted``, ``Pending`` or ``Rejected``, with an ``interval`` (OCPP 2.0.1
   B01-B03). Before any answer it is ``NotBooted``.
2. One :class:`Registration` is kept per station by each end that applies the
   rules: the CS node for itself, the CSMS node for every station. It learns
   the answer from the BootNotification exchange that passes through that
   end (:meth:`Registration.boot_answered`) and says what the rules allow:
   a station's request (:meth:`~Registration.station_refusal`), a CSMS's
   request (:meth:`~Registration.csms_refusal`), and what a station answers
   by itself (:meth:`~Registration.station_answer`).
3. While Pending, a station may send what the CSMS asked for: one message of
   the kind a TriggerMessage named, and the report of a GetBaseReport or
   GetReport. :meth:`~Registration.csms_request` notes such requests, as the
   CSMS sends them or the station receives them.
4. The two ends read the rules differently where the spec does: the station
   sends nothing but BootNotification before it is booted and waits out the
   interval before booting again; the CSMS serves a station it never saw
   boot (one that reconnected without booting again, as part 4 asks) as
   before, and always lets a BootNotification through.
5. What differs between versions (the trigger request and its field, the
   report requests, the requests a Pending station refuses, what a Rejected
   one answers) is in the version's :class:`~ocpp_nodes.rpc.versions.BootRules`.

No I/O, no clock: times are passed in (seconds, on any monotonic clock).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .frames import ErrorCode
from .roles import Role
from .versions import OcppVersion, RejectedAnswer

__all__ = [
    "BOOT_ACTION",
    "DEFAULT_BOOT_WAIT",
    "ErrorAnswer",
    "Registration",
    "RegistrationStatus",
    "ResultAnswer",
]

BOOT_ACTION = "BootNotification"

#: The wait before booting again after an answer with interval 0: the
#: station chooses one "that avoids flooding the CSMS" (B02, B03).
DEFAULT_BOOT_WAIT = 60.0


class RegistrationStatus(Enum):
    NOT_BOOTED = "NotBooted"
    PENDING = "Pending"
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"


@dataclass(frozen=True)
class ResultAnswer:
    """A station answers a CSMS request by itself with this CALLRESULT payload."""

    payload: dict[str, Any]


@dataclass(frozen=True)
class ErrorAnswer:
    """A station answers a CSMS request by itself with this CALLERROR (``None``: not at all)."""

    error: ErrorCode | None
    description: str


@dataclass
class Registration:
    """One station's registration, as seen by ``role`` (the station or its CSMS).

    Attributes:
        role: the end that keeps it.
        status: as the last BootNotification answer left it.
        interval: that answer's ``interval`` (s).
        boot_allowed_at: Pending or Rejected: when BootNotification may go
            out again (on the clock of the ``now`` passed in).
    """

    role: Role
    status: RegistrationStatus = RegistrationStatus.NOT_BOOTED
    interval: int | None = None
    boot_allowed_at: float | None = None
    #: actions the CSMS asked for with a trigger while Pending, with how many of each
    _triggered: Counter[str] = field(default_factory=Counter)
    #: requestIds of the reports the CSMS asked for while Pending
    _reports: set[Any] = field(default_factory=set)

    # -- what the BootNotification exchange says -----------------------------

    def boot_answered(self, answer: Any, now: float) -> bool:
        """Take the status and interval of a BootNotification answer.

        Returns True when either changed. An answer without a status this
        module knows (a CALLRESULT that broke the schema) changes nothing.
        """
        if not isinstance(answer, dict):
            return False
        try:
            status = RegistrationStatus(answer.get("status"))
        except ValueError:
            return False
        if status is RegistrationStatus.NOT_BOOTED:
            return False
        interval = answer.get("interval")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
            interval = 0
        before = (self.status, self.interval)
        self.status, self.interval = status, interval
        self._triggered.clear()
        self._reports.clear()
        if status is RegistrationStatus.ACCEPTED:
            self.boot_allowed_at = None
        else:
            self.boot_allowed_at = now + (interval or DEFAULT_BOOT_WAIT)
        return (status, interval) != before

    def csms_request(self, version: OcppVersion, action: str, payload: Any) -> None:
        """Note a request of the CSMS that asks a Pending station for a message."""
        if self.status is not RegistrationStatus.PENDING or not isinstance(payload, dict):
            return
        rules = version.boot_rules
        if action in rules.triggers:
            asked = rules.triggered_action(payload.get(rules.triggers[action]))
            if asked is not None:
                self._triggered[asked] += 1
        elif action in rules.report_requests:
            self._reports.add(payload.get("requestId"))

    # -- what the rules allow --------------------------------------------------

    def station_refusal(
        self, version: OcppVersion, action: str, payload: Any, now: float
    ) -> str | None:
        """Why the station may not send the request ``action`` now; ``None`` when it may.

        A request the CSMS asked for is used up by being allowed.
        """
        status = self.status
        if status is RegistrationStatus.ACCEPTED:
            return None
        station = self.role is Role.CHARGING_STATION
        if action == BOOT_ACTION:
            if not station or status is RegistrationStatus.NOT_BOOTED:
                return None
            if self._use_trigger(action):
                return None
            wait = self.seconds_to_boot(now)
            if wait > 0:
                return (
                    f"BootNotification was answered {status.value}: the next may be sent "
                    f"in {wait} s (interval {self.interval} s)"
                )
            return None
        if status is RegistrationStatus.NOT_BOOTED:
            if not station:  # never seen booting: served as before (part 4, 5.4: no new boot)
                return None
            return "not booted: only BootNotification may be sent until the CSMS accepts it"
        if status is RegistrationStatus.REJECTED:
            wait = self.seconds_to_boot(now)
            when = f"in {wait} s" if wait > 0 else "now"
            return (
                "BootNotification was answered Rejected: nothing but BootNotification may be "
                f"sent until the CSMS accepts it (the next BootNotification {when})"
            )
        if self._use_trigger(action) or self._use_report(version, action, payload):
            return None
        return (
            "BootNotification was answered Pending: only what the CSMS asks for (with "
            "TriggerMessage, GetBaseReport or GetReport) may be sent until it accepts"
        )

    def csms_refusal(self, version: OcppVersion, action: str) -> str | None:
        """Why the CSMS may not send the station the request ``action`` now."""
        if self.status is RegistrationStatus.REJECTED:
            return (
                "the station's BootNotification was answered Rejected: the CSMS sends it "
                "nothing until it boots again and is accepted"
            )
        if (
            self.status is RegistrationStatus.PENDING
            and action in version.boot_rules.pending_refusals
        ):
            return f"{action} is not allowed while the station's registration is Pending"
        return None

    def station_answer(
        self, version: OcppVersion, action: str
    ) -> ResultAnswer | ErrorAnswer | None:
        """What the station answers by itself to the CSMS request ``action``;
        ``None`` when its flow answers."""
        rules = version.boot_rules
        if self.status is RegistrationStatus.REJECTED:
            if rules.rejected_answer is RejectedAnswer.IGNORE:
                return ErrorAnswer(None, "")
            return ErrorAnswer(
                ErrorCode.SECURITY_ERROR,
                "the Charging Station's BootNotification was answered Rejected",
            )
        if self.status is RegistrationStatus.PENDING and action in rules.pending_refusals:
            return ResultAnswer(dict(rules.pending_refusals[action]))
        return None

    def seconds_to_boot(self, now: float) -> int:
        """Whole seconds until BootNotification may go again (0: now)."""
        if self.boot_allowed_at is None:
            return 0
        return max(0, math.ceil(self.boot_allowed_at - now - 1e-9))

    def _use_trigger(self, action: str) -> bool:
        if self._triggered[action] <= 0:
            return False
        self._triggered[action] -= 1
        return True

    def _use_report(self, version: OcppVersion, action: str, payload: Any) -> bool:
        if action != version.boot_rules.report_action or not isinstance(payload, dict):
            return False
        request_id = payload.get("requestId")
        if request_id not in self._reports:
            return False
        if not payload.get("tbc"):  # the last part of the report
            self._reports.discard(request_id)
        return True
