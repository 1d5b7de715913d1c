"""Charging Station identity rules (OCPP 2.0.1 part 4, 3.1.1)."""

from __future__ import annotations

__all__ = ["MAX_IDENTITY_LENGTH", "identity_problem"]

#: Longest Charging Station identity (part 4, 3.1.1).
MAX_IDENTITY_LENGTH = 48


def identity_problem(cb_id: str) -> str | None:
    """Why ``cb_id`` cannot be a station identity (part 4, 3.1.1), or ``None``."""
    if not cb_id:
        return "the cbId is empty"
    if ":" in cb_id:
        return "the cbId must not contain ':'"
    if len(cb_id) > MAX_IDENTITY_LENGTH:
        return f"the cbId is longer than {MAX_IDENTITY_LENGTH} characters"
    return None
