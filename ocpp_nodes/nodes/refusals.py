"""The CSMS node's summary of refused connection attempts.

An audit trail of bad logins that a flood cannot turn into a log flood: at
most one warning per :attr:`RefusalLog.PERIOD`, naming for each reason how
many attempts it refused and the cbIds they named (the first
:data:`CB_IDS_NAMED` of each, then how many more), and the first few remote
addresses. With many stations behind one address (a site's router), the
cbIds are what tells an operator which station has the wrong password.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from ..transport.csms_server import NO_COMMON_VERSION
from .base import NodeHost

__all__ = ["CB_IDS_NAMED", "RefusalLog"]

#: cbIds a summary names per reason; the others are counted
CB_IDS_NAMED = 10
#: distinct other cbIds counted per reason and period (a bound on memory)
_OTHERS_COUNTED = 10_000
#: characters of a cbId as the log shows it (a refused one may break the rules)
_CB_ID_SHOWN = 48


@dataclass
class _Reason:
    """What one reason refused in a period."""

    attempts: int = 0
    named: Counter[str] = field(default_factory=Counter)
    others: set[str] = field(default_factory=set)
    unnamed: int = 0  # attempts whose URL named no cbId

    def count(self, cb_id: str | None) -> None:
        self.attempts += 1
        if cb_id is None:
            self.unnamed += 1
        elif cb_id in self.named or len(self.named) < CB_IDS_NAMED:
            self.named[cb_id] += 1
        elif len(self.others) < _OTHERS_COUNTED:
            self.others.add(cb_id)

    def cb_ids(self) -> str:
        """``"CS1" x 2, "CS7" and 3 more`` (``""`` when none was named)."""
        if not self.named:
            return ""
        text = ", ".join(
            repr(cb_id[:_CB_ID_SHOWN]) + (f" x {n}" if n > 1 else "")
            for cb_id, n in self.named.items()
        )
        if self.others:
            over = "over " if len(self.others) >= _OTHERS_COUNTED else ""
            text += f" and {over}{len(self.others)} more"
        return text


class RefusalLog:
    """Refused connection attempts, summed up in at most one warning per 10 s.

    A reason is an HTTP status (``401`` ...), a websocket close code of
    :attr:`CLOSED`, or a word of :attr:`REASONS` for an attempt closed before
    any HTTP answer.
    """

    REASONS: dict[int | str, str] = {
        400: "invalid identity",
        401: "wrong or missing credentials",
        403: "client certificate of another station",
        404: "unknown identity",
        409: "already connected",
        503: "over a connection cap, or too many password hashes to check",
        # closed before any HTTP answer (StationListener.dropped)
        "rate_limited": "over handshakes_per_address, closed before TLS",
        "upgrade_timeout": "no websocket upgrade within upgrade_timeout",
        "tls_failed": "TLS handshake failed",
    }
    #: not HTTP: closed after the upgrade, as part 4 asks
    CLOSED = {NO_COMMON_VERSION: "no OCPP version in common; closed with code 1002"}
    PERIOD = 10.0

    def __init__(self, host: NodeHost) -> None:
        self.host = host
        self.reasons: dict[int | str, _Reason] = {}
        self.remotes: set[str] = set()
        self._flush: asyncio.TimerHandle | None = None

    def count(self, status: int | str, remote: str, cb_id: str | None = None) -> None:
        self.reasons.setdefault(status, _Reason()).count(cb_id)
        if len(self.remotes) < 5:
            self.remotes.add(remote)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self.PERIOD, self.report)

    def report(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if not self.reasons:
            return
        parts = []
        for status, reason in sorted(self.reasons.items(), key=_reason_order):
            if isinstance(status, str):
                what = self.REASONS.get(status, status)
            elif status in self.CLOSED:
                what = self.CLOSED[status]
            else:
                what = f"HTTP {status} ({self.REASONS.get(status, 'refused')})"
            cb_ids = reason.cb_ids()
            parts.append(f"{reason.attempts} x {what}" + (f": {cb_ids}" if cb_ids else ""))
        self.host.log(
            "warn",
            f"refused connection attempts: {'; '.join(parts)}; "
            f"from {', '.join(sorted(self.remotes))}",
        )
        self.reasons.clear()
        self.remotes.clear()


def _reason_order(item: tuple[int | str, _Reason]) -> tuple[int, str]:
    """HTTP statuses and close codes in numeric order, then words."""
    key = item[0]
    return (key, "") if isinstance(key, int) else (1 << 16, key)
