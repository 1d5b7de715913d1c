"""ocpp_nodes/fleet/broker.py's connection to a REAL Mosquitto (tests/fleetkit.py).

What paho-mqtt leaves to us: Nagle off on the socket (a small PUBLISH or
PUBACK otherwise waits for the broker's delayed ACK, and a fleet's round
trip took 2-3 times as long; docs/benchmarks.md, *Fleet*), and as many QoS 1
messages in flight as the broker's MQTT 5 Receive Maximum allows, no more
(paho keeps 20 whatever the broker says: more than a broker that allows
fewer takes, fewer than a broker tuned for a fleet allows).
"""

from __future__ import annotations

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

from ocpp_nodes.fleet.broker import Broker, BrokerOptions
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
            assert broker._socket.getsockopt(IPPROTO_TCP, TCP_NODELAY)
            assert broker._client.max_inflight_messages == receive_maximum
        finally:
            await broker.stop()


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
