"""Why a Charging Station's connection attempt failed, named for the flow.

Theory of operation:

1. :func:`failure_of` turns what a connection attempt raised into a
   :class:`ConnectFailure`: a stable ``cause`` a flow can switch on, a
   one-line ``reason`` for people (never empty), and the CSMS's HTTP status
   when it answered one. The causes are the constants below.
2. A server that closes the connection in the middle of the TLS handshake,
   without an alert, says nothing about why. :func:`probe_tls_version` then
   asks it once more, offering only TLS 1.0 and 1.1, no certificate checked
   and nothing sent after the handshake: if that handshake completes, the
   CSMS speaks only a version OCPP forbids (``tls-version``).
3. Where an OCPP security event fits the cause, the failure names it
   (:class:`~ocpp_nodes.rpc.SecurityEvent`); how a version spells it is the
   version's business (``OcppVersion.security_events``).
4. The client names the URL it tried in the reason (:meth:`ConnectFailure.
   tried`), with any password of the URL's user info masked
   (:func:`shown_url`); the node's status names the cause in a word or two
   (:attr:`ConnectFailure.status_label`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import InvalidHandshake, InvalidStatus

from ..rpc import SecurityEvent

__all__ = [
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_NAME_MISMATCH",
    "CERTIFICATE_UNTRUSTED",
    "CREDENTIALS",
    "ConnectFailure",
    "DNS",
    "HANDSHAKE",
    "HTTP_STATUS",
    "INTERNAL",
    "NETWORK",
    "REFUSED",
    "SUBPROTOCOL",
    "TIMEOUT",
    "TLS_CIPHER_SUITE",
    "TLS_HANDSHAKE",
    "TLS_VERSION",
    "UNKNOWN_IDENTITY",
    "failure_of",
    "probe_tls_version",
    "shown_url",
]

CERTIFICATE_UNTRUSTED = "certificate-untrusted"
CERTIFICATE_EXPIRED = "certificate-expired"
CERTIFICATE_NAME_MISMATCH = "certificate-name-mismatch"
TLS_VERSION = "tls-version"
TLS_CIPHER_SUITE = "tls-cipher-suite"
TLS_HANDSHAKE = "tls-handshake"
CREDENTIALS = "credentials"
UNKNOWN_IDENTITY = "unknown-identity"
HTTP_STATUS = "http-status"
HANDSHAKE = "handshake"
SUBPROTOCOL = "subprotocol"
DNS = "dns"
REFUSED = "refused"
TIMEOUT = "timeout"
NETWORK = "network"
INTERNAL = "internal"

_EVENTS = {
    CERTIFICATE_UNTRUSTED: SecurityEvent.INVALID_CSMS_CERTIFICATE,
    CERTIFICATE_EXPIRED: SecurityEvent.INVALID_CSMS_CERTIFICATE,
    CERTIFICATE_NAME_MISMATCH: SecurityEvent.INVALID_CSMS_CERTIFICATE,
    TLS_VERSION: SecurityEvent.INVALID_TLS_VERSION,
    TLS_CIPHER_SUITE: SecurityEvent.INVALID_TLS_CIPHER_SUITE,
    CREDENTIALS: SecurityEvent.FAILED_TO_AUTHENTICATE_AT_CSMS,
}

# OpenSSL's X509_V_ERR_* codes (x509_vfy.h) that say more than "not trusted"
_EXPIRED_CODES = {9, 10}  # CERT_NOT_YET_VALID, CERT_HAS_EXPIRED
_NAME_CODES = {62, 64}  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
# OpenSSL's reasons of a handshake refused over the protocol version
_VERSION_REASONS = {
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "UNSUPPORTED_PROTOCOL",
    "NO_PROTOCOLS_AVAILABLE",
    "VERSION_TOO_LOW",
}
_CIPHER_REASONS = {"SSLV3_ALERT_HANDSHAKE_FAILURE", "NO_SHARED_CIPHER", "NO_CIPHERS_AVAILABLE"}


@dataclass(frozen=True)
class ConnectFailure:
    """Why one connection attempt failed.

    Attributes:
        cause: one of this module's constants (``"certificate-untrusted"`` ...).
        reason: one line for people; never empty, never a secret.
        http_status: the CSMS's HTTP answer to the upgrade, when it gave one.
    """

    cause: str
    reason: str
    http_status: int | None = None

    @property
    def security_event(self) -> SecurityEvent | None:
        """The OCPP security event this failure is, if one fits."""
        return _EVENTS.get(self.cause)

    @property
    def status_label(self) -> str:
        """The cause as the CS node's status says it: ``"401"``, ``"refused"`` ..."""
        if self.http_status is not None:
            code = self.http_status
            return str(code) if code in _STATUS_CODES_SHOWN else f"HTTP {code}"
        return _STATUS_LABELS.get(self.cause, "closed")

    def tried(self, url: str) -> ConnectFailure:
        """This failure with the URL that was tried named in its reason."""
        shown = shown_url(url)
        reason = self.reason.replace(url, shown)
        password = urlsplit(url).password
        if password:
            reason = reason.replace(password, "***")
        return dataclasses.replace(self, reason=f"{reason} (tried {shown})")


