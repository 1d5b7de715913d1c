"""The daemon's local socket: handshake, node registry, frame dispatch.

Theory of operation (frame types in docs/architecture.md):

1. A shim connects and must first send ``hello`` with the token the daemon
   was started with; anything else gets ``reject`` and the connection closes.
2. ``create`` makes a node of a type in :data:`~ocpp_nodes.nodes.NODE_TYPES`
   and starts it, handing it the engine's :class:`~ocpp_nodes.nodes.
   NodeServices`; ``input`` hands it a message; ``close`` stops it and
   answers ``closed``. Each node writes back through a :class:`FrameHost`:
   ``send``, ``status``, ``done``, ``log``.
3. The nodes of a shim connection live as long as it: when it closes, all of
   them stop (their ports and station connections are released). A
   ``close`` with ``removed`` false (Node-RED redeploys the node) parks the
   node instead, for the next ``create`` of its id to take over its
   stations (:mod:`ocpp_nodes.nodes.redeploy`).
4. A broken stream (oversized frame, bad msgpack) drops that connection,
   after the whole frames read before the broken one are handled; the daemon
   carries on.
5. Frames are handled as they are read (an :class:`asyncio.Protocol`, no
   task per read). ``create`` waits for its node to start, and the frames
   after it wait with it, so every frame is handled in the order it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import sqlite3
import ssl
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .. import IPC_PROTOCOL, __version__
from ..nodes import NODE_TYPES, NodeServices, NodeSpec, OcppNode, redeploy
from ..nodes.offline_store import OfflineStore
from ..transport import LocalTransports, Transports
from .framing import FrameDecoder, IpcFrameError, encode

if TYPE_CHECKING:
    from ..metrics import EngineMetrics

__all__ = ["DaemonServer", "FrameHost", "ShimConnection"]

log = logging.getLogger(__name__)

# Properties of a Node-RED msg that the engine reads or gives back.
_MSG_FIELDS = ("_msgid", "payload", "topic", "ocpp", "customData", "_linkSource")


class FrameHost:
    """:class:`~ocpp_nodes.nodes.NodeHost` of one node: writes frames to its shim."""

    def __init__(self, connection: ShimConnection, node_id: str) -> None:
        self.connection = connection
        self.node_id = node_id

    def send(self, port: int, msg: dict[str, Any]) -> None:
        self.connection.write({"t": "send", "node": self.node_id, "port": port, "msg": msg})

    def status(
        self, fill: str | None = None, shape: str | None = None, text: str | None = None
    ) -> None:
        self.connection.statuses[self.node_id] = (fill, text)  # for /health
        frame: dict[str, Any] = {"t": "status", "node": self.node_id}
        for key, value in (("fill", fill), ("shape", shape), ("text", text)):
            if value is not None:
                frame[key] = value
        self.connection.write(frame)

    def done(self, seq: int, error: str | None = None) -> None:
        frame: dict[str, Any] = {"t": "done", "node": self.node_id, "seq": seq}
        if error is not None:
            frame["error"] = error
        self.connection.write(frame)

    def log(self, level: str, text: str, msg: dict[str, Any] | None = None) -> None:
        frame: dict[str, Any] = {"t": "log", "node": self.node_id, "level": level, "text": text}
        if msg is not None:
            frame["msg"] = msg
        self.connection.write(frame)


#: After a node stops, the cycle collector runs once this many seconds later.
COLLECT_AFTER_STOP_S = 0.5

#: Frames to the shim wait for the end of the event loop's turn, but no more
#: than this many: a burst reaches the shim in pieces it can start on.
FRAMES_PER_WRITE = 4


class ShimConnection(asyncio.Protocol):
    """One shim on the socket and the nodes it created.

    An :class:`asyncio.Protocol`: frames are decoded and handled in
    :meth:`data_received`, with no task woken per read. ``input`` frames are
    handled there and then. A frame whose handling waits (``create`` starts a
    node) holds back the frames after it, so that they are still handled in
    order; reading pauses until it is done.
    """

    def __init__(
        self,
        token: str,
        transports: Transports | None = None,
        on_lost: Callable[[ShimConnection], None] | None = None,
        metrics: EngineMetrics | None = None,
    ) -> None:
        self.token = token
        self.metrics = metrics
        self.services = NodeServices(
            transports=transports if transports is not None else LocalTransports(),
            offline_store=self._store,
            metrics=metrics,
        )
        self.nodes: dict[str, OcppNode] = {}
        #: each node's last status (fill, text), for /health
        self.statuses: dict[str, tuple[str | None, str | None]] = {}
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder()
        self._stores: dict[str, OfflineStore] = {}
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False
        self._stopping: dict[str, asyncio.Task[None]] = {}
        # nodes closed for a redeploy, until a create of their id or a deadline
        self._parked: dict[str, tuple[OcppNode, asyncio.TimerHandle]] = {}
        self._greeted = False
        self._collect: asyncio.TimerHandle | None = None
        # frames held back behind one whose handling waits, and that handling
        self._held: deque[dict[str, Any]] = deque()
        self._waiting: asyncio.Task[None] | None = None
        self._ended = False
        # the stream broke after the frames still being handled (see data_received)
        self._broken: IpcFrameError | None = None
        self._write_paused = False
        self._read_paused = False
        self._winding_down: asyncio.Task[None] | None = None

    @property
    def greeted(self) -> bool:
        """True once the shim's hello was accepted."""
        return self._greeted and not self._ended

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        if self._ended or self._broken is not None:
            return
        broken = None
        try:
            frames = self._decoder.feed(data)
        except IpcFrameError as exc:
            # the frames read before the broken one are handled first
            frames, broken = exc.frames, exc
        if self._waiting is not None:
            self._held.extend(frames)
        else:
            self._handle(frames)
        if broken is not None:
            self._broken = broken
            if self._waiting is None:  # else once the frames held back are handled
                self._drop_broken()

    def _drop_broken(self) -> None:
        log.warning("dropping shim connection: %s", self._broken)
        self._end()

    def pause_writing(self) -> None:
        # the shim does not read what we write: stop reading what it writes
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.info("shim connection lost: %s", exc)
        self._ended = True
        self._outgoing.clear()
        self._held.clear()
        self._winding_down = asyncio.ensure_future(self._wind_down())

    async def _wind_down(self) -> None:
        """Stop every node of this shim; a node still starting finishes starting first."""
        try:
            if self._waiting is not None:
                await asyncio.wait([self._waiting])
            await self.close_all()
        finally:
            if self._on_lost is not None:
                self._on_lost(self)

    # -- writing -------------------------------------------------------------------

    def write(self, frame: dict[str, Any]) -> None:
        if self._ended or self._transport is None or self._transport.is_closing():
            return
        try:
            data = encode(frame)
        except (IpcFrameError, TypeError, ValueError, OverflowError) as exc:
            log.error("cannot encode a %s frame: %s", frame.get("t"), exc)
            if frame.get("t") == "done":
                self.write({**{k: frame[k] for k in ("t", "node", "seq")}, "error": str(exc)})
            return
        # Frames made in one turn of the event loop leave together at its end (a
        # busy CSMS makes several per station message: send, log, done ...),
        # except that every FRAMES_PER_WRITE of them go at once, so the shim
        # starts on those while the rest are made (bench/notes.md, "Tried").
        self._outgoing.append(data)
        if len(self._outgoing) >= FRAMES_PER_WRITE:
            self._write_outgoing()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write the frames made so far (also called before closing)."""
        self._flush_scheduled = False
        self._write_outgoing()

    def _write_outgoing(self) -> None:
        transport = self._transport
        if self._outgoing and transport is not None and not transport.is_closing():
            transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    # -- frames in -------------------------------------------------------------------

    def _handle(self, frames: list[dict[str, Any]] | deque[dict[str, Any]]) -> None:
        """Handle ``frames`` in order until one has to wait; hold back the rest."""
        for index, frame in enumerate(frames):
            if self._ended:
                return
            try:
                if self._greeted and frame.get("t") == "input":  # the common case
                    self._input(frame)
                    continue
                waits = self._dispatch(frame)
            except Exception:  # a bug in one frame's handling must not end the rest
                log.exception("handling a %r frame failed", frame.get("t"))
                continue
            if waits is not None:
                self._held.extendleft(reversed(list(frames)[index + 1 :]))
                self._waiting = asyncio.ensure_future(self._after(waits))
                self._update_reading()
                return

    async def _after(self, handling: Coroutine[Any, Any, None]) -> None:
        """Finish a frame's handling that waits, then the frames held behind it."""
        try:
            await handling
        except Exception:
            log.exception("handling a frame failed")
        self._waiting = None
        held, self._held = self._held, deque()
        self._handle(held)
        if self._broken is not None and self._waiting is None:
            self._drop_broken()
            return
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._ended:
            return
        pause = self._write_paused or self._waiting is not None
        if pause != self._read_paused:
            self._read_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _end(self) -> None:
        """Close the connection (what was written still goes); the nodes then stop."""
        self.flush()
        self._ended = True
        if self._transport is not None:
            self._transport.close()

    def _dispatch(self, frame: dict[str, Any]) -> Coroutine[Any, Any, None] | None:
        """Handle one frame; a coroutine to await when its handling waits."""
        kind = frame.get("t")
        if not self._greeted:
            if not self._greet(frame):
                self._end()
        elif kind == "input":
            self._input(frame)
        elif kind == "create":
            return self._create(frame)
        elif kind == "close":
            node_id = str(frame.get("node"))
            removed = frame.get("removed", True) is not False
            self._stopping[node_id] = asyncio.create_task(self._close(node_id, removed=removed))
        else:
            log.warning("ignoring unknown frame type %r", kind)
        return None

    def _greet(self, frame: dict[str, Any]) -> bool:
        token = frame.get("token")
        if frame.get("t") != "hello" or not isinstance(token, str):
            reason = "the first frame must be hello"
        elif not hmac.compare_digest(token.encode(), self.token.encode()):
            reason = "wrong token"
        elif frame.get("protocol") != IPC_PROTOCOL:
            reason = (
                f"protocol {frame.get('protocol')!r} not spoken; this daemon speaks {IPC_PROTOCOL}"
            )
        else:
            self._greeted = True
            self.write(
                {
                    "t": "welcome",
                    "protocol": IPC_PROTOCOL,
                    "version": __version__,
                    "pid": os.getpid(),
                }
            )
            return True
        log.warning("refusing a shim connection: %s", reason)
        self.write({"t": "reject", "reason": reason})
        return False

    def _input(self, frame: dict[str, Any]) -> None:
        if self.metrics is not None:
            stamp = frame.get("hop_t0")  # the shim stamps a sample of inputs
            if type(stamp) is int:
                self.metrics.hop_time(stamp)
        node_id = str(frame.get("node"))
        seq = frame.get("seq")
        if not isinstance(seq, int):
            log.warning("input frame without seq for node %s", node_id)
            return
        node = self.nodes.get(node_id)
        msg = frame.get("msg")
        if node is None:
            FrameHost(self, node_id).done(seq, "this node is not running in the OCPP engine")
            return
        if not isinstance(msg, dict):
            node.host.done(seq, "the message is not an object")
            return
        node.input(seq, {key: msg[key] for key in _MSG_FIELDS if key in msg})

    async def _create(self, frame: dict[str, Any]) -> None:
        node_id = str(frame.get("node"))
        pending_stop = self._stopping.get(node_id)
        if pending_stop is not None:
            await pending_stop
        if node_id in self.nodes:
            await self._close(node_id, answer=False)
        parked = self._unpark(node_id)
        host = FrameHost(self, node_id)
        kind = frame.get("type")
        node_type = NODE_TYPES.get(kind) if isinstance(kind, str) else None
        if node_type is None:
            host.log("error", f"unknown node type {frame.get('type')!r}")
            return

        def part(name: str) -> dict[str, Any] | None:
            value = frame.get(name)
            return value if isinstance(value, dict) else None

        user_dir = frame.get("userDir")
        spec = NodeSpec(
            node_id,
            config=part("config") or {},
            credentials=part("credentials") or {},
            tls=part("tls"),
            tls2=part("tls2"),
            fleet_tls=part("fleet_tls"),
            target=part("target"),
            user_dir=user_dir if isinstance(user_dir, str) and user_dir else None,
        )
        node = node_type(spec, host, self.services)
        self.nodes[node_id] = node
        try:
            for other_id, (other, _) in list(self._parked.items()):
                if redeploy.conflicts(other, node):  # its port is wanted: free it now
                    reason = f"node {node_id} takes its port"
                    await self._stop_parked(self._unpark(other_id), reason=reason)
            if parked is not None and type(parked) is not node_type:
                await self._stop_parked(parked)
                parked = None
            await redeploy.start_after(node, parked)
        except Exception as exc:
            log.exception("node %s failed to start", node_id)
            host.status("red", "ring", "engine error")
            host.log("error", f"failed to start: {exc}")

    async def _close(self, node_id: str, answer: bool = True, removed: bool = True) -> None:
        node = self.nodes.pop(node_id, None)
        self.statuses.pop(node_id, None)
        try:
            if node is not None and not removed:
                await redeploy.park(node)
                timer = asyncio.get_running_loop().call_later(
                    redeploy.PARK_SECONDS, self._park_expired, node_id
                )
                self._parked[node_id] = (node, timer)
            elif node is not None:
                await node.stop()
        except Exception:
            log.exception("node %s failed to stop cleanly", node_id)
        finally:
            self._stopping.pop(node_id, None)
            if answer:
                self.write({"t": "closed", "node": node_id})
            self._collect_soon()

    def _unpark(self, node_id: str) -> OcppNode | None:
        """Take the parked node of ``node_id`` out of the parking, if any."""
        entry = self._parked.pop(node_id, None)
        if entry is None:
            return None
        node, timer = entry
        timer.cancel()
        return node

    def _park_expired(self, node_id: str) -> None:
        node = self._unpark(node_id)
        if node is not None:  # a create of its id waits for this stop
            task = asyncio.create_task(self._stop_parked(node, node_id))
            self._stopping.setdefault(node_id, task)

    async def _stop_parked(
        self, node: OcppNode | None, node_id: str | None = None, reason: str | None = None
    ) -> None:
        try:
            if node is not None:
                await redeploy.stop(node, reason)
        except Exception:
            log.exception("a parked node failed to stop cleanly")
        finally:
            if node_id is not None and self._stopping.get(node_id) is asyncio.current_task():
                del self._stopping[node_id]
            self._collect_soon()

    def _collect_soon(self) -> None:
        # The daemon runs the cycle collector rarely (ocpp_nodes/__main__.py),
        # and a stopped node leaves cycles behind (its sessions, tasks, server):
        # collect once for a burst of stops (a redeploy stops several nodes).
        if self._collect is None:
            self._collect = asyncio.get_running_loop().call_later(
                COLLECT_AFTER_STOP_S, self._collect_now
            )

    def _collect_now(self) -> None:
        self._collect = None
        gc.collect()

    def _store(self, user_dir: str | None) -> OfflineStore | None:
        """The offline store in the Node-RED user dir (one per dir), or None (in memory)."""
        if not user_dir:
            return None
        path = os.path.join(user_dir, "ocpp-nodes", "offline-queue.sqlite")
        if path not in self._stores:
            try:
                self._stores[path] = OfflineStore(path)
            except (OSError, sqlite3.Error) as exc:
                log.error("cannot open the offline queue %s: %s; keeping it in memory", path, exc)
                return None
        return self._stores[path]

    async def close_all(self) -> None:
        await asyncio.gather(
            *(self._close(node_id, answer=False) for node_id in list(self.nodes)),
            *(self._stop_parked(self._unpark(node_id)) for node_id in list(self._parked)),
            *self._stopping.values(),
            return_exceptions=True,
        )
        for store in self._stores.values():
            store.close()
        self._stores.clear()


