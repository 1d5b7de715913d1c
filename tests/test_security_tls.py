"""Security profiles 2 and 3 (OCPP 2.0.1 part 2; docs/security.md) with the real
daemon, driven through :class:`tests.shim_double.ShimDouble` as Node-RED
would, and raw ``websockets`` / ``ssl`` peers on loopback.

Certificates are made at test time (``trustme``): a CA for the CSMS's server
certificates, another for the stations' client certificates (CN = cbId), and
an unrelated CA nobody trusts. One daemon serves the module; each test makes
its own nodes (unique ids and ports) and closes them.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import trustme
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request

from tests import common
from tests.common import BOOT, BOOT_ANSWER, answer_requests, auth_header, logs, next_number
from tests.shim_double import ShimDouble, free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")


# -- certificates ----------------------------------------------------------------------


def chain_pem(cert: trustme.LeafCert) -> str:
    return "".join(blob.bytes().decode() for blob in cert.cert_chain_pems)


def key_pem(cert: trustme.LeafCert) -> str:
    return cert.private_key_pem.bytes().decode()


@dataclass
class Pki:
    server_ca: trustme.CA  # signs the CSMS's certificates
    station_ca: trustme.CA  # signs the stations' certificates
    rogue_ca: trustme.CA  # trusted by nobody
    server: trustme.LeafCert  # EC (trustme's default), localhost + 127.0.0.1
    server_rsa: trustme.LeafCert
    expired: trustme.LeafCert
    wrong_host: trustme.LeafCert
    rogue_server: trustme.LeafCert

    @property
    def server_ca_pem(self) -> str:
        return self.server_ca.cert_pem.bytes().decode()

    @property
    def station_ca_pem(self) -> str:
        return self.station_ca.cert_pem.bytes().decode()

    def station(self, cb_id: str, ca: trustme.CA | None = None) -> trustme.LeafCert:
        """A client certificate whose subject CN is ``cb_id``."""
        return (ca or self.station_ca).issue_cert(
            f"{cb_id.lower()}.stations.test", common_name=cb_id
        )

    def csms_tls(
        self, leaf: trustme.LeafCert | None = None, profile3: bool = False
    ) -> dict[str, Any]:
        leaf = leaf or self.server
        tls: dict[str, Any] = {"cert": chain_pem(leaf), "key": key_pem(leaf)}
        if profile3:
            tls["ca"] = self.station_ca_pem
        return tls

    def client_ssl(self, leaf: trustme.LeafCert | None = None) -> ssl.SSLContext:
        """A raw station's context: trusts the server CA, presents ``leaf`` if given."""
        context = ssl.create_default_context()
        self.server_ca.configure_trust(context)
        if leaf is not None:
            leaf.configure_cert(context)
        return context


@pytest.fixture(scope="module")
def pki() -> Pki:
    server_ca = trustme.CA()
    now = datetime.datetime.now(datetime.timezone.utc)
    return Pki(
        server_ca=server_ca,
        station_ca=trustme.CA(),
        rogue_ca=(rogue := trustme.CA()),
        server=server_ca.issue_cert("localhost", "127.0.0.1"),
        server_rsa=server_ca.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.RSA),
        expired=server_ca.issue_cert(
            "localhost",
            "127.0.0.1",
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        ),
        wrong_host=server_ca.issue_cert("csms.elsewhere.test"),
        rogue_server=rogue.issue_cert("localhost", "127.0.0.1"),
    )


# -- the daemon and its nodes ------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def nodes(shim: ShimDouble) -> AsyncIterator[list[str]]:
    """Node ids made by a test; closed after it."""
    made: list[str] = []
    yield made
    for node in made:
        await shim.close_node(node)


async def start_csms(
    shim: ShimDouble,
    nodes: list[str],
    tls: dict[str, Any] | None,
    profile: int,
    auths: dict[str, str] | None = None,
    expect: str = "0 connected",
) -> tuple[str, int]:
    node = f"csms{next_number()}"
    nodes.append(node)
    fields = {} if tls is None else {"tls": tls}
    config = {"security_profile": profile}
    port = await common.start_csms(shim, node, auths or {}, config, expect=expect, **fields)
    return node, port


