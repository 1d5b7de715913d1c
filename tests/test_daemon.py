"""The real daemon driven through its socket, with real websockets over loopback
and a station built with the ``ocpp`` package as the peer."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
import websockets
from ocpp.v201 import ChargePoint, call
from websockets.asyncio.client import connect

from ocpp_nodes import IPC_PROTOCOL
from ocpp_nodes.ipc.framing import FrameDecoder, encode
from ocpp_nodes.ipc.server import ShimConnection
from tests.common import BOOT, answer_requests, auth_header, start_csms
from tests.shim_double import ShimDouble, free_port


async def test_station_from_ocpp_package_boots_against_csms_node(fresh_shim: ShimDouble) -> None:
    port = await start_csms(fresh_shim, "csms", {"CP 1": "s3cret"}, {"ocpp_logging": True})
    flow = asyncio.create_task(
        answer_requests(
            fresh_shim,
            "csms",
            {
                "BootNotification": {
                    "currentTime": "2026-01-01T00:00:00Z",
                    "interval": 42,
                    "status": "Accepted",
                }
            },
        )
    )
    async with connect(
        f"ws://127.0.0.1:{port}/ocpp/CP%201",
        subprotocols=["ocpp2.0.1"],
        additional_headers=auth_header("CP 1", "s3cret"),
    ) as ws:
        assert ws.subprotocol == "ocpp2.0.1"
        station = ChargePoint("CP 1", ws)
        reader = asyncio.create_task(station.start())
        result = await station.call(
            call.BootNotification(
                reason="PowerUp", charging_station={"model": "M1", "vendor_name": "V1"}
            )
        )
        reader.cancel()
    flow.cancel()
    assert result.status == "Accepted" and result.interval == 42
    request = next(m for m in fresh_shim.sent("csms", 0) if m.get("topic") == "CP 1/Request")
    assert request["ocpp"]["cbId"] == "CP 1"
    assert request["ocpp"]["ocppVersion"] == "2.0.1"
    assert request["payload"]["command"] == "BootNotification"
    assert request["payload"]["data"]["chargingStation"]["vendorName"] == "V1"
    logged = fresh_shim.sent("csms", 2)
    assert [entry["msgFrom"] for entry in logged[:2]] == ["CS", "CSMS"]
    assert logged[0]["payload"][0] == 2 and logged[1]["payload"][0] == 3


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        (auth_header("CP1", "wrong"), 401),
        (auth_header("OTHER", "s3cret"), 401),
    ],
)
async def test_wrong_or_missing_credentials_get_401_before_upgrade(
    fresh_shim: ShimDouble, headers: dict[str, str], status: int
) -> None:
    port = await start_csms(fresh_shim, "csms", {"CP1": "s3cret"})
    with pytest.raises(websockets.InvalidStatus) as info:
        async with connect(
            f"ws://127.0.0.1:{port}/ocpp/CP1",
            subprotocols=["ocpp2.0.1"],
            additional_headers=headers,
        ):
            pass
    assert info.value.response.status_code == status


async def test_unknown_identity_gets_404(fresh_shim: ShimDouble) -> None:
    port = await start_csms(fresh_shim, "csms", {"CP1": "s3cret"})
    with pytest.raises(websockets.InvalidStatus) as info:
        async with connect(
            f"ws://127.0.0.1:{port}/ocpp/NOPE",
            subprotocols=["ocpp2.0.1"],
            additional_headers=auth_header("NOPE", "x"),
        ):
            pass
    assert info.value.response.status_code == 404


async def test_cs_node_and_csms_node_talk_with_custom_data_and_link_call(
    fresh_shim: ShimDouble,
) -> None:
    port = await start_csms(fresh_shim, "csms", {"CS001": "pw"})
    fresh_shim.create(
        "cs",
        "CS",
        {"cbId": "CS001", "auto_connect": True, "ocpp_logging": True},
        credentials={"csms_pw": "pw"},
        target={"url": f"ws://127.0.0.1:{port}/ocpp", "name": "local"},
    )
    online = await fresh_shim.wait_for(
        lambda: [
            m for m in fresh_shim.sent("cs", 0) if m.get("ocpp", {}).get("websocket") == "ONLINE"
        ]
    )
    assert online
    flow = asyncio.create_task(
        answer_requests(
            fresh_shim,
            "csms",
            {
                "BootNotification": {
                    "currentTime": "2026-01-01T00:00:00Z",
                    "interval": 5,
                    "status": "Accepted",
                }
            },
        )
    )
    seq = fresh_shim.input(
        "cs",
        {
            "_msgid": "m1",
            "payload": {"command": "BootNotification", "data": BOOT, "MessageId": "boot-1"},
            "customData": {"step": 1},
        },
    )
    assert (await fresh_shim.done(seq)).get("error") is None
    response = next(m for m in fresh_shim.sent("cs", 0) if m.get("topic") == "CS001/Response")
    assert response["customData"] == {"step": 1}
    assert response["ocpp"]["MessageId"] == "boot-1"
    assert response["payload"]["data"]["interval"] == 5
    flow.cancel()

    # CSMS -> CS through a link call: the answer leaves port 2 with _linkSource
    cs_flow = asyncio.create_task(
        answer_requests(
            fresh_shim,
            "cs",
            {
                "GetVariables": {
                    "getVariableResult": [
                        {
                            "attributeStatus": "Accepted",
                            "component": {"name": "OCPPCommCtrlr"},
                            "variable": {"name": "HeartbeatInterval"},
                            "attributeValue": "10",
                        }
                    ]
                }
            },
        )
    )
    link = [{"id": "linkcall1", "node": "abc"}]
    seq = fresh_shim.input(
        "csms",
        {
            "payload": {
                "command": "GetVariables",
                "cbId": "CS001",
                "data": {
                    "getVariableData": [
                        {
                            "component": {"name": "OCPPCommCtrlr"},
                            "variable": {"name": "HeartbeatInterval"},
                        }
                    ]
                },
            },
            "_linkSource": link,
        },
    )
    assert (await fresh_shim.done(seq)).get("error") is None
    linked = fresh_shim.sent("csms", 1)
    assert linked and linked[0]["_linkSource"] == link
    assert linked[0]["topic"] == "CS001/Response"
    assert linked[0]["payload"]["data"]["getVariableResult"][0]["attributeValue"] == "10"
    cs_flow.cancel()
    await fresh_shim.close_node("cs")
    await fresh_shim.close_node("csms")


async def test_invalid_request_from_flow_ends_with_error_naming_the_field(
    fresh_shim: ShimDouble,
) -> None:
    port = await start_csms(fresh_shim, "csms", {"CS001": "pw"})
    fresh_shim.create(
        "cs",
        "CS",
        {"cbId": "CS001", "auto_connect": True},
        credentials={"csms_pw": "pw"},
        target={"url": f"ws://127.0.0.1:{port}/ocpp"},
    )
    await fresh_shim.wait_for(lambda: "connected" in fresh_shim.statuses("cs"))
    seq = fresh_shim.input(
        "cs", {"payload": {"command": "BootNotification", "data": {"reason": "PowerUp"}}}
    )
    error = (await fresh_shim.done(seq))["error"]
    assert "chargingStation" in error and "OccurrenceConstraintViolation" in error
    seq = fresh_shim.input("cs", {"payload": {"data": {}}})
    assert "payload.command" in (await fresh_shim.done(seq))["error"]
    seq = fresh_shim.input("cs", {"payload": {"msgType": 99, "command": "bogus"}})
    assert "connect" in (await fresh_shim.done(seq))["error"]


async def test_cs_reconnects_after_the_csms_goes_away(fresh_shim: ShimDouble) -> None:
    port = await start_csms(fresh_shim, "csms", {"CS001": "pw"})
    fresh_shim.create(
        "cs",
        "CS",
        {
            "cbId": "CS001",
            "auto_connect": True,
            "ws_rt_minimum": 0.2,
            "ws_rt_repeat": 0,
            "ws_rt_rnd_range": 0,
        },
        credentials={"csms_pw": "pw"},
        target={"url": f"ws://127.0.0.1:{port}/ocpp"},
    )
    await fresh_shim.wait_for(lambda: "connected" in fresh_shim.statuses("cs"))
    await fresh_shim.close_node("csms")
    await fresh_shim.wait_for(
        lambda: any(
            m.get("ocpp", {}).get("websocket") == "OFFLINE" for m in fresh_shim.sent("cs", 0)
        )
    )
    fresh_shim.create(
        "csms",
        "CSMS",
        {"port": port, "path": "/ocpp"},
        credentials={"basic_auths": '{"CS001": "pw"}'},
    )
    await fresh_shim.wait_for(lambda: fresh_shim.statuses("cs").count("connected") == 2, timeout=15)
    events = [
        m["ocpp"]["websocket"] for m in fresh_shim.sent("cs", 0) if "websocket" in m.get("ocpp", {})
    ]
    assert events == ["ONLINE", "OFFLINE", "ONLINE"]


async def test_frames_after_a_create_wait_until_the_node_has_started(
    fresh_shim: ShimDouble,
) -> None:
    # create, then an input for that node and a close of another, in one write:
    # the daemon handles frames as they are read, but the input must still
    # find the node started.
    from ocpp_nodes.ipc.framing import encode

    port = free_port()
    fresh_shim._seq += 1
    seq = fresh_shim._seq
    fresh_shim.writer.write(
        encode(
            {
                "t": "create",
                "node": "csms",
                "type": "CSMS",
                "config": {"port": str(port), "path": "/ocpp"},
                "credentials": {"basic_auths": "{}"},
            }
        )
        + encode(
            {
                "t": "input",
                "node": "csms",
                "seq": seq,
                "msg": {"payload": {"msgType": 99, "command": "connections"}},
            }
        )
        + encode({"t": "close", "node": "other"})
    )
    assert "error" not in await fresh_shim.done(seq)
    await fresh_shim.wait_for(lambda: any(f["t"] == "closed" for f in fresh_shim.frames["other"]))


async def test_wrong_token_is_rejected_and_daemon_carries_on(fresh_shim: ShimDouble) -> None:
    reader, writer = await asyncio.open_unix_connection(
        os.path.join(fresh_shim.directory, "daemon.sock")
    )
    from ocpp_nodes.ipc.framing import FrameDecoder, encode

    writer.write(encode({"t": "hello", "protocol": 1, "token": "0" * 64}))
    data = await asyncio.wait_for(reader.read(), 5)
    assert FrameDecoder().feed(data)[0] == {"t": "reject", "reason": "wrong token"}
    writer.close()
    port = await start_csms(fresh_shim, "csms", {"A": "b"})  # the good shim still works
    assert port


@pytest.mark.parametrize("node_type", ["Bogus", ["CS"], None], ids=["unknown", "list", "none"])
async def test_a_node_type_the_engine_does_not_run_is_refused_in_the_log(
    fresh_shim: ShimDouble, node_type: Any
) -> None:
    fresh_shim.create("odd", node_type, {})
    (line,) = await fresh_shim.wait_for(
        lambda: [f for f in fresh_shim.frames["odd"] if f["t"] == "log"]
    )
    assert line["level"] == "error" and line["text"] == f"unknown node type {node_type!r}"
    assert await start_csms(fresh_shim, "csms", {"A": "b"})  # the daemon carries on


async def test_daemon_exits_when_stdin_closes() -> None:
    double = ShimDouble()
    await double.start()
    assert double.process is not None and double.process.stdin is not None
    double.process.stdin.close()
    assert await asyncio.wait_for(double.process.wait(), 10) == 0


def test_daemon_exits_when_its_socketpair_stdin_closes(tmp_path) -> None:
    """Node's stdio "pipe" is a socketpair: its end must stop the daemon too."""
    import json
    import socket
    import subprocess
    import sys

    parent, child = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-m", "ocpp_nodes", "serve", "--socket", str(tmp_path / "d.sock")],
        stdin=child,
        stdout=subprocess.PIPE,
        env={**os.environ, "OCPP_NODES_TOKEN": "t"},
    )
    child.close()
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["event"] == "ready"
        parent.close()
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()


