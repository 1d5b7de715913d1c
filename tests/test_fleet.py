"""Fleet mode's parts without Node-RED (docs/fleet.md): topics, records, the gateway's
config file, and a gateway and CSMS-side :class:`FleetServer` in this process
against a real Mosquitto, with raw websocket stations.

Checked here (the Node-RED side is tests/test_fleet_nodered.py, the failures
with several processes tests/test_fleet_failures.py):

- cbIds with characters MQTT gives a meaning (``/``, ``+``, ``#``, ``%``) are
  escaped in topics and work end to end;
- rule 3 of the gateway: a station CALL the CSMS cannot answer gets a
  CALLERROR ``InternalError`` at once when the broker is gone, and after the
  answer timeout when no answer comes; a login while the broker is gone gets
  HTTP 503; stations stay connected and are served again when it is back;
- the one-outstanding rule holds across two CSMS instances: the station gets
  the second instance's CALL only after it answered the first;
- config file mistakes are named;
- the broker over TLS (mqtts://, a private CA) on both sides; TLS and client
  certificates (profile 3) at the gateway;
- a starting gateway cleans up after a dead one; the auth entries on the
  broker follow the node's list; the broker's "no matching subscribers"
  ends what nobody can answer at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import aiomqtt
import pytest
import trustme
import websockets

from ocpp_nodes.fleet import gateway as gateway_module
from ocpp_nodes.fleet.broker import BrokerOptions, broker_address, publish_properties
from ocpp_nodes.fleet.gateway import ConfigError, Gateway, load_config
from ocpp_nodes.fleet.remote import FleetOptions, FleetServer, fleet_options, frame_message_id
from ocpp_nodes.fleet.topics import (
    CONNECTION,
    Presence,
    Topics,
    cb_id_of,
    group_problem,
    topic_level,
)
from ocpp_nodes.rpc import CallAborted, CallReceived, ResultReceived
from ocpp_nodes.transport.auth_list import AuthList
from ocpp_nodes.transport.csms_server import AuthDecision, ServerOptions
from ocpp_nodes.transport.link import LinkOptions, StationLink
from ocpp_nodes.transport.passwords import make_hash
from tests.common import OCPP201, auth_header
from tests.fleetkit import Mosquitto, running_mosquitto
from tests.flowkit import until
from tests.nodered import free_port

GROUP = "unit"
BOOT = [
    2,
    "",
    "BootNotification",
    {"reason": "PowerUp", "chargingStation": {"model": "m", "vendorName": "v"}},
]
BOOT_RESULT = {"currentTime": "2026-01-01T00:00:00Z", "interval": 30, "status": "Accepted"}
GET_VARIABLES = {"getVariableData": [{"component": {"name": "C"}, "variable": {"name": "V"}}]}
GET_VARIABLES_RESULT = {
    "getVariableResult": [
        {"attributeStatus": "Rejected", "component": {"name": "C"}, "variable": {"name": "V"}}
    ]
}


# -- pure parts ------------------------------------------------------------------------


@pytest.mark.parametrize("cb_id", ["CS1", "a/b", "x+y", "h#sh", "50%", "%2F", "all/+/#%"])
def test_a_cbid_is_one_topic_level_and_comes_back(cb_id: str) -> None:
    level = topic_level(cb_id)
    assert not set(level) & set("/+#"), level
    assert cb_id_of(level) == cb_id
    topics = Topics(GROUP)
    for kind, topic in (
        ("up", topics.up(cb_id)),
        ("down", topics.down(cb_id)),
        ("presence", topics.presence(cb_id)),
        ("auth", topics.auth(cb_id)),
    ):
        assert topics.parse(topic) == (kind, cb_id)


def test_topics_of_other_groups_and_shapes_are_not_ours() -> None:
    topics = Topics(GROUP)
    assert topics.parse("ocpp/other/station/CS1/up") is None
    assert topics.parse(f"ocpp/{GROUP}/station/CS1/sideways") is None
    assert topics.parse(f"ocpp/{GROUP}/node/n1/answers") == ("answers", "n1")
    assert topics.parse(f"ocpp/{GROUP}/gateway/gw1") == ("gateway", "gw1")
    assert topics.shared_up == f"$share/{GROUP}/ocpp/{GROUP}/station/+/up"


@pytest.mark.parametrize("group", ["", "a/b", "a+b", "#", "x" * 65, 7, None])
def test_a_bad_group_is_named(group: Any) -> None:
    assert group_problem(group) is not None
    with pytest.raises(ValueError, match="fleet group"):
        Topics(group)


def test_presence_records_round_trip_and_junk_is_no_record() -> None:
    record = Presence(True, "gw1", "c1", "2026-01-01T00:00:00+00:00", "ocpp2.0.1", "10.0.0.1")
    assert Presence.from_json(record.to_json()) == record
    assert b'"reason"' not in record.to_json()  # empty fields are left out
    for junk in (b"", b"nope", b"[]", b'{"online": true}'):
        assert Presence.from_json(junk) is None


def test_message_ids_are_read_from_frame_texts() -> None:
    assert frame_message_id('[2,"abc","Heartbeat",{}]') == "abc"
    assert frame_message_id('[3,"m-1",{}]') == "m-1"
    assert frame_message_id('[2,"a\\"b","Heartbeat",{}]') == 'a"b'
    assert frame_message_id("[2,17]") is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1", ("127.0.0.1", 1883, False)),
        ("mqtts://broker.example:8884", ("broker.example", 8884, True)),
        ("mqtts://broker.example", ("broker.example", 8883, True)),
    ],
)
def test_broker_urls(url: str, expected: tuple[str, int, bool]) -> None:
    assert broker_address(url) == expected


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://x", "mqtt:// or mqtts://"),
        ("mqtt://user:secret@x", "credentials"),
        ("mqtt://x:port", "port"),
        ("mqtt://", "no host"),
    ],
)
def test_bad_broker_urls_are_named_without_the_password(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as error:
        broker_address(url)
    assert "secret" not in str(error.value)


def write_config(directory: Path, **config: Any) -> Path:
    path = directory / "gateway.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    ("config", "complaint"),
    [
        ({"listen": {"port": 1}}, '"broker" must be an object'),
        ({"broker": {"url": "mqtt://x"}}, '"listen" must be an object with "port"'),
        (
            {"broker": {"url": "mqtt://u:pw@x"}, "listen": {"port": 1}},
            "broker.url: put the broker's user and password in the credentials",
        ),
        (
            {"broker": {"url": "mqtt://x"}, "listen": {"port": 1}, "versions": ["3.0"]},
            "versions: '3.0' is not one of",
        ),
        (
            {"broker": {"url": "mqtt://x"}, "listen": {"port": 1}, "security_profile": 2},
            'security_profile 2 needs "tls"',
        ),
        (
            {"broker": {"url": "mqtt://x"}, "listen": {"port": 1}, "group": "a/b"},
            "fleet group",
        ),
        (
            {"broker": {"url": "mqtt://x"}, "listen": {"port": 1}, "timeouts": {"call": -1}},
            "timeouts.call must be a number",
        ),
    ],
)
def test_config_file_mistakes_are_named(
    tmp_path: Path, config: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_config(write_config(tmp_path, **config))


def test_a_config_file_that_is_not_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "gateway.json"
    path.write_text("{broker: ")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_config(path)


def test_the_broker_password_can_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    config = load_config(
        write_config(
            tmp_path,
            id="gw9",
            broker={"url": "mqtt://x", "username": "u", "password_file": "secret"},
            listen={"port": 1},
        )
    )
    assert config.broker.password == "s3cret"
    assert "s3cret" not in repr(config.broker)
    assert config.broker.client_id == "ocpp-gateway-default-gw9"


# -- a gateway and a CSMS side in this process, a real broker ------------------------------


class Csms:
    """What a CSMS node would be: answers BootNotifications, records the rest."""

    def __init__(self, answer: bool = True) -> None:
        self.links: dict[str, StationLink] = {}
        self.events: list[tuple[str, Any]] = []
        self.answer = answer

    async def link_opened(self, link: StationLink) -> None:
        self.links[link.cb_id] = link

    def link_events(self, link: StationLink, events: list[Any]) -> None:
        for event in events:
            self.events.append((link.cb_id, event))
            if self.answer and isinstance(event, CallReceived):
                if event.action == "BootNotification":
                    link.send_result(event.message_id, BOOT_RESULT)
                elif event.action == "Heartbeat":
                    link.send_result(event.message_id, {"currentTime": "2026-01-01T00:00:00Z"})

    def link_frame(self, link: StationLink, text: str, from_peer: bool) -> None:
        pass

    def link_closed(self, link: StationLink, reason: str | None) -> None:
        if self.links.get(link.cb_id) is link:
            del self.links[link.cb_id]

    def received(self, kind: type) -> list[Any]:
        return [event for _, event in self.events if isinstance(event, kind)]


PASSWORDS = {"CS1": "unit-password-1", "a/b+c#d%": "unit-password-2", "CS3": "unit-password-3"}


class Setup:
    def __init__(self, broker: Mosquitto, gateway: Gateway, url: str) -> None:
        self.broker = broker
        self.gateway = gateway
        self.url = url
        self.servers: list[FleetServer] = []

    async def csms(self, csms: Csms, call_timeout: float = 10.0) -> FleetServer:
        options = ServerOptions(
            host=None, port=0, path="", link=LinkOptions(call_timeout=call_timeout)
        )
        server = FleetServer(
            options,
            csms,  # type: ignore[arg-type]
            FleetOptions(
                BrokerOptions(
                    url=self.broker.url,
                    client_id=f"unit-node-{len(self.servers)}",
                    username=self.broker.username,
                    password=self.broker.password,
                ),
                GROUP,
            ),
        )
        server.publish_auth(AuthList.parse(PASSWORDS))
        await server.start()
        assert server.broker is not None and await server.broker.wait_connected(10)
        self.servers.append(server)
        await until(lambda: all(cb in self.gateway.auth for cb in PASSWORDS), 10, "the logins")
        return server

    @asynccontextmanager
    async def station(self, cb_id: str) -> AsyncIterator[Any]:
        async with websockets.connect(
            f"{self.url}/{quote(cb_id, safe='')}",
            subprotocols=OCPP201,
            additional_headers=auth_header(cb_id, PASSWORDS[cb_id]),
            ping_interval=None,
        ) as ws:
            yield ws


@asynccontextmanager
async def fleet(mosquitto: Mosquitto, tmp_path: Path, **settings: Any) -> AsyncIterator[Setup]:
    port = free_port()
    config = {
        "id": "gwu",
        "group": GROUP,
        "broker": {
            "url": mosquitto.url,
            "username": mosquitto.username,
            "password": mosquitto.password,
        },
        "listen": {"host": "127.0.0.1", "port": port, "path": "/ocpp"},
        **settings,
    }
    gateway = Gateway(load_config(write_config(tmp_path, **config)))
    await gateway.start()
    setup = Setup(mosquitto, gateway, f"ws://127.0.0.1:{port}/ocpp")
    try:
        await until(lambda: gateway.auth_received, 10, "the gateway to be ready")
        yield setup
    finally:
        for server in setup.servers:
            await server.stop()
        await gateway.stop()


async def call(ws: Any, frame: list[Any], message_id: str) -> list[Any]:
    frame = [frame[0], message_id, *frame[2:]]
    await ws.send(json.dumps(frame))
    answer: list[Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return answer


async def test_a_cbid_with_topic_characters_works_end_to_end(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with fleet(mosquitto, tmp_path) as setup:
        csms = Csms()
        await setup.csms(csms)
        cb_id = "a/b+c#d%"
        async with setup.station(cb_id) as ws:
            assert await call(ws, BOOT, "b1") == [3, "b1", BOOT_RESULT]
            link = await until(lambda: csms.links.get(cb_id), 10, "the link")
            link.send_call("GetVariables", GET_VARIABLES)
            request = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert request[2] == "GetVariables"
            await ws.send(json.dumps([3, request[1], GET_VARIABLES_RESULT]))
            result = await until(lambda: csms.received(ResultReceived), 10, "the answer")
            assert result[0].payload == GET_VARIABLES_RESULT


async def scrape(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}") as response:
            return response.status, await response.text()


async def test_without_the_broker_station_calls_get_internal_error_at_once(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    metrics_port = free_port()
    async with fleet(mosquitto, tmp_path, metrics=f"127.0.0.1:{metrics_port}") as setup:
        csms = Csms(answer=False)
        await setup.csms(csms)
        async with setup.station("CS1") as ws:
            # forwarded, not answered yet: the broker goes away
            await ws.send(json.dumps([*BOOT[:1], "w1", *BOOT[2:]]))
            await until(lambda: csms.received(CallReceived), 10, "the CALL to reach the CSMS")
            status, text = await scrape(metrics_port, "/metrics")
            assert status == 200
            assert 'ocpp_nodes_stations_connected{node="gwu",version="2.0.1"} 1.0' in text
            assert 'ocpp_nodes_gateway_broker_connected{gateway="gwu"} 1.0' in text
            assert 'ocpp_nodes_gateway_forwarded_waiting{gateway="gwu"} 1.0' in text
            assert 'ocpp_nodes_gateway_ready{gateway="gwu"} 1.0' in text
            assert 'ocpp_nodes_gateway_auth_missing{gateway="gwu"} 0.0' in text
            assert 'ocpp_nodes_handshakes_total{node="gwu",outcome="accepted"} 1.0' in text
            assert (await scrape(metrics_port, "/health"))[0] == 200
            await asyncio.to_thread(mosquitto.stop)
            loop = asyncio.get_running_loop()
            started = loop.time()
            answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert answer[:3] == [4, "w1", "InternalError"], answer
            assert "unreachable" in answer[3], answer
            # a new CALL meanwhile: at once too
            assert (await call(ws, [2, "", "Heartbeat", {}], "w2"))[:3] == [
                4,
                "w2",
                "InternalError",
            ]
            assert loop.time() - started < 5
            # a new station cannot log in now (it retries with its back-off)
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with setup.station("CS3"):
                    pass
            assert refused.value.response.status_code == 503
            status, text = await scrape(metrics_port, "/health")
            assert status == 503 and "broker" in text, text
            _, text = await scrape(metrics_port, "/metrics")
            assert (
                'ocpp_nodes_gateway_internal_errors_total{cause="broker_lost",gateway="gwu"} 1.0'
                in text
            ), text
            assert (
                'ocpp_nodes_gateway_internal_errors_total{cause="no_broker",gateway="gwu"} 1.0'
                in text
            )
            # the broker is back: the station, still connected, is served again
            await asyncio.to_thread(mosquitto.start)
            await until(lambda: setup.gateway.broker.connected, 40, "the gateway to reconnect")
            csms.answer = True
            deadline = loop.time() + 40
            while True:  # until the CSMS side has its subscription back too
                answer = await call(ws, [2, "", "Heartbeat", {}], f"h{loop.time()}")
                if answer[0] == 3 or loop.time() > deadline:
                    break
            assert answer[0] == 3, answer


async def test_a_station_call_the_csms_leaves_unanswered_gets_internal_error(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with fleet(mosquitto, tmp_path, timeouts={"answer": 1}) as setup:
        csms = Csms(answer=False)
        await setup.csms(csms)
        async with setup.station("CS1") as ws:
            loop = asyncio.get_running_loop()
            started = loop.time()
            answer = await call(ws, BOOT, "u1")
            waited = loop.time() - started
            assert answer[:3] == [4, "u1", "InternalError"], answer
            assert "did not answer within 1 s" in answer[3], answer
            assert 0.9 <= waited < 5, waited


async def test_one_csms_call_at_a_time_reaches_a_station_across_instances(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with fleet(mosquitto, tmp_path) as setup:
        first, second = Csms(), Csms()
        await setup.csms(first)
        await setup.csms(second)
        async with setup.station("CS1") as ws:
            assert (await call(ws, BOOT, "b1"))[0] == 3
            one = await until(lambda: first.links.get("CS1"), 10, "instance 1's link")
            two = await until(lambda: second.links.get("CS1"), 10, "instance 2's link")
            one.send_call("GetVariables", GET_VARIABLES)
            two.send_call("GetVariables", GET_VARIABLES)
            request = json.loads(await asyncio.wait_for(ws.recv(), 10))
            following = asyncio.ensure_future(ws.recv())
            done, _ = await asyncio.wait([following], timeout=0.5)
            assert not done, "a second CALL reached the station before the first was answered"
            await ws.send(json.dumps([3, request[1], GET_VARIABLES_RESULT]))
            request2 = json.loads(await asyncio.wait_for(following, 10))
            assert request2[1] != request[1]
            await ws.send(json.dumps([3, request2[1], GET_VARIABLES_RESULT]))
            await until(
                lambda: first.received(ResultReceived) and second.received(ResultReceived),
                10,
                "both answers, each to its instance",
            )


async def test_a_starting_gateway_marks_offline_the_stations_of_a_gateway_that_is_gone(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """What a gateway killed with no other gateway running leaves on the broker: its
    will and its stations' online records. The next gateway to start cleans up."""
    topics = Topics(GROUP)
    dead = Presence(True, "gwdead", "c-dead", "2026-01-01T00:00:00+00:00", "ocpp2.0.1")
    async with aiomqtt.Client(
        **mosquitto.client_args(), protocol=aiomqtt.ProtocolVersion.V5
    ) as mqtt:
        await mqtt.publish(topics.gateway("gwdead"), b'{"online": false}', qos=1, retain=True)
        await mqtt.publish(topics.presence("CSX"), dead.to_json(), qos=1, retain=True)
        await mqtt.subscribe(topics.presence("CSX"), qos=1)
        async with fleet(mosquitto, tmp_path):
            async with asyncio.timeout(10):
                async for message in mqtt.messages:
                    record = Presence.from_json(bytes(message.payload))  # type: ignore[arg-type]
                    if record is not None and not record.online:
                        break
    assert record.connection == "c-dead" and "gwdead is gone" in record.reason, record