def start_cs(
    shim: ShimDouble,
    nodes: list[str],
    url: str,
    profile: int,
    tls: dict[str, Any] | None,
    cb_id: str = "CP1",
    password: str | None = "pw-cp1",
) -> str:
    node = f"cs{next_number()}"
    nodes.append(node)
    extra: dict[str, Any] = {"target": {"url": url}}
    if password is not None:
        extra["credentials"] = {"csms_pw": password}
    if tls is not None:
        extra["tls"] = tls
    shim.create(
        node,
        "CS",
        {
            "cbId": cb_id,
            "auto_connect": True,
            "security_profile": profile,
            # one attempt in the time of a test: a refused one is not retried at once
            "ws_rt_minimum": "30",
            "ws_rt_repeat": "0",
            "ws_rt_rnd_range": "0",
        },
        **extra,
    )
    return node


async def answer_boots(shim: ShimDouble, node: str) -> None:
    """Play the CSMS flow: accept every BootNotification."""
    await answer_requests(shim, node, {"BootNotification": BOOT_ANSWER})


@pytest_asyncio.fixture(loop_scope="module")
async def flows(shim: ShimDouble) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for task in tasks:
        task.cancel()


async def boot_raw_station(ws: Any) -> list[Any]:
    await ws.send(json.dumps([2, "boot-1", "BootNotification", BOOT]))
    return json.loads(await asyncio.wait_for(ws.recv(), 5))  # type: ignore[no-any-return]


