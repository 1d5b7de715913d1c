"""The MQTT floor of a fleet round trip: what the broker hops cost with no OCPP at all.

A fleet round trip (docs/fleet.md) crosses the broker twice: the gateway
publishes the station's CALL (QoS 1) and the engine gets it, the engine
publishes the answer (QoS 1) and the gateway gets it. Each of the two
Python processes handles four MQTT packets per round trip (two PUBLISH, two
PUBACK), Mosquitto eight. This benchmark runs only that: an *asker* (the
gateway's side: N=100 loops, each publishing a MeterValues CALL with the
properties the gateway gives it, and waiting for its answer) and an
*answerer* (the engine's side: answers each at once, with the engine's
properties), through one Mosquitto with the fleet benchmark's settings, and
reports the CPU each process and Mosquitto spend per round trip. Their sum
is a floor under fleet mode's server CPU per round trip, whatever the OCPP
code does.

Clients: ``paho`` is ocpp_nodes.fleet.broker.Broker, fleet mode's own
connection (paho-mqtt on the event loop); ``gmqtt`` is the gmqtt package
(asyncio-native, pure Python; bench/requirements.txt), for comparison.

    .venv/bin/python bench/mqtt_floor.py [--seconds 8] [--rounds 3] [--clients paho,gmqtt]

Writes bench/results/mqtt-floor.json and prints a Markdown table. Rounds
alternate the clients. `make bench BENCH_ARGS=--fleet-only` runs it too, after
the side-by-side turns, and docs/benchmarks.md (*Fleet*) sets it against
direct mode's CPU per round trip of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

STATIONS = 100
CALL = json.dumps(
    [
        2,
        "5f1c4b1f-51bc-4418-88c9-8b02044af5a5",
        "MeterValues",
        {
            "evseId": 1,
            "meterValue": [
                {
                    "timestamp": "2026-12-07T14:00:00Z",
                    "sampledValue": [{"value": 12.5, "measurand": "Energy.Active.Import.Register"}],
                }
            ],
        },
    ]
)
ANSWER = '[3,"5f1c4b1f-51bc-4418-88c9-8b02044af5a5",{}]'
#: the gateway's user properties on an up message (gateway.py `_publish_up`)
UP_USER = [("connection", "9f1c2a4e"), ("version", "ocpp2.0.1"), ("gateway", "gw1")]
#: the engine's on an answer (remote.py `send_down`)
DOWN_USER = [("connection", "9f1c2a4e")]
MOSQUITTO_SETTINGS = ["max_inflight_messages 1000", "max_queued_messages 100000"]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the two roles, in their own processes ------------------------------------------


class PahoClient:
    """ocpp_nodes.fleet.broker.Broker, as fleet mode uses it."""

    def __init__(self, url: str, user: str, password: str, client_id: str) -> None:
        from ocpp_nodes.fleet.broker import Broker, BrokerOptions

        self.on_message: Any = None
        self.broker = Broker(
            BrokerOptions(url, client_id, user, password),
            lambda message: self.on_message(
                message.topic,
                message.properties.ResponseTopic
                if hasattr(message.properties, "ResponseTopic")
                else None,
                message.properties.CorrelationData,
            ),
        )

    async def connect(self) -> None:
        self.broker.start()
        if not await self.broker.wait_connected(10):
            raise SystemExit(f"paho: no connection: {self.broker.problem}")

    async def subscribe(self, topics: list[str]) -> None:
        await self.broker.subscribe(topics)

    def publish(
        self,
        topic: str,
        payload: str,
        correlation: bytes,
        user: list[tuple[str, str]],
        response_topic: str | None = None,
    ) -> None:
        from ocpp_nodes.fleet.broker import publish_properties

        properties = publish_properties(
            response_topic=response_topic,
            correlation=correlation.decode(),
            expiry=30 if response_topic else None,
            user=user,
        )
        self.broker.publish(topic, payload, properties=properties)


class GmqttClient:
    """The gmqtt package (asyncio protocol, pure Python)."""

    def __init__(self, url: str, user: str, password: str, client_id: str) -> None:
        from gmqtt import Client

        self.host, port = url.split("//", 1)[1].rsplit(":", 1)
        self.port = int(port)
        self.on_message: Any = None
        self.client = Client(client_id)
        self.client.set_auth_credentials(user, password)

        def received(client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
            response = properties.get("response_topic")
            self.on_message(
                topic, response[0] if response else None, properties["correlation_data"][0]
            )
            return 0

        self.client.on_message = received

    async def connect(self) -> None:
        from gmqtt.mqtt.constants import MQTTv50

        await self.client.connect(self.host, self.port, version=MQTTv50)

    async def subscribe(self, topics: list[str]) -> None:
        from gmqtt import Subscription

        self.client.subscribe([Subscription(topic, qos=1) for topic in topics])
        await asyncio.sleep(0.5)  # gmqtt does not give the SUBACK to wait for

    def publish(
        self,
        topic: str,
        payload: str,
        correlation: bytes,
        user: list[tuple[str, str]],
        response_topic: str | None = None,
    ) -> None:
        extra: dict[str, Any] = {}
        if response_topic is not None:
            extra = {"response_topic": response_topic, "message_expiry_interval": 30}
        self.client.publish(
            topic, payload, qos=1, correlation_data=correlation, user_property=user, **extra
        )


CLIENTS = {"paho": PahoClient, "gmqtt": GmqttClient}


async def answer(client: Any) -> None:
    def received(topic: str, response_topic: str | None, correlation: bytes) -> None:
        client.publish(response_topic, ANSWER, correlation, DOWN_USER)

    client.on_message = received
    await client.connect()
    await client.subscribe(["floor/+/up"])
    print("ready", flush=True)
    await asyncio.get_running_loop().create_future()  # until killed


async def ask(client: Any, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    waiting: dict[str, asyncio.Future[None]] = {}

    def received(topic: str, response_topic: str | None, correlation: bytes) -> None:
        future = waiting.pop(topic, None)
        if future is not None:
            future.set_result(None)

    client.on_message = received
    await client.connect()
    await client.subscribe([f"floor/{i}/down" for i in range(STATIONS)])
    done = 0
    end = 0.0

    async def station(i: int) -> None:
        nonlocal done
        up, down = f"floor/{i}/up", f"floor/{i}/down"
        while loop.time() < end:
            waiting[down] = future = loop.create_future()
            client.publish(up, CALL, b"5f1c4b1f", UP_USER, response_topic=down)
            await future
            done += 1

    print("start", flush=True)
    start_cpu, start = cpu_seconds(), time.perf_counter()
    end = loop.time() + seconds
    await asyncio.gather(*(station(i) for i in range(STATIONS)))
    took = time.perf_counter() - start
    print(json.dumps({"round_trips": done, "seconds": took, "cpu": cpu_seconds() - start_cpu}))


def role_main(args: argparse.Namespace) -> None:
    import uvloop

    async def work() -> None:
        client = CLIENTS[args.client](args.url, args.user, args.password, f"floor-{args.role}")
        await (answer(client) if args.role == "answer" else ask(client, args.seconds))

    uvloop.run(work())


# -- the runner ----------------------------------------------------------------------


def one_round(mosquitto: Any, client: str, seconds: float) -> dict[str, Any]:
    import psutil

    base = [sys.executable, __file__, "--url", mosquitto.url, "--user", mosquitto.username]
    base += ["--password", mosquitto.password, "--client", client, "--seconds", str(seconds)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    answerer = subprocess.Popen(
        [*base, "--role", "answer"], stdout=subprocess.PIPE, text=True, env=env
    )
    asker = None
    try:
        assert answerer.stdout is not None
        if answerer.stdout.readline().strip() != "ready":
            raise SystemExit(f"{client}: the answerer did not start")
        asker = subprocess.Popen(
            [*base, "--role", "ask"], stdout=subprocess.PIPE, text=True, env=env
        )
        assert asker.stdout is not None
        if asker.stdout.readline().strip() != "start":
            raise SystemExit(f"{client}: the asker did not start")
        watched = {
            "answerer": psutil.Process(answerer.pid),
            "mosquitto": psutil.Process(mosquitto.pid),
        }
        before = {name: sum(p.cpu_times()[:2]) for name, p in watched.items()}
        result = json.loads(asker.stdout.readline())
        after = {name: sum(p.cpu_times()[:2]) for name, p in watched.items()}
        asker.wait(10)
    finally:
        for process in (asker, answerer):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    n = result["round_trips"]
    us = {name: 1e6 * (after[name] - before[name]) / n for name in watched}
    us["asker"] = 1e6 * result["cpu"] / n
    return {
        "client": client,
        "rps": n / result["seconds"],
        "us_per_rt": us,
        "total_us_per_rt": us["asker"] + us["answerer"] + us["mosquitto"],
    }


def median(values: list[float]) -> float:
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def measure(clients: list[str], rounds: int, seconds: float) -> dict[str, Any]:
    """Rounds of each client in turn (the order reversed every other round) through
    one Mosquitto; the rounds and each client's medians."""
    from tests.fleetkit import Mosquitto, mosquitto_missing_reason

    missing = mosquitto_missing_reason()
    if missing:
        raise SystemExit(missing)
    started = datetime.now(timezone.utc)
    done: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mqtt-floor-") as directory:
        mosquitto = Mosquitto(Path(directory), settings=MOSQUITTO_SETTINGS)
        mosquitto.start()
        try:
            for number in range(rounds):
                for client in clients if number % 2 == 0 else clients[::-1]:
                    r = one_round(mosquitto, client, seconds)
                    r["round"] = number
                    done.append(r)
                    split = " + ".join(
                        f"{k} {r['us_per_rt'][k]:.1f}" for k in ("asker", "answerer", "mosquitto")
                    )
                    print(
                        f"  mqtt floor, round {number}, {client}: {r['rps']:,.0f} rt/s, "
                        f"{r['total_us_per_rt']:.1f} µs CPU per rt ({split})",
                        flush=True,
                    )
        finally:
            mosquitto.stop()
    medians = {}
    for client in clients:
        mine = [r for r in done if r["client"] == client]
        medians[client] = {
            key: median([r["us_per_rt"][key] for r in mine])
            for key in ("asker", "answerer", "mosquitto")
        }
        medians[client]["total"] = median([r["total_us_per_rt"] for r in mine])
        medians[client]["rps"] = median([r["rps"] for r in mine])
    return {
        "started": started.isoformat(timespec="seconds"),
        "stations": STATIONS,
        "seconds": seconds,
        "mosquitto_settings": MOSQUITTO_SETTINGS,
        "rounds": done,
        "median": medians,
    }


def run(args: argparse.Namespace) -> None:
    clients = [c for c in args.clients.split(",") if c]
    unknown = [c for c in clients if c not in CLIENTS]
    if unknown or not clients:
        raise SystemExit(f"--clients: {', '.join(unknown) or 'none'}; known: {', '.join(CLIENTS)}")
    floor = measure(clients, args.rounds, args.seconds)
    floor["load_average"] = os.getloadavg()
    results = BENCH / "results" / "mqtt-floor.json"
    results.write_text(json.dumps(floor, indent=1) + "\n")
    import report

    print("", *report.mqtt_floor_table(floor), sep="\n")
    print(f"\nmedians of {args.rounds} rounds of {args.seconds:g} s; {results.relative_to(REPO)}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clients", default="paho,gmqtt", help="comma list of paho,gmqtt")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per round")
    p.add_argument("--role", choices=("ask", "answer"), help=argparse.SUPPRESS)
    p.add_argument("--client", choices=tuple(CLIENTS), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--user", help=argparse.SUPPRESS)
    p.add_argument("--password", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role:
        role_main(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