#: HTTP answers the CS node's status names by their code alone
_STATUS_CODES_SHOWN = {401, 403, 404, 409, 503}
_STATUS_LABELS = {
    REFUSED: "refused",
    DNS: "unreachable",
    NETWORK: "unreachable",
    TIMEOUT: "timeout",
    SUBPROTOCOL: "no OCPP version",
    CERTIFICATE_UNTRUSTED: "TLS error",
    CERTIFICATE_EXPIRED: "TLS error",
    CERTIFICATE_NAME_MISMATCH: "TLS error",
    TLS_VERSION: "TLS error",
    TLS_CIPHER_SUITE: "TLS error",
    TLS_HANDSHAKE: "TLS error",
}


def shown_url(url: str) -> str:
    """``url`` with the password of its user info, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def failure_of(exc: BaseException) -> ConnectFailure:
    """What a connection attempt that raised ``exc`` tells the flow."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status == 401:
            return ConnectFailure(CREDENTIALS, "CSMS refused the credentials (HTTP 401)", status)
        if status == 404:
            return ConnectFailure(
                UNKNOWN_IDENTITY, "CSMS does not know this cbId (HTTP 404)", status
            )
        return ConnectFailure(HTTP_STATUS, f"CSMS answered HTTP {status}", status)
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or _text(exc)
        if exc.verify_code in _EXPIRED_CODES:
            cause = CERTIFICATE_EXPIRED
        elif exc.verify_code in _NAME_CODES:
            cause = CERTIFICATE_NAME_MISMATCH
        else:
            cause = CERTIFICATE_UNTRUSTED
        return ConnectFailure(cause, f"the CSMS's TLS certificate is not trusted: {why}")
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
        reason = exc.reason or ""
        if reason in _VERSION_REASONS:
            return ConnectFailure(
                TLS_VERSION, f"TLS handshake failed: no TLS version in common ({reason})"
            )
        if reason in _CIPHER_REASONS:
            return ConnectFailure(
                TLS_CIPHER_SUITE, f"TLS handshake failed: no cipher suite in common ({reason})"
            )
        if reason == "WRONG_VERSION_NUMBER":  # what came back is not TLS at all
            return ConnectFailure(
                TLS_HANDSHAKE,
                "TLS handshake failed: the CSMS does not answer in TLS "
                "(a wss:// URL for a ws:// server?)",
            )
        return ConnectFailure(TLS_HANDSHAKE, f"TLS handshake failed: {reason or _text(exc)}")
    if isinstance(exc, socket.gaierror):
        return ConnectFailure(DNS, f"cannot resolve the CSMS's host name: {_text(exc)}")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectFailure(REFUSED, f"the CSMS refused the connection: {_text(exc)}")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return ConnectFailure(TIMEOUT, f"no connection within the time allowed: {_text(exc)}")
    if isinstance(exc, OSError):
        return ConnectFailure(NETWORK, f"cannot connect: {_text(exc)}")
    if isinstance(exc, InvalidHandshake):
        return ConnectFailure(HANDSHAKE, f"websocket handshake failed: {_text(exc)}")
    return ConnectFailure(HANDSHAKE, f"handshake failed: {_text(exc)}")


async def probe_tls_version(
    host: str, port: int, servername: str | None, timeout: float = 5.0
) -> str | None:
    """The TLS version older than 1.2 that the server at ``host:port`` completes
    a handshake in (``"TLSv1.1"``), or ``None``.

    Only a diagnosis: no certificate is checked and nothing is sent after the
    handshake, which is closed at once.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT@SECLEVEL=0")
    except (ValueError, ssl.SSLError):  # an OpenSSL built without them
        return None
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=servername or host),
            timeout,
        )
    except (OSError, asyncio.TimeoutError):
        return None
    ssl_object = writer.get_extra_info("ssl_object")
    version = ssl_object.version() if ssl_object is not None else None
    writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    return version if isinstance(version, str) else None
