"""The local socket between the shim and the daemon (docs/security.md, "The local
socket"): who can reach it, and what a peer that is not our shim gets.

The daemon runs as the shim starts it (tests/shim_double.py), but with its
stderr kept, so the tests can check that each refusal is logged. A good shim
connection is opened first and used again after every abuse: the daemon must
carry on serving it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import stat
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from ocpp_nodes.ipc.framing import MAX_FRAME_SIZE, FrameDecoder, encode
from tests.nodered import NodeRed, wait_until
from tests.shim_double import ShimDouble, free_port


class LoggedDaemon(ShimDouble):
    """ShimDouble whose daemon's stderr is recorded in :attr:`stderr`.

    ``directory_mode`` is the mode of the socket's directory; the shim makes it
    0700, a looser one here shows what the daemon itself does for the socket.
    """

    daemon_stderr = asyncio.subprocess.PIPE

    def __init__(self, directory_mode: int = 0o700) -> None:
        super().__init__()
        self.directory_mode = directory_mode
        self.stderr: list[str] = []

    def spawned(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        self._stderr_task = asyncio.create_task(self._read_stderr(process.stderr))

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.stderr.append(line.decode(errors="replace").rstrip())

    async def wait_logged(self, pattern: str, timeout: float = 5.0) -> str:
        async def probe() -> str:
            while True:
                for line in self.stderr:
                    if re.search(pattern, line):
                        return line
                await asyncio.sleep(0.02)

        try:
            return await asyncio.wait_for(probe(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"daemon never logged {pattern!r}; its stderr:\n" + "\n".join(self.stderr)
            ) from None

    async def still_serves(self, node_id: str) -> None:
        """The good connection still creates a node and gets its status."""
        self.create(node_id, "CSMS", {"port": str(free_port()), "path": "/ocpp"})
        await self.wait_for(lambda: "0 connected" in self.statuses(node_id), timeout=10)
        await self.close_node(node_id)

    async def stop(self) -> None:
        await super().stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._stderr_task, 5)


@pytest.fixture
async def daemon() -> AsyncIterator[LoggedDaemon]:
    double = LoggedDaemon()
    await double.start()
    yield double
    await double.stop()


async def read_until_eof(
    reader: asyncio.StreamReader, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """Every frame the daemon sends until it closes the connection (which it must, in time)."""
    decoder = FrameDecoder()
    frames: list[dict[str, Any]] = []

    async def loop() -> None:
        while True:
            try:
                data = await reader.read(65536)
            except ConnectionError:
                return
            if not data:
                return
            frames.extend(decoder.feed(data))

    try:
        await asyncio.wait_for(loop(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(
            f"the daemon kept the connection open; frames so far: {frames}"
        ) from None
    return frames


async def raw_connection(
    daemon: LoggedDaemon,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(daemon.socket_path)


async def greeted_connection(
    daemon: LoggedDaemon,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that has said hello with the right token and got welcome."""
    reader, writer = await raw_connection(daemon)
    writer.write(hello(daemon.token))
    decoder = FrameDecoder()
    frames: list[dict[str, Any]] = []
    while not frames:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, "closed before welcome"
        frames = decoder.feed(data)
    assert frames[0]["t"] == "welcome", frames
    return reader, writer


def hello(token: str) -> bytes:
    return encode({"t": "hello", "protocol": 1, "token": token})


# -- who can reach the socket -------------------------------------------------------------


async def test_socket_not_accessible_to_group_or_others_even_in_an_open_directory() -> None:
    # The daemon creates the socket with umask 077 on its own, whatever the
    # directory's mode: a world-readable directory must not make it reachable.
    double = LoggedDaemon(directory_mode=0o755)
    await double.start()
    try:
        mode = os.stat(double.socket_path).st_mode
        assert stat.S_ISSOCK(mode)
        assert mode & 0o077 == 0, f"socket mode {stat.filemode(mode)}"
        assert os.stat(double.socket_path).st_uid == os.getuid()
        # the token is never on the command line
        cmdline = Path(f"/proc/{double.pid}/cmdline").read_bytes()
        assert double.token.encode() not in cmdline
        await double.still_serves("n1")
    finally:
        await double.stop()


@pytest.mark.nodered
def test_real_shim_puts_the_socket_in_a_private_directory(nodered: NodeRed) -> None:
    """The directory is made by the JS shim: check the one a real Node-RED made."""
    port = free_port()
    nodered.deploy(
        [
            {"id": "tab", "type": "tab", "label": "sock"},
            {
                "id": "csms",
                "type": "CSMS",
                "z": "tab",
                "port": str(port),
                "path": "/ocpp",
                "credentials": {"basic_auths": "{}"},
                "wires": [[], []],
            },
        ]
    )

    def serving() -> list[tuple[int, list[bytes]]]:
        found = []
        for pid in nodered.daemon_pids():
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"serve" in args and b"--socket" in args:
                found.append((pid, args))
        return found

    ((pid, args),) = wait_until(serving, 30, what="the daemon of the real shim")
    socket_path = Path(args[args.index(b"--socket") + 1].decode())
    wait_until(socket_path.exists, 10, what="the daemon's socket")
    directory_mode = socket_path.parent.stat().st_mode
    assert stat.S_IMODE(directory_mode) == 0o700, stat.filemode(directory_mode)
    assert socket_path.parent.stat().st_uid == os.getuid()
    socket_mode = socket_path.stat().st_mode
    assert socket_mode & 0o077 == 0, stat.filemode(socket_mode)
    # The token travels in the environment, never on the command line.
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    tokens = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"OCPP_NODES_TOKEN=")]
    assert tokens and len(tokens[0]) >= 32, "the shim gave no token in the environment"
    assert not any(tokens[0] in arg for arg in args), args


