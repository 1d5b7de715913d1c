"""Drive tests/peers/ocpp_rpc_peer.js (ocpp-rpc in strict mode) from asyncio tests.

The peer is a Node subprocess speaking line-delimited JSON: commands on stdin,
events on stdout (see the header of ocpp_rpc_peer.js). Every wait is bounded;
:meth:`OcppRpcPeer.stop` always ends the process (stdin closed, then kill).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["OcppRpcPeer", "ocpp_rpc_missing_reason"]

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "ocpp_rpc_peer.js"
OCPP_RPC = HERE.parent.parent / "tools" / "node" / "node_modules" / "ocpp-rpc"


def ocpp_rpc_missing_reason() -> str | None:
    """Why the peer cannot run here (``None`` when it can)."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (OCPP_RPC / "package.json").exists():
        return "ocpp-rpc is not installed (run `make setup`)"
    return None


class PeerError(AssertionError):
    """The peer did not do what the test waited for."""


class OcppRpcPeer:
    """One ocpp-rpc server or client process.

    Args:
        mode: ``"server"`` or ``"client"``.
        responses: ``{Action: response payload}`` the peer answers calls with.
        **options: command-line options of the script (``port``, ``path``,
            ``endpoint``, ``identity``, ``password``).
    """

    def __init__(self, mode: str, responses: dict[str, Any] | None = None, **options: Any) -> None:
        self.mode = mode
        self.responses = responses or {}
        self.options = options
        self.events: list[dict[str, Any]] = []
        self.stderr = b""
        self.port: int | None = None
        self._changed = asyncio.Event()
        self._next_id = 0
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stderr_reader: asyncio.Task[None] | None = None
        self._directory: str | None = None

    async def start(self, timeout: float = 10.0) -> OcppRpcPeer:
        self._directory = tempfile.mkdtemp(prefix="ocpp-rpc-peer-")
        answers = os.path.join(self._directory, "responses.json")
        with open(answers, "w", encoding="utf-8") as file:
            json.dump(self.responses, file)
        args = [str(SCRIPT), self.mode, "--responses", answers]
        for key, value in self.options.items():
            args += [f"--{key}", str(value)]
        self._process = await asyncio.create_subprocess_exec(
            "node",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        self._stderr_reader = asyncio.create_task(self._read_stderr())
        ready = await self.wait_event("ready", timeout=timeout)
        self.port = ready.get("port")
        return self

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        while True:
            line = await self._process.stdout.readline()
            if not line:
                self.events.append({"event": "exit"})
                self._changed.set()
                return
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "garbage", "line": line.decode(errors="replace")}
            self.events.append(event)
            self._changed.set()

    async def _read_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        self.stderr = await self._process.stderr.read()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        async def _loop() -> Any:
            while True:
                value = predicate()
                if value:
                    return value
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(_loop(), timeout)
        except asyncio.TimeoutError:
            raise PeerError(
                f"ocpp-rpc peer ({self.mode}): timed out after {timeout} s; "
                f"events: {self.events[-10:]}; stderr: {self.stderr[-2000:]!r}"
            ) from None

    async def wait_event(self, name: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """The first event ``name`` whose fields equal ``match``; fails on ``fatal``/``exit``."""

        def find() -> dict[str, Any] | None:
            for event in self.events:
                if event["event"] == name and all(event.get(k) == v for k, v in match.items()):
                    return event
                if event["event"] in ("fatal", "exit") and name not in ("fatal", "exit"):
                    raise PeerError(f"ocpp-rpc peer ended: {event}; stderr: {self.stderr!r}")
            return None

        return await self.wait_for(find, timeout)  # type: ignore[no-any-return]

    def received(self, method: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["event"] == "received" and (method is None or e["method"] == method)
        ]

    def send(self, command: dict[str, Any]) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write((json.dumps(command) + "\n").encode())

    async def call(
        self, action: str, params: dict[str, Any], timeout: float = 10.0
    ) -> dict[str, Any]:
        """Send a CALL; the ``result`` or ``error`` event that ends it."""
        self._next_id += 1
        call_id = self._next_id
        self.send({"call": action, "params": params, "id": call_id})
        return await self.wait_for(  # type: ignore[no-any-return]
            lambda: next(
                (
                    e
                    for e in self.events
                    if e["event"] in ("result", "error") and e.get("id") == call_id
                ),
                None,
            ),
            timeout,
        )

    def set_responses(self, responses: dict[str, Any]) -> None:
        self.responses.update(responses)
        self.send({"responses": responses})

    async def stop(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            try:
                assert process.stdin is not None
                process.stdin.close()
                await asyncio.wait_for(process.wait(), 3)
            except (asyncio.TimeoutError, OSError):
                pass
            if process.returncode is None:
                process.kill()
                await process.wait()
        for task in (self._reader, self._stderr_reader):
            if task is not None:
                task.cancel()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
