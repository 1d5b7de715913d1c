"""TLS through Node-RED's own ``tls-config`` node, in a real Node-RED: the shim
turns the config node's files into what the daemon needs.

Profile 2: a CSMS node serves ``wss://`` with the certificate and key of one
tls-config node; a CS node (profile 2) trusts the CA through another and
connects; an outside station trusting the CA connects too. Profile 3: a CS
node with a client certificate (CN = its cbId) connects to a profile-3 CSMS
node without any password. Two certificates: a CSMS node with an ECDSA and an
RSA certificate (two tls-config nodes) completes a TLS 1.2 handshake with
``openssl s_client`` in each of the four suites part 2 requires, and TLS 1.3;
the node with the ECDSA certificate alone refuses the two RSA suites.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trustme
import websockets

from tests.common import OCPP201, auth_header, client_hello
from tests.flowkit import Flow, http_api, node, recorder, wait_port
from tests.nodered import NodeRed, free_port, running_node_red

pytestmark = pytest.mark.nodered

TAB = "tls"


_node = partial(node, tab=TAB)


def _tls_config(node_id: str, **files: Path) -> dict[str, Any]:
    # A config node: no z, no wires; file paths as the dialog stores them.
    return {
        "id": node_id,
        "type": "tls-config",
        "name": f"pki {node_id[4:]}",
        "cert": str(files.get("cert", "")),
        "key": str(files.get("key", "")),
        "ca": str(files.get("ca", "")),
        "verifyservercert": True,
    }


class Pki:
    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.directory = directory
        self.ca_path = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        server = self.ca.issue_cert("127.0.0.1", "localhost")  # ECDSA (trustme's default)
        self.server_cert = directory / "server.pem"
        self.server_key = directory / "server.key"
        server.private_key_pem.write_to_path(str(self.server_key))
        self.server_cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
        server_rsa = self.ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.RSA)
        self.server_rsa_cert = directory / "server-rsa.pem"
        self.server_rsa_key = directory / "server-rsa.key"
        server_rsa.private_key_pem.write_to_path(str(self.server_rsa_key))
        self.server_rsa_cert.write_bytes(
            b"".join(blob.bytes() for blob in server_rsa.cert_chain_pems)
        )
        station = self.ca.issue_cert("TLS3", common_name="TLS3")
        self.station_cert = directory / "station.pem"
        self.station_key = directory / "station.key"
        station.private_key_pem.write_to_path(str(self.station_key))
        self.station_cert.write_bytes(b"".join(blob.bytes() for blob in station.cert_chain_pems))
        # a 1.6 station of profile 3 (security whitepaper: its CN is its identity)
        station16 = self.ca.issue_cert("TLS3V16", common_name="TLS3V16")
        self.station16_cert = directory / "station16.pem"
        self.station16_key = directory / "station16.key"
        station16.private_key_pem.write_to_path(str(self.station16_key))
        self.station16_cert.write_bytes(
            b"".join(blob.bytes() for blob in station16.cert_chain_pems)
        )


def tls_flow(
    pki: Pki, p2_port: int, p3_port: int, both_port: int, limits_port: int
) -> list[dict[str, Any]]:
    nodes = [
        {"id": TAB, "type": "tab", "label": "tls"},
        _tls_config("tls.server2", cert=pki.server_cert, key=pki.server_key),
        _tls_config("tls.serverrsa", cert=pki.server_rsa_cert, key=pki.server_rsa_key),
        _tls_config("tls.server3", cert=pki.server_cert, key=pki.server_key, ca=pki.ca_path),
        _tls_config("tls.client2", ca=pki.ca_path),
        _tls_config("tls.client3", cert=pki.station_cert, key=pki.station_key, ca=pki.ca_path),
        _tls_config(
            "tls.client3v16", cert=pki.station16_cert, key=pki.station16_key, ca=pki.ca_path
        ),
        _node(
            "csms2",
            "CSMS",
            [["rec.csms2"], []],
            port=str(p2_port),
            path="/ocpp",
            security_profile=2,
            tls="tls.server2",
            connection_events=True,
            ocpp_versions=["ocpp2.0.1", "ocpp1.6"],
            outputs=2,
            credentials={
                "basic_auths": json.dumps({"TLS2": "pw2", "OUT1": "pw-out", "TLS2V16": "pw16"})
            },
        ),
        _node(
            "csms3",
            "CSMS",
            [["rec.csms3"], []],
            port=str(p3_port),
            path="/ocpp",
            security_profile=3,
            tls="tls.server3",
            connection_events=True,
            ocpp_versions=["ocpp2.0.1", "ocpp1.6"],
            outputs=2,
            credentials={"basic_auths": "{}"},
        ),
        _node(
            "csmsboth",
            "CSMS",
            [[], []],
            port=str(both_port),
            path="/ocpp",
            security_profile=2,
            tls="tls.server2",
            tls2="tls.serverrsa",
            outputs=2,
            credentials={"basic_auths": "{}"},
        ),
        # the limits before TLS, as the dialog stores them (text)
        _node(
            "csmslimits",
            "CSMS",
            [[], []],
            port=str(limits_port),
            path="/ocpp",
            security_profile=2,
            tls="tls.server2",
            handshakes_per_address="0.01",
            upgrade_timeout="0.5",
            outputs=2,
            credentials={"basic_auths": "{}"},
        ),
        _node("t2", "target-csms", url=f"wss://127.0.0.1:{p2_port}/ocpp"),
        _node("t3", "target-csms", url=f"wss://127.0.0.1:{p3_port}/ocpp"),
        _node(
            "cs2",
            "CS",
            [["rec.cs2"], []],
            cbId="TLS2",
            csms="t2",
            auto_connect=True,
            security_profile=2,
            tls="tls.client2",
            outputs=2,
            ws_rt_minimum=0.5,
            ws_rt_repeat=0,
            ws_rt_rnd_range=0,
            credentials={"csms_pw": "pw2"},
        ),
        _node(
            "cs3",
            "CS",
            [["rec.cs3"], []],
            cbId="TLS3",
            csms="t3",
            auto_connect=True,
            security_profile=3,
            tls="tls.client3",
            outputs=2,
            ws_rt_minimum=0.5,
            ws_rt_repeat=0,
            ws_rt_rnd_range=0,
        ),
        # the same two profiles in OCPP 1.6J (security whitepaper, edition 2)
        _node(
            "cs2v16",
            "CS",
            [["rec.cs2v16"], []],
            cbId="TLS2V16",
            csms="t2",
            auto_connect=True,
            security_profile=2,
            tls="tls.client2",
            ocpp_versions=["ocpp1.6"],
            outputs=2,
            ws_rt_minimum=0.5,
            ws_rt_repeat=0,
            ws_rt_rnd_range=0,
            credentials={"csms_pw": "pw16"},
        ),
        _node(
            "cs3v16",
            "CS",
            [["rec.cs3v16"], []],
            cbId="TLS3V16",
            csms="t3",
            auto_connect=True,
            security_profile=3,
            tls="tls.client3v16",
            ocpp_versions=["ocpp1.6"],
            outputs=2,
            ws_rt_minimum=0.5,
            ws_rt_repeat=0,
            ws_rt_rnd_range=0,
        ),
        recorder("rec.cs2v16", TAB, "cs2v16"),
        recorder("rec.cs3v16", TAB, "cs3v16"),
        recorder("rec.csms2", TAB, "csms2"),
        recorder("rec.csms3", TAB, "csms3"),
        recorder("rec.cs2", TAB, "cs2"),
        recorder("rec.cs3", TAB, "cs3"),
    ]
    return nodes + http_api(TAB, {"cs2": "cs2", "cs2v16": "cs2v16", "cs3v16": "cs3v16"})


PORTS: dict[str, int] = {}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeRed, Pki, int]]:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    with running_node_red(tmp_path_factory.mktemp("tls-nr"), "test_security_nodered") as runtime:
        p2_port, p3_port, both_port, limits_port = (free_port() for _ in range(4))
        PORTS.update(csms2=p2_port, csmsboth=both_port, csmslimits=limits_port)
        runtime.deploy(tls_flow(pki, p2_port, p3_port, both_port, limits_port))
        runtime.wait_for_endpoint("GET", "/t/records")
        yield runtime, pki, p2_port


def _online(record: dict[str, Any]) -> bool:
    return (record.get("ocpp") or {}).get("websocket") == "ONLINE"


def test_profile_2_cs_node_connects_to_csms_node_over_wss(setup) -> None:
    runtime, _, _ = setup
    flow = Flow(runtime)
    flow.wait("cs2", _online, timeout=20)
    event = flow.wait("csms2", lambda r: r.get("topic") == "TLS2/Connection", timeout=20)
    assert event["ocpp"]["websocket"] == "ONLINE"
    flow.send("cs2", {"payload": {"command": "Heartbeat", "data": {}}})
    request = flow.wait("csms2", lambda r: r.get("topic") == "TLS2/Request")
    assert request["payload"]["command"] == "Heartbeat"


def test_profile_3_cs_node_connects_with_its_certificate_and_no_password(setup) -> None:
    runtime, _, _ = setup
    flow = Flow(runtime)
    flow.wait("cs3", _online, timeout=20)
    event = flow.wait("csms3", lambda r: r.get("topic") == "TLS3/Connection", timeout=20)
    assert event["ocpp"]["websocket"] == "ONLINE"


@pytest.mark.parametrize(
    ("node_id", "cb_id", "csms"), [("cs2v16", "TLS2V16", "csms2"), ("cs3v16", "TLS3V16", "csms3")]
)
def test_profiles_2_and_3_in_ocpp_1_6(setup, node_id: str, cb_id: str, csms: str) -> None:
    """The 1.6 security whitepaper's profiles: TLS + Basic auth, TLS + client certificate."""
    runtime, _, _ = setup
    flow = Flow(runtime)
    flow.wait(node_id, _online, timeout=20)
    flow.wait(csms, lambda r: r.get("topic") == f"{cb_id}/Connection", timeout=20)
    flow.send(node_id, {"payload": {"command": "Heartbeat", "data": {}}})
    request = flow.wait(csms, lambda r: r.get("topic") == f"{cb_id}/Request")
    assert request["ocpp"]["ocppVersion"] == "1.6", request


