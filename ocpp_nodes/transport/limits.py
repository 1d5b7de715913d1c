"""Token buckets for connection attempts: pure logic, time passed in.

A CSMS faces the internet; a flood of logins (good or bad) must not cost it
more than a bounded amount of work per second, so the stations already
connected keep being served. :class:`RateLimit` is one bucket (all attempts
of a node); :class:`AddressRateLimit` is one per source address, in bounded
memory.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["AddressRateLimit", "RateLimit"]


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


class AddressRateLimit:
    """A :class:`RateLimit` per source address, holding at most ``max_addresses``.

    A bucket that has had time to fill up again is the same as no bucket, so
    it is forgotten: only the addresses seen in the last ``burst / per_second``
    seconds are kept, oldest first in line to go. When more than
    ``max_addresses`` are that recent (a flood from many addresses), the least
    recently seen is forgotten: such a flood costs memory in proportion to
    ``max_addresses``, never more. (It can then win a fresh bucket for an
    address: a flood from that many addresses is beyond what a per-address
    limit can stop; the node's ``handshakes_per_second`` still caps it.)

    Args:
        per_second: the refill rate per address; 0 or less means no limit.
        burst: each bucket's size; defaults to ``per_second``.
        max_addresses: the most buckets kept at once.
    """

    def __init__(
        self, per_second: float, burst: float | None = None, max_addresses: int = 65_536
    ) -> None:
        if max_addresses < 1:
            raise ValueError(f"max_addresses must be at least 1, not {max_addresses}")
        self.per_second = per_second
        self.burst = max(burst if burst is not None else per_second, 1.0)
        self.max_addresses = max_addresses
        # address -> (tokens, when last taken), least recently seen first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._refill = self.burst / per_second if per_second > 0 else 0.0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, address: str, now: float) -> bool:
        """Take one of ``address``'s tokens at ``now`` (seconds, monotonic)."""
        if self.per_second <= 0:
            return True
        buckets = self._buckets
        while buckets:
            oldest, (_tokens, last) = next(iter(buckets.items()))
            if now - last < self._refill:
                break
            del buckets[oldest]  # full again by now
        entry = buckets.pop(address, None)
        if entry is None:
            tokens = self.burst
        else:
            tokens = min(self.burst, entry[0] + (now - entry[1]) * self.per_second)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        buckets[address] = (tokens, now)
        if len(buckets) > self.max_addresses:
            buckets.popitem(last=False)
        return allowed
