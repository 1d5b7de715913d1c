"""Frames between the shim and the daemon: 4-byte big-endian length + msgpack map.

Sans-I/O: :class:`FrameDecoder` takes bytes as they arrive and returns whole
frames; :func:`encode` makes the bytes of one frame. See docs/architecture.md.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

__all__ = ["FrameDecoder", "IpcFrameError", "MAX_FRAME_SIZE", "encode"]

#: The largest frame body either side accepts.
MAX_FRAME_SIZE = 16 * 1024 * 1024

_LENGTH = struct.Struct(">I")
_PACKER = msgpack.Packer(use_bin_type=True)


class IpcFrameError(Exception):
    """A frame between shim and daemon cannot be encoded, or the byte stream
    is broken (then the connection must be dropped).

    ``frames`` holds the whole frames that came before the broken one in the
    same :meth:`FrameDecoder.feed` call: they are valid and still to be handled.
    """

    def __init__(self, message: str, frames: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.frames = frames or []


def encode(frame: dict[str, Any]) -> bytes:
    """The bytes of ``frame`` on the socket.

    Raises:
        IpcFrameError: too large, or holding what msgpack cannot carry.
    """
    try:
        body = _PACKER.pack(frame)
    except (TypeError, ValueError, OverflowError) as exc:
        _PACKER.reset()  # a failed pack leaves its partial output behind
        raise IpcFrameError(f"frame cannot be encoded: {exc}") from None
    if len(body) > MAX_FRAME_SIZE:
        raise IpcFrameError(f"frame of {len(body)} bytes exceeds {MAX_FRAME_SIZE}")
    return _LENGTH.pack(len(body)) + body


class FrameDecoder:
    """Reassembles frames from a byte stream.

    Args:
        max_frame_size: announced lengths above this raise ``IpcFrameError``.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Take received bytes; return the frames they complete, in order.

        Raises:
            IpcFrameError: a frame is too large, is not msgpack, or is not a map;
                its ``frames`` are those before it in ``data``.
        """
        if self._buffer:
            self._buffer += data
            data = self._buffer
        # else (the common case: reads end on a frame boundary) frames are
        # decoded from ``data`` itself, and only an incomplete rest is kept
        frames = []
        start = 0
        size = len(data)
        header = _LENGTH.size
        with memoryview(data) as view:
            while size - start >= header:
                (length,) = _LENGTH.unpack_from(data, start)
                if length > self.max_frame_size:
                    raise IpcFrameError(
                        f"frame of {length} bytes exceeds {self.max_frame_size}", frames
                    )
                end = start + header + length
                if size < end:
                    break
                try:
                    frame = msgpack.unpackb(
                        view[start + header : end], raw=False, strict_map_key=False
                    )
                except Exception as exc:  # msgpack raises several unrelated types
                    raise IpcFrameError(f"frame is not msgpack: {exc}", frames) from None
                if type(frame) is not dict:
                    raise IpcFrameError("frame is not a msgpack map", frames)
                frames.append(frame)
                start = end
        if data is self._buffer:
            del self._buffer[:start]
        elif start < size:
            self._buffer = bytearray(data[start:])
        return frames
