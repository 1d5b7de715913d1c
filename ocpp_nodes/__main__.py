"""``ocpp-nodes serve``: the daemon that the Node-RED shim starts; ``ocpp-nodes hash-password``.

The token comes in the environment (``OCPP_NODES_TOKEN``), never on the
command line. When stdin is a pipe, the daemon exits as soon as it closes:
the shim holds the other end, so the daemon never outlives Node-RED.

``hash-password`` prints a hash for the CSMS node's *CS Auth* list
(docs/security.md): the password comes from a prompt without echo or from
stdin, never from the command line, where ``ps`` would show it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import ipaddress
import json
import logging
import os
import signal
import ssl
import stat
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from . import IPC_PROTOCOL, __version__, hop_trace, schemas
from .ipc.server import DaemonServer
from .rpc import VERSIONS
from .schema_cache import DiskCodeCache, default_directory
from .transport.passwords import SCHEMES, HashFormatError, make_hash

if TYPE_CHECKING:
    from .metrics import EngineMetrics

TOKEN_VARIABLE = "OCPP_NODES_TOKEN"

#: Longest wait for nodes to close their connections when the daemon stops.
SHUTDOWN_SECONDS = 10


def _stdin_is_pipe() -> bool:
    """True for a pipe or a socketpair (what Node's ``stdio: "pipe"`` gives)."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def _wait_for_stdin_eof() -> None:
    loop = asyncio.get_running_loop()
    closed = loop.create_future()

    class _Watcher(asyncio.Protocol):
        def connection_lost(self, exc: Exception | None) -> None:
            if not closed.done():
                closed.set_result(None)

    await loop.connect_read_pipe(_Watcher, sys.stdin)
    await closed


async def serve(
    socket_path: str | None,
    token: str,
    tcp: tuple[str, int] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    metrics_at: tuple[str, int] | None = None,
    metrics: EngineMetrics | None = None,
) -> None:
    # Every validator of every version, before the first station can connect:
    # nothing on a receive path compiles or reads a file.
    schemas.use_code_cache(DiskCodeCache(default_directory()))
    for version in VERSIONS.values():
        version.schemas  # noqa: B018 (built on first use)
    transports, connection_class = hop_trace.daemon_parts()
    server = DaemonServer(token, transports, connection_class, metrics)
    if metrics is not None and metrics_at is not None:
        # never fatal: a busy port is logged and the engine runs on without it
        await metrics.start(server, *metrics_at)
    ready: dict[str, object] = {"event": "ready"}
    if socket_path is not None:
        await server.listen_unix(socket_path)
        ready["socket"] = socket_path
    else:
        assert tcp is not None
        host, port = tcp
        ready["tcp"] = f"{host}:{await server.listen_tcp(host, port, ssl_context)}"
        ready["tls"] = ssl_context is not None
    ready.update(pid=os.getpid(), version=__version__, protocol=IPC_PROTOCOL)
    print(json.dumps(ready), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiters = [asyncio.create_task(stop.wait())]
    if _stdin_is_pipe():
        waiters.append(asyncio.create_task(_wait_for_stdin_eof()))
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    try:
        await asyncio.wait_for(server.close(), SHUTDOWN_SECONDS)
    except asyncio.TimeoutError:
        logging.getLogger(__name__).warning(
            "nodes did not stop within %d s; exiting anyway", SHUTDOWN_SECONDS
        )
    if metrics is not None:
        await metrics.stop()
    if hop_trace.TRACE is not None:
        hop_trace.TRACE.save()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ocpp-nodes", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the daemon for a Node-RED shim")
    where = serve_parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="path of the Unix socket to create")
    where.add_argument(
        "--tcp",
        metavar="HOST:PORT",
        help="listen on TCP instead, for a Node-RED on another host (see docs/install.md)",
    )
    serve_parser.add_argument("--tls-cert", help="with --tcp: the server's certificate (PEM)")
    serve_parser.add_argument("--tls-key", help="with --tcp: its private key (PEM)")
    serve_parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    serve_parser.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve /metrics and /health on HOST:PORT (HOST defaults to 127.0.0.1; "
        "docs/operations.md); a port that cannot be had is logged and skipped",
    )
    serve_parser.add_argument(
        "--metrics-station-labels",
        action="store_true",
        help="with --metrics: also series per station (cbId label; small fleets only)",
    )
    serve_parser.add_argument(
        "--engine-restarts",
        type=int,
        default=0,
        help=argparse.SUPPRESS,  # the shim: engines it restarted before this one
    )
    hash_parser = commands.add_parser(
        "hash-password",
        help="print a salted hash of a password for a CSMS node's CS Auth list",
        description="Reads the password from a prompt (no echo) or, when stdin is not "
        "a terminal, from the first line of stdin; prints the hash.",
    )
    hash_parser.add_argument(
        "--scheme", choices=SCHEMES, default="scrypt", help="hash scheme (default scrypt)"
    )
    hash_parser.add_argument(
        "--cost",
        type=int,
        help="scrypt: ln, log2 of N (default 14); pbkdf2: rounds (default 600000)",
    )
    gateway_parser = commands.add_parser(
        "gateway",
        help="run a fleet station gateway (docs/fleet.md)",
        description="Listens for Charging Stations as a CSMS node does and bridges them "
        "to the fleet's MQTT 5 broker, where CSMS nodes in fleet mode serve them.",
    )
    gateway_parser.add_argument("--config", required=True, help="the gateway's JSON config file")
    gateway_parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    args = parser.parse_args(argv)
    if args.command == "hash-password":
        return hash_password(args.scheme, args.cost)
    if args.command == "gateway":
        return gateway(args.config, args.log_level)

    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(levelname)s %(name)s: %(message)s",
    )
    # aiohttp warns once per attempt of a station offering no version we accept;
    # the CSMS node sums those attempts up itself (RefusalLog): no flood.
    logging.getLogger("aiohttp.websocket").addFilter(
        lambda record: "Client protocols" not in str(record.msg)
    )
    token = os.environ.pop(TOKEN_VARIABLE, "")
    if not token:
        print(f"ocpp-nodes: set {TOKEN_VARIABLE} to the shim's token", file=sys.stderr)
        return 2
    tcp = None
    ssl_context = None
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit():
            print("ocpp-nodes: --tcp wants HOST:PORT", file=sys.stderr)
            return 2
        tcp = (host.strip("[]"), int(port))
        if args.tls_cert or args.tls_key:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
            except (OSError, ssl.SSLError) as exc:
                print(f"ocpp-nodes: cannot load --tls-cert / --tls-key: {exc}", file=sys.stderr)
                return 2
        elif not _is_loopback(tcp[0]):
            # The token and every message (passwords included) would cross the
            # network in clear.
            print(
                "ocpp-nodes: a TCP listener on a non-loopback address needs --tls-cert "
                "and --tls-key",
                file=sys.stderr,
            )
            return 2
    metrics_at = None
    metrics = None
    if args.metrics:
        # imported only when asked for: prometheus_client adds to every start
        from .metrics import EngineMetrics, parse_address

        try:
            metrics_at = parse_address(args.metrics)
        except ValueError:
            print("ocpp-nodes: --metrics wants [HOST:]PORT", file=sys.stderr)
            return 2
        metrics = EngineMetrics(args.metrics_station_labels, max(0, args.engine_restarts))
    try:
        _run(serve(args.socket, token, tcp, ssl_context, metrics_at, metrics))
    except OSError as exc:
        print(f"ocpp-nodes: cannot listen on {args.socket or args.tcp}: {exc}", file=sys.stderr)
        return 1
    return 0