async def test_csms_connection_events_only_when_the_option_is_on(fresh_shim: ShimDouble) -> None:
    for node_id, events_on in (("quiet", None), ("loud", True)):
        port = free_port()
        config: dict[str, Any] = {"port": port, "path": "/ocpp"}
        if events_on is not None:
            config["connection_events"] = events_on
        fresh_shim.create(node_id, "CSMS", config, credentials={"basic_auths": '{"CS9": "pw"}'})
        await fresh_shim.wait_for(
            lambda node_id=node_id: "0 connected" in fresh_shim.statuses(node_id)
        )
        async with connect(
            f"ws://127.0.0.1:{port}/ocpp/CS9",
            subprotocols=["ocpp2.0.1"],
            additional_headers=auth_header("CS9", "pw"),
        ):
            await fresh_shim.wait_for(
                lambda node_id=node_id: "1 connected" in fresh_shim.statuses(node_id)
            )
        await fresh_shim.wait_for(
            lambda node_id=node_id: fresh_shim.statuses(node_id).count("0 connected") == 2
        )
    assert fresh_shim.sent("quiet", 0) == []
    events = [(m["topic"], m["ocpp"]["websocket"]) for m in fresh_shim.sent("loud", 0)]
    assert events == [("CS9/Connection", "ONLINE"), ("CS9/Connection", "OFFLINE")]


