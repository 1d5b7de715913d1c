"""Node semantics without sockets: a recording host stands in for Node-RED."""

from __future__ import annotations

from typing import Any

from ocpp_nodes.nodes import CsNode


class RecordingHost:
    def __init__(self) -> None:
        self.dones: list[tuple[int, str | None]] = []

    def send(self, port: int, msg: dict[str, Any]) -> None: ...

    def status(self, fill: Any = None, shape: Any = None, text: Any = None) -> None: ...

    def done(self, seq: int, error: str | None = None) -> None:
        self.dones.append((seq, error))

    def log(self, level: str, text: str, msg: Any = None) -> None: ...


def test_retrybackoff_takes_the_spec_names_any_case_and_the_old_singular() -> None:
    host = RecordingHost()
    node = CsNode("n1", {"cbId": "CS1"}, {}, None, host)
    assert (node.backoff.wait_minimum, node.backoff.repeat_times) == (1.0, 2)  # legacy defaults
    node.input(
        1,
        {
            "payload": {
                "msgType": 99,
                "command": "RetryBackOff",
                "data": {
                    "RetryBackOffWaitMinimum": 20,
                    "retrybackoffrandomrange": "5",
                    "RetryBackOffRepeatTime": 3,
                },
            }
        },
    )
    assert host.dones == [(1, None)]
    assert (node.backoff.wait_minimum, node.backoff.random_range, node.backoff.repeat_times) == (
        20.0,
        5.0,
        3,
    )
    node.input(
        2,
        {
            "payload": {
                "msgType": 99,
                "command": "retrybackoff",
                "data": {"RetryBackOffWaitMinimum": "x"},
            }
        },
    )
    assert host.dones[-1][0] == 2 and "RetryBackOffWaitMinimum" in str(host.dones[-1][1])
