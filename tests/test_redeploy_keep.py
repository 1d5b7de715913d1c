"""Redeploys that keep stations connected (issue 23 item 2), in a REAL Node-RED.

Full deploys through the admin API, as an editor's Deploy button makes them.
Stations are websockets clients in this test's event loop (no stubs): they
send Heartbeats all along and count what comes back; the flow answers every
Heartbeat with a function node.

- 1,000 stations across 20 full redeploys that change the CSMS node's auth
  list, logging, limits and message timeout: no station is disconnected and
  every Heartbeat sent is answered.
- A station removed from the auth list, one whose password changed and one
  whose OCPP version is no longer accepted are closed; the others stay.
- Another port: the stations are disconnected and the log says how many and
  why; removing the node releases its port by the time the deploy returns.
- A CS node redeployed with unchanged connection settings stays connected
  (its CSMS sees no reconnect); with another URL it reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import websockets
from websockets.exceptions import ConnectionClosed

from tests.common import auth_header, port_free
from tests.flowkit import Flow, http_api, node, online, recorder, until, wait_port
from tests.nodered import NodeRed, free_port, running_node_red, wait_until

pytestmark = [pytest.mark.nodered, pytest.mark.asyncio(loop_scope="module")]

TAB = "k.tab"
PASSWORD = "keep-pw"
STATIONS = 1000
REDEPLOYS = 20
#: each station's Heartbeat period (s): 1,000 stations make about 250 a second
HEARTBEAT_PERIOD = 4.0
#: what the log says when a CSMS node took over its predecessor's stations
KEPT = rf"redeploy: {STATIONS} station\(s\) kept connected"
#: Heartbeats answered between two deploys (about 0.4 s at 250 a second)
BEATS_BETWEEN_DEPLOYS = 100
#: at most this many connection attempts at once
CONNECTING_AT_ONCE = 50
ANSWER_HEARTBEAT = (
    "if (msg.topic && msg.topic.endsWith('/Request') && msg.ocpp.command === 'Heartbeat') {\n"
    "  msg.payload = {msgType: 3, data: {currentTime: new Date().toISOString()}};\n"
    "  return [msg, null];\n"
    "}\n"
    "return [null, msg];\n"
)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeRed]:
    """One Node-RED for the module: every test deploys its own full flow."""
    with running_node_red(tmp_path_factory.mktemp("keep") / "node-red", "redeploy-keep") as red:
        yield red


def _node(node_id: str, node_type: str, wires: list[list[str]] | None = None, **props: Any) -> Any:
    return node(node_id, node_type, wires, tab=TAB, **props)


def csms_flow(
    port: int,
    auths: dict[str, str],
    *,
    path: str = "/ocpp",
    version: int = 0,
    versions: tuple[str, ...] = ("ocpp2.0.1",),
    logging: bool = False,
    cs_url: str | None = None,
    cs_timeout: int = 30,
) -> list[dict[str, Any]]:
    """A CSMS node whose flow answers Heartbeats; what ``version`` changes are
    settings a redeploy keeps the stations through (logging, limits, timeout)."""
    nodes = [
        {"id": TAB, "type": "tab", "label": "redeploy keep"},
        _node(
            "k.csms",
            "CSMS",
            [["k.answer"], [], []],
            name=f"CSMS v{version}",
            port=str(port),
            path=path,
            outputs=3,
            ocpp_logging=logging,
            ocpp_versions=list(versions),
            connection_events=True,
            message_timeout=30 + version,
            max_connections=5000 + 1000 * version,
            handshakes_per_second=5000 + 100 * version,
            # the test's stations all come from 127.0.0.1
            handshakes_per_address=0,
            upgrade_timeout=10 + version,
            credentials={"basic_auths": json.dumps(auths)},
        ),
        _node("k.answer", "function", [["k.csms"], ["k.rec"]], func=ANSWER_HEARTBEAT, outputs=2),
        recorder("k.rec", TAB, "csms"),
        *http_api(TAB, {"cs": "k.cs"} if cs_url else {}, prefix="k"),
    ]
    if cs_url is not None:
        nodes += [
            {"id": "k.target", "type": "target-csms", "name": "own", "url": cs_url},
            _node(
                "k.cs",
                "CS",
                [["k.csrec"], []],
                cbId="KCS",
                csms="k.target",
                auto_connect=True,
                message_timeout=cs_timeout,
                ws_rt_minimum=0.2,
                ws_rt_repeat=0,
                ws_rt_rnd_range=0,
                outputs=2,
                credentials={"csms_pw": PASSWORD},
            ),
            recorder("k.csrec", TAB, "cs"),
        ]
    return nodes


# -- stations ------------------------------------------------------------------------


@dataclass
class Station:
    """A websocket station that sends Heartbeats and counts their answers."""

    cb_id: str
    password: str = PASSWORD
    subprotocol: str = "ocpp2.0.1"
    sent: int = 0
    answered: int = 0
    closed: str | None = None
    close_code: int | None = None
    ws: Any = None
    _ids: Iterator[int] = field(default_factory=itertools.count)

    async def connect(self, url: str) -> None:
        self.ws = await websockets.connect(
            f"{url}/{self.cb_id}",
            subprotocols=[self.subprotocol],  # type: ignore[list-item]
            additional_headers=auth_header(self.cb_id, self.password),
            open_timeout=30,
            ping_interval=None,
            max_queue=None,
        )

    async def heartbeat(self, timeout: float = 40.0) -> bool:
        """One Heartbeat; False when the connection closed (``closed`` says why)."""
        message_id = f"{self.cb_id}-{next(self._ids)}"
        try:
            await self.ws.send(json.dumps([2, message_id, "Heartbeat", {}]))
            self.sent += 1
            answer = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        except ConnectionClosed as exc:
            self.closed = str(exc)
            self.close_code = exc.rcvd.code if exc.rcvd is not None else None
            return False
        assert answer[:2] == [3, message_id], answer
        self.answered += 1
        return True

    async def beat(self, period: float, stop: asyncio.Event) -> None:
        """Heartbeats every ``period`` s (the first after a random part of it) until ``stop``."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), random.uniform(0, period))
        while not stop.is_set():
            if not await self.heartbeat():
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), period)

    async def wait_closed(self, timeout: float = 15.0) -> int | None:
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(self.ws.recv(), timeout)
        await self.ws.wait_closed()
        return self.ws.close_code  # type: ignore[no-any-return]


