"""A token bucket for connection attempts: pure logic, time passed in.

A CSMS faces the internet; a flood of logins (good or bad) must not cost it
more than a bounded amount of work per second, so the stations already
connected keep being served.
"""

from __future__ import annotations

__all__ = ["RateLimit"]


class RateLimit:
    """At most ``per_second`` events per second on average, ``burst`` at once.

    Args:
        per_second: the refill rate; 0 or less means no limit.
        burst: the bucket's size; defaults to ``per_second`` (one second's worth).
    """

    def __init__(self, per_second: float, burst: float | None = None) -> None:
        self.per_second = per_second
        self.burst = max(burst if burst is not None else per_second, 1.0)
        self._tokens = self.burst
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        """Take one token at ``now`` (seconds, monotonic); False when none is left."""
        if self.per_second <= 0:
            return True
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.per_second)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
