"""The benchmark's hop timing (ocpp_nodes/hop_trace.py) through a REAL Node-RED.

With OCPP_NODES_HOP_TRACE naming a file, the shim stamps each input with the
monotonic clock and the daemon writes, when it exits, one line per stamped
frame: ns until the frame was handed to the kernel, ns until the websocket
send returned. A CALL queued behind an unanswered one leaves later, not while
its input is handled: it has no stamp (the benchmark sends one at a time).
Without the variable, input frames carry no stamp and nothing is written (the
rest of the suite runs that way).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.flowkit import Flow
from tests.nodered import NodeRed, free_port, wait_until
from tests.test_offline_restart import PythonCsms, cs_flow

pytestmark = pytest.mark.nodered

HEARTBEATS = 20


class TracedNodeRed(NodeRed):
    def __init__(self, user_dir: Path, port: int, trace: Path) -> None:
        super().__init__(user_dir, port)
        self.trace = trace

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "OCPP_NODES_HOP_TRACE": str(self.trace)}


def heartbeat_answers(flow: Flow) -> int:
    return sum(
        1
        for r in flow.records("cs")
        if r.get("topic", "").endswith("/Response")
        and (r.get("payload") or {}).get("command") == "Heartbeat"
    )


def test_each_heartbeat_from_the_flow_gets_its_hop_times(tmp_path: Path) -> None:
    trace = tmp_path / "hops.txt"
    csms = PythonCsms(free_port())
    nodered = TracedNodeRed(tmp_path / "node-red", free_port(), trace)
    try:
        nodered.start()
        nodered.deploy(cs_flow(csms.port))
        with csms.running():
            flow = Flow(nodered)
            wait_until(
                lambda: any(
                    (r.get("ocpp") or {}).get("websocket") == "ONLINE" for r in flow.records("cs")
                ),
                30,
                what="the CS node online",
            )
            for n in range(1, HEARTBEATS + 1):  # one at a time, as in bench/run.py
                flow.send("cs", {"payload": {"command": "Heartbeat", "data": {}}})
                wait_until(lambda n=n: heartbeat_answers(flow) == n, 30, what=f"answer {n}")
    finally:
        leftovers = nodered.stop()
    assert not leftovers
    lines = [line.split() for line in trace.read_text().splitlines()]
    assert len(lines) == HEARTBEATS  # the automatic BootNotification is no input: not stamped
    for handed, returned in ((int(a), int(b)) for a, b in lines):
        assert 0 < handed <= returned < 5_000_000_000
