"""A do-nothing OCPP CSMS: answers every CALL at once (the load generator's ceiling).

Subprotocol ocpp2.0.1, ocpp2.1 or ocpp1.6 (the answers suit each).
No validation, no auth check (a Basic header is accepted and ignored), no flow:
each CALL ``[2, id, action, payload]`` gets ``[3, id, {...}]`` right away, with
the minimal valid answer for BootNotification and Heartbeat and ``{}`` for
everything else. Listens on 127.0.0.1 only. aiohttp (as the daemon's CSMS
uses), so it shows what the same websocket stack does with no OCPP work.

It also serves the CS-side run (bench/run.py): a flow sends Heartbeats through a
CS node to this server with MessageIds ``h<µs since the epoch>`` stamped by the
flow just before the message goes to the CS node. The server keeps the delay
from that stamp to the frame's arrival here.

HTTP on the same port:
- ``GET /stats``: ``{"calls": N, "since": seconds, "hop_us": [..]}``
- ``POST /reset``: zero the counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from datetime import datetime, timezone
from typing import Any

from aiohttp import WSMsgType, web

# the answers below are valid in each (bench/loadgen.py --versions)
SUBPROTOCOLS = ("ocpp2.0.1", "ocpp2.1", "ocpp1.6")
HOP_SAMPLES_MAX = 2_000_000


class NullCsms:
    def __init__(self) -> None:
        self.calls = 0
        self.since = time.monotonic()
        self.hop_us: list[int] = []
        self.connections = 0

    def reset(self) -> None:
        self.calls = 0
        self.since = time.monotonic()
        self.hop_us = []

    async def ws_handler(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=SUBPROTOCOLS, compress=False, max_msg_size=2**22)
        await ws.prepare(request)
        self.connections += 1
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                arrived_us = time.time_ns() // 1000
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    continue
                if not isinstance(frame, list) or len(frame) != 4 or frame[0] != 2:
                    continue
                self.calls += 1
                mid, action = frame[1], frame[2]
                if isinstance(mid, str) and mid[:1] == "h" and len(self.hop_us) < HOP_SAMPLES_MAX:
                    try:
                        self.hop_us.append(arrived_us - int(mid[1:]))
                    except ValueError:
                        pass
                answer: dict[str, Any]
                if action == "Heartbeat":
                    answer = {"currentTime": _now()}
                elif action == "BootNotification":
                    answer = {"currentTime": _now(), "interval": 300, "status": "Accepted"}
                else:
                    answer = {}
                await ws.send_str(json.dumps([3, mid, answer], separators=(",", ":")))
        finally:
            self.connections -= 1
        return ws

    async def stats(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "calls": self.calls,
                "since": time.monotonic() - self.since,
                "connections": self.connections,
                "hop_us": self.hop_us,
            }
        )

    async def reset_handler(self, _request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


async def serve(port: int, path: str) -> None:
    csms = NullCsms()
    app = web.Application()
    app.router.add_get("/stats", csms.stats)
    app.router.add_post("/reset", csms.reset_handler)
    app.router.add_get(path.rstrip("/") + "/{cbId}", csms.ws_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    print(json.dumps({"event": "ready", "port": port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/ocpp")
    args = p.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(serve(args.port, args.path))


if __name__ == "__main__":
    main()
