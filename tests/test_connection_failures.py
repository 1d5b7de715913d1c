"""Connection failures reach the flow: CS nodes in a REAL Node-RED against
peers that are not our code, each failing in its own way.

The peers: `websockets` servers with TLS certificates from a CA the nodes do
not trust, an expired one and one for another host name; a websockets server
that answers the upgrade with HTTP 401; `openssl s_server` speaking only TLS
1.1 (it refuses TLS 1.2 with a protocol_version alert) and one offering only
a cipher suite outside the nodes' list; a Python TLS server speaking only TLS
1.1, which hangs up without saying why (the node finds the reason itself); a
closed port; a host name that does not resolve.

Each CS node (``connection_failures`` on) puts one message on output 1 per
new cause: ``msg.ocpp.websocket`` ``"FAILED"``, ``msg.payload = {cause,
reason, securityEvent?, httpStatus?}``; a node from an older export (the
property absent) puts none, as before. No reason is empty, in the messages or
in the Node-RED log.
"""

from __future__ import annotations

import asyncio
import datetime
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import trustme
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from tests.flowkit import Flow, http_api, node, recorder, wait_port
from tests.nodered import NodeRed, free_port, running_node_red

pytestmark = [
    pytest.mark.nodered,
    pytest.mark.asyncio(loop_scope="module"),
    # the peers that speak only TLS 1.1 are made with a deprecated setting on purpose
    pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1:DeprecationWarning"),
]

TAB = "failures"
_node = partial(node, tab=TAB)


