"""Requests a Charging Station keeps while it cannot reach its CSMS, on disk.

OCPP 2.0.1 wants transaction-related messages (TransactionEvent) kept while
offline and delivered in order later. They are stored here, in one SQLite
file per daemon (stdlib ``sqlite3``, in the Node-RED user directory), keyed by
station identity, so neither a daemon nor a Node-RED restart loses them. A
row keeps its message id and how often it was tried (E13: a retry reuses
the id) and leaves the store when the CSMS has accepted it or its tries are
used up.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from typing import Any

__all__ = ["OfflineStore", "StoredRequest"]


@dataclass(frozen=True)
class StoredRequest:
    row_id: int
    action: str
    payload: dict[str, Any]
    message_id: str | None
    custom_data: Any
    has_custom_data: bool
    attempts: int = 0


class OfflineStore:
    """The stored requests of every station of one daemon.

    Args:
        path: the SQLite file; ``":memory:"`` keeps nothing across restarts.
    """

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS offline_requests (
                   row_id INTEGER PRIMARY KEY AUTOINCREMENT,
                   cb_id TEXT NOT NULL,
                   action TEXT NOT NULL,
                   payload TEXT NOT NULL,
                   message_id TEXT,
                   custom_data TEXT,
                   attempts INTEGER NOT NULL DEFAULT 0
               )"""
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(offline_requests)")}
        if "attempts" not in columns:  # a file written before retries were counted
            self._db.execute(
                "ALTER TABLE offline_requests ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0"
            )
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS offline_by_station ON offline_requests (cb_id, row_id)"
        )

    def add(
        self,
        cb_id: str,
        action: str,
        payload: dict[str, Any],
        message_id: str | None,
        custom_data: Any,
        has_custom_data: bool,
    ) -> int:
        """Append one request; returns its row id. Raises ``TypeError`` /
        ``ValueError`` when the payload or customData is not JSON."""
        cursor = self._db.execute(
            "INSERT INTO offline_requests (cb_id, action, payload, message_id, custom_data)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                cb_id,
                action,
                json.dumps(payload),
                message_id,
                json.dumps(custom_data) if has_custom_data else None,
            ),
        )
        return int(cursor.lastrowid or 0)

    def count(self, cb_id: str) -> int:
        (count,) = self._db.execute(
            "SELECT COUNT(*) FROM offline_requests WHERE cb_id = ?", (cb_id,)
        ).fetchone()
        return int(count)

    def first(self, cb_id: str) -> StoredRequest | None:
        """The oldest stored request of ``cb_id``, or ``None``."""
        row = self._db.execute(
            "SELECT row_id, action, payload, message_id, custom_data, attempts"
            " FROM offline_requests WHERE cb_id = ? ORDER BY row_id LIMIT 1",
            (cb_id,),
        ).fetchone()
        if row is None:
            return None
        row_id, action, payload, message_id, custom_data, attempts = row
        return StoredRequest(
            row_id,
            action,
            json.loads(payload),
            message_id,
            None if custom_data is None else json.loads(custom_data),
            custom_data is not None,
            attempts,
        )

    def update(self, row_id: int, message_id: str, attempts: int) -> None:
        """Set a row's message id and how often it was tried."""
        self._db.execute(
            "UPDATE offline_requests SET message_id = ?, attempts = ? WHERE row_id = ?",
            (message_id, attempts, row_id),
        )

    def remove(self, row_id: int) -> None:
        self._db.execute("DELETE FROM offline_requests WHERE row_id = ?", (row_id,))

    def close(self) -> None:
        self._db.close()
