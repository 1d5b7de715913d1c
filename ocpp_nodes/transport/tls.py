"""TLS for security profiles 2 and 3 (OCPP 2.0.1 part 2, security).

The shim hands over what Node-RED's ``tls-config`` node holds (PEM text of
the certificate, key and CA, the key's passphrase, whether to verify the
server). This module turns it into :class:`ssl.SSLContext` objects:

1. Both sides speak TLS 1.2 or newer, never older.
2. A CSMS must accept TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
   TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_RSA_WITH_AES_128_GCM_SHA256 and
   TLS_RSA_WITH_AES_256_GCM_SHA384. The two plain-RSA suites are not in
   Python's default list, so the server context names them. (The ECDSA ones
   need an EC certificate, the RSA ones an RSA certificate.)
3. Under profile 3 the server requires a client certificate signed by its CA.
4. ``ssl`` loads certificate chains only from files: the PEM text is written
   to a private temporary directory, loaded, and removed at once.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["TlsMaterial", "client_context", "peer_common_name", "server_context"]

# The suites part 2 requires of a CSMS, in OpenSSL's names.
REQUIRED_SERVER_SUITES = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
)


@dataclass(frozen=True)
class TlsMaterial:
    """What a ``tls-config`` node gives, as text. Never logged: it holds a key."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    passphrase: str | None = None
    verify_server: bool = True
    servername: str | None = None

    def __repr__(self) -> str:  # keep key material out of any log line
        return f"TlsMaterial(cert={bool(self.cert)}, key={bool(self.key)}, ca={bool(self.ca)})"

    @property
    def has_identity(self) -> bool:
        """A certificate and its key: what a server, or a profile 3 client, needs."""
        return bool(self.cert and self.key)

    @classmethod
    def from_options(cls, options: Any) -> TlsMaterial | None:
        """From the ``tls`` object of a ``create`` frame; ``None`` when absent."""
        if not isinstance(options, dict) or not options:
            return None

        def text(name: str) -> str | None:
            value = options.get(name)
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            return value if isinstance(value, str) and value.strip() else None

        return cls(
            cert=text("cert"),
            key=text("key"),
            ca=text("ca"),
            passphrase=text("passphrase"),
            verify_server=options.get("verify", True) is not False,
            servername=text("servername"),
        )


@contextlib.contextmanager
def _pem_files(material: TlsMaterial) -> Iterator[tuple[str, str]]:
    with tempfile.TemporaryDirectory(prefix="ocpp-nodes-tls-") as directory:
        os.chmod(directory, 0o700)
        cert_path = os.path.join(directory, "cert.pem")
        key_path = os.path.join(directory, "key.pem")
        for path, text in ((cert_path, material.cert), (key_path, material.key)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(text or "")
        yield cert_path, key_path


def _load_identity(context: ssl.SSLContext, material: TlsMaterial) -> None:
    with _pem_files(material) as (cert_path, key_path):
        context.load_cert_chain(cert_path, key_path, password=material.passphrase)


def server_context(material: TlsMaterial, require_client_certificate: bool) -> ssl.SSLContext:
    """The CSMS's context.

    Raises:
        ValueError: no certificate and key, or no CA to check client
            certificates against when they are required.
        ssl.SSLError: the PEM text does not load (wrong passphrase, key that
            does not match the certificate ...).
    """
    if not material.has_identity:
        raise ValueError("the TLS configuration has no certificate and private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    defaults = [c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"]
    context.set_ciphers(":".join(dict.fromkeys([*defaults, *REQUIRED_SERVER_SUITES])))
    _load_identity(context, material)
    if require_client_certificate:
        if not material.ca:
            raise ValueError("security profile 3 needs a CA certificate to check stations against")
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=material.ca)
    return context


def client_context(material: TlsMaterial | None) -> ssl.SSLContext:
    """The CS's context: the CA of ``material`` (or the system's), its
    certificate for profile 3, TLS 1.2 or newer."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if material is None:
        return context
    if material.ca:
        context = ssl.create_default_context(cadata=material.ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not material.verify_server:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if material.has_identity:
        _load_identity(context, material)
    return context


def peer_common_name(peercert: Any) -> str | None:
    """The subject CN of a certificate as ``SSLSocket.getpeercert()`` gives it."""
    if not isinstance(peercert, dict):
        return None
    for entry in peercert.get("subject", ()):
        for key, value in entry:
            if key == "commonName":
                return str(value)
    return None
