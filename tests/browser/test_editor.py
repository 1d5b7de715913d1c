"""The editor in headless Chromium: runs tests/browser/editor.test.js and
tests/browser/guide.test.js (node --test, playwright-core from tools/node,
Debian's /usr/bin/chromium) against a real Node-RED with this checkout's shim
(tests/nodered.py).

The editor test also deploys a CSMS node set to fleet mode through its
dialog, against a real Mosquitto (tests/fleetkit.py): without mosquitto
installed, that part alone is skipped (the output says so).

Screenshots go to .local/screenshots/ (never into tracked files);
`make screenshots` runs these tests and copies the ones the docs show to
docs/images/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.fleetkit import Mosquitto, mosquitto_missing_reason
from tests.nodered import REPO_ROOT, free_port, running_node_red
from tests.test_getting_started import demo_flow, guide_flow, station_script

pytestmark = pytest.mark.nodered

CHROMIUM = Path(os.environ.get("OCPP_CHROMIUM", "/usr/bin/chromium"))
PLAYWRIGHT = REPO_ROOT / "tools" / "node" / "node_modules" / "playwright-core"
SCREENSHOTS = Path(os.environ.get("OCPP_SCREENSHOTS", REPO_ROOT / ".local" / "screenshots"))
#: The screenshots docs/ shows (docs/images/<name>.png), taken by guide.test.js,
#: editor.test.js and live-view.test.js; `make screenshots` copies exactly these.
DOC_IMAGES = (
    "demo-flow",
    "getting-started-flow",
    "getting-started-debug",
    "getting-started-catch",
    "csms-dialog",
    "csms-dialog-security",
    "csms-dialog-fleet",
    "cs-dialog",
    "live-view",  # by live-view.test.js (test_live_view.py)
)


def browser_missing_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: `make setup` installs Debian's chromium package"
    if not (PLAYWRIGHT / "package.json").is_file():
        return "tools/node/node_modules/playwright-core is missing: run `make setup`"
    return None


def run_browser_test(name: str, timeout: float, **env: str) -> tuple[int, str]:
    """Run tests/browser/<name> with node:test; its exit code and printed output."""
    started = time.monotonic()
    result = subprocess.run(
        ["node", "--test", "--test-reporter=spec", f"tests/browser/{name}"],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "OCPP_SCREENSHOTS": str(SCREENSHOTS),
            "OCPP_CHROMIUM": str(CHROMIUM),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    print(f"browser test {name}: {time.monotonic() - started:.1f} s")
    output = result.stdout + result.stderr
    print(output)
    return result.returncode, output


def test_editor_in_headless_chromium(tmp_path: Path) -> None:
    reason = browser_missing_reason()
    if reason:
        pytest.skip(reason)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    with ExitStack() as stack:
        fleet: dict[str, str] = {}
        missing = mosquitto_missing_reason()
        if missing is None:
            broker = Mosquitto(tmp_path / "mosquitto")
            broker.start()
            stack.callback(broker.save_log, "test_editor_in_headless_chromium")
            stack.callback(broker.stop)
            fleet = {
                "OCPP_FLEET_BROKER": broker.url,
                "OCPP_FLEET_USERNAME": broker.username,
                "OCPP_FLEET_PASSWORD": broker.password,
            }
        else:
            print(f"the fleet node is not deployed: {missing}")
        runtime = stack.enter_context(
            running_node_red(tmp_path / "node-red", "test_editor_in_headless_chromium")
        )
        returncode, output = run_browser_test(
            "editor.test.js",
            300,
            OCPP_EDITOR_URL=runtime.base_url,
            OCPP_CSMS_PORT=str(free_port()),
            **fleet,
        )
    assert returncode == 0, output
    assert "pass 12" in output and "fail 0" in output, output
    for name in ("csms-dialog", "csms-dialog-security", "csms-dialog-fleet", "cs-dialog"):
        assert (SCREENSHOTS / f"{name}.png").is_file(), name


def test_getting_started_in_headless_chromium(tmp_path: Path) -> None:
    reason = browser_missing_reason()
    if reason:
        pytest.skip(reason)
    port, demo_port = free_port(), free_port()
    flow = tmp_path / "getting-started.json"
    flow.write_text(json.dumps(guide_flow(port), indent=1))
    script = tmp_path / "station.py"
    script.write_text(station_script(port))
    with running_node_red(
        tmp_path / "node-red", "test_getting_started_in_headless_chromium"
    ) as runtime:
        runtime.deploy(demo_flow(demo_port))
        returncode, output = run_browser_test(
            "guide.test.js",
            180,
            OCPP_EDITOR_URL=runtime.base_url,
            OCPP_GUIDE_FLOW=str(flow),
            OCPP_STATION_PYTHON=sys.executable,
            OCPP_STATION_SCRIPT=str(script),
        )
    assert returncode == 0, output
    assert "pass 5" in output and "fail 0" in output, output
    for name in DOC_IMAGES[:4]:
        assert (SCREENSHOTS / f"{name}.png").is_file(), name