async def tls_handshake(
    port: int, context: ssl.SSLContext, server_hostname: str = "localhost"
) -> tuple[str, str]:
    """A bare TLS handshake with 127.0.0.1:port: (protocol version, cipher name)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_hostname),
        5,
    )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        return ssl_object.version(), ssl_object.cipher()[0]
    finally:
        writer.close()


def assert_not_listening(port: int) -> None:
    import socket

    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, f"something listens on {port}"


# -- profile 2: the CSMS -------------------------------------------------------------------


async def test_p2_csms_serves_wss_and_station_boots_with_basic_auth(
    shim: ShimDouble, nodes: list[str], flows: list[asyncio.Task[None]], pki: Pki
) -> None:
    node, port = await start_csms(shim, nodes, pki.csms_tls(), 2, {"CP1": "pw-cp1"})
    flows.append(asyncio.create_task(answer_boots(shim, node)))
    async with connect(
        f"wss://localhost:{port}/ocpp/CP1",
        ssl=pki.client_ssl(),
        subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
        additional_headers=auth_header("CP1", "pw-cp1"),
        open_timeout=5,
    ) as ws:
        assert ws.subprotocol == "ocpp2.0.1"
        ssl_object = ws.transport.get_extra_info("ssl_object")
        assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        # the certificate served is the one from the tls object
        served = ssl_object.getpeercert()
        assert ("DNS", "localhost") in served["subjectAltName"]
        answer = await boot_raw_station(ws)
    assert answer[:2] == [3, "boot-1"] and answer[2]["status"] == "Accepted"
    # TLS does not replace Basic auth under profile 2
    for headers in ({}, auth_header("CP1", "wrong")):
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(
                f"wss://localhost:{port}/ocpp/CP1",
                ssl=pki.client_ssl(),
                subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                additional_headers=headers,
                open_timeout=5,
            ):
                pass
        assert info.value.response.status_code == 401


async def test_p2_csms_speaks_no_plain_websocket(
    shim: ShimDouble, nodes: list[str], pki: Pki
) -> None:
    _node, port = await start_csms(shim, nodes, pki.csms_tls(), 2, {"CP1": "pw-cp1"})
    with pytest.raises((websockets.InvalidMessage, websockets.InvalidHandshake, OSError, EOFError)):
        async with connect(
            f"ws://127.0.0.1:{port}/ocpp/CP1",
            subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
            additional_headers=auth_header("CP1", "pw-cp1"),
            open_timeout=5,
        ):
            pass


async def test_p2_csms_without_cert_and_key_refuses_to_listen(
    shim: ShimDouble, nodes: list[str], pki: Pki
) -> None:
    for tls in (None, {"ca": pki.server_ca_pem}, {"cert": chain_pem(pki.server)}):
        node, port = await start_csms(shim, nodes, tls, 2, {"CP1": "x"}, expect="config error")
        errors = await shim.wait_for(lambda node=node: logs(shim, node, "error"))
        assert any("certificate and private key" in text for text in errors), errors
        assert "0 connected" not in shim.statuses(node)
        assert_not_listening(port)


@pytest.mark.parametrize(
    ("first", "second", "words"),
    [
        pytest.param("server", "server", "one RSA and one ECDSA", id="two-ecdsa"),
        pytest.param("server_rsa", "server_rsa", "one RSA and one ECDSA", id="two-rsa"),
        pytest.param(None, "server_rsa", "needs the first", id="second-without-first"),
        pytest.param("server", "no-key", "second TLS configuration has no", id="second-no-key"),
        pytest.param("server", "garbage", "certificate cannot be read", id="second-unreadable"),
    ],
)
async def test_two_certificates_must_be_one_rsa_and_one_ecdsa(
    shim: ShimDouble, nodes: list[str], pki: Pki, first: str | None, second: str, words: str
) -> None:
    """A second certificate of the same key type would silently replace the first."""
    fields: dict[str, Any] = {}
    if first is not None:
        fields["tls"] = pki.csms_tls(getattr(pki, first))
    if second == "no-key":
        fields["tls2"] = {"cert": chain_pem(pki.server_rsa)}
    elif second == "garbage":
        garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        fields["tls2"] = {"cert": garbage, "key": key_pem(pki.server_rsa)}
    else:
        fields["tls2"] = pki.csms_tls(getattr(pki, second))
    node = f"csms{next_number()}"
    nodes.append(node)
    port = await common.start_csms(
        shim,
        node,
        {},
        {"security_profile": 1 if first is None else 2},
        expect="config error",
        **fields,
    )
    errors = await shim.wait_for(lambda: logs(shim, node, "error"))
    assert any(words in text for text in errors), errors
    assert_not_listening(port)


async def test_p2_csms_key_text_never_in_its_log(
    shim: ShimDouble, nodes: list[str], pki: Pki
) -> None:
    # a key that does not match the certificate: refused, and the log does not echo the key
    other = pki.server_ca.issue_cert("localhost")
    tls = {"cert": chain_pem(pki.server), "key": key_pem(other)}
    node, port = await start_csms(shim, nodes, tls, 2, {}, expect="config error")
    errors = await shim.wait_for(lambda: logs(shim, node, "error"))
    assert any("does not load" in t for t in errors), errors
    text = json.dumps(shim.frames[node])
    assert "PRIVATE KEY" not in text and key_pem(other).splitlines()[1] not in text
    assert_not_listening(port)


# -- profile 2: the CS verifies the CSMS ---------------------------------------------------


async def test_p2_cs_node_boots_over_wss_against_our_csms(
    shim: ShimDouble, nodes: list[str], flows: list[asyncio.Task[None]], pki: Pki
) -> None:
    csms, port = await start_csms(shim, nodes, pki.csms_tls(), 2, {"CP1": "pw-cp1"})
    flows.append(asyncio.create_task(answer_boots(shim, csms)))
    cs = start_cs(
        shim, nodes, f"wss://127.0.0.1:{port}/ocpp", 2, {"ca": pki.server_ca_pem, "verify": True}
    )
    await shim.wait_for(lambda: "connected" in shim.statuses(cs))
    await shim.wait_for(lambda: "1 connected" in shim.statuses(csms))
    seq = shim.input(cs, {"payload": {"command": "BootNotification", "data": BOOT}})
    done = await shim.done(seq)
    assert "error" not in done, done
    answer = [m for m in shim.sent(cs, 0) if m.get("topic") == "CP1/Response"]
    assert answer and answer[-1]["payload"]["data"]["status"] == "Accepted"


@dataclass
class Refusal:
    name: str
    leaf: str  # attribute of Pki
    words: tuple[str, ...]  # the CS's log line says


@pytest.mark.parametrize(
    "case",
    [
        Refusal("other-ca", "rogue_server", ("not trusted",)),
        Refusal("expired", "expired", ("not trusted", "expired")),
        Refusal("wrong-host", "wrong_host", ("not trusted",)),
    ],
    ids=lambda case: case.name,
)
async def test_p2_cs_refuses_a_server_certificate_it_cannot_trust(
    shim: ShimDouble, nodes: list[str], pki: Pki, case: Refusal
) -> None:
    csms, port = await start_csms(
        shim, nodes, pki.csms_tls(getattr(pki, case.leaf)), 2, {"CP1": "pw-cp1"}
    )
    cs = start_cs(shim, nodes, f"wss://127.0.0.1:{port}/ocpp", 2, {"ca": pki.server_ca_pem})
    line = await shim.wait_for(
        lambda: next((t for t in logs(shim, cs, "warn") if "TLS" in t or "certificate" in t), None)
    )
    for word in case.words:
        assert word in line, line
    assert "connected" not in shim.statuses(cs)
    assert "1 connected" not in shim.statuses(csms)
    assert not [m for m in shim.sent(cs, 0) if m.get("ocpp", {}).get("websocket") == "ONLINE"]


async def test_p2_cs_without_ca_uses_system_trust_and_refuses_a_private_ca(
    shim: ShimDouble, nodes: list[str], pki: Pki
) -> None:
    csms, port = await start_csms(shim, nodes, pki.csms_tls(), 2, {"CP1": "pw-cp1"})
    cs = start_cs(shim, nodes, f"wss://127.0.0.1:{port}/ocpp", 2, None)
    line = await shim.wait_for(lambda: next(iter(logs(shim, cs, "warn")), None))
    assert "not trusted" in line, line
    assert "1 connected" not in shim.statuses(csms)


@pytest.mark.parametrize(
    ("url", "password", "words"),
    [
        ("ws://127.0.0.1:{port}/ocpp", "pw-cp1", "wss://"),
        ("wss://127.0.0.1:{port}/ocpp", None, "password"),
    ],
    ids=["ws-url", "no-password"],
)
async def test_p2_cs_config_error_when_requirements_missing(
    shim: ShimDouble, nodes: list[str], pki: Pki, url: str, password: str | None, words: str
) -> None:
    # a CSMS that would accept it, to see that no attempt is made at all
    csms, port = await start_csms(shim, nodes, None, 1, {"CP1": "pw-cp1"})
    cs = start_cs(
        shim, nodes, url.format(port=port), 2, {"ca": pki.server_ca_pem}, password=password
    )
    await shim.wait_for(lambda: "config error" in shim.statuses(cs))
    errors = await shim.wait_for(lambda: logs(shim, cs, "error"))
    assert any(words in text and "profile 2" in text for text in errors), errors
    await asyncio.sleep(0.3)
    assert "connecting" not in shim.statuses(cs)
    assert "1 connected" not in shim.statuses(csms)


# -- profile 3 -------------------------------------------------------------------------------


async def test_p3_station_without_client_certificate_fails_the_tls_handshake(
    shim: ShimDouble, nodes: list[str], pki: Pki
) -> None:
    csms, port = await start_csms(shim, nodes, pki.csms_tls(profile3=True), 3, {"CP1": "pw"})
    with pytest.raises(Exception) as info:
        async with connect(
            f"wss://localhost:{port}/ocpp/CP1",
            ssl=pki.client_ssl(),
            subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
            additional_headers=auth_header("CP1", "pw"),  # a right password does not help
            open_timeout=5,
        ):
            pass
    # refused in TLS, not by an HTTP answer
    assert not isinstance(info.value, websockets.InvalidStatus), info.value
    assert "1 connected" not in shim.statuses(csms)


async def test_p3_station_certificate_from_another_ca_fails_the_tls_handshake(
    shim: ShimDouble, nodes: list[str], pki: Pki
) -> None:
    csms, port = await start_csms(shim, nodes, pki.csms_tls(profile3=True), 3)
    forged = pki.station("CP1", ca=pki.rogue_ca)  # right CN, wrong issuer
    with pytest.raises(Exception) as info:
        async with connect(
            f"wss://localhost:{port}/ocpp/CP1",
            ssl=pki.client_ssl(forged),
            subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
            open_timeout=5,
        ):
            pass
    assert not isinstance(info.value, websockets.InvalidStatus), info.value
    assert "1 connected" not in shim.statuses(csms)


async def test_p3_certificate_of_another_cbid_gets_403(
    shim: ShimDouble, nodes: list[str], pki: Pki
) -> None:
    csms, port = await start_csms(
        shim, nodes, pki.csms_tls(profile3=True), 3, {"CP1": "pw", "CP2": "pw"}
    )
    with pytest.raises(websockets.InvalidStatus) as info:
        async with connect(
            f"wss://localhost:{port}/ocpp/CP1",
            ssl=pki.client_ssl(pki.station("CP2")),
            subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
            additional_headers=auth_header("CP1", "pw"),  # a right password does not help either
            open_timeout=5,
        ):
            pass
    assert info.value.response.status_code == 403
    assert "1 connected" not in shim.statuses(csms)


async def test_p3_own_certificate_accepted_without_password(
    shim: ShimDouble, nodes: list[str], flows: list[asyncio.Task[None]], pki: Pki
) -> None:
    csms, port = await start_csms(shim, nodes, pki.csms_tls(profile3=True), 3, {})
    flows.append(asyncio.create_task(answer_boots(shim, csms)))
    async with connect(
        f"wss://localhost:{port}/ocpp/CP1",
        ssl=pki.client_ssl(pki.station("CP1")),
        subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
        open_timeout=5,
    ) as ws:
        assert ws.subprotocol == "ocpp2.0.1"
        answer = await boot_raw_station(ws)
    assert answer[2]["status"] == "Accepted"
    request = next(m for m in shim.sent(csms, 0) if m.get("topic") == "CP1/Request")
    assert request["ocpp"]["cbId"] == "CP1"


class FakeWssCsms:
    """A websockets server under profile 3 that records each handshake request."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.requests: list[Headers] = []
        self.client_cns: list[str | None] = []
        self.port = free_port()

    def _process_request(self, connection: ServerConnection, request: Request) -> None:
        self.requests.append(request.headers)
        cert = connection.transport.get_extra_info("peercert")
        cn = None
        for entry in (cert or {}).get("subject", ()):
            for key, value in entry:
                if key == "commonName":
                    cn = value
        self.client_cns.append(cn)

    async def _handler(self, connection: ServerConnection) -> None:
        await connection.wait_closed()

    async def __aenter__(self) -> FakeWssCsms:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.pki.server.configure_cert(context)
        self.pki.station_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
        self.server = await serve(
            self._handler,
            "127.0.0.1",
            self.port,
            ssl=context,
            subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
            process_request=self._process_request,
        )
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.close()
        await self.server.wait_closed()


