"""The daemon's side of the shim<->daemon socket (docs/architecture.md)."""

from __future__ import annotations

from .framing import MAX_FRAME_SIZE, FrameDecoder, IpcFrameError, encode
from .server import DaemonServer, FrameHost, ShimConnection

__all__ = [
    "DaemonServer",
    "FrameDecoder",
    "IpcFrameError",
    "FrameHost",
    "MAX_FRAME_SIZE",
    "ShimConnection",
    "encode",
]
