"""How long a message takes from the shim to the wire, for the benchmark.

Off unless the environment variable ``OCPP_NODES_HOP_TRACE`` names a file; the
shim sees the same variable (the daemon is its child) and then stamps every
``input`` frame with ``hop_t0``: CLOCK_MONOTONIC in nanoseconds when the message
entered the node's input handler. While the daemon handles that input, the
OCPP frames it queues for a websocket carry the stamp. For each such frame two
times are kept: until its bytes were handed to the kernel (the transport's
``write``; CS connections only, see :meth:`HopTrace.watch`, and only for a
send that did not wait for back-pressure; otherwise the same as the next) and
until the websocket library's ``send`` returned (that adds the kernel's loopback TCP
work). The daemon writes them (ns, one frame per line) to the file when it
exits. bench/run.py reads them (docs/benchmarks.md, "CS side").
"""

from __future__ import annotations

import logging
import os
import time
from array import array
from typing import Any

__all__ = ["ENV_VARIABLE", "HopTrace", "TRACE"]

ENV_VARIABLE = "OCPP_NODES_HOP_TRACE"
#: Kept at most (8 MB); later ones are dropped.
MAX_SAMPLES = 1_000_000

log = logging.getLogger(__name__)


class HopTrace:
    def __init__(self, path: str) -> None:
        self.path = path
        #: ``hop_t0`` of the input being handled now, 0 outside one.
        self.current = 0
        #: when a watched transport's write was called during the current send
        #: (the session sets it to 0 before each send), else 0
        self.last_write = 0
        self.handed = array("q")
        self.returned = array("q")

    def watch(self, transport: Any) -> Any:
        """``transport``, noting when its ``write`` is called."""
        return _WatchedTransport(self, transport)

    def sent(self, t0: int) -> None:
        """The websocket's ``send`` of a frame stamped ``t0`` has just returned."""
        if len(self.returned) < MAX_SAMPLES:
            now = time.monotonic_ns()
            handed = self.last_write or now
            self.handed.append(handed - t0)
            self.returned.append(now - t0)

    def save(self) -> None:
        try:
            with open(self.path, "w", encoding="ascii") as out:
                out.writelines(
                    f"{a} {b}\n" for a, b in zip(self.handed, self.returned, strict=True)
                )
        except OSError as exc:
            log.warning("cannot write hop times to %s: %s", self.path, exc)


_path = os.environ.get(ENV_VARIABLE, "")
TRACE: HopTrace | None = HopTrace(_path) if _path else None


class _WatchedTransport:
    def __init__(self, trace: HopTrace, transport: Any) -> None:
        self._trace = trace
        self._transport = transport

    def write(self, data: bytes) -> None:
        self._trace.last_write = time.monotonic_ns()
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
