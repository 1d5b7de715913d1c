"""TLS for security profiles 2 and 3 (OCPP 2.0.1 part 2, security).

The shim hands over what Node-RED's ``tls-config`` node holds (PEM text of
the certificate, key and CA, the key's passphrase, whether to verify the
server). This module turns it into :class:`ssl.SSLContext` objects:

1. Both sides speak TLS 1.2 or newer, never older.
2. A CSMS must accept TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
   TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_RSA_WITH_AES_128_GCM_SHA256 and
   TLS_RSA_WITH_AES_256_GCM_SHA384. The two plain-RSA suites are not in
   Python's default list, so the server context names them. The ECDSA ones
   need an EC certificate, the RSA ones an RSA certificate: a server context
   takes a second certificate of the other key type, and OpenSSL then picks
   per handshake the one the suite needs. (A second certificate of the same
   type would silently replace the first: it is refused.)
3. Under profile 3 the server requires a client certificate signed by its CA.
4. ``ssl`` loads certificate chains only from files: the PEM text is written
   to a private temporary directory, loaded, and removed at once.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TlsMaterial",
    "certificate_key_type",
    "client_context",
    "peer_common_name",
    "server_context",
]

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


_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----", re.DOTALL
)
# The DER of the OIDs of a certificate's public key algorithm (RFC 5280, 4.1.2.7).
_KEY_ALGORITHMS = {
    bytes.fromhex("2a864886f70d010101"): "RSA",  # rsaEncryption, 1.2.840.113549.1.1.1
    bytes.fromhex("2a8648ce3d0201"): "EC",  # id-ecPublicKey, 1.2.840.10045.2.1
}


def _der_children(der: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """``(tag, value start, value end)`` of each DER element between ``start`` and ``end``."""
    children = []
    while start < end:
        tag, length = der[start], der[start + 1]
        start += 2
        if length & 0x80:  # long form: the next (length & 0x7f) bytes
            count = length & 0x7F
            length = int.from_bytes(der[start : start + count], "big")
            start += count
        if start + length > end:
            raise ValueError("truncated DER")
        children.append((tag, start, start + length))
        start += length
    return children


def certificate_key_type(pem: str) -> str:
    """The public key type of the first certificate in ``pem``: ``"RSA"``,
    ``"EC"`` or ``"other"``.

    Raises:
        ValueError: ``pem`` holds no certificate that can be read.
    """
    match = _PEM_CERTIFICATE.search(pem)
    if match is None:
        raise ValueError("no PEM certificate found")
    try:
        der = ssl.PEM_cert_to_DER_cert(match.group(0))
        ((_, cert_start, cert_end),) = _der_children(der, 0, len(der))
        tbs = _der_children(der, cert_start, cert_end)[0]
        fields = _der_children(der, tbs[1], tbs[2])
        if fields[0][0] == 0xA0:  # [0] version, present from v2 on
            fields = fields[1:]
        # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
        spki = fields[5]
        algorithm = _der_children(der, spki[1], spki[2])[0]
        oid = _der_children(der, algorithm[1], algorithm[2])[0]
    except (IndexError, ValueError) as exc:
        raise ValueError(f"the certificate cannot be read: {exc}") from None
    return _KEY_ALGORITHMS.get(der[oid[1] : oid[2]], "other")


def server_context(
    material: TlsMaterial,
    require_client_certificate: bool,
    second: TlsMaterial | None = None,
) -> ssl.SSLContext:
    """The CSMS's context.

    Args:
        material: the certificate and key (and, for profile 3, the CA).
        require_client_certificate: profile 3.
        second: a certificate and key of the other key type (one RSA, one
            ECDSA), so that the suites of both are served.

    Raises:
        ValueError: no certificate and key, a second one of the same key type,
            or no CA to check client certificates against when they are required.
        ssl.SSLError: the PEM text does not load (wrong passphrase, key that
            does not match the certificate ...).
    """
    if not material.has_identity:
        raise ValueError("the TLS configuration has no certificate and private key")
    if second is not None:
        if not second.has_identity:
            raise ValueError("the second TLS configuration has no certificate and private key")
        try:
            types = tuple(certificate_key_type(m.cert or "") for m in (material, second))
        except ValueError as exc:
            raise ValueError(f"a TLS configuration's certificate: {exc}") from None
        if sorted(types) != ["EC", "RSA"]:
            raise ValueError(
                "the two TLS configurations need one RSA and one ECDSA certificate; "
                f"they have {types[0]} and {types[1]}"
            )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    defaults = [c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"]
    context.set_ciphers(":".join(dict.fromkeys([*defaults, *REQUIRED_SERVER_SUITES])))
    _load_identity(context, material)
    if second is not None:
        _load_identity(context, second)
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