async def test_p3_cs_node_sends_its_certificate_and_no_authorization_header(
    shim: ShimDouble, nodes: list[str], pki: Pki
) -> None:
    leaf = pki.station("CP1")
    async with FakeWssCsms(pki) as fake:
        cs = start_cs(
            shim,
            nodes,
            f"wss://127.0.0.1:{fake.port}/ocpp",
            3,
            {"cert": chain_pem(leaf), "key": key_pem(leaf), "ca": pki.server_ca_pem},
            password="pw-that-must-not-be-sent",  # configured, still not sent
        )
        await shim.wait_for(lambda: "connected" in shim.statuses(cs))
        assert len(fake.requests) == 1
        assert "Authorization" not in fake.requests[0], dict(fake.requests[0].raw_items())
        assert fake.client_cns == ["CP1"]
        await shim.close_node(cs)
        nodes.remove(cs)


async def test_p3_cs_node_boots_against_our_p3_csms(
    shim: ShimDouble, nodes: list[str], flows: list[asyncio.Task[None]], pki: Pki
) -> None:
    csms, port = await start_csms(shim, nodes, pki.csms_tls(profile3=True), 3, {})
    flows.append(asyncio.create_task(answer_boots(shim, csms)))
    leaf = pki.station("CP7")
    cs = start_cs(
        shim,
        nodes,
        f"wss://localhost:{port}/ocpp",
        3,
        {"cert": chain_pem(leaf), "key": key_pem(leaf), "ca": pki.server_ca_pem},
        cb_id="CP7",
        password=None,
    )
    await shim.wait_for(lambda: "connected" in shim.statuses(cs))
    seq = shim.input(cs, {"payload": {"command": "BootNotification", "data": BOOT}})
    assert "error" not in await shim.done(seq)
    # a CS node whose certificate names another station is refused with 403
    cs2 = start_cs(
        shim,
        nodes,
        f"wss://localhost:{port}/ocpp",
        3,
        {"cert": chain_pem(leaf), "key": key_pem(leaf), "ca": pki.server_ca_pem},
        cb_id="CP8",
        password=None,
    )
    line = await shim.wait_for(lambda: next(iter(logs(shim, cs2, "warn")), None))
    assert "403" in line, line