async def test_refused_logins_are_summed_up_in_the_log_without_secrets(
    fresh_shim: ShimDouble,
) -> None:
    port = await start_csms(fresh_shim, "csms", {"CP1": "s3cret"})
    for headers, path in (
        (auth_header("CP1", "guess-1"), "CP1"),
        ({}, "CP1"),
        (auth_header("X", "y"), "X"),
    ):
        with pytest.raises(websockets.InvalidStatus):
            async with connect(
                f"ws://127.0.0.1:{port}/ocpp/{path}",
                subprotocols=["ocpp2.0.1"],
                additional_headers=headers,
            ):
                pass
    await fresh_shim.close_node("csms")  # a stopping node reports what it has not yet
    (line,) = [
        f["text"] for f in fresh_shim.frames["csms"] if f["t"] == "log" and "refused" in f["text"]
    ]
    assert "2 x HTTP 401 (wrong or missing credentials)" in line
    assert "1 x HTTP 404 (unknown identity)" in line and "127.0.0.1" in line
    assert "guess-1" not in line and "s3cret" not in line


class _RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[list[dict[str, Any]]] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(FrameDecoder().feed(bytes(data)))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def test_frames_of_one_turn_leave_together_in_writes_of_at_most_four() -> None:
    connection = ShimConnection("token")
    transport = _RecordingTransport()
    connection.connection_made(transport)
    for seq in range(10):
        connection.write({"t": "done", "node": "n", "seq": seq})
    # the first eight went at once, four per write; the rest wait for the turn's end
    assert [[f["seq"] for f in w] for w in transport.writes] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    await asyncio.sleep(0)
    assert [[f["seq"] for f in w] for w in transport.writes][2:] == [[8, 9]]
    connection.write({"t": "done", "node": "n", "seq": 10})
    assert len(transport.writes) == 3
    await asyncio.sleep(0)
    assert [[f["seq"] for f in w] for w in transport.writes][3:] == [[10]]


async def test_frames_held_behind_a_starting_node_are_handled_before_a_broken_stream_ends() -> None:
    connection = ShimConnection("token")
    transport = _RecordingTransport()
    connection.connection_made(transport)
    node = {"port": str(free_port()), "path": "/ocpp"}
    connection.data_received(
        encode({"t": "hello", "protocol": IPC_PROTOCOL, "token": "token"})
        + encode({"t": "create", "node": "csms", "type": "CSMS", "config": node})
        + encode({"t": "input", "node": "csms", "seq": 5, "msg": {"payload": "not an object"}})
        + b"\x00\x00\x00\x01\xc1"  # never-used msgpack byte
    )
    assert not transport.closed  # the input waits for the node to start
    for _ in range(200):
        if transport.closed:
            break
        await asyncio.sleep(0.01)
    assert transport.closed
    connection.flush()
    done = [f for w in transport.writes for f in w if f["t"] == "done"]
    assert [(f["seq"], "payload must be an object" in f["error"]) for f in done] == [(5, True)]
    await connection.close_all()
