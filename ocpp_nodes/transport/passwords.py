"""Salted password hashes for the CSMS's *CS Auth* list: make, read, check. No I/O.

Theory of operation:

1. A hash is a string in the Modular Crypt Format that passlib writes, so a
   hash made by passlib (or anything that writes its format) can be pasted
   in, and ours read by it (docs/security.md, "Password hashes"):

       $scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<digest>    salt, digest: base64, no padding
       $pbkdf2-sha256$<rounds>$<salt>$<digest>            salt, digest: passlib's "adapted"
       $pbkdf2-sha512$<rounds>$<salt>$<digest>            base64 ("." for "+"), no padding

   The digest is hashlib's ``scrypt`` / ``pbkdf2_hmac`` of the password's
   UTF-8 bytes with that salt and those parameters, as long as the decoded
   digest (16 to 64 bytes).
2. A value is a hash when it starts with ``$``, a scheme name (lower-case
   letters, digits, ``-``) and ``$`` (:func:`looks_like_hash`). A scheme we
   do not know (``$2b$`` bcrypt, ``$argon2id$``, ``$6$``) is an error, never
   a plain password: a hash pasted in by mistake must not become a password
   that the hash itself opens.
3. A malformed hash, or parameters beyond the limits below (a typo that
   would make each login take minutes or gigabytes), raise
   :class:`HashFormatError`, whose text names what is wrong and never
   repeats the salt or digest.
4. :func:`verify` recomputes the digest and compares in constant time
   (``hmac.compare_digest``). It is CPU-bound (tens of milliseconds by
   design); hashlib releases the GIL while it runs, so callers on an event
   loop run it in a thread (:mod:`ocpp_nodes.transport.auth_list`).
5. :meth:`PasswordHash.masked` is what a flow may see of a hash: the scheme
   and parameters, with ``*`` for the salt and digest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Literal, cast

__all__ = [
    "DEFAULT_PBKDF2_ROUNDS",
    "DEFAULT_SCRYPT_LN",
    "SCHEMES",
    "HashFormatError",
    "PasswordHash",
    "looks_like_hash",
    "make_hash",
    "parse_hash",
    "verify",
]

Scheme = Literal["scrypt", "pbkdf2-sha256", "pbkdf2-sha512"]
SCHEMES: tuple[Scheme, ...] = ("scrypt", "pbkdf2-sha256", "pbkdf2-sha512")

#: scrypt N = 2**14, r = 8, p = 1: 16 MiB and about 35 ms per check here
#: (docs/security.md has the measurements)
DEFAULT_SCRYPT_LN = 14
DEFAULT_SCRYPT_R = 8
DEFAULT_SCRYPT_P = 1
#: OWASP's figure for PBKDF2-HMAC-SHA256 (2023); SHA-512 gets the same count
DEFAULT_PBKDF2_ROUNDS = 600_000
SALT_BYTES = 16
DIGEST_BYTES = 32

# Limits on what a pasted hash may ask of each login.
MIN_SALT_BYTES = 8
MAX_SALT_BYTES = 1024
MIN_DIGEST_BYTES = 16
MAX_DIGEST_BYTES = 64
MAX_SCRYPT_MEMORY = 256 * 1024 * 1024  # bytes: 128 * r * N
MAX_SCRYPT_P = 16
MAX_PBKDF2_ROUNDS = 10_000_000

_MCF = re.compile(r"\$([a-z0-9-]+)\$")
_STD64 = re.compile(r"[A-Za-z0-9+/]*")
_AB64 = re.compile(r"[A-Za-z0-9./]*")
_DECIMAL = re.compile(r"[1-9][0-9]{0,9}")
_SCRYPT_PARAMS = re.compile(r"ln=([0-9]{1,2}),r=([0-9]{1,4}),p=([0-9]{1,4})")


class HashFormatError(ValueError):
    """A string that is meant as a password hash and is not a usable one."""


@dataclass(frozen=True)
class PasswordHash:
    """One parsed hash. ``salt`` and ``digest`` stay out of ``repr``."""

    scheme: Scheme
    #: scrypt: log2 of N; PBKDF2: the iteration count
    cost: int
    #: scrypt's r and p (PBKDF2: 0)
    block_size: int
    parallelism: int
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)

    def parameters(self) -> str:
        """The text between the scheme and the salt: ``ln=14,r=8,p=1`` or ``600000``."""
        if self.scheme == "scrypt":
            return f"ln={self.cost},r={self.block_size},p={self.parallelism}"
        return str(self.cost)

    def text(self) -> str:
        """The hash string (what :func:`parse_hash` reads back)."""
        encode = _b64_encode if self.scheme == "scrypt" else _ab64_encode
        return f"${self.scheme}${self.parameters()}${encode(self.salt)}${encode(self.digest)}"

    def masked(self) -> str:
        """Scheme and parameters, ``*`` for the salt and digest: ``$scrypt$ln=14,r=8,p=1$*$*``."""
        return f"${self.scheme}${self.parameters()}$*$*"

    def derive(self, password: str) -> bytes:
        """The digest of ``password`` with this hash's salt and parameters (CPU-bound)."""
        secret = password.encode("utf-8")
        if self.scheme == "scrypt":
            n = 1 << self.cost
            return hashlib.scrypt(
                secret,
                salt=self.salt,
                n=n,
                r=self.block_size,
                p=self.parallelism,
                maxmem=_scrypt_memory(n, self.block_size, self.parallelism),
                dklen=len(self.digest),
            )
        digest_name = self.scheme.removeprefix("pbkdf2-")
        return hashlib.pbkdf2_hmac(
            digest_name, secret, self.salt, self.cost, dklen=len(self.digest)
        )