@pytest.mark.parametrize(
    "tls",
    [None, "ca-only", "cert-without-key"],
)
async def test_p3_cs_without_certificate_is_a_config_error(
    shim: ShimDouble, nodes: list[str], pki: Pki, tls: str | None
) -> None:
    leaf = pki.station("CP1")
    options = {
        None: None,
        "ca-only": {"ca": pki.server_ca_pem},
        "cert-without-key": {"cert": chain_pem(leaf), "ca": pki.server_ca_pem},
    }[tls]
    cs = start_cs(shim, nodes, "wss://127.0.0.1:1/ocpp", 3, options)
    await shim.wait_for(lambda: "config error" in shim.statuses(cs))
    errors = await shim.wait_for(lambda: logs(shim, cs, "error"))
    assert any("profile 3" in t and "certificate" in t for t in errors), errors
    assert "connecting" not in shim.statuses(cs)


async def test_p3_csms_without_station_ca_refuses_to_listen(
    shim: ShimDouble, nodes: list[str], pki: Pki
) -> None:
    node, port = await start_csms(shim, nodes, pki.csms_tls(), 3, expect="config error")
    errors = await shim.wait_for(lambda: logs(shim, node, "error"))
    assert any("CA" in t for t in errors), errors
    assert_not_listening(port)


