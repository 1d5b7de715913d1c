"""ocpp_nodes/fleet/broker.py's connection to a REAL Mosquitto (tests/fleetkit.py).

What paho-mqtt leaves to us: Nagle off on the socket (a small PUBLISH or
PUBACK otherwise waits for the broker's delayed ACK, and a fleet's round
trip took 2-3 times as long; docs/benchmarks.md, *Fleet*).
"""

from __future__ import annotations

from pathlib import Path
from socket import IPPROTO_TCP, TCP_NODELAY

import pytest

from ocpp_nodes.fleet.broker import Broker, BrokerOptions
from tests.fleetkit import running_mosquitto

pytestmark = pytest.mark.asyncio


async def test_the_connection_writes_at_once(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path) as mosquitto:
        options = BrokerOptions(
            url=mosquitto.url,
            client_id="broker-test",
            username=mosquitto.username,
            password=mosquitto.password,
        )
        broker = Broker(options, on_message=lambda message: None)
        broker.start()
        try:
            assert await broker.wait_connected(10)
            assert broker._socket.getsockopt(IPPROTO_TCP, TCP_NODELAY)
        finally:
            await broker.stop()
