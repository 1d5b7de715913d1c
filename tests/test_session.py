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
