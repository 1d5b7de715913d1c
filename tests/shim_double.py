"""A Python stand-in for the Node-RED shim, for tests of the real daemon.

It starts ``python -m ocpp_nodes serve`` exactly as the shim does (private
directory, token in the environment, stdin pipe), speaks the frame protocol
of docs/architecture.md, and records what the daemon sends per node.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import tempfile
from collections import defaultdict
from typing import Any

from ocpp_nodes.ipc.framing import FrameDecoder, encode
from tests.nodered import free_port

__all__ = ["ShimDouble", "free_port"]  # free_port: where the tests of the daemon have it from


class ShimDouble:
    #: The mode of the socket's private directory: the shim's (a test may loosen it).
    directory_mode = 0o700
    #: Where the daemon's stderr goes: inherited, or ``asyncio.subprocess.PIPE``
    #: for a subclass that reads it in :meth:`spawned`.
    daemon_stderr: int | None = None
    #: More arguments of ``serve`` (``--metrics PORT``, say).
    serve_args: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.frames: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.dones: dict[int, dict[str, Any]] = {}
        self._seq = 0
        self._changed = asyncio.Event()
        self.process: asyncio.subprocess.Process | None = None
        self.token = secrets.token_hex(32)

    @property
    def socket_path(self) -> str:
        return os.path.join(self.directory, "daemon.sock")

    async def start(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="ocpp-nodes-test-")
        os.chmod(self.directory, self.directory_mode)
        env = {**os.environ, "OCPP_NODES_TOKEN": self.token}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ocpp_nodes",
            "serve",
            "--socket",
            self.socket_path,
            *self.serve_args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self.daemon_stderr,
            env=env,
        )
        self.spawned(self.process)
        assert self.process.stdout is not None
        ready = json.loads(await asyncio.wait_for(self.process.stdout.readline(), 20))
        assert ready["event"] == "ready"
        self.pid = ready["pid"]
        self.reader, self.writer = await asyncio.open_unix_connection(self.socket_path)
        self._decoder = FrameDecoder()
        self._reader_task = asyncio.create_task(self._read())
        welcome = await self.handshake(self.token)
        assert welcome["t"] == "welcome", welcome

    def spawned(self, process: asyncio.subprocess.Process) -> None:
        """Called once the daemon's process runs, before its ready line."""

    async def handshake(self, token: str) -> dict[str, Any]:
        self.write({"t": "hello", "protocol": 1, "token": token})
        return await self.wait_for(lambda: self.frames.get("") and self.frames[""][-1])

    def write(self, frame: dict[str, Any]) -> None:
        self.writer.write(encode(frame))

    async def _read(self) -> None:
        while True:
            data = await self.reader.read(65536)
            if not data:
                self.frames[""].append({"t": "eof"})
                self._changed.set()
                return
            for frame in self._decoder.feed(data):
                self.frames[str(frame.get("node", ""))].append(frame)
                if frame["t"] == "done":
                    self.dones[frame["seq"]] = frame
                self._changed.set()

    async def wait_for(self, predicate: Any, timeout: float | None = 10.0) -> Any:
        """The first truthy value of ``predicate()``, checked after each frame
        (``timeout`` None: no limit, for a task that runs until cancelled)."""

        async def _loop() -> Any:
            while True:
                value = predicate()
                if value:
                    return value
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(_loop(), timeout)

    def create(self, node_id: str, node_type: str, config: dict[str, Any], **extra: Any) -> None:
        self.write({"t": "create", "node": node_id, "type": node_type, "config": config, **extra})

    def input(self, node_id: str, msg: dict[str, Any]) -> int:
        self._seq += 1
        self.write({"t": "input", "node": node_id, "seq": self._seq, "msg": msg})
        return self._seq

    async def done(self, seq: int, timeout: float = 10.0) -> dict[str, Any]:
        return await self.wait_for(lambda: self.dones.get(seq), timeout)

    def sent(self, node_id: str, port: int | None = None) -> list[dict[str, Any]]:
        return [
            frame["msg"]
            for frame in self.frames[node_id]
            if frame["t"] == "send" and (port is None or frame["port"] == port)
        ]

    def statuses(self, node_id: str) -> list[str]:
        return [f.get("text", "") for f in self.frames[node_id] if f["t"] == "status"]

    async def close_node(self, node_id: str) -> None:
        self.write({"t": "close", "node": node_id})
        await self.wait_for(lambda: any(f["t"] == "closed" for f in self.frames[node_id]))

    async def stop(self) -> None:
        self.writer.close()
        self._reader_task.cancel()
        if self.process is not None and self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
