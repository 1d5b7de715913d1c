"""The session that binds an OCPP-J connection to a websocket."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ocpp_nodes.rpc import V201, ConnectionClosed, Role
from ocpp_nodes.transport import LinkOptions, OcppSession, SocketClosed, StationLink


class RecordingListener:
    """A LinkListener that keeps what it hears."""

    def __init__(self) -> None:
        self.heard: list[Any] = []
        self.events: list[Any] = []
        self.frames: list[tuple[str, bool]] = []

    async def link_opened(self, link: StationLink) -> None:
        self.heard.append("opened")

    def link_events(self, link: StationLink, events: list[Any]) -> None:
        self.events.extend(events)

    def link_frame(self, link: StationLink, text: str, from_peer: bool) -> None:
        self.frames.append((text, from_peer))

    def link_closed(self, link: StationLink, reason: str | None) -> None:
        self.heard.append(("closed", reason))


def _session(
    socket: object, listener: RecordingListener | None = None, log_frames: bool = False
) -> OcppSession:
    return OcppSession(
        "CS1",
        V201,
        Role.CHARGING_STATION,
        socket,  # type: ignore[arg-type]
        listener or RecordingListener(),
        LinkOptions(log_frames=log_frames),
    )


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
    listener = RecordingListener()
    session = _session(socket, listener)
    run = asyncio.create_task(session.run())
    await asyncio.sleep(0)
    session.send_call("Heartbeat", {})  # the writer is now stuck in send()
    await asyncio.sleep(0.01)
    await session.close()  # run() ends and waits for the writer to unwind...
    await asyncio.sleep(0.05)
    run.cancel()  # ...while the node stops: the cancel must end run()
    done, _ = await asyncio.wait([run], timeout=2)
    assert run in done and run.cancelled()
    assert [type(e).__name__ for e in listener.events] == ["CallAborted"]  # its input still ends
    assert listener.heard == ["opened", ("closed", None)]  # cancelled: our side stopping


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


async def test_a_frame_is_written_before_send_call_returns() -> None:
    socket = GatedSocket()
    listener = RecordingListener()
    session = _session(socket, listener, log_frames=True)
    message_id = session.send_call("Heartbeat", {})
    text = f'[2,"{message_id}","Heartbeat",{{}}]'
    assert socket.sent == [text]  # no turn of the event loop needed
    assert listener.frames == [(text, False)]


async def test_frames_wait_in_order_while_the_socket_pushes_back() -> None:
    socket = GatedSocket()
    session = _session(socket)
    run = asyncio.create_task(session.run())
    await asyncio.sleep(0)
    socket.gate.clear()
    for i in range(3):  # three received CALLs, answered one after the other
        session.connection.receive_text(f'[2,"m{i}","Reset",{{"type":"Immediate"}}]', 0.0)
    for i in range(3):
        session.send_result(f"m{i}", {"status": "Accepted"})
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
    listener = RecordingListener()
    session = _session(socket, listener, log_frames=True)
    session.send_call("Heartbeat", {})
    assert socket.sent == [] and listener.frames == []
    assert not session._outbox


async def test_the_listener_hears_open_first_and_close_last_and_nothing_is_sent_after() -> None:
    socket = GatedSocket()
    listener = RecordingListener()
    session = _session(socket, listener)
    run = asyncio.create_task(session.run())
    await asyncio.sleep(0)
    assert listener.heard == ["opened"]
    session.send_call("Heartbeat", {}, message_id="hb-1")
    await session.close()
    assert await asyncio.wait_for(run, 2) == "closed"
    assert listener.heard == ["opened", ("closed", "closed")]
    assert [(type(e).__name__, e.message_id) for e in listener.events] == [("CallAborted", "hb-1")]
    with pytest.raises(ConnectionClosed):  # not a CALL queued for ever
        session.send_call("Heartbeat", {})
    assert session.pending_calls() == []
