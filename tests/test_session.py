"""The session that binds an OCPP-J connection to a websocket."""

from __future__ import annotations

import asyncio

from ocpp_nodes.rpc import OcppConnection
from ocpp_nodes.schemas import registry
from ocpp_nodes.transport import OcppSession, SocketClosed


class SlowClosingSocket:
    """A socket whose pending send takes a while to unwind when cancelled."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def receive(self) -> str:
        await self.closed.wait()
        raise SocketClosed("closed")

    async def send(self, text: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(asyncio.sleep(0.2))

    async def close(self, code: int, reason: str) -> None:
        self.closed.set()


async def test_cancelling_a_session_while_it_winds_down_is_not_swallowed() -> None:
    socket = SlowClosingSocket()
    events: list = []
    session = OcppSession(
        "CS1", OcppConnection(registry("2.0.1")), socket, lambda s, e: events.extend(e)
    )
    run = asyncio.create_task(session.run())
    await asyncio.sleep(0)
    session.send_call("Heartbeat", {})  # the writer is now stuck in send()
    await asyncio.sleep(0.01)
    await session.close()  # run() ends and waits for the writer to unwind...
    await asyncio.sleep(0.05)
    run.cancel()  # ...while the node stops: the cancel must end run()
    done, _ = await asyncio.wait([run], timeout=2)
    assert run in done and run.cancelled()
    assert [type(e).__name__ for e in events] == ["CallAborted"]  # its input still ends


class GatedSocket:
    """Takes frames at once until `gate` is cleared; then send() waits for it."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.sent: list[str] = []
        self.closed = asyncio.Event()

    async def receive(self) -> str:
        await self.closed.wait()
        raise SocketClosed("closed")

    async def send(self, text: str) -> None:
        if not self.gate.is_set():
            await self.gate.wait()
        self.sent.append(text)

    async def close(self, code: int, reason: str) -> None:
        self.closed.set()


def _session(socket: object, frames: list[tuple[str, bool]] | None = None) -> OcppSession:
    return OcppSession(
        "CS1",
        OcppConnection(registry("2.0.1")),
        socket,  # type: ignore[arg-type]
        lambda s, e: None,
        None if frames is None else (lambda s, text, from_peer: frames.append((text, from_peer))),
    )


async def test_a_frame_is_written_before_send_call_returns() -> None:
    socket = GatedSocket()
    logged: list[tuple[str, bool]] = []
    session = _session(socket, logged)
    call = session.send_call("Heartbeat", {})
    assert socket.sent == [call.text]  # no turn of the event loop needed
    assert logged == [(call.text, False)]


async def test_frames_wait_in_order_while_the_socket_pushes_back() -> None:
    socket = GatedSocket()
    session = _session(socket)
    run = asyncio.create_task(session.run())
    await asyncio.sleep(0)
    socket.gate.clear()
    for i in range(3):  # three received CALLs, answered one after the other
        session.connection.receive_text(f'[2,"m{i}","Heartbeat",{{}}]', 0.0)
    for i in range(3):
        session.send_result(f"m{i}", {"currentTime": "2026-01-01T00:00:00Z"})
    await asyncio.sleep(0.01)
    assert socket.sent == []  # the first send is waiting, the others queue behind it
    socket.gate.set()
    await asyncio.sleep(0.01)
    assert [t.split(",")[1] for t in socket.sent] == ['"m0"', '"m1"', '"m2"']
    await session.close()
    assert await asyncio.wait_for(run, 2) == "closed"


class BrokenSocket(GatedSocket):
    async def send(self, text: str) -> None:
        raise ConnectionResetError("gone")


async def test_a_send_that_fails_drops_the_outbox_and_keeps_the_session() -> None:
    socket = BrokenSocket()
    logged: list[tuple[str, bool]] = []
    session = _session(socket, logged)
    session.send_call("Heartbeat", {})
    assert socket.sent == [] and logged == []
    assert not session._outbox
