"""Back-pressure: a flow sends 5,000 requests faster than a slow station answers.

The real daemon (driven by ShimDouble) runs a CSMS node with `queue_size:
100`; a raw station answers one request per 10 ms. One request is
outstanding and 100 wait (OCPP-J 4.1.1); an input that finds the queue full
ends with done(err) at once (within 1 s of its input, not after the
station), the rest wait their turn. The queued ones go out in
order and end without error, and the daemon's RSS stays bounded although
each request carries 10 KB (all 5,000 kept would be 50 MB and more).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tests.common import auth_header
from tests.shim_double import ShimDouble, free_port

TOTAL = 5000
QUEUE = 100
BLOB = "x" * 10_000


class TimedDones(dict[int, Any]):
    """ShimDouble.dones that also notes when each done arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.at: dict[int, float] = {}

    def __setitem__(self, key: int, value: Any) -> None:
        self.at[key] = time.monotonic()
        super().__setitem__(key, value)


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]


async def test_requests_beyond_the_queue_fail_at_once_and_memory_stays_bounded() -> None:
    shim = ShimDouble()
    await shim.start()
    try:
        port = free_port()
        shim.create(
            "csms",
            "CSMS",
            {"port": str(port), "path": "/ocpp", "queue_size": QUEUE, "message_timeout": 120},
            credentials={"basic_auths": json.dumps({"SLOW": "pw"})},
        )
        await shim.wait_for(lambda: "0 connected" in shim.statuses("csms"))
        ws = await connect(
            f"ws://127.0.0.1:{port}/ocpp/SLOW",
            subprotocols=[Subprotocol("ocpp2.0.1")],
            additional_headers=auth_header("SLOW", "pw"),
        )
        await shim.wait_for(lambda: "1 connected" in shim.statuses("csms"))
        seen: list[str] = []

        async def slow_station() -> None:
            try:
                for _ in range(TOTAL):  # bounded
                    frame = json.loads(await ws.recv())
                    seen.append(frame[1])
                    await asyncio.sleep(0.01)
                    await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
            except ConnectionClosed:
                return

        station = asyncio.create_task(slow_station())
        await asyncio.sleep(0.5)
        rss_before = rss_kib(shim.pid)
        started = time.monotonic()
        seqs: list[int] = []
        sent_at: dict[int, float] = {}
        dones = TimedDones()
        shim.dones = dones
        for n in range(TOTAL):
            sent_at[shim._seq + 1] = time.monotonic()
            seqs.append(
                shim.input(
                    "csms",
                    {
                        "payload": {
                            "command": "DataTransfer",
                            "data": {"vendorId": "bp", "data": BLOB},
                            "cbId": "SLOW",
                            "MessageId": f"bp-{n}",
                        }
                    },
                )
            )
            if n % 500 == 0:
                await shim.writer.drain()
        await shim.wait_for(lambda: len(shim.dones) >= TOTAL, timeout=60)
        rss_peak = rss_kib(shim.pid)
        refused = [s for s in seqs if "error" in shim.dones[s]]
        accepted = [s for s in seqs if "error" not in shim.dones[s]]
        for seq in refused:
            assert "already wait" in shim.dones[seq]["error"], shim.dones[seq]
        # one outstanding + QUEUE waiting, plus those the station freed while inputs came in
        assert QUEUE + 1 <= len(accepted) <= QUEUE + 1 + len(seen), (len(accepted), len(seen))
        assert len(refused) >= TOTAL // 2, len(refused)
        # at once: a refused input ends without waiting for the station
        latency = [dones.at[s] - sent_at[s] for s in refused]
        assert max(latency) < 1.0, max(latency)
        drained_after = time.monotonic() - started
        index = {s: n for n, s in enumerate(seqs)}
        assert seen == [f"bp-{index[s]}" for s in accepted], seen[:5]  # in order, nothing else
        await asyncio.sleep(0.5)
        assert len(seen) == len(accepted), "a refused request went out"
        rss_after = rss_kib(shim.pid)
        print(
            f"\n{len(refused)} refused, each within {max(latency) * 1000:.0f} ms of its input; "
            f"{len(accepted)} sent in order, all done after {drained_after:.2f} s; "
            f"daemon RSS {rss_before} KiB before, "
            f"{rss_peak} at the refusals, {rss_after} after"
        )
        assert rss_peak - rss_before < 30 * 1024, (rss_before, rss_peak)
        assert rss_after - rss_before < 30 * 1024, (rss_before, rss_after)
        station.cancel()
        await ws.close()
    finally:
        await shim.stop()
