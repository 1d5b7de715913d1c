"""Fleet mode's real parts for tests (issue 24): an MQTT 5 broker and a TCP load balancer.

- :class:`Mosquitto`: Debian's ``mosquitto`` (MQTT 5 is mosquitto 2's default)
  on 127.0.0.1 and a free port, with a generated config: no anonymous
  clients, a password file made with ``mosquitto_passwd`` (user
  :attr:`Mosquitto.username`, a random password), persistence in its own
  directory, so persistent sessions and their queued QoS 1 messages survive a
  restart (a graceful one; a ``kill -9`` too with ``save_every_change=True``,
  once :meth:`Mosquitto.wait_persisted` saw the save: Mosquitto acknowledges
  a QoS 1 message before it writes it to disk).
  ``stop()``, ``kill()`` (SIGKILL), ``start()`` again on the same port,
  ``restart()``; :meth:`Mosquitto.client_args` are the keywords for
  ``aiomqtt.Client``.
- :class:`HAProxy`: Debian's ``haproxy`` in TCP mode on 127.0.0.1 and a free
  port in front of backend ports on 127.0.0.1 (servers ``b0``, ``b1``, ...),
  round robin (or leastconn), health checks every second, a refused
  connection retried on another server (``option redispatch``); its stats
  socket tells a server's state (:meth:`HAProxy.wait_server_state`).

Each runs as a child process in its own session, in a directory of the test
(config, password file, data, ``<name>.log`` with everything the process
wrote, appended over restarts). Readiness is a TCP connection that succeeds
(never a fixed sleep); a process that exits first fails the start with its
log. ``running_mosquitto`` and ``running_haproxy`` skip the test, naming the
Debian package and ``make setup``, when the program is missing, and stop the
process afterwards; tests/conftest.py makes the ``mosquitto`` and
``make_haproxy`` fixtures of them (their logs are copied to test-artifacts/
and printed, which pytest shows when the test failed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.typing import Subprotocol

from tests.nodered import ARTIFACTS, free_port

__all__ = [
    "CallOutcome",
    "FleetStation",
    "GatewayProcess",
    "HAProxy",
    "MakeHAProxy",
    "Mosquitto",
    "NotConnected",
    "Outage",
    "StationPool",
    "TcpForwarder",
    "call_until_answered",
    "first_message",
    "haproxy_missing_reason",
    "kill_node_red",
    "mosquitto_missing_reason",
    "running_haproxy",
    "running_mosquitto",
    "wait_listening",
]

HOST = "127.0.0.1"

#: Mosquitto's per-client queue of QoS 1 messages (its default of 1000 is less than
#: the retained records a subscriber of a 3,000-station fleet gets at once)
MAX_QUEUED_MESSAGES = 1_000_000


def _program(name: str) -> str | None:
    """`name` on PATH or in the sbin directories Debian puts daemons in (not on a
    normal user's PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(directory) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _missing(package: str, programs: Sequence[str]) -> str | None:
    absent = [name for name in programs if _program(name) is None]
    if not absent:
        return None
    return (
        f"{' and '.join(absent)} not found: install Debian's `{package}` package "
        f"(`make setup` does, when it runs as root with apt-get)"
    )


def mosquitto_missing_reason() -> str | None:
    """Why the MQTT broker cannot run here, or None when it can."""
    return _missing("mosquitto", ["mosquitto", "mosquitto_passwd"])


def haproxy_missing_reason() -> str | None:
    """Why the load balancer cannot run here, or None when it can."""
    return _missing("haproxy", ["haproxy"])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_listening(
    port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, what: str = "server"
) -> None:
    """Return once a TCP connection to 127.0.0.1:`port` succeeds.

    Raises:
        RuntimeError: `proc` exited first.
        TimeoutError: nothing accepted a connection within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not listen on {HOST}:{port} within {timeout}s")
        time.sleep(0.01)


class _Process:
    """A child process (own session) writing to `<directory>/<name>.log`."""

    name = "process"

    def __init__(self, directory: Path, port: int | None) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port if port is not None else free_port()
        self.log_path = directory / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the process and return once its port accepts connections."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        with self.log_path.open("ab") as log:
            log.write(f"--- {self.name} starting on port {self.port}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
            )
        try:
            wait_listening(self.port, timeout, self._proc, self.name)
        except (RuntimeError, TimeoutError) as error:
            self.kill()
            raise RuntimeError(f"{error}; its log:\n{self.log_tail()}") from error

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a graceful stop), SIGKILL after `timeout` seconds; no-op when stopped."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def kill(self) -> None:
        """``kill -9``: nothing is saved or closed cleanly; no-op when stopped."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(10)

    def restart(self, timeout: float = 10.0) -> None:
        """A graceful stop, then a start on the same port."""
        self.stop()
        self.start(timeout)

    def log(self) -> str:
        """Everything the process wrote, over all its starts."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def save_log(self, test_name: str) -> Path:
        """Copy the log to test-artifacts/<test name>.<name>.log (kept for CI inspection)."""
        ARTIFACTS.mkdir(exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in test_name)
        dest = ARTIFACTS / f"{safe}.{self.name}.log"
        dest.write_text(self.log())
        return dest


class Mosquitto(_Process):
    """A Mosquitto broker (MQTT 5 and 3.1.1) with password authentication and persistence.

    Args:
        directory: where its config, password file, data and log go.
        port: its port on 127.0.0.1 (a free one when None).
        users: username -> password (default: one user, ``fleet``, random password).
        save_every_change: write the persistence file after every change, so queued
            messages survive ``kill -9`` too (by default, as Mosquitto's own default,
            they are saved when it stops gracefully).
        settings: more lines for its config, e.g. ``"max_inflight_messages 1000"``.
    """

    name = "mosquitto"

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        users: dict[str, str] | None = None,
        save_every_change: bool = False,
        settings: Sequence[str] = (),
    ) -> None:
        super().__init__(directory, port)
        self.settings = list(settings)
        self.users = dict(users) if users else {"fleet": secrets.token_urlsafe(12)}
        self.username, self.password = next(iter(self.users.items()))
        self.save_every_change = save_every_change
        self.config_path = directory / "mosquitto.conf"
        self.password_file = directory / "passwd"
        self.data_dir = directory / "data"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def client_args(self) -> dict[str, Any]:
        """``hostname``, ``port``, ``username``, ``password`` for ``aiomqtt.Client``."""
        return {
            "hostname": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
        }

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mosquitto.db"

    def wait_persisted(self, payload: bytes, timeout: float = 5.0) -> None:
        """Return once the persistence file on disk holds a message with `payload`.

        Mosquitto acknowledges a QoS 1 message before it saves it, even with
        ``save_every_change`` (it saves on a later turn of its loop, to a new file it
        then renames over the old one): a ``kill -9`` right after the PUBACK can lose
        the message. Wait here before killing when it must survive.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                if payload in self.db_path.read_bytes():
                    return
            except FileNotFoundError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"mosquitto did not save {payload!r} to {self.db_path} within {timeout}s;"
                    f" its log:\n{self.log_tail()}"
                )
            time.sleep(0.01)

    def _write_config(self) -> None:
        passwd = _program("mosquitto_passwd")
        assert passwd is not None, mosquitto_missing_reason()
        self.password_file.unlink(missing_ok=True)
        for index, (user, password) in enumerate(self.users.items()):
            create = ["-c"] if index == 0 else []
            subprocess.run(
                [passwd, "-b", *create, str(self.password_file), user, password],
                check=True,
                capture_output=True,
            )
        self.data_dir.mkdir(exist_ok=True)
        autosave = (
            ["autosave_on_changes true", "autosave_interval 1"] if self.save_every_change else []
        )
        lines = [
            # Run as root, mosquitto switches to this user: the one running the tests
            # keeps access to the password file and the data directory.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            f"listener {self.port} {self.host}",
            "allow_anonymous false",
            f"password_file {self.password_file}",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "persistence_file mosquitto.db",
            *autosave,
            # Mosquitto's default (1000) drops, silently but for one log line, what a
            # subscriber cannot take at once beyond that: a new gateway or CSMS node
            # subscribing to presence/+ and auth/+ of a fleet of thousands gets more.
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
            *self.settings,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        binary = _program("mosquitto")
        assert binary is not None, mosquitto_missing_reason()
        if not self.config_path.exists():
            self._write_config()
        return [binary, "-c", str(self.config_path)]


class GatewayProcess(_Process):
    """``ocpp-nodes gateway`` (docs/fleet.md) on 127.0.0.1 and a free port, with a
    generated config file: ``broker``'s URL and user, fleet ``group``, ``gateway_id``,
    and ``settings`` merged over the defaults (versions, timeouts, limits ...).

    A kill -9 and a start again on the same port work as for the broker; its
    log (``gateway-<id>.log``) is appended over restarts.
    """

    def __init__(
        self,
        directory: Path,
        broker: Mosquitto,
        gateway_id: str,
        group: str = "fleet",
        port: int | None = None,
        settings: dict[str, Any] | None = None,
        log_level: str = "INFO",
    ) -> None:
        self.name = f"gateway-{gateway_id}"
        self.log_level = log_level
        super().__init__(directory, port)
        self.gateway_id = gateway_id
        self.config_path = directory / f"{self.name}.json"
        config: dict[str, Any] = {
            "id": gateway_id,
            "group": group,
            "broker": {
                "url": broker.url,
                "username": broker.username,
                "password": broker.password,
                "session_expiry": 300,
            },
            "listen": {"host": HOST, "port": self.port, "path": "/ocpp"},
            "limits": {"handshakes_per_address": 0},
        }
        config.update(settings or {})
        self.config_path.write_text(json.dumps(config, indent=2))

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/ocpp"

    def start(self, timeout: float = 20.0) -> None:
        """Start and return once it listens and has read the logins from the broker."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        super().start(timeout)
        deadline = time.monotonic() + timeout
        ready = f"gateway {self.gateway_id}: ready"
        while ready not in self.log_path.read_text(errors="replace")[offset:]:
            if not self.running:
                raise RuntimeError(f"{self.name} exited; its log:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                self.kill()
                raise TimeoutError(f"{self.name} not ready in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.02)

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "ocpp_nodes",
            "gateway",
            "--config",
            str(self.config_path),
            "--log-level",
            self.log_level,
        ]

    def wait_for_log(self, text: str, offset: int = 0, timeout: float = 10.0) -> None:
        """Return once the log (from byte `offset`) holds `text`."""
        deadline = time.monotonic() + timeout
        while text not in self.log()[offset:]:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{text!r} not in {self.name}'s log:\n{self.log_tail()}")
            time.sleep(0.02)

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0


class HAProxy(_Process):
    """HAProxy in TCP mode on 127.0.0.1 in front of `backends` (ports on 127.0.0.1).

    The servers are named ``b0``, ``b1``, ... in the order of `backends`; each is
    health-checked (a TCP connect) every second, one failed check marks it DOWN and
    one good one UP again. A connection a server refuses is retried on another.
    """

    name = "haproxy"

    def __init__(
        self,
        directory: Path,
        backends: Sequence[int],
        port: int | None = None,
        balance: str = "roundrobin",
    ) -> None:
        super().__init__(directory, port)
        if not backends:
            raise ValueError("HAProxy needs at least one backend port")
        self.backends = list(backends)
        self.balance = balance
        self.config_path = directory / "haproxy.cfg"
        self.stats_socket = directory / "haproxy.sock"

    def server_name(self, index: int) -> str:
        return f"b{index}"

    def _write_config(self) -> None:
        servers = [
            f"    server {self.server_name(i)} {HOST}:{port} check inter 1s fall 1 rise 1"
            for i, port in enumerate(self.backends)
        ]
        lines = [
            "global",
            "    log stderr format raw local0 info",
            f"    stats socket {self.stats_socket} mode 600 level admin",
            "defaults",
            "    mode tcp",
            "    log global",
            "    option tcplog",
            "    option redispatch",
            "    retries 2",
            "    timeout connect 1s",
            "    timeout check 1s",
            "    timeout client 1h",
            "    timeout server 1h",
            "frontend fleet",
            f"    bind {HOST}:{self.port}",
            "    default_backend gateways",
            "backend gateways",
            f"    balance {self.balance}",
            *servers,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        binary = _program("haproxy")
        assert binary is not None, haproxy_missing_reason()
        self._write_config()
        # -db: stay in the foreground, no daemon.
        return [binary, "-db", "-f", str(self.config_path)]

    def command(self, line: str) -> str:
        """Send one command to the stats socket (admin level) and return the answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_states(self) -> dict[str, str]:
        """Each server's status as HAProxy sees it: ``UP``, ``DOWN``, ``UP 1/2`` ..."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        px, sv, status = header.index("pxname"), header.index("svname"), header.index("status")
        states = {}
        for line in lines[1:]:
            fields = line.split(",")
            if len(fields) > status and fields[px] == "gateways" and fields[sv].startswith("b"):
                states[fields[sv]] = fields[status]
        return states

    def wait_server_state(self, index: int, state: str, timeout: float = 5.0) -> None:
        """Return once server `index` is in `state` (``UP`` or ``DOWN``)."""
        name = self.server_name(index)
        deadline = time.monotonic() + timeout
        while True:
            seen = self.server_states().get(name)
            if seen == state:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"haproxy server {name} still {seen!r}, not {state!r}, after {timeout}s;"
                    f" its log:\n{self.log_tail()}"
                )
            time.sleep(0.05)


MakeHAProxy = Callable[[Sequence[int]], "HAProxy"]
"""The ``make_haproxy`` fixture: backend ports -> a started HAProxy in front of them."""


@contextmanager
def _running(process: _Process, test_name: str | None) -> Iterator[None]:
    try:
        process.start()
        yield
    finally:
        process.stop()
        if test_name is not None:
            path = process.save_log(test_name)
            # Captured: pytest shows it when the test failed.
            print(f"{process.name} log ({path}), last lines:\n{process.log_tail()}")


@contextmanager
def running_mosquitto(
    directory: Path, test_name: str | None = None, **options: Any
) -> Iterator[Mosquitto]:
    """A started :class:`Mosquitto` (`options` as its constructor's), stopped on exit
    (its log saved as `test_name`'s); skips the test when mosquitto is not installed."""
    reason = mosquitto_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    broker = Mosquitto(directory, **options)
    with _running(broker, test_name):
        yield broker


@contextmanager
def running_haproxy(
    directory: Path, backends: Sequence[int], test_name: str | None = None, **options: Any
) -> Iterator[HAProxy]:
    """A started :class:`HAProxy` in front of `backends`, stopped on exit (its log saved
    as `test_name`'s); skips the test when haproxy is not installed."""
    reason = haproxy_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    proxy = HAProxy(directory, backends, **options)
    with _running(proxy, test_name):
        yield proxy


# -- stations that come back by themselves (failover tests) -----------------------------


class NotConnected(Exception):
    """The station has no connection now (or lost it while waiting for an answer)."""


@dataclass
class Outage:
    """One lost connection of a :class:`FleetStation` and how it came back."""

    closed_at: float  # the event loop's time
    code: int | None
    reason: str
    #: the back-off waits slept from the loss to the connection that ended the outage
    waited: float = 0.0
    attempts: int = 0
    opened_at: float | None = None

    @property
    def took(self) -> float | None:
        return None if self.opened_at is None else self.opened_at - self.closed_at


@dataclass
class CallOutcome:
    """What one CALL got: ``kind`` "result", "error" (``code``) or "timeout"."""

    kind: str
    latency: float
    code: str = ""
    payload: Any = None
    #: the event loop's time when it came (or the wait ended)
    at: float = 0.0


class FleetStation:
    """A station that keeps itself connected, as a real one does.

    It connects to ``<url>/<cb_id>`` (Basic auth, the subprotocol of ``version``),
    and after a lost connection or a refused attempt waits its back-off, as
    OCPP 2.0.1's RetryBackOff: ``minimum`` plus a random part of ``random_range``,
    doubled after each failed attempt, at most ``maximum``; :attr:`outages`
    keeps each loss, the waits slept and when it was connected again.

    The CSMS's CALLs are answered with ``answers[action]`` (default
    ``{"status": "Accepted"}``); :meth:`call` sends a CALL and returns what came
    back. With ``package=True`` the station is the Python ``ocpp`` package's
    ``ChargePoint`` (OCPP 2.0.1) on each connection instead of raw frames.
    """

    def __init__(
        self,
        url: str,
        cb_id: str,
        password: str,
        version: str = "2.0.1",
        *,
        minimum: float = 1.0,
        random_range: float = 1.0,
        maximum: float = 8.0,
        answers: dict[str, Any] | None = None,
        package: bool = False,
        gate: Any = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.cb_id = cb_id
        self.password = password
        self.version = version
        self.minimum, self.random_range, self.maximum = minimum, random_range, maximum
        self.answers = answers or {}
        self.package = package
        self.gate = gate  # an asyncio.Semaphore bounding concurrent handshakes
        self.connected = asyncio.Event()
        self.connections = 0
        self.outages: list[Outage] = []
        self.refusals: list[str] = []
        self.received: list[str] = []  # actions of the CSMS's CALLs
        self._ws: Any = None
        self._cp: Any = None
        self._pending: dict[str, asyncio.Future[list[Any]]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._stopping = True
        ws = self._ws
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if ws is not None:
            ws.transport.abort()

    def _backoff(self, attempt: int) -> float:
        first = self.minimum + random.random() * self.random_range
        return float(min(self.maximum, first * 2**attempt))

    async def _connect(self) -> Any:
        subprotocol = Subprotocol(f"ocpp{self.version}")
        token = base64.b64encode(f"{self.cb_id}:{self.password}".encode()).decode()
        connect = websockets.connect(
            f"{self.url}/{self.cb_id}",
            subprotocols=[subprotocol],
            additional_headers={"Authorization": f"Basic {token}"},
            open_timeout=10,
            ping_interval=None,
            close_timeout=2,
        )
        if self.gate is None:
            return await connect
        async with self.gate:
            return await connect

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        waited = 0.0
        while not self._stopping:
            try:
                ws = await self._connect()
            except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake) as exc:
                self.refusals.append(f"{type(exc).__name__}: {exc}"[:120])
                wait = self._backoff(attempt)
                attempt += 1
                waited += wait
                await asyncio.sleep(wait)
                continue
            if self.outages and self.outages[-1].opened_at is None:
                outage = self.outages[-1]
                outage.opened_at, outage.waited, outage.attempts = loop.time(), waited, attempt
            attempt, waited = 0, 0.0
            self._ws = ws
            self.connections += 1
            self.connected.set()
            try:
                if self.package:
                    await self._run_package(ws)
                else:
                    await self._serve(ws)
            except websockets.ConnectionClosed:
                pass
            finally:
                self._ws = self._cp = None
                self.connected.clear()
                for future in self._pending.values():
                    if not future.done():
                        future.set_exception(NotConnected(f"{self.cb_id}: connection lost"))
                self._pending.clear()
            if self._stopping:
                return
            self.outages.append(Outage(loop.time(), ws.close_code, ws.close_reason or ""))
            wait = self._backoff(0)
            attempt, waited = 1, wait
            await asyncio.sleep(wait)

    async def _serve(self, ws: Any) -> None:
        async for raw in ws:
            frame = json.loads(raw)
            if frame[0] == 2:
                self.received.append(frame[2])
                answer = self.answers.get(frame[2], {"status": "Accepted"})
                await ws.send(json.dumps([3, frame[1], answer]))
            elif frame[0] in (3, 4):
                future = self._pending.pop(frame[1], None)
                if future is not None and not future.done():
                    future.set_result(frame)

    async def _run_package(self, ws: Any) -> None:
        from ocpp.routing import on
        from ocpp.v201 import ChargePoint, call_result

        station = self

        class PackageStation(ChargePoint):  # type: ignore[misc]
            @on("ClearCache")  # type: ignore[untyped-decorator]
            def on_clear_cache(self, **_: Any) -> Any:
                station.received.append("ClearCache")
                return call_result.ClearCache(status="Accepted")

        self._cp = PackageStation(self.cb_id, ws, response_timeout=60)
        await self._cp.start()

    async def call(self, action: str, payload: dict[str, Any], timeout: float) -> CallOutcome:
        """Send a CALL and wait up to ``timeout`` s (raises :class:`NotConnected`)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        if self.package:
            return await self._package_call(action, payload, timeout, started)
        ws = self._ws
        if ws is None:
            raise NotConnected(f"{self.cb_id}: not connected")
        message_id = f"{self.cb_id}-{next(self._ids)}"
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._pending[message_id] = future
        try:
            await ws.send(json.dumps([2, message_id, action, payload]))
            frame = await asyncio.wait_for(future, timeout)
        except websockets.ConnectionClosed:
            raise NotConnected(f"{self.cb_id}: connection lost") from None
        except asyncio.TimeoutError:
            return CallOutcome("timeout", loop.time() - started)
        finally:
            self._pending.pop(message_id, None)
        if frame[0] == 3:
            return CallOutcome("result", loop.time() - started, payload=frame[2])
        return CallOutcome("error", loop.time() - started, code=str(frame[2]))

    async def _package_call(
        self, action: str, payload: dict[str, Any], timeout: float, started: float
    ) -> CallOutcome:
        from ocpp.charge_point import camel_to_snake_case
        from ocpp.exceptions import OCPPError
        from ocpp.v201 import call

        station = self._cp
        if station is None:
            raise NotConnected(f"{self.cb_id}: not connected")
        loop = asyncio.get_running_loop()
        request = getattr(call, action)(**camel_to_snake_case(payload))
        try:
            result = await asyncio.wait_for(station.call(request, suppress=False), timeout)
        except asyncio.TimeoutError:
            if self._cp is not station:
                raise NotConnected(f"{self.cb_id}: connection lost") from None
            return CallOutcome("timeout", loop.time() - started)
        except OCPPError as exc:
            return CallOutcome("error", loop.time() - started, code=type(exc).__name__)
        except websockets.ConnectionClosed:
            raise NotConnected(f"{self.cb_id}: connection lost") from None
        return CallOutcome("result", loop.time() - started, payload=result)


class StationPool:
    """Many :class:`FleetStation` in this event loop (``stations`` given), started and
    stopped together; handshakes at most ``concurrency`` at a time."""

    def __init__(self, stations: Sequence[FleetStation], concurrency: int = 200) -> None:
        self.stations = list(stations)
        self.by_id = {station.cb_id: station for station in self.stations}
        gate = asyncio.Semaphore(concurrency)
        for station in self.stations:
            station.gate = gate

    def start(self) -> None:
        for station in self.stations:
            station.start()

    async def stop(self) -> None:
        await asyncio.gather(*(station.stop() for station in self.stations))

    def connected(self) -> int:
        return sum(station.connected.is_set() for station in self.stations)

    async def wait_connected(self, timeout: float) -> float:
        """Return the seconds it took until every station is connected."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        while self.connected() < len(self.stations):
            if loop.time() >= deadline:
                missing = [s for s in self.stations if not s.connected.is_set()]
                raise TimeoutError(
                    f"{len(missing)} of {len(self.stations)} stations not connected after"
                    f" {timeout}s; e.g. {missing[0].cb_id}: {missing[0].refusals[-3:]}"
                )
            await asyncio.sleep(0.05)
        return loop.time() - started


async def call_until_answered(
    station: FleetStation,
    action: str,
    payload: dict[str, Any],
    *,
    timeout: float,
    retry_after: float,
    deadline: float,
    seen: list[CallOutcome] | None = None,
) -> int:
    """Send a CALL until a CALLRESULT comes back, as a station retries a transaction
    message (OCPP 2.0.1 E13): again after a CALLERROR, a timeout or a lost connection
    (once connected again). Returns the attempts; every outcome goes to ``seen``.

    Raises:
        TimeoutError: no CALLRESULT before the loop time ``deadline``.
    """
    loop = asyncio.get_running_loop()
    attempts = 0
    while loop.time() < deadline:
        if not station.connected.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(station.connected.wait(), max(0.01, deadline - loop.time()))
            continue
        attempts += 1
        try:
            outcome = await station.call(action, payload, timeout)
        except NotConnected:
            continue
        outcome.at = loop.time()
        if seen is not None:
            seen.append(outcome)
        if outcome.kind == "result":
            return attempts
        await asyncio.sleep(retry_after)
    raise TimeoutError(f"{station.cb_id}: {action} {payload} not answered in time")


# -- a TCP path that can go dead (a station's socket its gateway notices late) ----------


class TcpForwarder:
    """127.0.0.1:`port` forwarded to 127.0.0.1:`target`; :meth:`freeze` stops relaying
    (both sides see an open socket that carries nothing), :meth:`cut` resets
    every connection."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.frozen = False
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accepted, HOST, self.port)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(HOST, self.target)
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                if self.frozen:
                    continue  # swallowed: the path is dead
                sink.write(data)
                await sink.drain()
        with contextlib.suppress(OSError, RuntimeError):
            sink.close()

    def freeze(self) -> None:
        self.frozen = True

    def cut(self) -> None:
        for writer in self._writers:
            transport = writer.transport
            if isinstance(transport, asyncio.Transport):
                transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


# -- Node-RED killed -------------------------------------------------------------------


def kill_node_red(runtime: Any) -> set[int]:
    """``kill -9`` of a :class:`tests.nodered.NodeRed`'s node process (nothing else):
    returns the pids of its ``ocpp_nodes`` daemons, which are left to notice alone."""
    daemons = runtime.daemon_pids()
    proc = runtime.proc
    assert proc is not None and proc.poll() is None, "Node-RED is not running"
    proc.kill()
    proc.wait(10)
    return set(daemons)


# -- reading the broker as any consumer does ---------------------------------------------


async def first_message(
    broker: Mosquitto,
    topic: str,
    accept: Callable[[bytes], bool] = bool,
    timeout: float = 10.0,
) -> bytes:
    """The first message on ``topic`` (a retained one counts) whose payload ``accept``
    takes (by default: any non-empty one)."""
    import aiomqtt

    async with aiomqtt.Client(**broker.client_args(), protocol=aiomqtt.ProtocolVersion.V5) as mqtt:
        await mqtt.subscribe(topic, qos=1)
        async with asyncio.timeout(timeout):
            async for message in mqtt.messages:
                payload = message.payload
                if isinstance(payload, bytes | bytearray) and accept(bytes(payload)):
                    return bytes(payload)
    raise AssertionError("unreachable")
