"""Wait for a Node-RED admin API and deploy a flow file to it, credentials included.

Used by `make demo` (as a command) and by the end-to-end test harness
(`tests/nodered.py`, as a module). Standard library only.

A flow file is what the editor exports (a JSON array of nodes); a node may carry
a `credentials` object, which the admin API's POST /flows stores in the runtime's
credentials file instead of the flow file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["deploy", "get_flows", "load_flow", "wait_for_admin"]


def wait_for_admin(base_url: str, timeout: float = 60.0) -> None:
    """Poll GET /settings until the admin API answers 200.

    Raises:
        TimeoutError: it did not answer within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base_url.rstrip("/") + "/settings", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            last_error = err
        time.sleep(0.2)
    raise TimeoutError(f"Node-RED admin API at {base_url} not up after {timeout}s: {last_error}")


def deploy(base_url: str, nodes: list[dict[str, Any]], timeout: float = 30.0) -> str:
    """POST the nodes as a full deployment and return the new flows revision.

    Raises:
        RuntimeError: the runtime refused the flow (the message carries its answer).
    """
    req = urllib.request.Request(
        base_url.rstrip("/") + "/flows",
        data=json.dumps({"flows": nodes}).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Node-RED-API-Version": "v2",
            "Node-RED-Deployment-Type": "full",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read().decode()
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"deploy refused: HTTP {err.code}: {err.read().decode()}") from err
    rev: str = json.loads(body)["rev"]
    return rev


def get_flows(base_url: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """GET /flows: the deployed nodes, without credentials."""
    req = urllib.request.Request(
        base_url.rstrip("/") + "/flows", headers={"Node-RED-API-Version": "v1"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        flows: list[dict[str, Any]] = json.loads(resp.read().decode())
    return flows


def load_flow(path: Path) -> list[dict[str, Any]]:
    """Read a flow file: a JSON array of node objects."""
    nodes = json.loads(Path(path).read_text())
    if not isinstance(nodes, list):
        raise ValueError(f"{path}: a flow file is a JSON array of nodes")
    return nodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("flow", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:1880")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    nodes = load_flow(args.flow)
    try:
        wait_for_admin(args.url, args.timeout)
        rev = deploy(args.url, nodes)
    except (TimeoutError, RuntimeError, OSError) as err:
        print(f"deploy_flow: {err}", file=sys.stderr)
        return 1
    print(f"deploy_flow: deployed {args.flow} ({len(nodes)} nodes) to {args.url}, rev {rev}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
