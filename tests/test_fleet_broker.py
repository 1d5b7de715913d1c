"""ocpp_nodes/fleet/broker.py's connection to a REAL Mosquitto (tests/fleetkit.py).

What paho-mqtt leaves to us: Nagle off on the socket (a small PUBLISH or
PUBACK otherwise waits for the broker's delayed ACK, and a fleet's round
trip took 2-3 times as long; docs/benchmarks.md, *Fleet*), and as many QoS 1
messages in flight as the broker's MQTT 5 Receive Maximum allows, no more
(paho keeps 20 whatever the broker says: more than a broker that allows
fewer takes, fewer than a broker tuned for a fleet allows).
"""

from __future__ import annotations

from pathlib import Path
from socket import IPPROTO_TCP, TCP_NODELAY

import pytest

from ocpp_nodes.fleet.broker import Broker, BrokerOptions
from tests.fleetkit import running_mosquitto

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("receive_maximum", [5, 1000])
async def test_the_connection_writes_at_once_within_the_brokers_window(
    tmp_path: Path, receive_maximum: int
) -> None:
    settings = [f"max_inflight_messages {receive_maximum}"]  # Mosquitto's Receive Maximum
    with running_mosquitto(tmp_path, settings=settings) as mosquitto:
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
            assert broker._client.max_inflight_messages == receive_maximum
        finally:
            await broker.stop()
