"""Shim<->daemon frames: length-prefixed msgpack maps, bounded size."""

from __future__ import annotations

import struct

import msgpack
import pytest

from ocpp_nodes.ipc.framing import FrameDecoder, IpcFrameError, encode
from ocpp_nodes.transport.backoff import Backoff


def test_frames_survive_any_split_of_the_stream() -> None:
    frames = [{"t": "input", "seq": i, "msg": {"payload": {"x": "é" * i}}} for i in range(20)]
    data = b"".join(encode(f) for f in frames)
    for chunk in (1, 3, 7, len(data)):
        decoder = FrameDecoder()
        out = []
        for start in range(0, len(data), chunk):
            out.extend(decoder.feed(data[start : start + chunk]))
        assert out == frames


@pytest.mark.parametrize(
    "data",
    [
        struct.pack(">I", 17 * 1024 * 1024),
        struct.pack(">I", 1) + b"\xc1",  # never-used msgpack byte
        struct.pack(">I", 1) + msgpack.packb(1),
    ],
)
def test_broken_streams_raise_frame_error(data: bytes) -> None:
    with pytest.raises(IpcFrameError):
        FrameDecoder().feed(data)


def test_backoff_doubles_repeat_times_then_stays_constant() -> None:
    backoff = Backoff(wait_minimum=2, random_range=3, repeat_times=2, uniform=lambda a, b: b)
    assert [backoff.next_wait() for _ in range(5)] == [5, 7, 11, 11, 11]
    backoff.reset()
    assert backoff.next_wait() == 5


def test_a_broken_frame_carries_the_whole_frames_before_it() -> None:
    good = [{"t": "input", "seq": 1}, {"t": "input", "seq": 2}]
    data = b"".join(encode(f) for f in good) + struct.pack(">I", 1) + b"\xc1"
    with pytest.raises(IpcFrameError) as caught:
        FrameDecoder().feed(data)
    assert caught.value.frames == good
