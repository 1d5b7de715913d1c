"""Password hashes (ocpp_nodes/transport/passwords.py, auth_list.py) and `ocpp-nodes hash-password`.

Known answers come from another implementation: the examples printed in
passlib's documentation (passlib.hash.scrypt, passlib.hash.pbkdf2_digest),
and RFC 7914's scrypt and PBKDF2-HMAC-SHA256 test vectors.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pty
import select
import subprocess
import sys
import threading
import time

import pytest
import websockets

from ocpp_nodes.nodes import CsmsNode, NodeServices, NodeSpec
from ocpp_nodes.transport import auth_list, passwords
from ocpp_nodes.transport.auth_list import AuthList, Verifier, VerifierBusy
from ocpp_nodes.transport.passwords import (
    HashFormatError,
    PasswordHash,
    looks_like_hash,
    make_hash,
    parse_hash,
    verify,
)
from tests.common import OCPP201, RecordingHost, auth_header
from tests.shim_double import free_port

# passlib 1.7's documentation, each made from the password "password"
PASSLIB_SCRYPT = [
    "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
    "$scrypt$ln=8,r=8,p=1$WKs1xljLudd6z9kbY0wpJQ$yCR4iDZYDKv+iEJj6yHY0lv/epnfB6f/w1EbXrsJOuQ",
]
PASSLIB_PBKDF2_SHA256 = [
    "$pbkdf2-sha256$6400$0ZrzXitFSGltTQnBWOsdAw$Y11AchqV4b0sUisdZd0Xr97KWoymNE0LNNrnEgY4H9M",
    "$pbkdf2-sha256$8000$XAuBMIYQQogxRg$tRRlz8hYn63B9LYiCd6PRo6FMiunY9ozmMMI3srxeRE",
]
CLI = [sys.executable, "-m", "ocpp_nodes", "hash-password"]


# -- the format --------------------------------------------------------------------


@pytest.mark.parametrize("text", PASSLIB_SCRYPT + PASSLIB_PBKDF2_SHA256)
def test_hashes_made_by_passlib_verify(text: str) -> None:
    hashed = parse_hash(text)
    assert verify("password", hashed)
    assert not verify("Password", hashed)
    assert not verify("password ", hashed)
    assert hashed.text() == text  # read and written back unchanged


def test_rfc7914_vectors() -> None:
    """scrypt (RFC 7914, 12) and PBKDF2-HMAC-SHA256 (RFC 7914, 11) through derive()."""
    # the RFC's salt is 4 bytes, under what parse_hash accepts: build the fields directly
    scrypt = PasswordHash("scrypt", 10, 8, 16, salt=b"NaCl", digest=bytes(64))
    assert scrypt.derive("password") == bytes.fromhex(
        "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
        "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"
    )
    pbkdf2 = PasswordHash("pbkdf2-sha256", 80000, 0, 0, salt=b"NaCl", digest=bytes(64))
    assert pbkdf2.derive("Password") == bytes.fromhex(
        "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56"
        "a1d425a1225833549adb841b51c9b3176a272bdebba1d078478f62b397f33c8d"
    )


@pytest.mark.parametrize("scheme", passwords.SCHEMES)
def test_make_then_verify(scheme: str) -> None:
    cost = 10 if scheme == "scrypt" else 1000
    text = make_hash("Zq9 pässword", scheme, cost=cost)
    hashed = parse_hash(text)
    assert hashed.scheme == scheme and hashed.cost == cost
    assert len(hashed.salt) == 16 and len(hashed.digest) == 32
    assert verify("Zq9 pässword", hashed)
    assert not verify("Zq9 password", hashed)
    assert make_hash("Zq9 pässword", scheme, cost=cost) != text  # a new salt each time


def test_defaults_are_documented_ones() -> None:
    assert parse_hash(make_hash("x")).parameters() == "ln=14,r=8,p=1"
    assert parse_hash(make_hash("x", "pbkdf2-sha256")).parameters() == "600000"


def test_known_salt_gives_hashlib_answer() -> None:
    salt = bytes(range(16))
    text = make_hash("secret", "pbkdf2-sha512", cost=5000, salt=salt)
    expected = hashlib.pbkdf2_hmac("sha512", b"secret", salt, 5000, dklen=32)
    assert parse_hash(text).digest == expected
    # passlib's adapted base64: "." where base64 has "+"; scrypt keeps "+"
    salt = b"\xfb\xef\xbe" * 4  # base64: "++++++++++++++++"
    assert make_hash("x", "pbkdf2-sha256", cost=1000, salt=salt).split("$")[3] == "." * 16
    assert make_hash("x", "scrypt", cost=4, salt=salt).split("$")[3] == "+" * 16


def test_masked_and_repr_hold_no_material() -> None:
    text = PASSLIB_SCRYPT[1]
    hashed = parse_hash(text)
    assert hashed.masked() == "$scrypt$ln=8,r=8,p=1$*$*"
    assert parse_hash(PASSLIB_PBKDF2_SHA256[0]).masked() == "$pbkdf2-sha256$6400$*$*"
    salt, digest = text.split("$")[3:5]
    for shown in (repr(hashed), str(hashed), hashed.masked()):
        assert salt not in shown and digest not in shown


@pytest.mark.parametrize(
    ("value", "is_hash"),
    [
        ("$scrypt$x", True),
        ("$2b$12$abc", True),
        ("$argon2id$v=19$m=65536", True),
        ("$6$rounds=5000$salt$x", True),
        ("pa$$word", False),
        ("$ecret", False),
        ("$Secret$", False),
        ("secret", False),
        ("", False),
    ],
)
def test_the_prefix_rule(value: str, is_hash: bool) -> None:
    assert looks_like_hash(value) is is_hash


GOOD_SALT = "aM15713r3Xsvxbi31lqr1Q"
GOOD_DIGEST = "nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E"
AB64_DIGEST = GOOD_DIGEST.replace("+", ".")
BCRYPT = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (BCRYPT, "unsupported hash scheme $2b$"),
        ("$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", "unsupported hash scheme $argon2id$"),
        (f"$scrypt$ln=16,r=8,p=1${GOOD_SALT}", "three fields"),
        (f"$scrypt$ln=16,r=8${GOOD_SALT}${GOOD_DIGEST}", "ln=<n>,r=<n>,p=<n>"),
        (f"$scrypt$N=16,r=8,p=1${GOOD_SALT}${GOOD_DIGEST}", "ln=<n>,r=<n>,p=<n>"),
        (f"$scrypt$ln=16,r=8,p=1$not base64!${GOOD_DIGEST}", "salt is not base64"),
        (f"$scrypt$ln=16,r=8,p=1${GOOD_SALT}$abcde", "digest is not base64"),
        (f"$scrypt$ln=16,r=8,p=1$c2FsdA${GOOD_DIGEST}", "salt must be 8 to 1024 bytes"),
        (f"$scrypt$ln=16,r=8,p=1${GOOD_SALT}$aGFzaA", "digest must be 16 to 64 bytes"),
        (f"$scrypt$ln=21,r=8,p=1${GOOD_SALT}${GOOD_DIGEST}", "2048 MiB per check"),
        (f"$scrypt$ln=0,r=8,p=1${GOOD_SALT}${GOOD_DIGEST}", "out of range"),
        (f"$scrypt$ln=14,r=8,p=99${GOOD_SALT}${GOOD_DIGEST}", "out of range"),
        (f"$pbkdf2-sha256$abc${GOOD_SALT}${AB64_DIGEST}", "rounds must be a positive number"),
        (f"$pbkdf2-sha256$0${GOOD_SALT}${AB64_DIGEST}", "rounds must be a positive number"),
        (f"$pbkdf2-sha256$99999999${GOOD_SALT}${AB64_DIGEST}", "rounds must be 1 to 10000000"),
        (f"$pbkdf2-sha256$1000${GOOD_SALT}${GOOD_DIGEST}", "adapted base64"),  # "+"
        ("no hash", "must start with $<scheme>$"),
    ],
)
def test_malformed_hashes_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(HashFormatError) as info:
        parse_hash(text)
    message = str(info.value)
    assert says in message
    for part in text.split("$")[3:]:  # never the salt or digest
        if len(part) >= 6:
            assert part not in message


def test_verification_in_a_thread_does_not_hold_the_gil() -> None:
    """hashlib releases the GIL in scrypt and pbkdf2_hmac: other threads run meanwhile.

    A C call that held the GIL would let no Python code of the main thread run
    between entering and leaving it; a margin of a few switch intervals at
    each end leaves out the bytecodes around the call. The main thread must
    run inside at least one of the windows (under any load: the windows are
    long, and a held GIL gives exactly none).
    """
    margin = 5 * sys.getswitchinterval()
    for scheme, cost in (("scrypt", 16), ("pbkdf2-sha256", 600_000)):
        hashed = parse_hash(make_hash("secret", scheme, cost=cost))
        windows: list[tuple[float, float]] = []

        def work(
            hashed: PasswordHash = hashed, windows: list[tuple[float, float]] = windows
        ) -> None:
            for _ in range(2):
                start = time.perf_counter()
                verify("secret", hashed)
                windows.append((start + margin, time.perf_counter() - margin))

        thread = threading.Thread(target=work)
        ticks: list[float] = []
        thread.start()
        while thread.is_alive():
            ticks.append(time.perf_counter())
        thread.join()
        inside = sum(1 for tick in ticks for low, high in windows if low < tick < high)
        assert inside > 0, (scheme, windows[:1], len(ticks))


# -- the auth list -------------------------------------------------------------------


FAST = make_hash("hashed-pw", cost=10)  # scrypt ln=10: a millisecond, for the tests


def counting_verifier() -> tuple[Verifier, list[str]]:
    verifier = Verifier(workers=2)
    calls: list[str] = []
    original = verifier.verify

    async def counted(password: str, hashed: passwords.PasswordHash) -> bool:
        calls.append(password)
        return await original(password, hashed)

    verifier.verify = counted  # type: ignore[method-assign]
    return verifier, calls


async def test_plain_and_hashed_entries() -> None:
    auth = AuthList.parse({"P": "plain-pw", "H": FAST})
    assert await auth.check("P", "plain-pw")
    assert not await auth.check("P", "plain-pw ")
    assert await auth.check("H", "hashed-pw")
    assert not await auth.check("H", "hashed-pw ")
    assert not await auth.check("H", FAST)  # the hash string is not the password
    assert not await auth.check("X", "plain-pw")
    assert auth.hashed() == 1 and len(auth) == 2


async def test_a_success_is_remembered_a_failure_is_not() -> None:
    verifier, calls = counting_verifier()
    auth = AuthList.parse({"H": FAST}, verifier=verifier)
    for _ in range(3):
        assert await auth.check("H", "hashed-pw")
    assert calls == ["hashed-pw"]
    for _ in range(2):
        assert not await auth.check("H", "wrong")
    assert calls == ["hashed-pw", "wrong", "wrong"]
    # a change makes a new list, which remembers nothing
    changed = auth.with_entry("OTHER", "x")
    assert await changed.check("H", "hashed-pw")
    assert calls[-1] == "hashed-pw" and len(calls) == 4


async def test_concurrent_checks_share_one_computation() -> None:
    verifier, calls = counting_verifier()
    auth = AuthList.parse({"H": FAST}, verifier=verifier)
    results = await asyncio.gather(*(auth.check("H", "hashed-pw") for _ in range(20)))
    assert all(results) and len(calls) == 1


async def test_a_cancelled_waiter_does_not_cancel_the_shared_check() -> None:
    auth = AuthList.parse({"H": make_hash("hashed-pw", cost=13)})
    first = asyncio.ensure_future(auth.check("H", "hashed-pw"))
    second = asyncio.ensure_future(auth.check("H", "hashed-pw"))
    await asyncio.sleep(0)
    first.cancel()
    assert await second


async def test_backlog_bound_refuses_new_checks_but_not_remembered_ones() -> None:
    verifier = Verifier(workers=1, max_backlog=0.05)
    slow = make_hash("pw", cost=14)
    auth = AuthList.parse({f"S{i}": slow for i in range(10)} | {"K": FAST}, verifier=verifier)
    assert await auth.check("K", "hashed-pw")  # remembered from now on
    verifier.cost = 0.04  # as measured on a machine where a check takes 40 ms
    waiting = [asyncio.ensure_future(auth.check(f"S{i}", "pw")) for i in range(3)]
    for _ in range(100):  # until the three are handed to the thread
        if verifier.waiting == 3:
            break
        await asyncio.sleep(0)
    assert verifier.busy()
    with pytest.raises(VerifierBusy):
        await auth.check("S9", "pw")
    assert await auth.check("K", "hashed-pw")  # a known station still gets in
    assert all(await asyncio.gather(*waiting))
    assert not verifier.busy()


async def test_masked_entries_round_trip() -> None:
    auth = AuthList.parse({"P": "plain", "H": PASSLIB_SCRYPT[1]})
    shown = auth.readable()
    assert shown == {"P": "plain", "H": "$scrypt$ln=8,r=8,p=1$*$*"}
    assert auth.readable_entry("H") == "$scrypt$ln=8,r=8,p=1$*$*"
    assert auth.readable_entry("nobody") is None
    # what a flow read, changed and wrote back keeps the hash
    again = AuthList.parse({**shown, "NEW": "pw"}, previous=auth)
    assert await again.check("H", "password")
    assert again.stored("H") == PASSLIB_SCRYPT[1]
    # a masked entry the node does not hold is an error, never a password
    for entries, previous in (({"H": shown["H"]}, None), ({"P": shown["H"]}, auth)):
        with pytest.raises(ValueError, match="masked hash"):
            AuthList.parse(entries, previous=previous)
    with pytest.raises(ValueError, match="masked hash"):
        AuthList.parse({"H": "$scrypt$ln=9,r=8,p=1$*$*"}, previous=auth)


def test_a_bad_hash_names_the_cb_id_not_the_material() -> None:
    salt = "aM15713r3Xsvxbi31lqr1Q"
    with pytest.raises(ValueError) as info:
        AuthList.parse({"CS7": f"$scrypt$ln=16,r=8,p=1${salt}$short"})
    assert "'CS7'" in str(info.value) and salt not in str(info.value)
    with pytest.raises(ValueError, match="unsupported hash scheme"):
        AuthList.parse({"CS8": BCRYPT})


# -- the command ----------------------------------------------------------------------


def test_cli_reads_stdin_and_prints_a_hash() -> None:
    result = subprocess.run(
        [*CLI, "--scheme", "pbkdf2-sha256", "--cost", "2000"],
        input="my secret\n",
        capture_output=True,
        text=True,
        check=True,
    )
    text = result.stdout.strip()
    assert text.startswith("$pbkdf2-sha256$2000$")
    assert verify("my secret", parse_hash(text))
    assert "my secret" not in result.stdout + result.stderr
    default = subprocess.run(CLI, input="pw", capture_output=True, text=True, check=True)
    assert default.stdout.startswith("$scrypt$ln=14,r=8,p=1$")
    assert verify("pw", parse_hash(default.stdout.strip()))


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        ([], "\n", "no password given"),
        (["--cost", "40"], "pw\n", "out of range"),
        (["--scheme", "md5"], "pw\n", "invalid choice"),
    ],
)
def test_cli_errors(args: list[str], stdin: str, says: str) -> None:
    result = subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True)
    assert result.returncode != 0 and says in result.stderr and not result.stdout


def test_cli_has_no_password_option() -> None:
    result = subprocess.run([*CLI, "--password", "x"], capture_output=True, text=True)
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr


def _read_until(fd: int, text: bytes, timeout: float = 20.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError(f"waited for {text!r}; got {seen!r}")
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    return seen


@pytest.mark.parametrize("again", ["Typed-secret-81", "Other-secret-82"])
def test_cli_prompts_twice_without_echo(again: str) -> None:
    """On a terminal: two prompts, nothing echoed, the hash (or a mismatch) printed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command on a terminal
        os.execv(sys.executable, CLI)
    try:
        out = _read_until(fd, b"Password: ")
        os.write(fd, b"Typed-secret-81\n")
        out += _read_until(fd, b"Again: ")
        os.write(fd, again.encode() + b"\n")
        out += _read_until(fd, b"\n$" if again == "Typed-secret-81" else b"differ")
        out += _read_until(fd, b"\n") if again == "Typed-secret-81" else b""
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = out.decode()
    assert "Typed-secret" not in text and "Other-secret" not in text
    if again == "Typed-secret-81":
        assert os.waitstatus_to_exitcode(status) == 0
        line = next(part for part in text.split() if part.startswith("$scrypt$"))
        assert verify("Typed-secret-81", parse_hash(line))
    else:
        assert os.waitstatus_to_exitcode(status) == 1 and "differ" in text


