"""An OCPP 2.0.1 station from the Python `ocpp` package that answers Reset.

The live-view test (tests/browser/test_live_view.py) runs it next to the
benchmark's stations, whose generic `[3, id, {}]` answer is not a valid
ResetResponse. It connects to ``<url>/<cbId>`` with HTTP Basic auth, boots,
sends a Heartbeat every ``--heartbeat`` seconds, answers every Reset
``Accepted`` and prints one line per event on stdout (``connected``,
``booted Accepted``, ``reset Immediate``), flushed, for the test to wait on.
It stops at end of input on stdin or after ``--lifetime`` seconds.

Usage: python reset_station.py --url ws://127.0.0.1:PORT/ocpp --cb-id ID --password PW
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import threading
from typing import Any

import websockets
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result

__all__ = ["ResetStation", "main"]


class ResetStation(ChargePoint):
    """Answers Reset Accepted and says so on stdout."""

    @on("Reset")
    def on_reset(self, **fields: Any) -> call_result.Reset:
        print(f"reset {fields['type']}", flush=True)
        return call_result.Reset(status="Accepted")


async def run(args: argparse.Namespace) -> None:
    auth = base64.b64encode(f"{args.cb_id}:{args.password}".encode()).decode()
    async with websockets.connect(
        f"{args.url.rstrip('/')}/{args.cb_id}",
        subprotocols=["ocpp2.0.1"],
        additional_headers={"Authorization": f"Basic {auth}"},
        open_timeout=20,
    ) as ws:
        print("connected", flush=True)
        station = ResetStation(args.cb_id, ws)
        answering = asyncio.create_task(station.start())
        boot = await station.call(
            call.BootNotification(
                reason="PowerUp",
                charging_station={"model": "ResetStation", "vendor_name": "ocpp-nodes tests"},
            )
        )
        print(f"booted {boot.status}", flush=True)
        while not answering.done():
            await station.call(call.Heartbeat())
            await asyncio.sleep(args.heartbeat)


async def main_async(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()

    def watch_stdin() -> None:  # a daemon thread: it does not hold up the exit
        sys.stdin.read()
        loop.call_soon_threadsafe(stdin_closed.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    station = asyncio.create_task(run(args))
    closed = asyncio.create_task(stdin_closed.wait())
    await asyncio.wait([station, closed], timeout=args.lifetime, return_when="FIRST_COMPLETED")
    closed.cancel()
    if station.done():
        station.result()  # its error, if it failed
    else:
        station.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--cb-id", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--heartbeat", type=float, default=2.0)
    parser.add_argument("--lifetime", type=float, default=300.0)
    asyncio.run(main_async(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
