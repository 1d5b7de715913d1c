"""Prepare a Node-RED user directory that loads the ocpp-nodes shim from this checkout.

Used by `make demo` (as a command) and by the end-to-end test harness
(`tests/nodered.py`, as a module). Standard library only.

The user directory gets:
- `settings.js`: loopback-only editor on the given port, the Python that runs
  the daemon (`ocppNodes.python`), credentials stored unencrypted (the directory
  is a throw-away one under `.local/` or a temp dir), no telemetry prompt;
- `node_modules/node-red-contrib-ocpp-nodes`: a symlink to `js_shim/`, which
  Node-RED's registry scans like any installed package.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

__all__ = ["REPO_ROOT", "SHIM_PACKAGE", "link_shim", "port_is_free", "prepare", "write_settings"]

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIM_PACKAGE = "node-red-contrib-ocpp-nodes"


def write_settings(
    user_dir: Path,
    port: int,
    python: str,
    *,
    log_level: str = "info",
    extra: dict[str, object] | None = None,
) -> Path:
    """Write `settings.js` into `user_dir` and return its path.

    Args:
        user_dir: the Node-RED user directory (created if missing).
        port: the editor/admin port, bound on 127.0.0.1 only.
        python: the interpreter the shim starts the daemon with.
        log_level: Node-RED console log level ("info", "debug", "trace").
        extra: more top-level settings, JSON-serialisable.
    """
    user_dir.mkdir(parents=True, exist_ok=True)
    settings: dict[str, object] = {
        "uiHost": "127.0.0.1",
        "uiPort": port,
        "flowFile": "flows.json",
        "credentialSecret": False,
        "ocppNodes": {"python": python},
        "logging": {"console": {"level": log_level, "metrics": False, "audit": False}},
        "telemetry": {"enabled": False, "updateNotification": False},
        "diagnostics": {"enabled": False, "ui": False},
        "editorTheme": {"tours": False},
    }
    if extra:
        settings.update(extra)
    body = json.dumps(settings, indent=4)
    path = user_dir / "settings.js"
    path.write_text(
        "// Written by scripts/prepare_userdir.py; rewritten on every run.\n"
        f"module.exports = {body};\n"
    )
    return path


def link_shim(user_dir: Path, shim_dir: Path | None = None) -> Path:
    """Make `user_dir/node_modules/node-red-contrib-ocpp-nodes` a symlink to the shim."""
    shim = (shim_dir or REPO_ROOT / "js_shim").resolve()
    modules = user_dir / "node_modules"
    modules.mkdir(parents=True, exist_ok=True)
    link = modules / SHIM_PACKAGE
    if link.is_symlink() or link.exists():
        if link.is_symlink() and Path(os.readlink(link)) == shim:
            return link
        if link.is_dir() and not link.is_symlink():
            raise RuntimeError(f"{link} is a real directory; remove it to use the checkout's shim")
        link.unlink()
    link.symlink_to(shim, target_is_directory=True)
    return link


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port (a bind succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def prepare(user_dir: Path, port: int, python: str, **kwargs: object) -> None:
    """Write settings.js and link the shim (see the module docstring)."""
    write_settings(user_dir, port, python, **kwargs)  # type: ignore[arg-type]
    link_shim(user_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user-dir", required=True, type=Path)
    parser.add_argument("--port", type=int, default=1880)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument(
        "--check-port", action="store_true", help="fail when the port is already taken"
    )
    args = parser.parse_args(argv)
    if args.check_port and not port_is_free(args.port):
        print(
            f"port {args.port} on 127.0.0.1 is in use: stop what listens there first",
            file=sys.stderr,
        )
        return 1
    prepare(args.user_dir, args.port, str(Path(args.python).absolute()))
    print(f"prepared Node-RED user dir {args.user_dir} (port {args.port})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
