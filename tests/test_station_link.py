"""The nodes need nothing of a station but a StationLink (ocpp_nodes/transport/link.py).

A link held in memory here, handed out by a Transports factory of this test,
stands where a station held by another process (fleet mode) will stand: the
CSMS and CS nodes serve it exactly as they serve a websocket session, and
keep what only they need (the input's done, customData, _linkSource) to
themselves.
"""

from __future__ import annotations

from typing import Any

from ocpp_nodes.nodes import CsmsNode, CsNode, NodeServices, NodeSpec
from ocpp_nodes.rpc import (
    V201,
    CallAborted,
    CallReceived,
    ConnectionClosed,
    ErrorReceived,
    OcppVersion,
    ResultReceived,
)
from ocpp_nodes.transport import (
    Backoff,
    ClientOptions,
    CsmsListener,
    LinkListener,
    PendingCall,
    ServerOptions,
    StationListener,
)
from tests.common import RecordingHost

DATE_TIME = "2026-01-01T00:00:00Z"


class MemoryLink:
    """A StationLink that records what the node sends on it."""

    def __init__(self, cb_id: str, version: OcppVersion = V201, remote: str = "10.0.0.7") -> None:
        self.cb_id = cb_id
        self.version = version
        self.remote = remote
        self.sent: list[tuple[Any, ...]] = []
        self.awaited: set[str] = set()
        self.closed: tuple[int, str] | None = None
        self._ids = 0

    @property
    def call_timeout(self) -> float:
        return 7.0

    def send_call(self, action: str, payload: Any, *, message_id: str | None = None) -> str:
        if self.closed is not None:
            raise ConnectionClosed("the connection is closed")
        self._ids += 1
        message_id = message_id or f"id{self._ids}"
        self.sent.append(("call", message_id, action, payload))
        return message_id

    def send_result(self, message_id: str, payload: Any) -> None:
        self.awaited.remove(message_id)
        self.sent.append(("result", message_id, payload))

    def send_error(
        self, message_id: str, error_code: str, description: str = "", details: Any = None
    ) -> None:
        self.awaited.remove(message_id)
        self.sent.append(("error", message_id, error_code, description, details))

    def awaits_answer(self, message_id: Any) -> bool:
        return message_id in self.awaited

    def pending_calls(self) -> list[PendingCall]:
        answered = {m for kind, m, *_ in self.sent if kind == "answered"}
        return [
            PendingCall(m, action, True)
            for kind, m, action, *_ in self.sent
            if kind == "call" and m not in answered
        ]

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    def receive_call(self, listener: LinkListener, message_id: str, action: str, data: Any) -> None:
        self.awaited.add(message_id)
        listener.link_events(self, [CallReceived(message_id, action, data)])


class MemoryServer:
    def __init__(self, listener: StationListener) -> None:
        self.listener = listener
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False


class MemoryClient:
    def __init__(self, listener: CsmsListener) -> None:
        self.listener = listener
        self.running = False

    def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False


class MemoryTransports:
    """Hands out servers and clients that never open a socket."""

    def __init__(self) -> None:
        self.servers: list[MemoryServer] = []
        self.clients: list[MemoryClient] = []
        self.server_options: list[ServerOptions] = []

    def server(self, options: ServerOptions, listener: StationListener) -> MemoryServer:
        self.server_options.append(options)
        self.servers.append(MemoryServer(listener))
        return self.servers[-1]

    def client(self, options: ClientOptions, backoff: Backoff, listener: CsmsListener) -> Any:
        self.clients.append(MemoryClient(listener))
        return self.clients[-1]