def write_leaf(leaf: trustme.LeafCert, directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


@dataclass
class Peer:
    """Where one CS node connects, and what it should report."""

    cb_id: str
    url: str
    cause: str
    event: str | None = None
    http_status: int | None = None
    words: str = ""


class Peers:
    """Every failing peer of the module, started in the module's event loop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = trustme.CA()
        self.ca_path = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        self.peers: list[Peer] = []
        self._servers: list[Any] = []
        self._processes: list[subprocess.Popen[bytes]] = []

    def context(self, leaf: trustme.LeafCert) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        leaf.configure_cert(context)
        return context

    async def websockets_tls(self, cb_id: str, leaf: trustme.LeafCert, **expect: Any) -> None:
        async def handler(ws: ServerConnection) -> None:
            await ws.close()

        server = await serve(handler, "127.0.0.1", 0, ssl=self.context(leaf))
        self._servers.append(server)
        port = server.sockets[0].getsockname()[1]  # type: ignore[index]
        self.peers.append(Peer(cb_id, f"wss://127.0.0.1:{port}/ocpp", **expect))

    async def refuses_with_401(self, cb_id: str) -> None:
        def refuse(ws: ServerConnection, request: Request) -> Response:
            return Response(401, "Unauthorized", Headers({"WWW-Authenticate": "Basic"}))

        server = await serve(
            lambda ws: ws.close(),
            "127.0.0.1",
            0,
            process_request=refuse,  # type: ignore[arg-type]
        )
        self._servers.append(server)
        port = server.sockets[0].getsockname()[1]  # type: ignore[index]
        self.peers.append(
            Peer(
                cb_id,
                f"ws://127.0.0.1:{port}/ocpp",
                "credentials",
                "FailedToAuthenticateAtCsms",
                401,
                "HTTP 401",
            )
        )

    async def python_tls_1_1(self, cb_id: str, leaf: trustme.LeafCert) -> None:
        context = self.context(leaf)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT@SECLEVEL=0")

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)
        self._servers.append(server)
        port = server.sockets[0].getsockname()[1]
        self.peers.append(
            Peer(
                cb_id,
                f"wss://127.0.0.1:{port}/ocpp",
                "tls-version",
                "InvalidTLSVersion",
                words="speaks only TLSv1.1",
            )
        )

    def openssl(
        self, cb_id: str, leaf: trustme.LeafCert, options: list[str], **expect: Any
    ) -> None:
        cert, key = write_leaf(leaf, self.directory, cb_id)
        port = free_port()
        self._processes.append(
            subprocess.Popen(
                [
                    "openssl",
                    "s_server",
                    "-accept",
                    str(port),
                    "-cert",
                    str(cert),
                    "-key",
                    str(key),
                    "-quiet",
                    *options,
                ],  # fmt: skip
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_port(port)
        self.peers.append(Peer(cb_id, f"wss://127.0.0.1:{port}/ocpp", **expect))

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for process in self._processes:
            process.kill()
            process.wait()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def peers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Peers]:
    made = Peers(tmp_path_factory.mktemp("peers"))
    now = datetime.datetime.now(datetime.timezone.utc)
    rogue = trustme.CA()
    await made.websockets_tls(
        "UNTRUSTED",
        rogue.issue_cert("127.0.0.1", "localhost"),
        cause="certificate-untrusted",
        event="InvalidCsmsCertificate",
        words="not trusted",
    )
    await made.websockets_tls(
        "EXPIRED",
        made.ca.issue_cert(
            "127.0.0.1",
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        ),
        cause="certificate-expired",
        event="InvalidCsmsCertificate",
        words="expired",
    )
    await made.websockets_tls(
        "WRONGNAME",
        made.ca.issue_cert("csms.elsewhere.test"),
        cause="certificate-name-mismatch",
        event="InvalidCsmsCertificate",
        words="mismatch",
    )
    await made.refuses_with_401("REFUSED401")
    await made.python_tls_1_1("HANGSUP", made.ca.issue_cert("127.0.0.1"))
    if shutil.which("openssl"):
        made.openssl(
            "TLS11",
            made.ca.issue_cert("127.0.0.1", key_type=trustme.KeyType.RSA),
            ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
            cause="tls-version",
            event="InvalidTLSVersion",
            words="no TLS version in common",
        )
        made.openssl(
            "OLDCIPHER",
            made.ca.issue_cert("127.0.0.1", key_type=trustme.KeyType.RSA),
            ["-tls1_2", "-cipher", "AES128-SHA@SECLEVEL=0"],
            cause="tls-cipher-suite",
            event="InvalidTLSCipherSuite",
            words="no cipher suite in common",
        )
    made.peers.append(Peer("CLOSED", f"ws://127.0.0.1:{free_port()}/ocpp", "refused"))
    made.peers.append(Peer("NODNS", "ws://no-such-host.invalid:9/ocpp", "dns"))
    yield made
    await made.close()


def failures_flow(peers: Peers) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = [
        {"id": TAB, "type": "tab", "label": "failures"},
        {
            "id": "tls.ca",
            "type": "tls-config",
            "name": "our CA",
            "cert": "",
            "key": "",
            "ca": str(peers.ca_path),
            "verifyservercert": True,
        },
        recorder("rec.out", TAB, "out"),
        recorder("rec.status", TAB, "status"),
        _node("status.untrusted", "status", [["rec.status"]], scope=["cs.UNTRUSTED"]),
    ]
    closed = next(peer for peer in peers.peers if peer.cb_id == "CLOSED")
    every = [*peers.peers, Peer("LEGACY", closed.url, "refused")]
    for peer in every:
        config: dict[str, Any] = {
            "cbId": peer.cb_id,
            "csms": f"t.{peer.cb_id}",
            "auto_connect": True,
            "tls": "tls.ca",
            "outputs": 2,
            "ws_rt_minimum": 0.5,
            "ws_rt_repeat": 0,
            "ws_rt_rnd_range": 0,
            "credentials": {"csms_pw": "pw"},
        }
        if peer.cb_id != "LEGACY":  # an older export: the property is absent
            config["connection_failures"] = True
        nodes += [
            _node(f"t.{peer.cb_id}", "target-csms", url=peer.url),
            _node(f"cs.{peer.cb_id}", "CS", [["rec.out"], []], **config),
        ]
    return nodes + http_api(TAB, {"untrusted": "cs.UNTRUSTED"})


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeRed]:
    with running_node_red(tmp_path_factory.mktemp("failures-nr"), "failures") as started:
        yield started


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def flow(runtime: NodeRed, peers: Peers) -> Flow:
    await asyncio.to_thread(runtime.deploy, failures_flow(peers))
    await asyncio.to_thread(runtime.wait_for_endpoint, "GET", "/t/records")
    return Flow(runtime)


def failed(flow: Flow, cb_id: str) -> list[dict[str, Any]]:
    return [
        r
        for r in flow.records("out")
        if (r.get("ocpp") or {}).get("websocket") == "FAILED" and r["ocpp"]["cbId"] == cb_id
    ]


def expected_peers() -> list[str]:
    names = ["UNTRUSTED", "EXPIRED", "WRONGNAME", "REFUSED401", "HANGSUP", "CLOSED", "NODNS"]
    return names + (["TLS11", "OLDCIPHER"] if shutil.which("openssl") else [])


@pytest.mark.parametrize("cb_id", expected_peers())
async def test_a_failed_connection_reaches_the_flow_with_its_cause(
    flow: Flow, peers: Peers, cb_id: str
) -> None:
    (peer,) = [p for p in peers.peers if p.cb_id == cb_id]
    message = await flow.await_(
        "out",
        lambda r: (r.get("ocpp") or {}).get("websocket") == "FAILED" and r["ocpp"]["cbId"] == cb_id,
        30,
    )
    assert message["topic"] == f"{cb_id}/Connection"
    payload = message["payload"]
    assert payload["cause"] == peer.cause, payload
    assert payload.get("securityEvent") == peer.event, payload
    assert payload.get("httpStatus") == peer.http_status, payload
    assert peer.words in payload["reason"] and not payload["reason"].rstrip().endswith(":")


async def test_a_cause_is_reported_once_until_it_changes(flow: Flow, peers: Peers) -> None:
    def attempts() -> int:
        return sum(
            1 for r in flow.records("status") if (r.get("status") or {}).get("text") == "connecting"
        )

    await flow.await_("status", lambda r: attempts() >= 4, 30)
    assert len(failed(flow, "UNTRUSTED")) == 1  # four attempts, one message
    closed = next(p for p in peers.peers if p.cb_id == "CLOSED")
    await flow.asend(
        "untrusted",
        {"payload": {"msgType": 99, "command": "connect", "data": {"csmsUrl": closed.url}}},
    )
    await flow.await_("out", lambda r: len(failed(flow, "UNTRUSTED")) == 2, 30)
    assert failed(flow, "UNTRUSTED")[1]["payload"]["cause"] == "refused"


async def test_a_node_from_an_older_export_reports_nothing_new(flow: Flow) -> None:
    await flow.await_("out", lambda r: len(failed(flow, "CLOSED")) >= 1, 30)
    await asyncio.to_thread(flow.runtime.wait_for_log, "LEGACY: the CSMS refused the connection")
    assert failed(flow, "LEGACY") == []


async def test_no_reason_in_the_log_is_empty(flow: Flow) -> None:
    await flow.await_("out", lambda r: len(failed(flow, "HANGSUP")) >= 1, 30)
    warned = {cb_id: 0 for cb_id in expected_peers()}
    for line in flow.runtime.log().splitlines():
        if "[warn]" not in line:
            continue
        for cb_id in warned:
            if f"{cb_id}: " in line:
                warned[cb_id] += 1
                reason = line.split(f"{cb_id}: ", 1)[1].strip()
                assert reason and not reason.endswith(":"), line
    assert all(warned.values()), warned  # every node's failures were read