# -- the CSMS node and its server, in this process ---------------------------------------


async def test_csms_node_answers_503_while_checks_pile_up() -> None:
    """Busy: a login that needs a new check gets 503 + Retry-After; a known one gets in."""
    port = free_port()
    host = RecordingHost()
    node = CsmsNode(
        NodeSpec(
            "csms",
            {"port": str(port), "path": "/ocpp"},
            {"basic_auths": f'{{"K": "{FAST}", "N": "{FAST}"}}'},
        ),
        host,
        NodeServices(),
    )
    await node.start()
    url = f"ws://127.0.0.1:{port}/ocpp"
    try:
        async with websockets.connect(
            f"{url}/K", subprotocols=OCPP201, additional_headers=auth_header("K", "hashed-pw")
        ):
            pass
        original = auth_list.VERIFIER.busy
        auth_list.VERIFIER.busy = lambda: True  # type: ignore[method-assign]
        try:
            with pytest.raises(websockets.InvalidStatus) as info:
                await websockets.connect(
                    f"{url}/N",
                    subprotocols=OCPP201,
                    additional_headers=auth_header("N", "hashed-pw"),
                )
            assert info.value.response.status_code == 503
            assert info.value.response.headers["Retry-After"] == "1"
            async with websockets.connect(
                f"{url}/K", subprotocols=OCPP201, additional_headers=auth_header("K", "hashed-pw")
            ):
                pass
        finally:
            auth_list.VERIFIER.busy = original  # type: ignore[method-assign]
    finally:
        await node.stop()
    node._refusals.report()
    warnings = [text for level, text in host.logs if level == "warn"]
    assert any("1 x HTTP 503" in text for text in warnings), host.logs


