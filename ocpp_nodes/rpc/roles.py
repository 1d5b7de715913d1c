"""The two ends of an OCPP connection.

Which role sends which action depends on the version: see
:attr:`ocpp_nodes.rpc.versions.OcppVersion.sends`.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Role"]


class Role(Enum):
    CHARGING_STATION = "CS"
    CSMS = "CSMS"

    __hash__ = object.__hash__  # a member is its own identity (see schemas.Direction)

    @property
    def peer(self) -> Role:
        return Role.CSMS if self is Role.CHARGING_STATION else Role.CHARGING_STATION