def _scrypt_memory(n: int, r: int, p: int) -> int:
    # what OpenSSL's EVP_PBE_scrypt needs (its check: 128 * r * (N + p + 2)), with room
    return 128 * r * (n + p + 2) + 1024 * 1024


def looks_like_hash(value: str) -> bool:
    """True when ``value`` is meant as a hash: ``$<scheme>$...`` (rule 2)."""
    return _MCF.match(value) is not None


def verify(password: str, hashed: PasswordHash) -> bool:
    """Whether ``password`` is the one ``hashed`` was made from (constant-time compare)."""
    return hmac.compare_digest(hashed.derive(password), hashed.digest)


def make_hash(
    password: str,
    scheme: str = "scrypt",
    *,
    cost: int | None = None,
    salt: bytes | None = None,
) -> str:
    """A new hash string of ``password``.

    Args:
        password: the password (any text; hashed as UTF-8).
        scheme: ``"scrypt"`` (default) or ``"pbkdf2-sha256"`` / ``"pbkdf2-sha512"``.
        cost: scrypt's ``ln`` (log2 N; default 14) or PBKDF2's rounds
            (default 600000).
        salt: for known-answer tests only; a random 16-byte salt otherwise.

    Raises:
        HashFormatError: an unknown scheme or a cost beyond the limits.
    """
    if scheme not in SCHEMES:
        raise HashFormatError(f"unknown hash scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    name: Scheme = scheme
    if name == "scrypt":
        ln = DEFAULT_SCRYPT_LN if cost is None else cost
        params = (ln, DEFAULT_SCRYPT_R, DEFAULT_SCRYPT_P)
    else:
        params = (DEFAULT_PBKDF2_ROUNDS if cost is None else cost, 0, 0)
    shape = PasswordHash(name, *params, salt=b"", digest=b"")
    _check_cost(shape)
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    template = PasswordHash(name, *params, salt=salt, digest=bytes(DIGEST_BYTES))
    _check_lengths(template)
    return PasswordHash(name, *params, salt=salt, digest=template.derive(password)).text()


def parse_hash(text: str) -> PasswordHash:
    """Read a hash string (rule 1); raises :class:`HashFormatError` saying what is wrong."""
    match = _MCF.match(text)
    if match is None:
        raise HashFormatError("not a password hash: it must start with $<scheme>$")
    name = match.group(1)
    if name not in SCHEMES:
        raise HashFormatError(
            f"unsupported hash scheme ${name}$; supported: " + ", ".join(f"${s}$" for s in SCHEMES)
        )
    scheme = cast(Scheme, name)
    fields = text[match.end() :].split("$")
    if len(fields) != 3:
        raise HashFormatError(
            f"a ${scheme}$ hash has three fields after the scheme (parameters, salt, "
            f"digest), separated by $; this one has {len(fields)}"
        )
    params, salt_text, digest_text = fields
    if scheme == "scrypt":
        found = _SCRYPT_PARAMS.fullmatch(params)
        if found is None:
            raise HashFormatError("a $scrypt$ hash's parameters must read ln=<n>,r=<n>,p=<n>")
        cost, block_size, parallelism = (int(group) for group in found.groups())
        salt = _decode(salt_text, _STD64, "salt", scheme)
        digest = _decode(digest_text, _STD64, "digest", scheme)
    else:
        if _DECIMAL.fullmatch(params) is None:
            raise HashFormatError(f"a ${scheme}$ hash's rounds must be a positive number")
        cost, block_size, parallelism = int(params), 0, 0
        salt = _decode(salt_text, _AB64, "salt", scheme)
        digest = _decode(digest_text, _AB64, "digest", scheme)
    hashed = PasswordHash(scheme, cost, block_size, parallelism, salt=salt, digest=digest)
    _check_cost(hashed)
    _check_lengths(hashed)
    return hashed


def _check_cost(hashed: PasswordHash) -> None:
    if hashed.scheme == "scrypt":
        ln, r, p = hashed.cost, hashed.block_size, hashed.parallelism
        if not (1 <= ln <= 30 and r >= 1 and 1 <= p <= MAX_SCRYPT_P):
            raise HashFormatError(
                f"$scrypt$ parameters out of range: ln 1 to 30, r at least 1, p 1 to {MAX_SCRYPT_P}"
            )
        if 128 * r * (1 << ln) > MAX_SCRYPT_MEMORY:
            raise HashFormatError(
                f"$scrypt$ ln={ln},r={r} needs {128 * r * (1 << ln) >> 20} MiB per check; "
                f"at most {MAX_SCRYPT_MEMORY >> 20} MiB is allowed"
            )
    elif not 1 <= hashed.cost <= MAX_PBKDF2_ROUNDS:
        raise HashFormatError(
            f"${hashed.scheme}$ rounds must be 1 to {MAX_PBKDF2_ROUNDS}, not {hashed.cost}"
        )


def _check_lengths(hashed: PasswordHash) -> None:
    scheme = hashed.scheme
    if not MIN_SALT_BYTES <= len(hashed.salt) <= MAX_SALT_BYTES:
        raise HashFormatError(
            f"a ${scheme}$ hash's salt must be {MIN_SALT_BYTES} to {MAX_SALT_BYTES} bytes, "
            f"not {len(hashed.salt)}"
        )
    if not MIN_DIGEST_BYTES <= len(hashed.digest) <= MAX_DIGEST_BYTES:
        raise HashFormatError(
            f"a ${scheme}$ hash's digest must be {MIN_DIGEST_BYTES} to {MAX_DIGEST_BYTES} "
            f"bytes, not {len(hashed.digest)}"
        )


def _decode(text: str, alphabet: re.Pattern[str], what: str, scheme: str) -> bytes:
    if alphabet.fullmatch(text) is None or len(text) % 4 == 1:
        kind = "base64" if alphabet is _STD64 else "passlib's adapted base64 (. for +)"
        raise HashFormatError(f"a ${scheme}$ hash's {what} is not {kind} without padding")
    try:
        return base64.b64decode(text.replace(".", "+") + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:  # the alphabet was checked; kept for safety
        raise HashFormatError(f"a ${scheme}$ hash's {what} is not valid base64") from None


def _b64_encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _ab64_encode(data: bytes) -> str:
    return _b64_encode(data).replace("+", ".")
