"""Requests a CS keeps while it cannot reach its CSMS (the real daemon, real sockets)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from ocpp_nodes.nodes.offline_store import OfflineStore
from tests.shim_double import ShimDouble, free_port
from tests.test_daemon import answer_requests

NOW = "2026-01-01T00:00:00Z"


def transaction_event(seq_no: int) -> dict[str, Any]:
    return {
        "eventType": "Updated",
        "timestamp": NOW,
        "triggerReason": "MeterValuePeriodic",
        "seqNo": seq_no,
        "transactionInfo": {"transactionId": "T1"},
    }


@pytest.fixture
async def shim():
    double = ShimDouble()
    await double.start()
    yield double
    await double.stop()


def create_cs(shim: ShimDouble, port: int, user_dir: Path, **config: Any) -> None:
    shim.create(
        "cs",
        "CS",
        {
            "cbId": "OFF1",
            "auto_connect": True,
            "ws_rt_minimum": 0.2,
            "ws_rt_repeat": 0,
            "ws_rt_rnd_range": 0,
            **config,
        },
        credentials={"csms_pw": "pw"},
        target={"url": f"ws://127.0.0.1:{port}/ocpp"},
        userDir=str(user_dir),
    )


def start_csms(shim: ShimDouble, port: int) -> asyncio.Task[None]:
    shim.create(
        "csms",
        "CSMS",
        {"port": port, "path": "/ocpp"},
        credentials={"basic_auths": json.dumps({"OFF1": "pw"})},
    )
    return asyncio.create_task(
        answer_requests(shim, "csms", {"TransactionEvent": {}, "Heartbeat": {"currentTime": NOW}})
    )


async def test_transaction_events_sent_offline_arrive_in_order_after_reconnect(
    shim: ShimDouble, tmp_path: Path
) -> None:
    port = free_port()
    create_cs(shim, port, tmp_path)
    seqs = [
        shim.input(
            "cs",
            {
                "payload": {"command": "TransactionEvent", "data": transaction_event(n)},
                "customData": {"n": n},
            },
        )
        for n in range(5)
    ]
    for seq in seqs:  # kept on disk: the inputs end at once, without error
        assert "error" not in await shim.done(seq)
    heartbeat = shim.input("cs", {"payload": {"command": "Heartbeat", "data": {}}})
    assert "not connected" in (await shim.done(heartbeat))["error"]  # not kept by default
    assert OfflineStore(str(tmp_path / "ocpp-nodes" / "offline-queue.sqlite")).count("OFF1") == 5

    flow = start_csms(shim, port)
    received = await shim.wait_for(
        lambda: (
            len([m for m in shim.sent("csms", 0) if m.get("topic") == "OFF1/Request"]) == 5
            and [m for m in shim.sent("csms", 0) if m.get("topic") == "OFF1/Request"]
        ),
        timeout=15,
    )
    assert [m["payload"]["data"]["seqNo"] for m in received] == [0, 1, 2, 3, 4]
    assert all(m["payload"]["data"]["offline"] is True for m in received)
    answers = await shim.wait_for(
        lambda: (
            len([m for m in shim.sent("cs", 0) if m.get("topic") == "OFF1/Response"]) == 5
            and [m for m in shim.sent("cs", 0) if m.get("topic") == "OFF1/Response"]
        )
    )
    assert [m["customData"] for m in answers] == [{"n": n} for n in range(5)]
    flow.cancel()
    store = OfflineStore(str(tmp_path / "ocpp-nodes" / "offline-queue.sqlite"))
    for _ in range(50):  # a row leaves the store once its answer is in
        if store.count("OFF1") == 0:
            break
        await asyncio.sleep(0.1)
    assert store.count("OFF1") == 0


async def test_all_mode_keeps_other_requests_in_memory_until_connected(
    shim: ShimDouble, tmp_path: Path
) -> None:
    port = free_port()
    create_cs(shim, port, tmp_path, offline_queue="all", offline_queue_size=2)
    first = shim.input("cs", {"payload": {"command": "Heartbeat", "data": {}}})
    second = shim.input("cs", {"payload": {"command": "Heartbeat", "data": {}}})
    third = shim.input("cs", {"payload": {"command": "Heartbeat", "data": {}}, "customData": 3})
    assert "error" not in await shim.done(third)  # dropped: told by a warning with the msg
    dropped = [f for f in shim.frames["cs"] if f["t"] == "log" and "queue full" in f["text"]]
    assert dropped and dropped[0]["msg"]["customData"] == 3
    assert first not in shim.dones and second not in shim.dones  # still waiting
    flow = start_csms(shim, port)
    assert "error" not in await shim.done(first, timeout=15)
    assert "error" not in await shim.done(second, timeout=15)
    flow.cancel()


async def test_off_mode_refuses_while_disconnected(shim: ShimDouble, tmp_path: Path) -> None:
    create_cs(shim, free_port(), tmp_path, offline_queue="off")
    seq = shim.input(
        "cs", {"payload": {"command": "TransactionEvent", "data": transaction_event(0)}}
    )
    assert "not connected" in (await shim.done(seq))["error"]


async def test_an_invalid_request_is_refused_not_stored(shim: ShimDouble, tmp_path: Path) -> None:
    create_cs(shim, free_port(), tmp_path)
    seq = shim.input("cs", {"payload": {"command": "TransactionEvent", "data": {"seqNo": 1}}})
    assert "OccurrenceConstraintViolation" in (await shim.done(seq))["error"]
