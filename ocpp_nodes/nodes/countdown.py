"""Waits a node shows in its status: ``retry in Ns``, counted down each second.

The CS node shows one while it waits to connect again (``401, retry in 98s``),
the CSMS node while it waits to try a busy port again (``port 8080 busy,
retry in 4s``); :func:`bind_waits` is the CSMS node's back-off.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator

__all__ = ["BIND_WAIT_MAX", "bind_waits", "count_down"]

#: the longest wait between two tries of a busy port (s)
BIND_WAIT_MAX = 30.0


def bind_waits() -> Iterator[float]:
    """Seconds before each further try of a busy port: 1, 2, 4 .. 30, 30 ..."""
    wait = 1.0
    while True:
        yield wait
        wait = min(wait * 2, BIND_WAIT_MAX)


async def count_down(seconds: float, show: Callable[[int], None]) -> None:
    """Wait ``seconds``, calling ``show(n)`` with the whole seconds left, each second.

    The whole seconds shown are counted down from the wait itself, never
    worked out again from the loop's clock: ``(now + 40) - now`` can come
    out a hair over 40 in floating point (the loop clock of uvloop counts
    from boot, and between 472 and 512 s a quarter of its readings do), and
    the status then said "retry in 41s" for a 40 s wait.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    whole = math.ceil(seconds)
    while whole > 0:
        show(whole)
        whole -= 1
        await asyncio.sleep(max(0.0, end - whole - loop.time()))
