"""What the engine does with a node closed for a redeploy (ocpp_nodes/nodes/redeploy.py).

The daemon's own shim connection (``ShimConnection``) in this process, fed
frames as the shim writes them, with real websockets stations over loopback;
only the socket to the shim is replaced by a recorder, so that the parking
time can be shortened here. Node-RED drives the same code in
tests/test_redeploy_keep.py.

- A request of the flow that waits for its answer when the node is closed
  ends with done(err) saying so; the station's late answer is dropped
  without a word.
- A station's request the old flow had not answered reaches the new node,
  whose answer reaches the station.
- A parked node nobody takes in time stops: its stations are closed, its
  port is free.
- Another node that wants a parked node's port gets it.
- ``removed`` (or a close from an older shim, without it) stops at once.
- The old flow's request still queued is taken back (done(err), never sent).
- Registrations (boot rules) carry over to the new node.
- A CS node's transaction message in flight goes again, with its id, once
  its first answer came to no node.
- What a station was admitted with never shows its password.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from ocpp_nodes import IPC_PROTOCOL
from ocpp_nodes.ipc.framing import FrameDecoder, encode
from ocpp_nodes.ipc.server import ShimConnection
from ocpp_nodes.nodes import redeploy
from ocpp_nodes.transport.csms_server import Admission
from tests.common import auth_header, port_free
from tests.shim_double import free_port

PASSWORD = "pw"


class _Recorder(asyncio.Transport):
    """The shim's end of the socket: every frame the engine writes, decoded."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self._decoder = FrameDecoder()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.frames.extend(self._decoder.feed(bytes(data)))
        self.changed.set()

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Engine:
    """A ShimConnection driven as the shim drives it."""

    def __init__(self) -> None:
        self.connection = ShimConnection("token")
        self.shim = _Recorder()
        self.connection.connection_made(self.shim)
        self.seq = 0
        self.write({"t": "hello", "protocol": IPC_PROTOCOL, "token": "token"})

    def write(self, frame: dict[str, Any]) -> None:
        self.connection.data_received(encode(frame))

    def create_csms(self, node_id: str, port: int, auths: dict[str, str]) -> None:
        self.write(
            {
                "t": "create",
                "node": node_id,
                "type": "CSMS",
                "config": {"port": str(port), "path": "/ocpp", "message_timeout": 30},
                "credentials": {"basic_auths": json.dumps(auths)},
            }
        )

    def close(self, node_id: str, **fields: Any) -> None:
        self.write({"t": "close", "node": node_id, **fields})

    def input(self, node_id: str, msg: dict[str, Any]) -> int:
        self.seq += 1
        self.write({"t": "input", "node": node_id, "seq": self.seq, "msg": msg})
        return self.seq

    def of(self, node_id: str, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.shim.frames if f.get("node") == node_id and f["t"] == kind]

    async def wait(self, probe: Callable[[], Any], timeout: float = 10.0) -> Any:
        async def loop() -> Any:
            while not (value := probe()):
                self.shim.changed.clear()
                await self.shim.changed.wait()
            return value

        return await asyncio.wait_for(loop(), timeout)

    async def listening(self, node_id: str) -> None:
        await self.wait(
            lambda: any("connected" in f.get("text", "") for f in self.of(node_id, "status"))
        )


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    running = Engine()
    yield running
    await running.connection.close_all()


async def station(port: int, cb_id: str) -> Any:
    return await websockets.connect(
        f"ws://127.0.0.1:{port}/ocpp/{cb_id}",
        subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
        additional_headers=auth_header(cb_id, PASSWORD),
        ping_interval=None,
    )


async def closed_code(ws: Any, timeout: float = 10.0) -> int | None:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    return ws.close_code  # type: ignore[no-any-return]


