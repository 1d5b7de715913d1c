"""Helpers the tests share, each defined once.

- OCPP 2.0.1 samples: :data:`BOOT`, :data:`BOOT_ANSWER`, :data:`GET_VARIABLES` ...
- raw websocket peers: :func:`auth_header`, :func:`recv_frame`,
  :func:`assert_nothing_arrives`; a TLS client's first flight as bytes:
  :func:`client_hello`;
- what the daemon told the shim double (tests/shim_double.py) about a node:
  :func:`warnings`, :func:`logs`, :func:`websocket_events`; playing a flow
  that answers: :func:`answer_requests`; :func:`start_csms`;
- a node's Node-RED side in this process (no shim, no daemon):
  :class:`RecordingHost`;
- the nodes of the real daemon as a flow sees them, and their peers:
  :class:`DaemonCsms` (a CSMS node and the stations that connect to it),
  :class:`DaemonCs` (a CS node), :class:`FakeCsms` (a websockets server a CS
  node connects to).

The fixtures built on these (``shim``, ``fresh_shim``, ``make_csms``,
``make_cs``, ``make_fake_csms``) are in tests/conftest.py; the bad-frame
corpus is tests/corpus.py; Node-RED flows are built with tests/flowkit.py.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.typing import Subprotocol

from tests.nodered import free_port
from tests.payloads import DATE_TIME
from tests.shim_double import ShimDouble

__all__ = [
    "BOOT",
    "BOOT_ANSWER",
    "DATE_TIME",
    "GET_VARIABLES",
    "GET_VARIABLES_RESULT",
    "HEARTBEAT_ANSWER",
    "OCPP201",
    "MakeCs",
    "MakeCsms",
    "MakeFakeCsms",
    "DaemonCs",
    "DaemonCsms",
    "DaemonNode",
    "FakeCsms",
    "Peer",
    "answer_requests",
    "assert_nothing_arrives",
    "auth_header",
    "client_hello",
    "logs",
    "next_number",
    "poll_until",
    "recv_frame",
    "start_csms",
    "warnings",
    "websocket_events",
]

# -- OCPP 2.0.1 samples ---------------------------------------------------------------

OCPP201 = [Subprotocol("ocpp2.0.1")]
BOOT = {"reason": "PowerUp", "chargingStation": {"model": "M1", "vendorName": "V1"}}
BOOT_ANSWER = {"currentTime": DATE_TIME, "interval": 300, "status": "Accepted"}
HEARTBEAT_ANSWER = {"currentTime": DATE_TIME}
GET_VARIABLES = {
    "getVariableData": [
        {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
    ]
}
GET_VARIABLES_RESULT = {
    "getVariableResult": [
        {
            "attributeStatus": "Accepted",
            "attributeValue": "300",
            "component": {"name": "OCPPCommCtrlr"},
            "variable": {"name": "HeartbeatInterval"},
        }
    ]
}

_numbers = itertools.count(1)


def next_number() -> int:
    """A number not handed out before in this run: for node ids and message ids."""
    return next(_numbers)


# -- raw websocket peers --------------------------------------------------------------

Peer = ClientConnection | ServerConnection


def auth_header(user: str, password: str) -> dict[str, str]:
    """The HTTP Basic ``Authorization`` header of part 4, 3.2 (security profile 1)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def client_hello() -> bytes:
    """A TLS client's first flight (its ClientHello), as bytes: no socket involved.

    Sent over a raw TCP connection, it shows whether the server starts a
    handshake (its answer begins with a handshake record, ``0x16``).
    """
    context = ssl.create_default_context()
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="127.0.0.1")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class RecordingHost:
    """A :class:`~ocpp_nodes.nodes.NodeHost` that keeps what a node in this
    process tells Node-RED, for tests that run a node without shim or daemon."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, dict[str, Any]]] = []
        self.dones: list[tuple[int, str | None]] = []
        self.logs: list[tuple[str, str]] = []
        self.statuses: list[str | None] = []
        self.changed = asyncio.Event()

    def send(self, port: int, msg: dict[str, Any]) -> None:
        self.sent.append((port, msg))
        self.changed.set()

    def status(self, fill: Any = None, shape: Any = None, text: Any = None) -> None:
        self.statuses.append(text)
        self.changed.set()

    def done(self, seq: int, error: str | None = None) -> None:
        self.dones.append((seq, error))
        self.changed.set()

    def log(self, level: str, text: str, msg: Any = None) -> None:
        self.logs.append((level, text))
        self.changed.set()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """The first true value of ``predicate``, checked after each call from the node."""

        async def loop() -> Any:
            while not (value := predicate()):
                self.changed.clear()
                await self.changed.wait()
            return value

        return await asyncio.wait_for(loop(), timeout)

    def requests(self) -> list[dict[str, Any]]:
        """The received requests the node put out for the flow."""
        return [m for _, m in self.sent if str(m.get("topic", "")).endswith("/Request")]


async def recv_frame(ws: Any, timeout: float = 10.0) -> list[Any]:
    """The next message the peer ``ws`` gets, read as an OCPP-J frame (a JSON array)."""
    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(frame, list), frame
    return frame


async def assert_nothing_arrives(ws: Any, wait: float = 0.3) -> None:
    """Nothing reaches the peer ``ws`` within ``wait`` seconds."""
    try:
        text = await asyncio.wait_for(ws.recv(), wait)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"the peer received {text!r}")


async def poll_until(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    """Wait for a condition the shim double does not see (a test server's own state)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# -- what the daemon told the shim about a node --------------------------------------


def logs(shim: ShimDouble, node: str, level: str | None = None) -> list[str]:
    """The texts of the node's log frames (of ``level`` only, when given)."""
    return [
        f["text"]
        for f in shim.frames[node]
        if f["t"] == "log" and (level is None or f.get("level") == level)
    ]


def warnings(shim: ShimDouble, node: str) -> list[str]:
    return logs(shim, node, "warn")


def websocket_events(shim: ShimDouble, node: str) -> list[str]:
    """``msg.ocpp.websocket`` of the node's port 0 messages: ONLINE, OFFLINE ..."""
    return [
        m["ocpp"]["websocket"]
        for m in shim.sent(node, 0)
        if isinstance(m.get("ocpp"), dict) and "websocket" in m["ocpp"]
    ]


def _requests(shim: ShimDouble, node: str) -> list[dict[str, Any]]:
    return [m for m in shim.sent(node, 0) if str(m.get("topic", "")).endswith("/Request")]


async def answer_requests(shim: ShimDouble, node: str, answers: dict[str, Any]) -> None:
    """Play the flow until cancelled: answer each request the node puts out on
    port 0 with a CALLRESULT carrying ``answers[its action]``."""
    seen = 0
    while True:
        msgs = await shim.wait_for(lambda seen=seen: _requests(shim, node)[seen:], None)
        for msg in msgs:
            seen += 1
            data = answers[msg["ocpp"]["command"]]
            shim.input(node, {**msg, "payload": {**msg["payload"], "msgType": 3, "data": data}})


async def start_csms(
    shim: ShimDouble,
    node: str,
    auths: dict[str, str],
    config: dict[str, Any] | None = None,
    *,
    expect: str = "0 connected",
    **fields: Any,
) -> int:
    """Create CSMS node ``node`` (path ``/ocpp``, Basic ``auths``) on a free port; its port.

    ``fields`` go into the ``create`` frame (``tls``); it returns once the
    node's status says ``expect``.
    """
    port = free_port()
    shim.create(
        node,
        "CSMS",
        {"port": str(port), "path": "/ocpp", **(config or {})},
        credentials={"basic_auths": json.dumps(auths)},
        **fields,
    )
    await shim.wait_for(lambda: expect in shim.statuses(node))
    return port


# -- the nodes of the real daemon, as the flow sees them ------------------------------


class DaemonNode:
    """A node of the daemon behind ``shim``; plays its flow and reads its outputs."""

    def __init__(self, shim: ShimDouble, node: str) -> None:
        self.shim = shim
        self.node = node

    def request_payload(self, action: str, data: Any, fields: dict[str, Any]) -> dict[str, Any]:
        payload: dict[str, Any] = {"command": action, "data": data}
        if "MessageId" in fields:
            payload["MessageId"] = fields.pop("MessageId")
        return payload

    def call(self, action: str, data: Any, **fields: Any) -> int:
        """Play the flow: send a request (``MessageId`` and msg fields as keywords)."""
        payload = self.request_payload(action, data, fields)  # takes its keywords out
        return self.shim.input(self.node, {"payload": payload, **fields})

    def requests(self, message_id: str | None = None) -> list[dict[str, Any]]:
        """The port 0 msgs of the requests the peer sent (of ``message_id`` only, when given)."""
        return [
            m
            for m in _requests(self.shim, self.node)
            if message_id is None or m["ocpp"]["MessageId"] == message_id
        ]

    async def received_request(self, message_id: str) -> dict[str, Any]:
        """The port 0 msg of the peer's CALL ``message_id`` (waits for it)."""
        found: list[dict[str, Any]] = await self.shim.wait_for(lambda: self.requests(message_id))
        return found[0]

    def reply(self, request: dict[str, Any], payload: dict[str, Any]) -> int:
        """Play the flow: answer a received request with ``payload`` (msgType 3 or 4)."""
        return self.shim.input(self.node, {**request, "payload": payload})

    def answer(self, request: dict[str, Any], data: dict[str, Any]) -> int:
        """Play the flow: answer a received request with a CALLRESULT."""
        return self.reply(request, {"msgType": 3, "data": data})

    async def error(self, seq: int) -> str | None:
        """The error the input ``seq`` ended with, or None (waits for its ``done``)."""
        error: str | None = (await self.shim.done(seq)).get("error")
        return error

    def warnings(self) -> list[str]:
        return warnings(self.shim, self.node)

    def logs(self, level: str | None = None) -> list[str]:
        return logs(self.shim, self.node, level)


class DaemonCsms(DaemonNode):
    """A CSMS node of the daemon on ``port`` (path ``/ocpp``), and its stations."""

    def __init__(self, shim: ShimDouble, node: str, port: int) -> None:
        super().__init__(shim, node)
        self.port = port

    def url(self, cb_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp/{quote(cb_id, safe='')}"

    def connected(self) -> int:
        """How many stations the node's status says are connected (-1: no status yet)."""
        texts = [t for t in self.shim.statuses(self.node) if t.endswith(" connected")]
        return int(texts[-1].split()[0]) if texts else -1

    async def wait_connected(self, count: int, timeout: float = 5.0) -> None:
        await self.shim.wait_for(lambda: self.connected() == count, timeout)

    async def station(
        self, cb_id: str = "CP1", password: str = "pw", **kwargs: Any
    ) -> ClientConnection:
        """A connected raw station whose session the node has registered."""
        before = self.connected()
        ws = await connect(
            self.url(cb_id),
            subprotocols=kwargs.pop("subprotocols", OCPP201),
            additional_headers=auth_header(cb_id, password),
            **kwargs,
        )
        if before >= 0:
            await self.shim.wait_for(
                lambda: any(
                    f["t"] == "status" and f.get("text") == f"{before + 1} connected"
                    for f in self.shim.frames[self.node]
                )
            )
        return ws

    def request_payload(self, action: str, data: Any, fields: dict[str, Any]) -> dict[str, Any]:
        """A request for the station ``cb_id`` keyword (default CP1)."""
        cb_id = fields.pop("cb_id", "CP1")
        return {**super().request_payload(action, data, fields), "cbId": cb_id}

    async def assert_heartbeat_works(self, ws: ClientConnection) -> None:
        """The connection is still usable: a Heartbeat goes through the flow and back."""
        message_id = f"hb-{next_number()}"
        await ws.send(json.dumps([2, message_id, "Heartbeat", {}]))
        request = await self.received_request(message_id)
        seq = self.answer(request, HEARTBEAT_ANSWER)
        assert await recv_frame(ws) == [3, message_id, HEARTBEAT_ANSWER]
        assert await self.error(seq) is None


class DaemonCs(DaemonNode):
    """A CS node of the daemon."""

    def websocket_events(self) -> list[str]:
        return websocket_events(self.shim, self.node)

    async def wait_online(self, count: int = 1, timeout: float = 5.0) -> None:
        await self.shim.wait_for(lambda: self.websocket_events().count("ONLINE") >= count, timeout)

    async def assert_heartbeat_works(self, ws: ServerConnection) -> None:
        """The connection is still usable: the flow's Heartbeat goes out and is answered."""
        message_id = f"hb-{next_number()}"
        seq = self.call("Heartbeat", {}, MessageId=message_id)
        assert await recv_frame(ws) == [2, message_id, "Heartbeat", {}]
        await ws.send(json.dumps([3, message_id, HEARTBEAT_ANSWER]))
        assert await self.error(seq) is None


class FakeCsms:
    """A websockets server on a free loopback port; hands out each connection."""

    def __init__(self, **serve_options: Any) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ocpp"
        self.serve_options = {"subprotocols": ["ocpp2.0.1"], **serve_options}
        self.connections: asyncio.Queue[ServerConnection] = asyncio.Queue()
        self.all: list[ServerConnection] = []
        self.server: Server | None = None

    async def start(self) -> FakeCsms:
        self.server = await serve(self._handler, "127.0.0.1", self.port, **self.serve_options)
        return self

    async def _handler(self, ws: ServerConnection) -> None:
        self.all.append(ws)
        self.connections.put_nowait(ws)
        await ws.wait_closed()

    async def accept(self, timeout: float = 5.0) -> ServerConnection:
        return await asyncio.wait_for(self.connections.get(), timeout)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def port_free(port: int) -> bool:
    """True when a listener could bind the port now (as the CSMS node does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


MakeCsms = Callable[..., Awaitable[DaemonCsms]]
MakeCs = Callable[..., Awaitable[DaemonCs]]
MakeFakeCsms = Callable[..., Awaitable[FakeCsms]]