async def test_outside_station_needs_the_ca_to_reach_the_wss_csms(setup) -> None:
    runtime, pki, port = setup
    trusting = ssl.create_default_context(cafile=str(pki.ca_path))
    async with websockets.connect(
        f"wss://127.0.0.1:{port}/ocpp/OUT1",
        ssl=trusting,
        subprotocols=OCPP201,
        additional_headers=auth_header("OUT1", "pw-out"),
    ) as ws:
        await ws.send('[2,"h1","Heartbeat",{}]')
        flow = Flow(runtime)
        await flow.await_("csms2", lambda r: r.get("topic") == "OUT1/Request")
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.wait_for(
            websockets.connect(
                f"wss://127.0.0.1:{port}/ocpp/OUT1",
                ssl=ssl.create_default_context(),
                subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
            ),
            10,
        )


async def test_limits_before_tls_reach_the_engine(setup) -> None:
    """``handshakes_per_address`` 0.01 (a burst of one) and ``upgrade_timeout`` 0.5 s."""
    runtime, _, _ = setup
    port = PORTS["csmslimits"]
    # listening? asked from another address (wait_port's would take this one's token)
    await listening(port, "127.0.0.9")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(client_hello())
    assert (await asyncio.wait_for(reader.read(5), 10))[:1] == b"\x16", "a ServerHello"
    # the client never finishes its handshake: closed at the deadline
    try:
        await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        pass
    writer.close()
    # the next attempt from this address: closed at accept, not a byte of TLS
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(client_hello())
    try:
        assert await asyncio.wait_for(reader.read(5), 10) == b""
    except ConnectionResetError:
        pass
    writer.close()
    runtime.wait_for_log("1 x no websocket upgrade within upgrade_timeout")
    runtime.wait_for_log("1 x over handshakes_per_address, closed before TLS")


