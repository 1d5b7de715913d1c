"""Node semantics without sockets: a recording host stands in for Node-RED."""

from __future__ import annotations

import asyncio
import json
import socket
from contextlib import closing
from typing import Any
from unittest.mock import patch

import pytest

from ocpp_nodes.nodes import CsmsNode, CsNode, NodeServices, NodeSpec
from ocpp_nodes.nodes.csms import parse_auth_list
from ocpp_nodes.nodes.refusals import RefusalLog
from ocpp_nodes.transport import CsmsServer, ServerOptions
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


# -- mistakes named where the user looks (issue 23 item 6) ----------------------------


def csms_node(host: RecordingHost, port: int, auth_list: Any = '{"CS1": "pw"}') -> CsmsNode:
    spec = NodeSpec("n2", {"port": str(port), "path": "/ocpp"}, {"basic_auths": auth_list})
    return CsmsNode(spec, host, NodeServices())


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"CS1": "pw",}', "CS Auth list is not valid JSON: Expecting property name"),
        ('["CS1"]', 'must be a JSON object {"cbId": "password", ...}, not an array'),
        ('"CS1"', "must be a JSON object"),
        ('{"CS1": 1234}', "CS Auth list: the password of 'CS1' must be a string, not a number"),
        ('{"CS1": null, "CS2": {"pw": 1}}', "'CS2' must be a string, not an object"),
        (
            json.dumps({f"CS{n}": n for n in range(5)}),
            "the password of 'CS2' must be a string, not a number; and 2 more",
        ),
    ],
)
def test_a_wrong_auth_list_is_told_what_is_wrong_and_never_quotes_a_password(
    text: str, words: str
) -> None:
    with pytest.raises(ValueError) as info:
        parse_auth_list(text)
    assert words in str(info.value)
    assert "1234" not in str(info.value)


def test_an_auth_list_of_plain_or_hashed_strings_is_taken() -> None:
    assert parse_auth_list('{"CS1": "pw", "CS2": "$scrypt$x"}') == {"CS1": "pw", "CS2": "$scrypt$x"}
    assert parse_auth_list("") == {} and parse_auth_list(None) == {}


async def test_a_bad_auth_list_is_a_red_status_and_the_node_does_not_listen() -> None:
    host = RecordingHost()
    port = free_port()
    node = csms_node(host, port, '{"CS1": 1234}')
    await node.start()
    try:
        assert host.statuses == ["bad CS Auth list"]
        assert host.logs == [
            (
                "error",
                "CS Auth list: the password of 'CS1' must be a string, not a number; not listening",
            )
        ]
        assert node.server is None
        node.input(1, {"payload": {"msgType": 99, "command": "ws_open"}})
        await host.wait_for(lambda: host.dones)
        assert "not listening: CS Auth list: the password of 'CS1'" in str(host.dones[0][1])
        # a flow that sets a good list may open it
        node.input(2, {"payload": {"msgType": 99, "command": "set_auth_list", "data": {"A": "b"}}})
        node.input(3, {"payload": {"msgType": 99, "command": "ws_open"}})
        await host.wait_for(lambda: len(host.dones) == 3)
        assert host.dones[1:] == [(2, None), (3, None)] and host.statuses[-1] == "0 connected"
    finally:
        await node.stop()


async def test_the_summary_of_refusals_names_ten_cbids_per_reason_then_counts() -> None:
    host = RecordingHost()
    refusals = RefusalLog(host)
    for n in range(15):
        refusals.count(401, "10.0.0.1", f"CS{n}")
    refusals.count(401, "10.0.0.1", "CS0")
    refusals.count(404, "10.0.0.2", "STRANGER")
    refusals.count(503, "10.0.0.3")  # no cbId named
    refusals.report()
    ((level, text),) = host.logs
    assert level == "warn"
    named = ", ".join(["'CS0' x 2"] + [f"'CS{n}'" for n in range(1, 10)])
    assert (
        text == "refused connection attempts: "
        f"16 x HTTP 401 (wrong or missing credentials): {named} and 5 more; "
        "1 x HTTP 404 (unknown identity): 'STRANGER'; "
        "1 x HTTP 503 (over a connection cap, or too many password hashes to check);"
        " from 10.0.0.1, 10.0.0.2, 10.0.0.3"
    ), text


def hold_port(port: int) -> socket.socket:
    held = socket.socket()
    held.bind(("0.0.0.0", port))
    held.listen()
    return held


def port_is_free(port: int) -> bool:
    with closing(socket.socket()) as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


async def test_a_busy_port_is_tried_again_and_stopping_the_node_ends_the_retrying() -> None:
    host = RecordingHost()
    port = free_port()
    held = hold_port(port)
    node = csms_node(host, port)
    try:
        await node.start()
        await host.wait_for(lambda: f"port {port} busy, retry in 1s" in host.statuses)
        await node.stop()
        assert not node.tasks._tasks and node._bind_retry is None
        assert [task for task in asyncio.all_tasks() if "_retry_bind" in repr(task)] == []
    finally:
        held.close()
    assert port_is_free(port)
    (warning,) = host.logs
    assert warning[0] == "warn" and f"cannot listen on port {port}: " in warning[1]


async def test_a_bind_cancelled_at_any_step_leaves_nothing_listening() -> None:
    """A node stopping while it tries its port again: wherever the cancel
    lands in the bind (asyncio's create_server is already listening before
    its last step), the port is free afterwards."""
    port = free_port()
    for steps in range(12):
        server = CsmsServer(ServerOptions(host="127.0.0.1", port=port, path="/ocpp"), None)  # type: ignore[arg-type]
        starting = asyncio.create_task(server.start())
        for _ in range(steps):
            await asyncio.sleep(0)
        starting.cancel()
        await asyncio.wait([starting])
        if not starting.cancelled():  # it had finished: stopped as a node would
            await server.stop()
        assert port_is_free(port), f"still listening after a cancel {steps} steps in"


async def test_the_summary_orders_http_statuses_close_codes_then_words() -> None:
    host = RecordingHost()
    refusals = RefusalLog(host)
    refusals.count("upgrade_timeout", "10.0.0.9")  # a reason without an HTTP answer
    refusals.count(1002, "10.0.0.8", "OLD")
    refusals.count(401, "10.0.0.7", "CS1")
    refusals.report()
    ((_, text),) = host.logs
    assert (
        text.index("HTTP 401")
        < text.index("code 1002")
        < text.index("1 x no websocket upgrade within upgrade_timeout")
    )
