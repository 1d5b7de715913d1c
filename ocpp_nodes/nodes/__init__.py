"""Node-RED semantics of the CS and CSMS nodes: msg <-> OCPP, commands, ports."""

from __future__ import annotations

from .base import NodeHost, OcppNode
from .cs import CsNode
from .csms import CsmsNode

__all__ = ["CsNode", "CsmsNode", "NodeHost", "OcppNode"]