async def test_requests_across_a_redeploy(engine: Engine) -> None:
    port = free_port()
    engine.create_csms("c", port, {"S1": PASSWORD})
    await engine.listening("c")
    ws = await station(port, "S1")
    await engine.wait(lambda: any(f["text"] == "1 connected" for f in engine.of("c", "status")))

    # the flow's request, not answered yet; the station's Heartbeat, not answered yet
    seq = engine.input(
        "c",
        {
            "payload": {
                "command": "GetVariables",
                "cbId": "S1",
                "data": {
                    "getVariableData": [{"component": {"name": "X"}, "variable": {"name": "Y"}}]
                },
            }
        },
    )
    call = json.loads(await ws.recv())
    await ws.send(json.dumps([2, "hb-1", "Heartbeat", {}]))
    await engine.wait(lambda: [m for m in engine.of("c", "send") if m["msg"].get("topic")])
    engine.close("c", removed=False)
    await engine.wait(lambda: engine.of("c", "closed"))
    done = next(f for f in engine.of("c", "done") if f["seq"] == seq)
    assert "before the node was redeployed; a later answer is dropped" in done["error"], done
    sent_before = len(engine.of("c", "send"))

    # during the redeploy: the late answer to the old flow's request
    await ws.send(json.dumps([3, call[1], {"getVariableResult": []}]))
    engine.create_csms("c", port, {"S1": PASSWORD})
    handed = await engine.wait(
        lambda: [
            m["msg"]
            for m in engine.of("c", "send")[sent_before:]
            if m["msg"].get("topic") == "S1/Request"
        ]
    )
    assert handed[0]["payload"]["MessageId"] == "hb-1"
    # the new node answers it
    engine.input(
        "c",
        {
            "ocpp": handed[0]["ocpp"],
            "payload": {"msgType": 3, "data": {"currentTime": "2026-01-01T00:00:00Z"}},
        },
    )
    assert json.loads(await ws.recv())[:2] == [3, "hb-1"]
    # the late answer went nowhere: no message, no warning
    assert not [
        m for m in engine.of("c", "send")[sent_before:] if "Response" in str(m["msg"].get("topic"))
    ]
    assert not [f for f in engine.of("c", "log") if "dropped an answer" in f["text"]]
    logs = [f["text"] for f in engine.of("c", "log")]
    assert "redeploy: 1 station(s) kept connected, 1 request(s) handed to the new flow" in logs
    await ws.close()


async def test_a_parked_node_nobody_takes_stops(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redeploy, "PARK_SECONDS", 0.5)
    port = free_port()
    engine.create_csms("c", port, {"S1": PASSWORD})
    await engine.listening("c")
    ws = await station(port, "S1")
    engine.close("c", removed=False)
    await engine.wait(lambda: engine.of("c", "closed"))
    assert not port_free(port)  # parked: still listening, the station still connected
    assert await closed_code(ws) == 1001
    assert port_free(port)


async def test_another_node_gets_the_port_of_a_parked_one(engine: Engine) -> None:
    port = free_port()
    engine.create_csms("a", port, {"S1": PASSWORD})
    await engine.listening("a")
    ws = await station(port, "S1")
    engine.close("a", removed=False)
    engine.create_csms("b", port, {"S1": PASSWORD})
    await engine.listening("b")
    assert not [f for f in engine.of("b", "status") if "busy" in f.get("text", "")]
    assert await closed_code(ws) == 1001
    logs = [f["text"] for f in engine.shim.frames if f["t"] == "log"]
    assert "redeploy: 1 station(s) disconnected: node b takes its port" in logs
    again = await station(port, "S1")
    await again.close()


@pytest.mark.parametrize("fields", [{"removed": True}, {}])
async def test_a_removed_node_stops_at_once(engine: Engine, fields: dict[str, Any]) -> None:
    port = free_port()
    engine.create_csms("c", port, {"S1": PASSWORD})
    await engine.listening("c")
    ws = await station(port, "S1")
    engine.close("c", **fields)
    await engine.wait(lambda: engine.of("c", "closed"))
    assert port_free(port)
    assert await closed_code(ws) == 1001


async def test_registrations_carry_over(engine: Engine) -> None:
    port = free_port()
    config = {"port": str(port), "path": "/ocpp", "boot_rules": True}

    def create() -> None:
        engine.write(
            {
                "t": "create",
                "node": "c",
                "type": "CSMS",
                "config": config,
                "credentials": {"basic_auths": json.dumps({"S1": PASSWORD})},
            }
        )

    create()
    await engine.listening("c")
    ws = await station(port, "S1")
    boot = {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}}
    await ws.send(json.dumps([2, "boot-1", "BootNotification", boot]))
    request = await engine.wait(
        lambda: [m["msg"] for m in engine.of("c", "send") if m["msg"].get("topic") == "S1/Request"]
    )
    answer = {"currentTime": "2026-01-01T00:00:00Z", "interval": 300, "status": "Pending"}
    engine.input("c", {"ocpp": request[0]["ocpp"], "payload": {"msgType": 3, "data": answer}})
    assert json.loads(await ws.recv())[:2] == [3, "boot-1"]
    engine.close("c", removed=False)
    create()
    await engine.wait(
        lambda: "1 connected, 1 pending" in [f.get("text") for f in engine.of("c", "status")]
    )
    seq = engine.input(
        "c", {"payload": {"msgType": 99, "command": "registration", "data": {"cbId": "S1"}}}
    )
    reply = await engine.wait(
        lambda: [
            m["msg"]
            for m in engine.of("c", "send")
            if "registration" in m["msg"].get("payload", {})
        ]
    )
    assert reply[0]["payload"]["registration"]["status"] == "Pending"
    assert next(f for f in engine.of("c", "done") if f["seq"] == seq).get("error") is None
    await ws.close()