async def test_a_csms_node_serves_a_station_it_only_knows_as_a_link() -> None:
    transports = MemoryTransports()
    host = RecordingHost()
    node = CsmsNode(
        NodeSpec("csms", {"port": "1", "path": "/ocpp", "connection_events": True}),
        host,
        NodeServices(transports=transports),
    )
    await node.start()
    (server,) = transports.servers
    assert server.started and transports.server_options[0].versions == (V201,)
    link = MemoryLink("CP1")
    await server.listener.link_opened(link)
    assert host.sent[-1][1]["ocpp"] == {"websocket": "ONLINE", "cbId": "CP1"}
    assert host.sent[-1][1]["payload"] == {"remote": "10.0.0.7"}

    # a CALL from the station reaches the flow; the flow's answer goes back on the link
    link.receive_call(server.listener, "m1", "Heartbeat", {})
    request = host.sent[-1][1]
    assert request["ocpp"] == {
        "ocppVersion": "2.0.1",
        "MessageId": "m1",
        "command": "Heartbeat",
        "cbId": "CP1",
    }
    node.input(1, {**request, "payload": {"msgType": 3, "data": {"currentTime": DATE_TIME}}})
    assert link.sent[-1] == ("result", "m1", {"currentTime": DATE_TIME})
    assert host.dones[-1] == (1, None)
    link.receive_call(server.listener, "m2", "Heartbeat", {})
    node.input(2, {**host.sent[-1][1], "payload": {"msgType": 4, "errorCode": "SecurityError"}})
    assert link.sent[-1] == ("error", "m2", "SecurityError", "", None)

    # the flow's request: the node keeps its context, the link only the message id
    link_source = [{"id": "lc1", "node": "n"}]
    node.input(
        3,
        {
            "payload": {"command": "ClearCache", "data": {}, "cbId": "CP1"},
            "customData": {"k": 1},
            "_linkSource": link_source,
        },
    )
    kind, message_id, action, data = link.sent[-1]
    assert (kind, action, data) == ("call", "ClearCache", {})
    node.input(4, {"payload": {"msgType": 99, "command": "cmds"}})
    assert host.sent[-1][1]["payload"]["commands"] == [
        {"cbId": "CP1", "MessageId": message_id, "command": "ClearCache", "sent": True}
    ]
    server.listener.link_events(
        link, [ResultReceived(message_id, "ClearCache", {"status": "Accepted"})]
    )
    port, answer = host.sent[-1]
    assert port == 1 and answer["_linkSource"] == link_source and answer["customData"] == {"k": 1}
    assert answer["topic"] == "CP1/Response" and (3, None) in host.dones

    # a CALLERROR and a lost link end their inputs too
    node.input(5, {"payload": {"command": "ClearCache", "data": {}, "cbId": "CP1"}})
    second = link.sent[-1][1]
    server.listener.link_events(
        link, [ErrorReceived(second, "ClearCache", "InternalError", "", {})]
    )
    assert host.sent[-1][1]["topic"] == "CP1/Error" and (5, None) in host.dones
    node.input(6, {"payload": {"command": "ClearCache", "data": {}, "cbId": "CP1"}})
    third = link.sent[-1][1]
    server.listener.link_events(link, [CallAborted(third, "ClearCache", "gone")])
    server.listener.link_closed(link, "gone")
    assert host.dones[-1] == (6, "CP1: ClearCache not answered: gone")
    assert host.sent[-1][1]["ocpp"] == {"websocket": "OFFLINE", "cbId": "CP1"}
    node.input(7, {"payload": {"command": "ClearCache", "data": {}, "cbId": "CP1"}})
    assert host.dones[-1] == (7, "station 'CP1' is not connected")
    assert node._calls == {}  # nothing kept for a call that ended
    await node.stop()
    assert not server.started


async def test_a_cs_node_talks_to_its_csms_through_a_link() -> None:
    transports = MemoryTransports()
    host = RecordingHost()
    node = CsNode(
        NodeSpec(
            "cs",
            {"cbId": "CS1", "auto_connect": True},
            target={"url": "ws://127.0.0.1:1/ocpp"},
        ),
        host,
        NodeServices(transports=transports),
    )
    await node.start()
    (client,) = transports.clients
    assert client.running
    node.input(1, {"payload": {"command": "Heartbeat", "data": {}}})
    assert host.dones[-1] == (1, "CS1 is not connected to the CSMS")
    link = MemoryLink("CS1")
    await client.listener.link_opened(link)
    assert host.statuses[-1] == "connected"
    node.input(2, {"payload": {"command": "Heartbeat", "data": {}}, "customData": "c"})
    _, message_id, _, _ = link.sent[-1]
    client.listener.link_events(
        link, [ResultReceived(message_id, "Heartbeat", {"currentTime": DATE_TIME})]
    )
    assert host.sent[-1][1]["customData"] == "c" and (2, None) in host.dones
    link.receive_call(client.listener, "r1", "Reset", {"type": "Immediate"})
    request = host.sent[-1][1]
    assert request["payload"] == {
        "command": "Reset",
        "data": {"type": "Immediate"},
        "MessageId": "r1",
        "cbId": "CS1",
    }
    node.input(3, {**request, "payload": {"msgType": 3, "data": {"status": "Accepted"}}})
    assert link.sent[-1] == ("result", "r1", {"status": "Accepted"})
    client.listener.link_closed(link, "closed by CSMS (code 1000)")
    assert host.sent[-1][1]["ocpp"] == {"websocket": "OFFLINE", "cbId": "CS1"}
    await node.stop()
    assert not client.running