async def connect_all(stations: list[Station], url: str) -> None:
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)

    async def one(station: Station) -> None:
        async with gate:
            await station.connect(url)

    await asyncio.gather(*(one(station) for station in stations))


@contextlib.asynccontextmanager
async def beating(
    stations: list[Station], period: float
) -> AsyncIterator[list[asyncio.Task[None]]]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(station.beat(period, stop)) for station in stations]
    try:
        yield tasks
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def close_all(stations: list[Station]) -> None:
    await asyncio.gather(
        *(station.ws.close() for station in stations if station.ws is not None),
        return_exceptions=True,
    )


def log_since(runtime: NodeRed, mark: int) -> str:
    return runtime.log()[mark:]


async def logged(runtime: NodeRed, mark: int, text: str, timeout: float = 20.0) -> str:
    """The log since ``mark`` once it has ``text`` (a deploy's admin API call returns
    when the old flows have stopped, before the new ones start)."""

    def probe() -> str | None:
        since = log_since(runtime, mark)
        return since if text in since else None

    return await asyncio.to_thread(wait_until, probe, timeout, what=f"{text!r} in the log")


async def connection_events(flow: Flow) -> list[dict[str, Any]]:
    return [r for r in await flow.arecords("csms") if r.get("topic") == "KCS/Connection"]


async def deploy(runtime: NodeRed, nodes: list[dict[str, Any]]) -> None:
    await asyncio.to_thread(runtime.deploy, nodes)


# -- the tests -----------------------------------------------------------------------