async def listening(port: int, local: str, timeout: float = 20.0) -> None:
    """Until a connection from ``local`` to ``port`` is accepted."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return


def s_client(port: int, ca: Path, *options: str) -> str:
    """``openssl s_client``'s handshake with 127.0.0.1:``port``: the protocol and
    cipher it agreed on (``"TLSv1.2 AES128-GCM-SHA256"``), or ``"refused"``."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca), *options],
        input=b"",
        capture_output=True,
        timeout=20,
    )
    out = done.stdout.decode(errors="replace")
    for line in out.splitlines():
        # "New, TLSv1.2, Cipher is AES128-GCM-SHA256"; "(NONE)" when refused
        if line.startswith("New, ") and "Cipher is" in line and "(NONE)" not in line:
            protocol, cipher = line[len("New, ") :].split(", Cipher is ")
            assert "Verify return code: 0 (ok)" in out, out
            return f"{protocol} {cipher}"
    return "refused"


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")

SUITES = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",  # TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    "ECDHE-ECDSA-AES256-GCM-SHA384",  # TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    "AES128-GCM-SHA256",  # TLS_RSA_WITH_AES_128_GCM_SHA256
    "AES256-GCM-SHA384",  # TLS_RSA_WITH_AES_256_GCM_SHA384
]


@needs_openssl
@pytest.mark.parametrize("suite", SUITES)
def test_one_csms_node_with_two_certificates_serves_all_four_suites(setup, suite: str) -> None:
    runtime, pki, _ = setup
    wait_port(PORTS["csmsboth"])
    assert s_client(PORTS["csmsboth"], pki.ca_path, "-tls1_2", "-cipher", suite) == (
        f"TLSv1.2 {suite}"
    )


@needs_openssl
def test_the_node_with_two_certificates_still_speaks_tls_1_3(setup) -> None:
    runtime, pki, _ = setup
    wait_port(PORTS["csmsboth"])
    assert s_client(PORTS["csmsboth"], pki.ca_path, "-tls1_3").startswith("TLSv1.3 ")


@needs_openssl
@pytest.mark.parametrize("suite", SUITES)
def test_one_ecdsa_certificate_alone_serves_only_the_ecdsa_suites(setup, suite: str) -> None:
    """The control: without the second certificate the RSA suites are refused."""
    runtime, pki, _ = setup
    wait_port(PORTS["csms2"])
    expected = f"TLSv1.2 {suite}" if "ECDSA" in suite else "refused"
    assert s_client(PORTS["csms2"], pki.ca_path, "-tls1_2", "-cipher", suite) == expected
