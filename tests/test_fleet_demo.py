"""``make fleet-demo`` (scripts/fleet_demo.py, docs/fleet.md) does what the docs say.

The script runs as ``make fleet-demo`` runs it, on free ports: Mosquitto, two
gateways, HAProxy and Node-RED with flows/fleet-demo.json. A plain MQTT client
then sees station CS001 online at a gateway and its Heartbeats answered by
the CSMS node through the broker; after a ``kill -9`` of that gateway, CS001
is online again through the other one. Ctrl-C (SIGINT) stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.fleetkit import haproxy_missing_reason, mosquitto_missing_reason
from tests.nodered import (
    NODE_RED_BIN,
    REPO_ROOT,
    free_port,
    node_red_missing_reason,
    proc_alive,
)

pytestmark = [pytest.mark.nodered, pytest.mark.asyncio]


class Demo:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.output = directory / "fleet-demo.out"
        self.ports = {name: free_port() for name in ("node_red", "broker", "proxy", "gw1", "gw2")}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ports = self.ports
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    str(REPO_ROOT / "scripts" / "fleet_demo.py"),
                    "--dir",
                    str(self.directory / "demo"),
                    "--port",
                    str(ports["node_red"]),
                    "--node-red",
                    str(NODE_RED_BIN),
                    "--broker-port",
                    str(ports["broker"]),
                    "--proxy-port",
                    str(ports["proxy"]),
                    "--gateway-ports",
                    str(ports["gw1"]),
                    str(ports["gw2"]),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                start_new_session=True,
            )
        self.wait_output(lambda text: "Ctrl-C stops everything" in text, 120)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_output(self, pred: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not pred(self.text()):
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the demo exited early:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the demo did not get there:\n{self.text()[-3000:]}")
            time.sleep(0.1)
        return self.text()

    def gateway_pid(self, gateway_id: str) -> int:
        match = re.search(rf"gateway {gateway_id}: \S+ \(pid (\d+)", self.text())
        assert match, self.text()
        return int(match.group(1))

    def broker_login(self) -> dict[str, Any]:
        config = json.loads(
            (self.directory / "demo" / "gateway-1" / "gateway-gw1.json").read_text()
        )
        broker = config["broker"]
        return {
            "hostname": "127.0.0.1",
            "port": self.ports["broker"],
            "username": broker["username"],
            "password": broker["password"],
        }

    def pids(self) -> list[int]:
        """Mosquitto's, the gateways' and HAProxy's (each in its own session)."""
        return [
            int(pid)
            for pid in re.findall(
                r"^(?:Mosquitto|gateway gw\d|HAProxy):.*?pid (\d+)", self.text(), re.M
            )
        ]

    def stop(self) -> int:
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                return process.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise AssertionError(
                    f"the demo did not stop in 120 s:\n{self.text()[-3000:]}"
                ) from None
        return process.returncode


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    for missing in (
        node_red_missing_reason(),
        mosquitto_missing_reason(),
        haproxy_missing_reason(),
    ):
        if missing is not None:
            pytest.skip(missing)
    started = Demo(tmp_path)
    try:
        yield started
    finally:
        try:
            started.stop()
        finally:  # whatever happened, nothing of it outlives the test
            for pid in started.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def cs001_seen(demo: Demo, pred: Callable[[str, bytes], bool], timeout: float) -> Any:
    """The first (topic, payload) about CS001 that ``pred`` accepts (retained ones too)."""
    async with aiomqtt.Client(**demo.broker_login(), protocol=aiomqtt.ProtocolVersion.V5) as mqtt:
        await mqtt.subscribe("ocpp/demo/presence/CS001", qos=1)
        await mqtt.subscribe("ocpp/demo/station/CS001/#", qos=1)
        async with asyncio.timeout(timeout):
            async for message in mqtt.messages:
                payload = (
                    bytes(message.payload)
                    if isinstance(message.payload, bytes | bytearray)
                    else b""
                )
                if pred(str(message.topic), payload):
                    return str(message.topic), payload
    raise AssertionError("unreachable")


def online_at(gateway: str | None = None) -> Callable[[str, bytes], bool]:
    def pred(topic: str, payload: bytes) -> bool:
        if not topic.endswith("/presence/CS001") or not payload:
            return False
        record = json.loads(payload)
        return bool(record["online"]) and (gateway is None or record["gateway"] == gateway)

    return pred


def heartbeat_answered(topic: str, payload: bytes) -> bool:
    return topic.endswith("/station/CS001/down") and b'"currentTime"' in payload


async def test_the_fleet_demo_serves_cs001_through_the_gateways_and_survives_one(
    demo: Demo,
) -> None:
    await asyncio.to_thread(demo.start)
    _, payload = await cs001_seen(demo, online_at(), 60)
    holder = json.loads(payload)["gateway"]
    # the flow's answers reach the station through the broker (a Heartbeat every 10 s)
    await cs001_seen(demo, heartbeat_answered, 30)

    os.kill(demo.gateway_pid(holder), signal.SIGKILL)
    other = "gw2" if holder == "gw1" else "gw1"
    started = time.monotonic()
    await cs001_seen(demo, online_at(other), 60)
    moved_in = time.monotonic() - started
    await cs001_seen(demo, heartbeat_answered, 30)
    print(f"CS001 moved from {holder} to {other} in {moved_in:.1f} s")

    pids = demo.pids()
    assert len(pids) == 4, demo.text()  # Mosquitto, two gateways, HAProxy
    assert demo.stop() == 0, demo.text()[-3000:]
    # nothing of the demo is left running: those, and Node-RED in the script's group
    for pid in pids:
        assert not proc_alive(pid), f"pid {pid} outlived the demo"
    assert demo.process is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(demo.process.pid, 0)