async def test_a_profile_3_gateway_admits_a_station_by_its_certificate(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """TLS at the gateway as at a CSMS node: the server certificate, client
    certificates of the station CA whose CN must be the cbId (403 otherwise)."""
    server_ca, station_ca = trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("localhost", "127.0.0.1")
    server.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    station_ca.cert_pem.write_to_path(str(tmp_path / "stations-ca.pem"))

    def client(cb_id: str) -> ssl.SSLContext:
        context = ssl.create_default_context()
        server_ca.configure_trust(context)
        station_ca.issue_cert(f"{cb_id.lower()}.test", common_name=cb_id).configure_cert(context)
        return context

    async with fleet(
        mosquitto,
        tmp_path,
        security_profile=3,
        tls={"cert": "server.pem", "key": "server.key", "ca": "stations-ca.pem"},
    ) as setup:
        csms = Csms()
        await setup.csms(csms)
        url = setup.url.replace("ws://", "wss://")
        async with websockets.connect(
            f"{url}/CS1", subprotocols=OCPP201, ssl=client("CS1"), ping_interval=None
        ) as ws:
            assert (await call(ws, BOOT, "t1"))[:2] == [3, "t1"]
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"{url}/CS1", subprotocols=OCPP201, ssl=client("CS3"))
        assert refused.value.response.status_code == 403


