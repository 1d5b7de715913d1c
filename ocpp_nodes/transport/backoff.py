"""Reconnect back-off of a Charging Station (OCPP 2.0.1 part 4, 5.3).

After a failed or lost connection the station waits ``RetryBackOffWaitMinimum``
plus a random part of up to ``RetryBackOffRandomRange`` seconds, doubles the
wait after each further failure for ``RetryBackOffRepeatTimes`` times, and then
keeps the last wait. A connection that opens resets it. Pure logic: the random
source is passed in, nothing sleeps here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    wait_minimum: float = 3.0
    random_range: float = 10.0
    repeat_times: int = 5
    uniform: Callable[[float, float], float] = field(default=random.uniform, repr=False)
    failures: int = 0

    def next_wait(self) -> float:
        """Seconds to wait before the next attempt; counts one more failure."""
        doublings = min(self.failures, max(self.repeat_times, 0))
        self.failures += 1
        jitter = self.uniform(0.0, self.random_range) if self.random_range > 0 else 0.0
        return self.wait_minimum * (2.0**doublings) + jitter

    def reset(self) -> None:
        """A connection opened: the next failure starts from the minimum again."""
        self.failures = 0
