"""OCPP engines for Node-RED: the daemon behind the ``CS`` and ``CSMS`` nodes."""

from __future__ import annotations

__all__ = ["__version__", "IPC_PROTOCOL"]

__version__ = "0.1.0"

#: Version of the shim<->daemon frame protocol (docs/architecture.md).
IPC_PROTOCOL = 1