async def test_hash_password_command() -> None:
    host = RecordingHost()
    node = CsmsNode(NodeSpec("csms", {"port": "1", "path": "/ocpp"}), host, NodeServices())
    msg = {
        "payload": {
            "msgType": 99,
            "command": "hash_password",
            "data": {"password": "Pw-77", "scheme": "pbkdf2-sha256"},
        },
        "customData": "c",
    }
    node.input(1, msg)
    await host.wait_for(lambda: host.dones)
    assert host.dones == [(1, None)]
    answer = host.sent[-1][1]
    assert answer["customData"] == "c" and answer["payload"]["data"] == {"scheme": "pbkdf2-sha256"}
    made = answer["payload"]["hash"]
    assert made.startswith("$pbkdf2-sha256$600000$") and verify("Pw-77", parse_hash(made))
    assert "Pw-77" not in repr(host.sent) + repr(host.logs)
    for seq, data, says in (
        (2, {}, "needs data.password"),
        (3, {"password": "x", "scheme": "md5"}, "data.scheme must be one of"),
    ):
        node.input(seq, {"payload": {"msgType": 99, "command": "hash_password", "data": data}})
        await host.wait_for(lambda s=seq: any(d[0] == s for d in host.dones))
        assert says in str(dict(host.dones)[seq])