# -- protocol versions and cipher suites -------------------------------------------------------


def legacy_client(maximum: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # OpenSSL 3 refuses TLS < 1.2 at its default security level, on our side too
    context.set_ciphers("DEFAULT@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = maximum
    return context


async def legacy_server(pki: Pki) -> asyncio.Server:
    """A control server that does speak TLS 1.0 / 1.1, to prove the client can."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("DEFAULT@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1
    pki.server_rsa.configure_cert(context)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLSv1.0", "TLSv1.1"]
)
async def test_tls_below_1_2_refused_by_csms(
    shim: ShimDouble, nodes: list[str], pki: Pki, version: ssl.TLSVersion
) -> None:
    _node, port = await start_csms(shim, nodes, pki.csms_tls(pki.server_rsa), 2, {})
    control = await legacy_server(pki)
    control_port = control.sockets[0].getsockname()[1]
    try:
        try:
            spoken, _cipher = await tls_handshake(control_port, legacy_client(version))
            client_can = spoken == {"TLSv1": "TLSv1", "TLSv1_1": "TLSv1.1"}[version.name]
        except (ssl.SSLError, OSError):
            # This OpenSSL cannot speak the old version at all (built without
            # it): then all we can show is that the handshake with us fails.
            client_can = False
    finally:
        control.close()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await tls_handshake(port, legacy_client(version))
    # the same client, allowed 1.2, gets in: the refusal is about the version
    modern = legacy_client(ssl.TLSVersion.TLSv1_2)
    assert (await tls_handshake(port, modern))[0] == "TLSv1.2"
    if not client_can:
        pytest.xfail(f"the local OpenSSL cannot speak {version.name}; only the failure was checked")


@pytest.mark.parametrize(
    "suite",
    [
        "AES128-GCM-SHA256",  # TLS_RSA_WITH_AES_128_GCM_SHA256
        "AES256-GCM-SHA384",  # TLS_RSA_WITH_AES_256_GCM_SHA384
        "ECDHE-ECDSA-AES128-GCM-SHA256",  # TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        "ECDHE-ECDSA-AES256-GCM-SHA384",  # TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    ],
)
async def test_csms_offers_the_four_suites_part_2_requires(
    shim: ShimDouble, nodes: list[str], pki: Pki, suite: str
) -> None:
    """One node, an ECDSA certificate (``tls``) and an RSA one (``tls2``)."""
    node = f"csms{next_number()}"
    nodes.append(node)
    port = await common.start_csms(
        shim,
        node,
        {"CP1": "pw"},
        {"security_profile": 2},
        tls=pki.csms_tls(pki.server),
        tls2=pki.csms_tls(pki.server_rsa),
    )
    context = pki.client_ssl()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(suite)
    version, cipher = await tls_handshake(port, context)
    assert (version, cipher) == ("TLSv1.2", suite)
    # and a whole station session over it
    async with connect(
        f"wss://localhost:{port}/ocpp/CP1",
        ssl=context,
        subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
        additional_headers=auth_header("CP1", "pw"),
        open_timeout=5,
    ) as ws:
        assert ws.transport.get_extra_info("ssl_object").cipher()[0] == suite


async def test_csms_refuses_a_client_limited_to_weak_suites(
    shim: ShimDouble, nodes: list[str], pki: Pki
) -> None:
    _node, port = await start_csms(shim, nodes, pki.csms_tls(pki.server_rsa), 2, {})
    context = pki.client_ssl()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("AES128-SHA:@SECLEVEL=0")  # CBC with SHA-1, not in any list of ours
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await tls_handshake(port, context)
