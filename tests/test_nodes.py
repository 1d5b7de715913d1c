"""Node semantics without sockets: a recording host stands in for Node-RED."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest.mock import patch

from ocpp_nodes.nodes import CsNode, NodeServices, NodeSpec
from tests.common import RecordingHost
from tests.shim_double import free_port


def cs_node(host: RecordingHost, config: dict[str, Any], target: Any = None) -> CsNode:
    return CsNode(NodeSpec("n1", config, target=target), host, NodeServices())


def test_retrybackoff_takes_the_spec_names_any_case_and_the_old_singular() -> None:
    host = RecordingHost()
    node = cs_node(host, {"cbId": "CS1"})
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


async def test_reconnect_status_counts_down_each_second() -> None:
    host = RecordingHost()
    config = {"cbId": "CS1", "auto_connect": True, "ws_rt_minimum": 2.5, "ws_rt_rnd_range": 0}
    target = {"url": f"ws://127.0.0.1:{free_port()}/ocpp"}  # nothing listens there
    node = cs_node(host, config, target)
    await node.start()
    try:
        await asyncio.sleep(2.2)
        countdown = [text for text in host.statuses if "retry" in text]
        # the status names why: nothing listens there
        assert countdown[:3] == [
            "refused, retry in 3s",
            "refused, retry in 2s",
            "refused, retry in 1s",
        ]
    finally:
        await node.stop()
    assert host.statuses[-1] == "stopped"


def test_callerror_reply_to_a_request_that_no_longer_waits_says_so() -> None:
    host = RecordingHost()
    node = cs_node(host, {"cbId": "CS1"})
    node.input(
        1,
        {
            "ocpp": {"MessageId": "gone-1", "cbId": "CS1"},
            "payload": {"msgType": 4, "errorCode": "GenericError"},
        },
    )
    assert host.dones[0][0] == 1 and "gone-1" in str(host.dones[0][1])
    assert "CS1 is not connected" in str(host.dones[0][1])


async def test_reconnect_status_never_shows_more_than_the_wait() -> None:
    """A 40 s wait starts at "retry in 40s" whatever the loop's clock reads.

    At 472.007 s (uvloop's clock counts from boot), ``(t + 40) - t`` is
    40.00000000000006: a countdown that worked the seconds left out of the
    clock showed "retry in 41s" (seen in CI).
    """
    loop = asyncio.get_running_loop()
    assert (472.007 + 40.0) - 472.007 > 40.0  # the case is real on this platform
    host = RecordingHost()
    node = cs_node(host, {"cbId": "CS1", "ws_rt_minimum": 40})
    clock = 472.007
    with patch.object(loop, "time", lambda: clock):
        node.client_state("waiting", "40.000")
        for _ in range(3):
            await asyncio.sleep(0)
        assert host.statuses == ["closed, retry in 40s"]  # no failure: a connection closed
        clock += 1.0  # one second later: the next step
        for _ in range(3):
            await asyncio.sleep(0)
        assert host.statuses == ["closed, retry in 40s", "closed, retry in 39s"]
    node._stop_countdown()
    await asyncio.sleep(0)


async def test_stopping_a_node_ends_the_work_it_started_in_the_background() -> None:
    host = RecordingHost()
    node = cs_node(host, {"cbId": "CS1"})
    await node.start()
    started = node.tasks.start(asyncio.sleep(3600))  # e.g. a command waiting for a socket
    await asyncio.sleep(0)
    await node.stop()
    assert started.cancelled()


async def test_a_command_of_the_node_may_stop_what_it_started_without_cancelling_itself() -> None:
    host = RecordingHost()
    node = cs_node(host, {"cbId": "CS1"})
    await node.start()

    async def command() -> str:
        await node.tasks.cancel()  # what a node's own stop does first
        return "finished"

    assert await node.tasks.start(command()) == "finished"