async def test_1000_stations_stay_connected_across_20_full_redeploys(runtime: NodeRed) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ocpp"
    stations = [Station(f"K{n:04d}") for n in range(STATIONS)]
    auths = {station.cb_id: PASSWORD for station in stations}

    def version(n: int) -> list[dict[str, Any]]:
        # the auth list changes (an entry comes and goes), logging, limits, timeout
        listed = dict(auths, **({"SPARE": "spare-pw"} if n % 2 else {}))
        return csms_flow(port, listed, version=n % 2, logging=bool(n % 2))

    await deploy(runtime, version(0))
    await asyncio.to_thread(wait_port, port)
    started = time.monotonic()
    await connect_all(stations, url)
    connected = time.monotonic() - started
    mark = len(runtime.log())
    deploy_times: list[float] = []

    def answered() -> int:
        return sum(station.answered for station in stations)

    async def answered_reach(target: int) -> None:
        await until(lambda: answered() >= target, 30, f"{target} Heartbeats answered")

    async with beating(stations, HEARTBEAT_PERIOD) as beats:
        for n in range(1, REDEPLOYS + 1):
            begun = time.monotonic()
            await deploy(runtime, version(n))
            await asyncio.to_thread(
                wait_until,
                lambda n=n: len(re.findall(KEPT, log_since(runtime, mark))) >= n,  # type: ignore[misc]
                30,
                0.02,
                what=f"redeploy {n} taken over",
            )
            deploy_times.append(time.monotonic() - begun)
            done = [task for task in beats if task.done()]
            assert not done, [s.closed for s in stations if s.closed][:5]
            # some Heartbeats between two deploys (and some in flight across each)
            await answered_reach(answered() + BEATS_BETWEEN_DEPLOYS)
        # every station's Heartbeat answered once more after the last deploy
        before = [station.answered for station in stations]
        await until(
            lambda: all(s.answered > n for s, n in zip(stations, before, strict=True)),
            3 * HEARTBEAT_PERIOD + 30,
            "a Heartbeat of every station after the last deploy",
        )
    elapsed = time.monotonic() - started
    sent = sum(station.sent for station in stations)
    answers = answered()
    closed = [station.cb_id for station in stations if station.closed]
    log = log_since(runtime, mark)
    handed = sum(int(n) for n in re.findall(r"(\d+) request\(s\) handed to the new flow", log))
    print(
        f"\n{STATIONS} stations connected in {connected:.1f} s; {REDEPLOYS} full redeploys "
        f"in {sum(deploy_times):.1f} s (each {min(deploy_times):.2f}-{max(deploy_times):.2f} s); "
        f"Heartbeats sent {sent}, answered {answers}, {handed} handed to a new flow; "
        f"disconnected {len(closed)}; test {elapsed:.1f} s"
    )
    await close_all(stations)
    assert closed == []
    assert sent == answers and sent >= STATIONS * 2
    assert handed > 0, "no Heartbeat was waiting across a redeploy: the test proves little"
    kept = re.findall(KEPT, log)
    assert len(kept) == REDEPLOYS, log[-3000:]
    assert " disconnected: " not in log


async def test_a_redeploy_closes_only_the_stations_its_settings_no_longer_admit(
    runtime: NodeRed,
) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ocpp"
    names = ["KEEP1", "KEEP2", "GONE", "NEWPW", "OLD16"]
    stations = {name: Station(name) for name in names}
    stations["OLD16"].subprotocol = "ocpp1.6"
    auths = {name: PASSWORD for name in names}
    both = ("ocpp1.6", "ocpp2.0.1")
    await deploy(runtime, csms_flow(port, auths, versions=both))
    await asyncio.to_thread(wait_port, port)
    await connect_all(list(stations.values()), url)
    for station in stations.values():
        if station.subprotocol == "ocpp2.0.1":
            assert await station.heartbeat()
    mark = len(runtime.log())

    changed = {"KEEP1": PASSWORD, "KEEP2": PASSWORD, "NEWPW": "another-pw", "OLD16": PASSWORD}
    await deploy(runtime, csms_flow(port, changed, versions=("ocpp2.0.1",)))

    for name in ("GONE", "NEWPW", "OLD16"):
        assert await stations[name].wait_closed() == 1008, name
    for name in ("KEEP1", "KEEP2"):
        assert await stations[name].heartbeat(), stations[name].closed

    log = await logged(runtime, mark, "kept connected")
    closed_line = re.search(r"redeploy: closed 3 station\(s\)[^\n]*", log)
    assert closed_line, log
    assert "GONE (no longer in the CS Auth list)" in closed_line.group(0)
    assert "NEWPW (its password is no longer valid)" in closed_line.group(0)
    assert "OLD16 (OCPP 1.6 is no longer accepted)" in closed_line.group(0)
    assert "redeploy: 2 station(s) kept connected" in log
    # and the station with its new password is admitted again
    again = Station("NEWPW", password="another-pw")
    await again.connect(url)
    assert await again.heartbeat()
    await close_all([*stations.values(), again])


async def test_another_port_disconnects_and_says_so_and_removing_frees_the_port(
    runtime: NodeRed,
) -> None:
    port, other = free_port(), free_port()
    stations = [Station(f"P{n}") for n in range(3)]
    auths = {station.cb_id: PASSWORD for station in stations}
    await deploy(runtime, csms_flow(port, auths))
    await asyncio.to_thread(wait_port, port)
    await connect_all(stations, f"ws://127.0.0.1:{port}/ocpp")
    mark = len(runtime.log())

    await deploy(runtime, csms_flow(other, auths))
    for station in stations:
        assert await station.wait_closed() == 1001
    assert port_free(port)
    # the log line comes through Node-RED's log, not in step with the websocket closes
    log = await logged(runtime, mark, "redeploy: 3 station(s) disconnected")
    assert f"redeploy: 3 station(s) disconnected: the port changed from {port} to {other}" in log
    # that line is written before the new node binds its port: wait for it
    await asyncio.to_thread(wait_port, other)
    moved = Station("P0")
    await moved.connect(f"ws://127.0.0.1:{other}/ocpp")
    assert await moved.heartbeat()

    # the node removed: its port is free when the deploy returns
    await deploy(runtime, [{"id": TAB, "type": "tab", "label": "redeploy keep"}])
    assert await moved.wait_closed() == 1001
    assert port_free(other)


