"""Fleet mode's test parts themselves (tests/fleetkit.py), with real processes.

- Mosquitto speaks MQTT 5 with the generated credentials (and refuses others),
  carries MQTT 5 properties (correlation data, response topic, message
  expiry), spreads a shared subscription over its subscribers, and keeps a
  persistent session's QoS 1 messages while the client is away, also over a
  restart of the broker (graceful, and ``kill -9`` with every change saved,
  once the save is on disk).
- HAProxy forwards TCP to two backends, and once one of them is gone, new
  connections reach the other (at once: a refused connection is redispatched)
  while the health check marks it DOWN.

Every wait is for an event, bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.fleetkit import MakeHAProxy, Mosquitto, running_mosquitto
from tests.nodered import free_port

V5 = aiomqtt.ProtocolVersion.V5
WAIT = 5.0


def mqtt5(broker: Mosquitto, **options: Any) -> aiomqtt.Client:
    """An MQTT 5 client of `broker` with its generated credentials (keywords override)."""
    args: dict[str, Any] = {**broker.client_args(), **options}
    return aiomqtt.Client(**args, protocol=V5, timeout=WAIT)


def session(broker: Mosquitto, client_id: str, expiry: int = 300) -> aiomqtt.Client:
    """A persistent session: never a clean start, kept `expiry` seconds after a disconnect."""
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = expiry
    return mqtt5(broker, identifier=client_id, clean_start=False, properties=properties)


async def next_message(client: aiomqtt.Client, broker: Mosquitto) -> aiomqtt.Message:
    try:
        return await asyncio.wait_for(anext(aiter(client.messages)), WAIT)
    except TimeoutError:
        raise AssertionError(
            f"no message within {WAIT}s; the broker's log:\n{broker.log_tail()}"
        ) from None


# -- Mosquitto ---------------------------------------------------------------------------


async def test_mqtt5_credentials_and_properties(mosquitto: Mosquitto) -> None:
    for wrong in ({"password": "wrong"}, {"username": None, "password": None}):
        with pytest.raises(aiomqtt.MqttCodeError) as refused:
            async with mqtt5(mosquitto, **wrong):
                pass
        # MQTT 5 reason codes: 0x86 bad user name or password, 0x87 not authorized.
        rc = refused.value.rc
        assert (rc.value if isinstance(rc, ReasonCode) else rc) in (0x86, 0x87), refused.value

    async with mqtt5(mosquitto) as subscriber, mqtt5(mosquitto) as publisher:
        await subscriber.subscribe("fleet/test/+/in", qos=1)
        properties = Properties(PacketTypes.PUBLISH)
        properties.CorrelationData = b"\x00call-1"
        properties.ResponseTopic = "fleet/test/CS001/out"
        properties.MessageExpiryInterval = 30
        await publisher.publish(
            "fleet/test/CS001/in", b'[2,"1","Heartbeat",{}]', qos=1, properties=properties
        )
        message = await next_message(subscriber, mosquitto)

    assert str(message.topic) == "fleet/test/CS001/in"
    assert message.payload == b'[2,"1","Heartbeat",{}]'
    assert message.qos == 1
    assert message.properties is not None
    assert message.properties.CorrelationData == b"\x00call-1"
    assert message.properties.ResponseTopic == "fleet/test/CS001/out"
    # The broker forwards what is left of the expiry interval.
    assert 0 < message.properties.MessageExpiryInterval <= 30
    assert "fleet" in mosquitto.log()  # the log is there for failure messages


async def test_shared_subscription_spreads_messages(mosquitto: Mosquitto) -> None:
    count = 20
    received: dict[str, list[bytes]] = {"a": [], "b": []}
    all_in = asyncio.Event()

    async def collect(name: str, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            received[name].append(message.payload)
            if sum(len(got) for got in received.values()) >= count:
                all_in.set()

    async with mqtt5(mosquitto) as a, mqtt5(mosquitto) as b, mqtt5(mosquitto) as publisher:
        for client in (a, b):
            await client.subscribe("$share/g/fleet/shared", qos=1)
        tasks = [asyncio.create_task(collect(n, c)) for n, c in (("a", a), ("b", b))]
        try:
            for i in range(count):
                await publisher.publish("fleet/shared", str(i).encode(), qos=1)
            await asyncio.wait_for(all_in.wait(), WAIT)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    assert received["a"] and received["b"], received
    together = received["a"] + received["b"]
    assert sorted(together, key=int) == [str(i).encode() for i in range(count)]


@asynccontextmanager
async def subscribed(broker: Mosquitto, client_id: str, topic: str) -> AsyncIterator[None]:
    """A persistent session subscribed to `topic` (QoS 1), disconnected on exit."""
    async with session(broker, client_id) as client:
        await client.subscribe(topic, qos=1)
        yield


async def publish(broker: Mosquitto, topic: str, payload: bytes) -> None:
    async with mqtt5(broker) as publisher:
        await publisher.publish(topic, payload, qos=1)


@pytest.mark.parametrize("outage", ["restart", "kill -9"])
async def test_persistent_session_keeps_messages(
    tmp_path: Path, request: pytest.FixtureRequest, outage: str
) -> None:
    killed = outage == "kill -9"
    with running_mosquitto(
        tmp_path / "mosquitto", request.node.name, save_every_change=killed
    ) as broker:
        topic = "fleet/gw/CS001/out"
        async with subscribed(broker, "gateway-1", topic):
            pass

        # Away: the broker queues for the session.
        await publish(broker, topic, b"while away")
        async with session(broker, "gateway-1") as client:
            message = await next_message(client, broker)
            assert message.payload == b"while away"
            assert message.qos == 1

        # Away over a broker outage: persistence keeps session and message.
        await publish(broker, topic, b"across the outage")
        pid = broker.pid
        if killed:
            # Saved after the PUBACK, on a later turn of the broker's loop.
            await asyncio.to_thread(broker.wait_persisted, b"across the outage")
            broker.kill()
            broker.start()
        else:
            broker.restart()
        assert broker.pid != pid
        async with session(broker, "gateway-1") as client:
            message = await next_message(client, broker)
            assert message.payload == b"across the outage"

        # A clean start drops the session: nothing is queued for it any more.
        async with mqtt5(broker, identifier="gateway-1", clean_start=True):
            pass
        await publish(broker, topic, b"after the clean start")
        async with session(broker, "gateway-1") as client, mqtt5(broker) as probe:
            await client.subscribe("fleet/probe", qos=1)
            await probe.publish("fleet/probe", b"probe", qos=1)
            # A queued message would have come right after the CONNACK, before the probe.
            assert (await next_message(client, broker)).payload == b"probe"


# -- HAProxy -----------------------------------------------------------------------------


class EchoBackend:
    """A TCP server answering each line with `<name>:<line>`; `kill()` closes the
    listener and drops its connections."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while line := await reader.readline():
                writer.write(self.name.encode() + b":" + line)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.writers.discard(writer)
            self.handlers.discard(task)
            writer.close()

    async def kill(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()


async def ask(port: int, line: bytes) -> bytes:
    """One connection to `port`: send `line`, return the answer."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
    try:
        writer.write(line + b"\n")
        return (await asyncio.wait_for(reader.readline(), WAIT)).rstrip(b"\n")
    finally:
        writer.close()


async def test_haproxy_balances_and_fails_over(make_haproxy: MakeHAProxy) -> None:
    backends = [EchoBackend("b0"), EchoBackend("b1")]
    for backend in backends:
        await backend.start()
    try:
        proxy = make_haproxy([b.port for b in backends])

        # Round robin (the readiness probe and the health checks count too).
        answers = [await ask(proxy.port, b"hello") for _ in range(4)]
        assert set(answers) == {b"b0:hello", b"b1:hello"}, answers

        # A connection held through the proxy, to each backend.
        held: dict[bytes, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        while len(held) < 2:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"who\n")
            name = (await asyncio.wait_for(reader.readline(), WAIT)).split(b":")[0]
            if name in held:
                writer.close()
            else:
                held[name] = (reader, writer)

        await backends[0].kill()
        # b0's connection ends (a station would reconnect); b1's goes on.
        reader, writer = held[b"b0"]
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        reader, writer = held[b"b1"]
        writer.write(b"still\n")
        assert await asyncio.wait_for(reader.readline(), WAIT) == b"b1:still\n"
        for _, writer in held.values():
            writer.close()

        # New connections reach b1 at once (a refused connect is redispatched)...
        answers = [await ask(proxy.port, b"again") for _ in range(4)]
        assert answers == [b"b1:again"] * 4, answers
        # ... and the health check marks b0 DOWN, then UP again once it is back.
        await asyncio.to_thread(proxy.wait_server_state, 0, "DOWN")
        await backends[0].start()
        await asyncio.to_thread(proxy.wait_server_state, 0, "UP")
        answers = [await ask(proxy.port, b"back") for _ in range(4)]
        assert set(answers) == {b"b0:back", b"b1:back"}, answers
    finally:
        for backend in backends:
            if backend.server is not None and backend.server.is_serving():
                await backend.kill()
