"""``make fleet-demo``: fleet mode on one machine (docs/fleet.md).

Starts, on loopback:

- Mosquitto on port 9233 (MQTT 5, a user ``fleet-demo`` with a password made
  for this run, persistence in the demo directory);
- two ``ocpp-nodes gateway`` processes on ports 9231 and 9232 (fleet group
  ``demo``);
- HAProxy on port 9230 in front of them (TCP, health checks every second):
  the stations' URL is ``ws://127.0.0.1:9230/ocpp``;
- Node-RED on port 1881 with flows/fleet-demo.json: a CSMS node in fleet mode
  and a station CS001 that connects through HAProxy.

Node-RED starts first, so that its CSMS node has published the stations'
logins when the gateways start; CS001 retries until HAProxy is there.

Ctrl-C stops everything. Kill a gateway (its pid is printed) to watch CS001
reconnect through the other one. Logs are in the demo directory.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.deploy_flow import deploy, wait_for_admin  # noqa: E402
from tests.fleetkit import (  # noqa: E402
    GatewayProcess,
    HAProxy,
    Mosquitto,
    haproxy_missing_reason,
    mosquitto_missing_reason,
)

GROUP = "demo"
BROKER_PORT = 9233
GATEWAY_PORTS = (9231, 9232)
PROXY_PORT = 9230


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="the demo's directory")
    parser.add_argument("--port", type=int, default=1881, help="Node-RED's port")
    parser.add_argument("--node-red", required=True, help="the node-red command")
    parser.add_argument("--broker-port", type=int, default=BROKER_PORT)
    parser.add_argument("--proxy-port", type=int, default=PROXY_PORT)
    parser.add_argument(
        "--gateway-ports", type=int, nargs=2, default=GATEWAY_PORTS, metavar=("PORT1", "PORT2")
    )
    args = parser.parse_args()
    for missing in (mosquitto_missing_reason(), haproxy_missing_reason()):
        if missing is not None:
            print(f"fleet-demo: {missing}", file=sys.stderr)
            return 2
    directory: Path = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(16)
    # a new password each run: the broker's config and password file are made again
    (directory / "mosquitto" / "mosquitto.conf").unlink(missing_ok=True)
    broker = Mosquitto(directory / "mosquitto", args.broker_port, users={"fleet-demo": password})
    gateways = [
        GatewayProcess(directory / f"gateway-{n}", broker, f"gw{n}", GROUP, port, {"limits": {}})
        for n, port in enumerate(args.gateway_ports, 1)
    ]
    proxy = HAProxy(directory / "haproxy", list(args.gateway_ports), args.proxy_port)
    started: list[object] = []
    node_red: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    # Ctrl-C and SIGTERM stop it; SIGINT set here too, because a process started
    # in the background (a CI job, nohup) inherits SIGINT ignored
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        broker.start()
        started.append(broker)
        print(
            f"Mosquitto: mqtt://127.0.0.1:{args.broker_port} (user fleet-demo, pid {broker.pid})",
            flush=True,
        )
        user_dir = directory / "node-red"
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "prepare_userdir.py"),
                "--user-dir",
                str(user_dir),
                "--port",
                str(args.port),
                "--python",
                sys.executable,
                "--check-port",
            ],
            check=True,
        )
        node_red = subprocess.Popen([*args.node_red.split(), "-u", str(user_dir)])
        url = f"http://127.0.0.1:{args.port}"
        wait_for_admin(url)
        flow = (
            (ROOT / "flows" / "fleet-demo.json")
            .read_text()
            .replace("${FLEET_DEMO_PASSWORD}", password)
            .replace(f"127.0.0.1:{BROKER_PORT}", f"127.0.0.1:{args.broker_port}")
            .replace(f"127.0.0.1:{PROXY_PORT}", f"127.0.0.1:{args.proxy_port}")
        )
        deploy(url, json.loads(flow))
        for gateway in gateways:
            gateway.start()
            started.append(gateway)
            print(
                f"gateway {gateway.gateway_id}: ws://127.0.0.1:{gateway.port}/ocpp "
                f"(pid {gateway.pid}, log {gateway.log_path})",
                flush=True,
            )
        proxy.start()
        started.append(proxy)
        print(
            f"HAProxy: ws://127.0.0.1:{args.proxy_port}/ocpp -> the gateways (pid {proxy.pid})",
            flush=True,
        )
        print(f"Node-RED: {url}  (Ctrl-C stops everything)", flush=True)
        while not stop.is_set() and node_red.poll() is None:
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping ...", flush=True)
        if node_red is not None and node_red.poll() is None:
            began = time.monotonic()
            node_red.send_signal(signal.SIGTERM)
            try:
                node_red.wait(30)
            except subprocess.TimeoutExpired:
                node_red.kill()
            print(f"Node-RED stopped ({time.monotonic() - began:.1f} s)", flush=True)
        for process in reversed(started):
            began = time.monotonic()
            process.stop()  # type: ignore[attr-defined]
            name = process.name  # type: ignore[attr-defined]
            print(f"{name} stopped ({time.monotonic() - began:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