async def retained_auth(mosquitto: Mosquitto) -> dict[str, str]:
    found: dict[str, str] = {}
    async with aiomqtt.Client(
        **mosquitto.client_args(), protocol=aiomqtt.ProtocolVersion.V5
    ) as mqtt:
        await mqtt.subscribe(f"ocpp/{GROUP}/auth/+", qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                async for message in mqtt.messages:
                    found[cb_id_of(str(message.topic).rsplit("/", 1)[1])] = bytes(
                        message.payload  # type: ignore[arg-type]
                    ).decode()
    return found


async def test_the_auth_list_on_the_broker_follows_the_nodes_list(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with fleet(mosquitto, tmp_path) as setup:
        server = await setup.csms(Csms())
        first = await retained_auth(mosquitto)  # the gateway has them all: so has the broker
        assert set(first) == set(PASSWORDS)
        assert all(value.startswith("$pbkdf2-sha256$10000$") for value in first.values())
        changed = {"CS1": "a-new-password-1", "a/b+c#d%": PASSWORDS["a/b+c#d%"]}
        server.publish_auth(AuthList.parse(changed))
        await until(lambda: "CS3" not in setup.gateway.auth, 10, "CS3 to be removed")
        second = await retained_auth(mosquitto)
        assert set(second) == set(changed), second  # CS3: removed from the broker
        assert second["a/b+c#d%"] == first["a/b+c#d%"]  # unchanged: the same hash
        assert second["CS1"] != first["CS1"]
        assert await setup.gateway.auth.check("CS1", "a-new-password-1")
        assert not await setup.gateway.auth.check("CS1", PASSWORDS["CS1"])


async def test_a_call_sent_to_an_earlier_connection_never_reaches_the_new_one(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A command meant for a connection that is gone is answered GenericError by the
    gateway (to where the sender waits), and the station's new connection never sees it."""
    async with fleet(mosquitto, tmp_path) as setup:
        csms = Csms()
        await setup.csms(csms)
        async with setup.station("CS1") as ws:
            assert (await call(ws, BOOT, "b1"))[0] == 3
            topics = Topics(GROUP)
            answers = topics.answers("probe")
            properties = publish_properties(
                response_topic=answers,
                correlation="stale-1",
                user=[(CONNECTION, "a-connection-that-is-gone")],
            )
            async with aiomqtt.Client(
                **mosquitto.client_args(), protocol=aiomqtt.ProtocolVersion.V5
            ) as mqtt:
                await mqtt.subscribe(answers, qos=1)
                await mqtt.publish(
                    topics.down("CS1"),
                    json.dumps([2, "stale-1", "Reset", {"type": "Immediate"}]),
                    qos=1,
                    properties=properties,
                )
                async with asyncio.timeout(10):
                    async for message in mqtt.messages:
                        answer = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                        break
            assert answer[:3] == [4, "stale-1", "GenericError"], answer
            assert "gone" in answer[3], answer
            # and the station got nothing: its next exchange is its own
            assert (await call(ws, [2, "", "Heartbeat", {}], "h1"))[:2] == [3, "h1"]


async def test_without_a_csms_node_subscribed_station_calls_get_internal_error_at_once(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Right after a broker restart, or with no Node-RED running, nobody subscribes to
    the stations' requests: the broker says so (MQTT 5 reason code 16) and the gateway
    answers InternalError at once, not after its answer timeout."""
    async with fleet(mosquitto, tmp_path) as setup:
        server = await setup.csms(Csms())  # publishes the logins, then goes away
        setup.servers.remove(server)
        await server.stop()
        async with setup.station("CS1") as ws:
            loop = asyncio.get_running_loop()
            started = loop.time()
            answer = await call(ws, BOOT, "n1")
            assert answer[:3] == [4, "n1", "InternalError"], answer
            assert "No matching subscribers" in answer[3], answer
            assert loop.time() - started < 5  # the answer timeout is 30 s
        assert setup.gateway.unanswerable == {"no_subscriber": 1}


async def test_a_request_to_a_station_no_gateway_holds_ends_at_once(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A presence record says online, but no gateway subscribes to the station's topic
    (its gateway vanished, its will not published yet): the broker says nobody got the
    request, and the link ends at once, not after the call timeout."""
    topics = Topics(GROUP)
    stale = Presence(True, "gwx", "c-stale", "2026-01-01T00:00:00+00:00", "ocpp2.0.1")
    async with aiomqtt.Client(
        **mosquitto.client_args(), protocol=aiomqtt.ProtocolVersion.V5
    ) as mqtt:
        await mqtt.publish(topics.presence("GHOST"), stale.to_json(), qos=1, retain=True)
    async with fleet(mosquitto, tmp_path) as setup:
        csms = Csms()
        await setup.csms(csms, call_timeout=30)
        link = await until(lambda: csms.links.get("GHOST"), 10, "the link from the record")
        loop = asyncio.get_running_loop()
        started = loop.time()
        link.send_call("Reset", {"type": "Immediate"})
        aborted = await until(lambda: csms.received(CallAborted), 10, "the call to end")
        assert "no gateway holds GHOST" in aborted[0].reason, aborted
        assert loop.time() - started < 5
        assert "GHOST" not in csms.links


async def test_the_broker_over_tls_with_a_private_ca(tmp_path: Path) -> None:
    """mqtts:// on both sides: the gateway with its config's ``broker.ca``, the CSMS
    side with a tls-config's CA (what the node's *Broker TLS* hands over)."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "broker.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "broker.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    settings = [f"certfile {tmp_path / 'broker.pem'}", f"keyfile {tmp_path / 'broker.key'}"]
    with running_mosquitto(tmp_path / "broker", settings=settings) as broker:
        url = f"mqtts://127.0.0.1:{broker.port}"
        port = free_port()
        config = write_config(
            tmp_path,
            id="gwt",
            group=GROUP,
            broker={
                "url": url,
                "username": broker.username,
                "password": broker.password,
                "ca": "ca.pem",
            },
            listen={"host": "127.0.0.1", "port": port, "path": "/ocpp"},
        )
        gateway = Gateway(load_config(config))
        await gateway.start()
        csms = Csms()
        options = fleet_options(
            {"fleet_broker": url, "fleet_group": GROUP},
            {"fleet_username": broker.username, "fleet_password": broker.password},
            {"ca": ca.cert_pem.bytes().decode()},
        )
        server = FleetServer(ServerOptions(host=None, port=0, path=""), csms, options)  # type: ignore[arg-type]
        server.publish_auth(AuthList.parse(PASSWORDS))
        await server.start()
        try:
            await until(lambda: gateway.auth_received and "CS1" in gateway.auth, 15, "ready")
            for broker in (gateway.broker, server.broker):
                assert broker is not None and broker._socket is not None
                assert isinstance(broker._socket.get_extra_info("ssl_object"), ssl.SSLObject)
            async with websockets.connect(
                f"ws://127.0.0.1:{port}/ocpp/CS1",
                subprotocols=OCPP201,
                additional_headers=auth_header("CS1", PASSWORDS["CS1"]),
            ) as ws:
                assert (await call(ws, BOOT, "tls1"))[:2] == [3, "tls1"]
        finally:
            await server.stop()
            await gateway.stop()


async def test_junk_on_a_stations_down_topic_is_named_and_dropped(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone with the broker's login can publish there: not a frame, an unknown type,
    a frame the station must not get. The gateway says so and goes on."""
    async with fleet(mosquitto, tmp_path) as setup:
        await setup.csms(Csms())
        async with setup.station("CS1") as ws:
            assert (await call(ws, BOOT, "b1"))[0] == 3
            topics = Topics(GROUP)
            async with aiomqtt.Client(
                **mosquitto.client_args(), protocol=aiomqtt.ProtocolVersion.V5
            ) as mqtt:
                for junk in (b"not json", b'{"a": 1}', b'"abc"', b'[9, "x", {}]', b"[3]"):
                    await mqtt.publish(topics.down("CS1"), junk, qos=1)
            await until(
                lambda: len([r for r in caplog.records if "down topic" in r.getMessage()]) == 5,
                10,
                "the gateway's warnings",
            )
            # the station got none of it, and is served as before
            assert (await call(ws, [2, "", "Heartbeat", {}], "h1"))[:2] == [3, "h1"]


async def test_logins_the_broker_dropped_are_fetched_and_their_stations_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that queues fewer messages for a client than there are retained auth
    entries drops the rest when a gateway subscribes (Mosquitto's max_queued_messages:
    1,000 by default; here 10, with 20 in flight, for 300 entries). The gateway used to
    become ready with 30 of the 300 and refuse the other stations 404 until the list
    changed. The CSMS node's auth index names every entry: the gateway fetches the
    ones it lacks, a batch of topics at a time, says so in its log, and until an
    entry is here answers its station 503 (try again), not 404."""
    stations = {f"CS{i:03}": f"password-of-station-{i:03}" for i in range(300)}
    hashed = make_hash(stations["CS299"], "pbkdf2-sha256", cost=1000)
    listed = {cb_id: hashed for cb_id in stations}  # published as they are
    with running_mosquitto(tmp_path / "broker", settings=["max_queued_messages 10"]) as broker:
        setup_dir = tmp_path / "gw"
        setup_dir.mkdir()
        server = FleetServer(
            ServerOptions(host=None, port=0, path=""),
            Csms(),  # type: ignore[arg-type]
            FleetOptions(
                BrokerOptions(
                    url=broker.url,
                    client_id="unit-node-dropped",
                    username=broker.username,
                    password=broker.password,
                ),
                GROUP,
            ),
        )
        server.publish_auth(AuthList.parse(listed))
        await server.start()
        port = free_port()
        config = {
            "id": "gwd",
            "group": GROUP,
            "broker": {"url": broker.url, "username": broker.username, "password": broker.password},
            "listen": {"host": "127.0.0.1", "port": port, "path": "/ocpp"},
        }
        gateway = None
        try:
            assert server.broker is not None
            await until(lambda: len(server._auth) == 300, 10, "the node's list published")
            await asyncio.wait_for(server.broker._all_acked.wait(), 10)
            caplog.set_level("INFO", logger="ocpp_nodes.fleet.gateway")
            gateway = Gateway(load_config(write_config(setup_dir, **config)))
            await gateway.start()
            await until(lambda: gateway.auth_received, 30, "the gateway to be ready")
            await until(lambda: len(gateway.auth) == 300, 30, "every login fetched")
            assert gateway.auth_missing() == set()
            log_text = caplog.text
            assert "did not come when it subscribed" in log_text
            assert "max_queued_messages" in log_text
            assert "are still not" not in log_text and "not on the broker" not in log_text
            async with websockets.connect(
                f"ws://127.0.0.1:{port}/ocpp/CS299",
                subprotocols=OCPP201,
                additional_headers=auth_header("CS299", stations["CS299"]),
            ) as ws:
                assert ws.subprotocol == "ocpp2.0.1"
            # An index naming an entry that is not on the broker (yet): its station is
            # answered 503 while the gateway looks for it, then 404, and the log says so.
            monkeypatch.setattr(gateway_module, "AUTH_FETCH_WAIT_S", 0.2)
            index = {"stations": [*stations, "CS-late"]}
            gateway._auth_index(json.dumps(index).encode())
            fetch = gateway._auth_fetch
            assert fetch is not None and not fetch.done()
            login = ("CS-late", "x" * 16)
            assert await gateway.authenticate("CS-late", login, None) is AuthDecision.BUSY
            await asyncio.wait_for(fetch, 10)
            assert "names 1 stations whose logins are not on the broker (e.g. CS-late)" in (
                caplog.text
            )
            assert gateway.auth_missing() == {"CS-late"}
            decision = await gateway.authenticate("CS-late", login, None)
            assert decision is AuthDecision.UNKNOWN_IDENTITY
            decision = await gateway.authenticate("CS-none", ("CS-none", "x" * 16), None)
            assert decision is AuthDecision.UNKNOWN_IDENTITY
            # junk on the index is named and changes nothing
            for junk in (b"not json", b'{"stations": "CS1"}', b'{"stations": [1]}', b"[]"):
                caplog.clear()
                gateway._auth_index(junk)
                assert "the auth index on the broker is not" in caplog.text
                assert gateway.auth_expected == {*stations, "CS-late"}
        finally:
            if gateway is not None:
                await gateway.stop()
            await server.stop()
