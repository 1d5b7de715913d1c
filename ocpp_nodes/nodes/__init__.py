"""Node-RED semantics of the CS and CSMS nodes: msg <-> OCPP, commands, ports."""

from __future__ import annotations

from collections.abc import Mapping

from .base import NodeHost, NodeServices, NodeSpec, OcppNode
from .cs import CsNode
from .csms import CsmsNode

__all__ = ["NODE_TYPES", "CsNode", "CsmsNode", "NodeHost", "NodeServices", "NodeSpec", "OcppNode"]

#: The node types the engine runs, by their Node-RED type name.
NODE_TYPES: Mapping[str, type[OcppNode]] = {cls.type_name: cls for cls in (CsNode, CsmsNode)}