class DaemonServer:
    """Listens on a Unix socket for shims.

    Args:
        token: the secret a shim must present in ``hello``.
        transports: what the nodes of every shim get their servers and clients from.
        connection_class: the protocol of one shim's connection (a subclass
            observes inputs for the benchmark).
        metrics: the engine's metrics, handed to every node; ``None``: off.
    """

    def __init__(
        self,
        token: str,
        transports: Transports | None = None,
        connection_class: type[ShimConnection] = ShimConnection,
        metrics: EngineMetrics | None = None,
    ) -> None:
        self.token = token
        self.transports = transports if transports is not None else LocalTransports()
        self.connection_class = connection_class
        self.metrics = metrics
        self.connections: set[ShimConnection] = set()
        self._server: asyncio.AbstractServer | None = None

    async def listen_unix(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        old_umask = os.umask(0o077)
        try:
            self._server = await asyncio.get_running_loop().create_unix_server(
                self._accept, path=path
            )
        finally:
            os.umask(old_umask)

    async def listen_tcp(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> int:
        """Listen on TCP (for a shim on another host); returns the bound port."""
        self._server = await asyncio.get_running_loop().create_server(
            self._accept, host, port, ssl=ssl_context
        )
        return int(self._server.sockets[0].getsockname()[1])

    def _accept(self) -> ShimConnection:
        connection = self.connection_class(
            self.token, self.transports, on_lost=self.connections.discard, metrics=self.metrics
        )
        self.connections.add(connection)
        return connection

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await asyncio.gather(
            *(connection.close_all() for connection in list(self.connections)),
            return_exceptions=True,
        )