def transaction_event() -> dict[str, Any]:
    return {
        "eventType": "Updated",
        "timestamp": "2026-01-01T00:00:00Z",
        "triggerReason": "MeterValuePeriodic",
        "seqNo": 1,
        "transactionInfo": {"transactionId": "T-1"},
    }


async def test_a_transaction_message_in_flight_goes_again_after_a_redeploy(engine: Engine) -> None:
    """Its first answer comes to no node (dropped); the new node sends it again, with
    its id, and that answer reaches the flow; nothing is dropped as a failure."""
    received: list[list[Any]] = []
    arrived = asyncio.Event()
    connections: list[Any] = []

    def connected_shown() -> int:
        return sum(f.get("text") == "connected" for f in engine.of("s", "status"))

    async def frames(count: int) -> None:
        while len(received) < count:
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 10)

    async def csms(ws: Any) -> None:
        connections.append(ws)
        async for text in ws:
            received.append(json.loads(text))
            arrived.set()

    async with websockets.serve(csms, "127.0.0.1", 0, subprotocols=["ocpp2.0.1"]) as server:  # type: ignore[list-item]
        port = server.sockets[0].getsockname()[1]
        spec = {
            "t": "create",
            "node": "s",
            "type": "CS",
            "config": {"cbId": "TX1", "auto_connect": True, "csms_url": f"ws://127.0.0.1:{port}"},
            "credentials": {"csms_pw": PASSWORD},
        }
        engine.write(spec)
        await engine.wait(lambda: connected_shown() >= 1)
        engine.input("s", {"payload": {"command": "TransactionEvent", "data": transaction_event()}})
        await frames(1)
        first = received[0]
        engine.close("s", removed=False)
        await engine.wait(lambda: engine.of("s", "closed"))
        engine.write(spec)
        # taken over: the new node shows the connection it took
        await engine.wait(lambda: connected_shown() >= 2)
        await connections[0].send(json.dumps([3, first[1], {}]))  # to no node now
        await frames(2)
        assert received[1][:3] == first[:3]  # the same message, the same id
        await connections[0].send(json.dumps([3, first[1], {}]))
        response = await engine.wait(
            lambda: [
                m["msg"] for m in engine.of("s", "send") if m["msg"].get("topic") == "TX1/Response"
            ]
        )
        assert response[0]["ocpp"]["MessageId"] == first[1]
        assert len(connections) == 1  # one connection all along
        logs = [f["text"] for f in engine.of("s", "log")]
        assert not [text for text in logs if "dropped" in text], logs


def test_what_a_station_was_admitted_with_never_shows_its_password() -> None:
    admission = Admission(("S1", "s3cret-pw"), None, None)  # type: ignore[arg-type]
    assert "s3cret-pw" not in repr(admission) and "s3cret-pw" not in str(admission)


async def test_the_old_flows_queued_request_is_taken_back(engine: Engine) -> None:
    port = free_port()
    engine.create_csms("c", port, {"S1": PASSWORD})
    await engine.listening("c")
    ws = await station(port, "S1")
    await engine.wait(lambda: any(f["text"] == "1 connected" for f in engine.of("c", "status")))
    reset = {"command": "Reset", "cbId": "S1", "data": {"type": "Immediate"}}
    sent = engine.input("c", {"payload": reset})
    queued = engine.input("c", {"payload": reset})
    call = json.loads(await ws.recv())
    engine.close("c", removed=False)
    await engine.wait(lambda: engine.of("c", "closed"))
    errors = {f["seq"]: f.get("error", "") for f in engine.of("c", "done")}
    assert "a later answer is dropped" in errors[sent]
    assert "not sent: the node was redeployed" in errors[queued]
    engine.create_csms("c", port, {"S1": PASSWORD})
    await engine.wait(lambda: [f for f in engine.of("c", "log") if "kept connected" in f["text"]])
    await ws.send(json.dumps([3, call[1], {"status": "Accepted"}]))
    # a request of the new flow goes next: the queued one never went
    engine.input("c", {"payload": {"command": "Reset", "cbId": "S1", "data": {"type": "OnIdle"}}})
    assert json.loads(await ws.recv())[3] == {"type": "OnIdle"}
    await ws.close()
