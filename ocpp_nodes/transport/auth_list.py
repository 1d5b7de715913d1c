"""A CSMS node's *CS Auth* list: cbId -> plain password or salted hash, and the login check.

Theory of operation:

1. An entry is a plain password or a hash string
   (:mod:`ocpp_nodes.transport.passwords`), told apart by the ``$<scheme>$``
   prefix. A malformed hash makes the whole list a config error
   (``ValueError`` naming the cbId, never the hash's material).
2. A plain entry is compared in constant time on the event loop (a
   microsecond). A hash is checked in a thread (hashlib releases the GIL):
   tens of milliseconds that the loop, and every connected station, must
   not wait for. The threads are one fewer than the CPUs (at least one), so
   a storm of checks leaves a CPU to the loop.
3. A successful hash check is remembered as an HMAC of cbId and password
   under a random key made once per process, so a station that reconnects
   with the same password costs one HMAC, not another scrypt. The memory
   belongs to one list: any change makes a new :class:`AuthList` and
   forgets it. A wrong password is never remembered.
4. Concurrent checks of the same cbId and password share one computation.
5. The threads' backlog is bounded (:class:`Verifier`): when the checks
   waiting would take more than ``max_backlog`` seconds, a new one is not
   started and :class:`VerifierBusy` is raised (the server answers HTTP 503
   with ``Retry-After``), so a flood of wrong passwords costs bounded CPU
   and the stations' back-off spreads a reconnect storm. Remembered
   successes are answered before that bound: a known station gets in
   during a flood.
6. :meth:`AuthList.readable` is what a flow may read: plain passwords as
   they are, hashes masked (``$scrypt$ln=14,r=8,p=1$*$*``). Given back to
   :meth:`AuthList.parse` with the list it was read from, a masked entry
   keeps that hash, so a flow's read-change-write keeps working.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .passwords import HashFormatError, PasswordHash, looks_like_hash, parse_hash, verify

__all__ = ["VERIFIER", "AuthList", "Verifier", "VerifierBusy"]

T = TypeVar("T")

#: the key of rule 3: never stored, never sent, gone with the process
_MEMORY_KEY = secrets.token_bytes(32)


class VerifierBusy(Exception):
    """Too many hash checks are waiting; try again later (rule 5)."""


class Verifier:
    """Runs hash checks in a pool of threads with a bounded backlog.

    Args:
        workers: threads (default: one less than the CPUs this process may
            use, at least one).
        max_backlog: seconds of checks that may wait before new ones are refused.
    """

    def __init__(self, workers: int | None = None, max_backlog: float = 2.0) -> None:
        if workers is None:
            cpus = (
                len(os.sched_getaffinity(0))
                if hasattr(os, "sched_getaffinity")
                else os.cpu_count() or 1
            )
            # one CPU stays free for the event loop (and Node-RED) during a storm
            workers = max(1, cpus - 1)
        self.workers = workers
        self.max_backlog = max_backlog
        self.waiting = 0
        #: seconds one check takes, as measured (a moving average)
        self.cost = 0.05
        self._pool: ThreadPoolExecutor | None = None

    def busy(self) -> bool:
        """True when the checks waiting would take longer than ``max_backlog``."""
        return self.waiting >= self.workers and (
            self.waiting * self.cost / self.workers > self.max_backlog
        )

    async def verify(self, password: str, hashed: PasswordHash) -> bool:
        """:func:`~ocpp_nodes.transport.passwords.verify` in a thread (see :meth:`busy`)."""
        return await self.run(verify, password, hashed)

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` in one of the threads, counted in the backlog and its cost."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ocpp-password")
        self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, self._timed, work, args
            )
        finally:
            self.waiting -= 1

    def _timed(self, work: Callable[..., T], args: tuple[Any, ...]) -> T:
        start = time.perf_counter()
        try:
            return work(*args)
        finally:
            self.cost = 0.8 * self.cost + 0.2 * (time.perf_counter() - start)


#: the process's verifier: CPU is per process, so is the backlog
VERIFIER = Verifier()


class AuthList:
    """cbId -> entry (a plain password or a parsed hash); a node's list is replaced,
    never changed, on edits (a gateway's: :meth:`put`, :meth:`remove`).

    Use :meth:`parse` to make one.
    """

    def __init__(
        self, entries: Mapping[str, str | PasswordHash], verifier: Verifier = VERIFIER
    ) -> None:
        self._entries = dict(entries)
        self._verifier = verifier
        self._remembered: dict[str, bytes] = {}
        self._in_flight: dict[bytes, asyncio.Future[bool]] = {}

    @classmethod
    def parse(
        cls,
        entries: Mapping[str, str],
        previous: AuthList | None = None,
        verifier: Verifier = VERIFIER,
    ) -> AuthList:
        """A list from ``{cbId: password or hash}``; raises ``ValueError`` naming the cbId.

        ``previous``: the list a flow read the masked entries from (rule 6).
        """
        parsed: dict[str, str | PasswordHash] = {}
        for cb_id, value in entries.items():
            parsed[cb_id] = cls._entry(cb_id, value, previous)
        return cls(parsed, verifier)

    @staticmethod
    def _entry(cb_id: str, value: str, previous: AuthList | None) -> str | PasswordHash:
        if not looks_like_hash(value):
            return value
        if value.endswith("$*$*"):
            kept = previous._entries.get(cb_id) if previous is not None else None
            if isinstance(kept, PasswordHash) and kept.masked() == value:
                return kept
            raise ValueError(
                f"CS Auth list: the entry of {cb_id!r} is a masked hash (what get_auth_list "
                "shows) but this node holds no such hash for it; give the whole hash or a password"
            )
        try:
            return parse_hash(value)
        except HashFormatError as exc:
            raise ValueError(f"CS Auth list: the entry of {cb_id!r}: {exc}") from None

    def with_entry(self, cb_id: str, value: str) -> AuthList:
        """A copy with one entry added or changed (``value``: a password or hash)."""
        entries = dict(self._entries)
        entries[cb_id] = self._entry(cb_id, value, self)
        return AuthList(entries, self._verifier)

    # A fleet gateway's list is fed entry by entry from the broker, so it is
    # changed in place; a change forgets what was remembered of that cbId.

    def put(self, cb_id: str, entry: str | PasswordHash) -> None:
        """Add or change one entry in place."""
        if self._entries.get(cb_id) != entry:
            self._entries[cb_id] = entry
            self._remembered.pop(cb_id, None)

    def remove(self, cb_id: str) -> None:
        """Remove one entry in place (nothing when absent)."""
        self._entries.pop(cb_id, None)
        self._remembered.pop(cb_id, None)

    def __contains__(self, cb_id: object) -> bool:
        return cb_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def hashed(self) -> int:
        """How many entries are hashes."""
        return sum(isinstance(entry, PasswordHash) for entry in self._entries.values())

    def readable(self) -> dict[str, str]:
        """What ``get_auth_list`` answers: plain entries as they are, hashes masked."""
        return {cb_id: self._readable(entry) for cb_id, entry in self._entries.items()}

    def readable_entry(self, cb_id: str) -> str | None:
        """One entry as :meth:`readable` shows it; None when absent."""
        entry = self._entries.get(cb_id)
        return None if entry is None else self._readable(entry)

    def stored(self, cb_id: str) -> str | None:
        """The entry as configured (a password or the whole hash); None when absent.

        For comparing two lists, never for a flow or a log.
        """
        entry = self._entries.get(cb_id)
        return entry.text() if isinstance(entry, PasswordHash) else entry

    @staticmethod
    def _readable(entry: str | PasswordHash) -> str:
        return entry.masked() if isinstance(entry, PasswordHash) else entry

    async def check(self, cb_id: str, password: str) -> bool:
        """Whether ``password`` is ``cb_id``'s (False for an unknown cbId).

        Raises:
            VerifierBusy: the entry is a hash and too many checks wait (rule 5).
        """
        entry = self._entries.get(cb_id)
        if entry is None:
            return False
        if isinstance(entry, str):
            return hmac.compare_digest(password.encode(), entry.encode())
        memo = hmac.new(
            _MEMORY_KEY, cb_id.encode() + b"\0" + password.encode(), hashlib.sha256
        ).digest()
        remembered = self._remembered.get(cb_id)
        if remembered is not None and hmac.compare_digest(memo, remembered):
            return True
        pending = self._in_flight.get(memo)
        if pending is None:
            if self._verifier.busy():
                raise VerifierBusy
            pending = asyncio.ensure_future(self._verify(cb_id, memo, password, entry))
            self._in_flight[memo] = pending
        # shielded: a station that hangs up does not cancel the check others wait for
        return await asyncio.shield(pending)

    async def _verify(self, cb_id: str, memo: bytes, password: str, entry: PasswordHash) -> bool:
        try:
            ok = await self._verifier.verify(password, entry)
        finally:
            del self._in_flight[memo]
        if ok:
            self._remembered[cb_id] = memo
        return ok