async def test_a_cs_node_stays_connected_unless_its_connection_settings_change(
    runtime: NodeRed,
) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ocpp"
    auths = {"KCS": PASSWORD}
    flow = Flow(runtime, prefix="k")
    await deploy(runtime, csms_flow(port, auths, cs_url=url, cs_timeout=30))
    await flow.await_("csms", lambda r: r.get("topic") == "KCS/Connection" and online(r))
    seen = len(await connection_events(flow))
    mark = len(runtime.log())

    # settings that are no connection settings (both nodes): nothing reconnects
    await deploy(runtime, csms_flow(port, auths, version=1, cs_url=url, cs_timeout=40))
    await deploy(runtime, csms_flow(port, auths, version=0, cs_url=url, cs_timeout=30))
    # the CS node's Heartbeat answered by the CSMS node's flow, on the same connection
    await flow.asend("cs", {"payload": {"command": "Heartbeat", "data": {}}})
    await flow.await_("cs", lambda r: r.get("topic") == "KCS/Response")
    assert len(await connection_events(flow)) == seen, await connection_events(flow)
    await until(
        lambda: log_since(runtime, mark).count("KCS: redeploy: connection kept") >= 2,
        20,
        "both deploys' log lines",
    )
    log = log_since(runtime, mark)
    assert "KCS disconnected" not in log
    assert log.count("KCS: redeploy: connection kept") == 2, log

    # another URL (the same CSMS by another name): the CS node reconnects
    other_url = f"ws://localhost:{port}/ocpp"
    await deploy(runtime, csms_flow(port, auths, cs_url=other_url, cs_timeout=30))
    await flow.await_(
        "csms",
        lambda r: r.get("topic") == "KCS/Connection" and online(r),
        after=seen,
    )
    await logged(runtime, mark, "KCS: redeploy: reconnecting, its CSMS URL changed")


async def test_new_tls_files_serve_new_handshakes_and_connected_stations_stay(
    runtime: NodeRed, tmp_path: Path
) -> None:
    ca = trustme.CA()
    files: dict[str, tuple[Path, Path]] = {}
    for name in ("first", "second"):
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        files[name] = (cert, key)
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    port = free_port()
    url = f"wss://127.0.0.1:{port}/ocpp"

    def tls_flow(name: str, version: int) -> list[dict[str, Any]]:
        cert, key = files[name]
        nodes = csms_flow(port, {"TLS1": PASSWORD, "TLS2": PASSWORD}, version=version)
        csms = next(n for n in nodes if n["id"] == "k.csms")
        csms.update(security_profile=2, tls="k.tls")
        tls = {"id": "k.tls", "type": "tls-config", "cert": str(cert), "key": str(key)}
        return [*nodes, {**tls, "ca": "", "verifyservercert": True}]

    async def served(cb_id: str) -> tuple[Station, bytes]:
        station = Station(cb_id)
        station.ws = await websockets.connect(
            f"{url}/{cb_id}",
            ssl=trust,
            subprotocols=[station.subprotocol],  # type: ignore[list-item]
            additional_headers=auth_header(cb_id, PASSWORD),
            ping_interval=None,
        )
        der: bytes = station.ws.transport.get_extra_info("ssl_object").getpeercert(True)
        return station, der

    await deploy(runtime, tls_flow("first", 0))
    await asyncio.to_thread(wait_port, port)
    connected, first_der = await served("TLS1")
    mark = len(runtime.log())
    await deploy(runtime, tls_flow("second", 1))
    # the admin API answers once the old flows stopped, before the new ones start
    await logged(runtime, mark, "kept connected")
    fresh, second_der = await served("TLS2")
    assert first_der != second_der
    assert ssl.DER_cert_to_PEM_cert(second_der).strip() in files["second"][0].read_text()
    # the station connected before keeps its TLS session and its connection
    assert await connected.heartbeat(), connected.closed
    assert await fresh.heartbeat()
    await close_all([connected, fresh])
