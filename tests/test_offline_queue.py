"""Requests a CS keeps while it cannot reach its CSMS (the real daemon, real sockets)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from ocpp_nodes.nodes.offline_store import OfflineStore
from tests.common import DATE_TIME, HEARTBEAT_ANSWER, answer_requests
from tests.shim_double import ShimDouble, free_port


def transaction_event(seq_no: int) -> dict[str, Any]:
    return {
        "eventType": "Updated",
        "timestamp": DATE_TIME,
        "triggerReason": "MeterValuePeriodic",
        "seqNo": seq_no,
        "transactionInfo": {"transactionId": "T1"},
    }


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
        answer_requests(shim, "csms", {"TransactionEvent": {}, "Heartbeat": HEARTBEAT_ANSWER})
    )


async def test_transaction_events_sent_offline_arrive_in_order_after_reconnect(
    fresh_shim: ShimDouble, tmp_path: Path
) -> None:
    port = free_port()
    create_cs(fresh_shim, port, tmp_path)
    seqs = [
        fresh_shim.input(
            "cs",
            {
                "payload": {"command": "TransactionEvent", "data": transaction_event(n)},
                "customData": {"n": n},
            },
        )
        for n in range(5)
    ]
    for seq in seqs:  # kept on disk: the inputs end at once, without error
        assert "error" not in await fresh_shim.done(seq)
    heartbeat = fresh_shim.input("cs", {"payload": {"command": "Heartbeat", "data": {}}})
    assert "not connected" in (await fresh_shim.done(heartbeat))["error"]  # not kept by default
    assert OfflineStore(str(tmp_path / "ocpp-nodes" / "offline-queue.sqlite")).count("OFF1") == 5

    flow = start_csms(fresh_shim, port)
    received = await fresh_shim.wait_for(
        lambda: (
            len([m for m in fresh_shim.sent("csms", 0) if m.get("topic") == "OFF1/Request"]) == 5
            and [m for m in fresh_shim.sent("csms", 0) if m.get("topic") == "OFF1/Request"]
        ),
        timeout=15,
    )
    assert [m["payload"]["data"]["seqNo"] for m in received] == [0, 1, 2, 3, 4]
    assert all(m["payload"]["data"]["offline"] is True for m in received)
    answers = await fresh_shim.wait_for(
        lambda: (
            len([m for m in fresh_shim.sent("cs", 0) if m.get("topic") == "OFF1/Response"]) == 5
            and [m for m in fresh_shim.sent("cs", 0) if m.get("topic") == "OFF1/Response"]
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
    fresh_shim: ShimDouble, tmp_path: Path
) -> None:
    port = free_port()
    create_cs(fresh_shim, port, tmp_path, offline_queue="all", offline_queue_size=2)
    first = fresh_shim.input("cs", {"payload": {"command": "Heartbeat", "data": {}}})
    second = fresh_shim.input("cs", {"payload": {"command": "Heartbeat", "data": {}}})
    third = fresh_shim.input(
        "cs", {"payload": {"command": "Heartbeat", "data": {}}, "customData": 3}
    )
    assert "error" not in await fresh_shim.done(third)  # dropped: told by a warning with the msg
    dropped = [f for f in fresh_shim.frames["cs"] if f["t"] == "log" and "queue full" in f["text"]]
    assert dropped and dropped[0]["msg"]["customData"] == 3
    assert first not in fresh_shim.dones and second not in fresh_shim.dones  # still waiting
    flow = start_csms(fresh_shim, port)
    assert "error" not in await fresh_shim.done(first, timeout=15)
    assert "error" not in await fresh_shim.done(second, timeout=15)
    flow.cancel()


async def test_off_mode_refuses_while_disconnected(fresh_shim: ShimDouble, tmp_path: Path) -> None:
    create_cs(fresh_shim, free_port(), tmp_path, offline_queue="off")
    seq = fresh_shim.input(
        "cs", {"payload": {"command": "TransactionEvent", "data": transaction_event(0)}}
    )
    assert "not connected" in (await fresh_shim.done(seq))["error"]


async def test_an_invalid_request_is_refused_not_stored(
    fresh_shim: ShimDouble, tmp_path: Path
) -> None:
    create_cs(fresh_shim, free_port(), tmp_path)
    seq = fresh_shim.input("cs", {"payload": {"command": "TransactionEvent", "data": {"seqNo": 1}}})
    assert "OccurrenceConstraintViolation" in (await fresh_shim.done(seq))["error"]


def test_a_store_written_before_attempts_were_counted_is_upgraded(tmp_path: Path) -> None:
    """A queue file of an earlier version (no ``attempts`` column) keeps its rows."""
    path = tmp_path / "offline-queue.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        """CREATE TABLE offline_requests (
               row_id INTEGER PRIMARY KEY AUTOINCREMENT, cb_id TEXT NOT NULL,
               action TEXT NOT NULL, payload TEXT NOT NULL, message_id TEXT, custom_data TEXT)"""
    )
    old.execute(
        "INSERT INTO offline_requests (cb_id, action, payload) VALUES (?, ?, ?)",
        ("OFF1", "TransactionEvent", json.dumps(transaction_event(0))),
    )
    old.commit()
    old.close()
    store = OfflineStore(str(path))
    entry = store.first("OFF1")
    assert entry is not None and entry.attempts == 0 and entry.message_id is None
    store.update(entry.row_id, "m-1", 2)
    again = store.first("OFF1")
    assert again is not None and (again.message_id, again.attempts) == ("m-1", 2)
    assert again.payload == transaction_event(0)
