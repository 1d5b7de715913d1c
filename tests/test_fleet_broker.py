"""ocpp_nodes/fleet/broker.py's connection to a REAL Mosquitto (tests/fleetkit.py).

What paho-mqtt leaves to us: Nagle off on the socket (a small PUBLISH or
PUBACK otherwise waits for the broker's delayed ACK, and a fleet's round
trip took 2-3 times as long; docs/benchmarks.md, *Fleet*), as many QoS 1
messages in flight as the broker's MQTT 5 Receive Maximum allows, no more
(paho keeps 20 whatever the broker says: more than a broker that allows
fewer takes, fewer than a broker tuned for a fleet allows), and the bytes
themselves: paho reads and writes an asyncio transport's buffers
(``TransportSocket``), so every packet of a burst must be read, however many
came in one read, and a packet split over many reads must arrive whole.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from socket import IPPROTO_TCP, TCP_NODELAY
from typing import Any

import pytest
from paho.mqtt.exception import MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ocpp_nodes.fleet.broker import Broker, BrokerOptions, publish_properties
from tests.fleetkit import running_mosquitto


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
            assert broker._socket is not None
            assert broker._socket.get_extra_info("socket").getsockopt(IPPROTO_TCP, TCP_NODELAY)
            assert broker._client.max_inflight_messages == receive_maximum
        finally:
            await broker.stop()


async def test_bursts_and_large_messages_arrive_whole_and_in_order(tmp_path: Path) -> None:
    """paho reads through TransportSocket's buffer: packets that came in one read
    (3,000 published in one turn of the loop, more than paho reads per call),
    and packets split over many reads (1 MiB), all arrive, in order, with their
    properties, and every PUBACK comes back."""
    settings = ["max_inflight_messages 1000", "max_queued_messages 100000"]
    with running_mosquitto(tmp_path, settings=settings) as mosquitto:
        received: list[tuple[str, bytes, bytes]] = []
        got_all = asyncio.Event()
        big = bytes(range(256)) * 4096  # 1 MiB

        def on_message(message: Any) -> None:
            received.append((message.topic, message.payload, message.properties.CorrelationData))
            if len(received) == 3001:
                got_all.set()

        def options(name: str) -> BrokerOptions:
            return BrokerOptions(
                url=mosquitto.url,
                client_id=name,
                username=mosquitto.username,
                password=mosquitto.password,
            )

        reader = Broker(options("reader"), on_message)
        writer = Broker(options("writer"), lambda message: None)
        reader.start()
        writer.start()
        try:
            assert await reader.wait_connected(10) and await writer.wait_connected(10)
            await reader.subscribe(["burst/#"])
            for i in range(3000):
                properties = publish_properties(correlation=str(i), user=[("n", str(i))])
                assert writer.publish(f"burst/{i % 7}", f"m{i}", properties=properties)
            assert writer.publish(
                "burst/big", big, properties=publish_properties(correlation="big")
            )
            await asyncio.wait_for(got_all.wait(), 30)
            await asyncio.wait_for(writer._all_acked.wait(), 10)
            assert [(t, p, c) for t, p, c in received[:3000]] == [
                (f"burst/{i % 7}", f"m{i}".encode(), str(i).encode()) for i in range(3000)
            ]
            assert received[3000] == ("burst/big", big, b"big")
        finally:
            await writer.stop()
            await reader.stop()


# -- paho's Properties with the faster lookups (ocpp_nodes/fleet/paho_speedups.py) ------

PROPERTY_CASES = """
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

def cases():
    p = Properties(PacketTypes.PUBLISH)
    p.ResponseTopic = "ocpp/fleet/station/a%2Fb/down"
    p.CorrelationData = b"7cbc4b1f-51bc-4418-88c9-8b02044af5a5"
    p.MessageExpiryInterval = 30
    p.UserProperty = [("connection", "9f1c"), ("version", "ocpp2.0.1")]
    p.UserProperty = ("gateway", "gw1")  # appended, as paho does
    yield p
    p = Properties(PacketTypes.PUBLISH)
    p.CorrelationData = b"x"
    p.PayloadFormatIndicator = 1
    p.ContentType = "application/json"
    p.TopicAlias = 7
    p.SubscriptionIdentifier = [3, 300000]
    yield p
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = 300
    p.ReceiveMaximum = 1000
    p.MaximumPacketSize = 1 << 20
    p.RequestProblemInformation = 0
    yield p
    yield Properties(PacketTypes.PUBLISH)
"""


def _paho_own() -> list[tuple[str, str, bool]]:
    """pack(), then unpack()'s str() and isEmpty(), as paho itself does them (another
    process: this one has the faster lookups installed)."""
    script = PROPERTY_CASES + (
        "import json\n"
        "out = []\n"
        "for p in cases():\n"
        "    packed = p.pack()\n"
        "    q = Properties(p.packetType)\n"
        "    q.unpack(packed)\n"
        "    out.append([packed.hex(), str(q), q.isEmpty()])\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    )
    return [tuple(case) for case in json.loads(result.stdout)]


def test_the_faster_property_lookups_give_pahos_bytes_and_values() -> None:
    from ocpp_nodes.fleet import paho_speedups

    assert paho_speedups.install()
    namespace: dict[str, Any] = {}
    exec(PROPERTY_CASES, namespace)
    ours = []
    for p in namespace["cases"]():
        packed = p.pack()
        q = Properties(p.packetType)
        q.unpack(packed)
        ours.append((packed.hex(), str(q), q.isEmpty()))
    assert ours == _paho_own()


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("NoSuchProperty", 1, "Property name must be one of"),
        ("SessionExpiryInterval", 5, "does not apply to packet type"),
        ("TopicAlias", 0, "range 1-65535"),
        ("PayloadFormatIndicator", 2, "must be 0 or 1"),
    ],
)
def test_the_faster_lookups_refuse_what_paho_refuses(name: str, value: Any, complaint: str) -> None:
    from ocpp_nodes.fleet import paho_speedups

    assert paho_speedups.install()
    with pytest.raises(MQTTException, match=complaint):
        setattr(Properties(PacketTypes.PUBLISH), name, value)
