"""Why a CS node's connection attempt failed (ocpp_nodes/transport/failures.py):
each exception a connection attempt can raise, named for the flow, never
with an empty reason. The same failures through a real Node-RED against
real peers: tests/test_connection_failures.py."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader, InvalidStatus
from websockets.http11 import Response

from ocpp_nodes.rpc import V201, SecurityEvent
from ocpp_nodes.transport import failures
from ocpp_nodes.transport.failures import failure_of


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_code = code
    exc.verify_message = message
    return exc


def ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] ...")
    exc.reason = reason
    return exc


def refused_with(status: int) -> InvalidStatus:
    return InvalidStatus(Response(status, "", Headers()))


@pytest.mark.parametrize(
    ("exc", "cause", "event", "words"),
    [
        pytest.param(
            verify_error(20, "unable to get local issuer certificate"),
            failures.CERTIFICATE_UNTRUSTED,
            SecurityEvent.INVALID_CSMS_CERTIFICATE,
            "local issuer",
            id="untrusted",
        ),
        pytest.param(
            verify_error(10, "certificate has expired"),
            failures.CERTIFICATE_EXPIRED,
            SecurityEvent.INVALID_CSMS_CERTIFICATE,
            "expired",
            id="expired",
        ),
        pytest.param(
            verify_error(62, "Hostname mismatch, certificate is not valid for 'x'."),
            failures.CERTIFICATE_NAME_MISMATCH,
            SecurityEvent.INVALID_CSMS_CERTIFICATE,
            "mismatch",
            id="wrong-name",
        ),
        pytest.param(
            ssl_error("TLSV1_ALERT_PROTOCOL_VERSION"),
            failures.TLS_VERSION,
            SecurityEvent.INVALID_TLS_VERSION,
            "no TLS version in common",
            id="version-alert",
        ),
        pytest.param(
            ssl_error("SSLV3_ALERT_HANDSHAKE_FAILURE"),
            failures.TLS_CIPHER_SUITE,
            SecurityEvent.INVALID_TLS_CIPHER_SUITE,
            "no cipher suite in common",
            id="cipher-alert",
        ),
        pytest.param(
            ssl_error("BAD_RECORD_MAC"), failures.TLS_HANDSHAKE, None, "BAD_RECORD_MAC", id="tls"
        ),
        pytest.param(
            ssl_error("WRONG_VERSION_NUMBER"),
            failures.TLS_HANDSHAKE,
            None,
            "does not answer in TLS",
            id="not-tls",
        ),
        pytest.param(
            refused_with(401),
            failures.CREDENTIALS,
            SecurityEvent.FAILED_TO_AUTHENTICATE_AT_CSMS,
            "HTTP 401",
            id="401",
        ),
        pytest.param(refused_with(404), failures.UNKNOWN_IDENTITY, None, "HTTP 404", id="404"),
        pytest.param(refused_with(503), failures.HTTP_STATUS, None, "HTTP 503", id="503"),
        pytest.param(
            socket.gaierror(-2, "Name or service not known"),
            failures.DNS,
            None,
            "Name or service",
            id="dns",
        ),
        pytest.param(
            ConnectionRefusedError(111, "Connection refused"),
            failures.REFUSED,
            None,
            "refused",
            id="refused",
        ),
        pytest.param(TimeoutError(), failures.TIMEOUT, None, "TimeoutError", id="timeout-bare"),
        pytest.param(
            asyncio.TimeoutError("timed out during opening handshake"),
            failures.TIMEOUT,
            None,
            "opening handshake",
            id="timeout",
        ),
        pytest.param(
            ConnectionResetError(), failures.NETWORK, None, "ConnectionResetError", id="reset"
        ),
        pytest.param(
            InvalidHeader("Sec-WebSocket-Accept"), failures.HANDSHAKE, None, "Accept", id="ws"
        ),
    ],
)
def test_each_failure_has_its_cause_its_event_and_a_reason(
    exc: BaseException, cause: str, event: SecurityEvent | None, words: str
) -> None:
    failure = failure_of(exc)
    assert failure.cause == cause
    assert failure.security_event is event
    assert words in failure.reason and not failure.reason.endswith(": ")


def test_the_version_names_the_security_events() -> None:
    """OCPP 2.0.1 part 2, appendix "Security events"."""
    assert V201.security_events == {
        SecurityEvent.INVALID_CSMS_CERTIFICATE: "InvalidCsmsCertificate",
        SecurityEvent.INVALID_TLS_VERSION: "InvalidTLSVersion",
        SecurityEvent.INVALID_TLS_CIPHER_SUITE: "InvalidTLSCipherSuite",
        SecurityEvent.FAILED_TO_AUTHENTICATE_AT_CSMS: "FailedToAuthenticateAtCsms",
    }


def test_http_status_travels_with_a_refusal() -> None:
    assert failure_of(refused_with(401)).http_status == 401
    assert failure_of(ssl_error("X")).http_status is None


@pytest.mark.parametrize(
    ("exc", "label"),
    [
        (refused_with(401), "401"),
        (refused_with(403), "403"),
        (refused_with(404), "404"),
        (refused_with(409), "409"),
        (refused_with(503), "503"),
        (refused_with(500), "HTTP 500"),
        (ConnectionRefusedError(111, "Connect call failed"), "refused"),
        (socket.gaierror(-2, "Name or service not known"), "unreachable"),
        (OSError(113, "No route to host"), "unreachable"),
        (asyncio.TimeoutError(), "timeout"),
        (verify_error(10, "certificate has expired"), "TLS error"),
        (ssl_error("NO_SHARED_CIPHER"), "TLS error"),
        (ssl_error("WRONG_VERSION_NUMBER"), "TLS error"),
        (InvalidHeader("Upgrade"), "closed"),
    ],
)
def test_the_status_names_each_cause_in_a_word(exc: BaseException, label: str) -> None:
    assert failure_of(exc).status_label == label


def test_a_subprotocol_refusal_is_no_ocpp_version() -> None:
    failure = failures.ConnectFailure(failures.SUBPROTOCOL, "CSMS did not select ocpp2.0.1")
    assert failure.status_label == "no OCPP version"


def test_the_url_tried_is_named_and_a_password_in_it_masked() -> None:
    url = "ws://127.0.0.1:9/ocpp/CS1"
    failure = failure_of(ConnectionRefusedError(111, "Connect call failed")).tried(url)
    assert failure.reason.endswith(f"(tried {url})") and failure.cause == failures.REFUSED
    secret = "ws://me:s3cret@csms.example:9/ocpp/CS1"
    failure = failure_of(InvalidHeader("Location", secret)).tried(secret)
    assert "s3cret" not in failure.reason, failure.reason
    assert failure.reason.endswith("(tried ws://me:***@csms.example:9/ocpp/CS1)")
    assert failures.shown_url("wss://h/ocpp/CS1") == "wss://h/ocpp/CS1"