# -- peers that are not our shim ---------------------------------------------------------


async def test_wrong_token_is_rejected_and_disconnected(daemon: LoggedDaemon) -> None:
    reader, writer = await raw_connection(daemon)
    wrong = "0" * len(daemon.token)
    writer.write(hello(wrong))
    frames = await read_until_eof(reader)
    assert [f["t"] for f in frames] == ["reject"], frames
    assert "token" in frames[0]["reason"]
    assert daemon.token not in json.dumps(frames)
    writer.close()
    await daemon.wait_logged(r"refusing a shim connection: wrong token")
    await daemon.still_serves("after-wrong-token")


async def test_token_prefix_is_rejected(daemon: LoggedDaemon) -> None:
    reader, writer = await raw_connection(daemon)
    writer.write(hello(daemon.token[:-1]))
    frames = await read_until_eof(reader)
    assert [f["t"] for f in frames] == ["reject"], frames
    writer.close()
    await daemon.still_serves("after-prefix")


@pytest.mark.parametrize(
    "first",
    [
        {"t": "create", "node": "evil", "type": "CSMS", "config": {"port": "1"}},
        {"t": "input", "node": "x", "seq": 1, "msg": {}},
        {"t": "hello", "protocol": 1},  # no token at all
    ],
    ids=["create", "input", "hello-without-token"],
)
async def test_first_frame_not_a_valid_hello_is_rejected(
    daemon: LoggedDaemon, first: dict[str, Any]
) -> None:
    reader, writer = await raw_connection(daemon)
    evil_port = free_port()
    if first["t"] == "create":
        first = {**first, "config": {"port": str(evil_port), "path": "/x"}}
    # the real create comes right behind it: it must not be carried out either
    writer.write(encode(first) + encode(first))
    frames = await read_until_eof(reader)
    assert [f["t"] for f in frames] == ["reject"], frames
    assert frames[0]["reason"] == "the first frame must be hello"
    writer.close()
    await daemon.wait_logged(r"refusing a shim connection: the first frame must be hello")
    # nothing listens on the port the rejected create asked for
    with pytest.raises(OSError):
        _r, w = await asyncio.open_connection("127.0.0.1", evil_port)
        w.close()
    await daemon.still_serves("after-not-hello")


@pytest.mark.parametrize("greeted", [False, True], ids=["before-hello", "after-hello"])
async def test_frame_announcing_more_than_16_mib_is_disconnected(
    daemon: LoggedDaemon, greeted: bool
) -> None:
    if greeted:
        reader, writer = await greeted_connection(daemon)
    else:
        reader, writer = await raw_connection(daemon)
    # only the length: the daemon must not wait for (or buffer) 16 MiB of body
    writer.write(struct.pack(">I", MAX_FRAME_SIZE + 1) + b"\x80" * 1024)
    frames = await read_until_eof(reader)
    assert frames == [], frames
    writer.close()
    await daemon.wait_logged(rf"dropping shim connection: frame of {MAX_FRAME_SIZE + 1} bytes")
    await daemon.still_serves("after-oversized")


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1\xc1\xc1",  # 0xc1 is never used in msgpack
        b"\x93\x01\x02\x03",  # a valid msgpack array, not a map
        b"\xa5ab",  # a str of 5 bytes cut short inside the frame
    ],
    ids=["never-used-byte", "not-a-map", "truncated"],
)
async def test_malformed_msgpack_is_disconnected(daemon: LoggedDaemon, body: bytes) -> None:
    reader, writer = await greeted_connection(daemon)
    writer.write(struct.pack(">I", len(body)) + body)
    frames = await read_until_eof(reader)
    assert frames == [], frames
    writer.close()
    await daemon.wait_logged(r"dropping shim connection")
    await daemon.still_serves("after-malformed")


async def test_frames_before_a_broken_one_are_handled_then_disconnected(
    daemon: LoggedDaemon,
) -> None:
    """A read with valid frames and then a broken one: the valid ones are answered first."""
    reader, writer = await greeted_connection(daemon)
    valid = b"".join(
        encode({"t": "input", "node": "nowhere", "seq": seq, "msg": {"payload": {}}})
        for seq in (7, 8)
    )
    writer.write(valid + struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    frames = await read_until_eof(reader)
    assert [(f["t"], f["seq"]) for f in frames] == [("done", 7), ("done", 8)], frames
    assert "not running" in frames[0]["error"]
    writer.close()
    await daemon.wait_logged(r"dropping shim connection: frame is not msgpack")
    await daemon.still_serves("after-valid-then-malformed")


async def test_good_shim_unaffected_by_a_series_of_abusers(daemon: LoggedDaemon) -> None:
    """All abuses in a row, concurrently with a node of the good shim that keeps running."""
    port = free_port()
    daemon.create("keep", "CSMS", {"port": str(port), "path": "/ocpp"})
    await daemon.wait_for(lambda: "0 connected" in daemon.statuses("keep"))
    payloads = [
        hello("f" * 64),
        encode({"t": "create", "node": "x", "type": "CS", "config": {}}),
        struct.pack(">I", MAX_FRAME_SIZE + 1),
        struct.pack(">I", 1) + b"\xc1",
        msgpack.packb("not even framed"),
    ]
    clients = [await raw_connection(daemon) for _ in payloads]
    for (_reader, writer), data in zip(clients, payloads, strict=True):
        writer.write(data)
    # (the last one's first 4 bytes read as a length above the cap) all are closed in time
    for reader, writer in clients:
        await read_until_eof(reader)
        writer.close()
    # the good shim's node still listens, and new nodes still start
    _r, w = await asyncio.open_connection("127.0.0.1", port)
    w.close()
    await daemon.still_serves("after-all")
    assert daemon.process is not None and daemon.process.returncode is None