def gateway(config_path: str, log_level: str) -> int:
    """``ocpp-nodes gateway``: run a fleet gateway until SIGTERM; the exit status."""
    from .fleet.gateway import ConfigError, load_config, run_gateway

    logging.basicConfig(
        stream=sys.stderr, level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"ocpp-nodes gateway: {exc}", file=sys.stderr)
        return 2
    schemas.use_code_cache(DiskCodeCache(default_directory()))
    for version in VERSIONS.values():
        version.schemas  # noqa: B018 (built before the first station connects)
    status = 0

    async def run() -> None:
        nonlocal status
        status = await run_gateway(config)

    _run(run())
    return status


def hash_password(scheme: str, cost: int | None) -> int:
    """``ocpp-nodes hash-password``: read a password, print its hash; the exit status."""
    if sys.stdin.isatty():
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Again: ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 1
        if password != again:
            print("ocpp-nodes: the two passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        print("ocpp-nodes: no password given", file=sys.stderr)
        return 1
    try:
        print(make_hash(password, scheme, cost=cost))
    except HashFormatError as exc:
        print(f"ocpp-nodes: {exc}", file=sys.stderr)
        return 2
    return 0


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run the daemon on uvloop where it is installed (Linux, macOS), else asyncio's loop."""
    # Python's cycle collector runs every 700 allocations by default and then
    # walks every young object: a busy daemon with thousands of connections
    # spent several per cent of its time there (docs/benchmarks.md, "Tried").
    # Messages are not cyclic garbage; collect less often, and once after
    # nodes stop (ShimConnection._collect_soon), which does leave cycles.
    gc.set_threshold(100_000, 50, 100)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


if __name__ == "__main__":
    sys.exit(main())
