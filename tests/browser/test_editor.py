"""The editor in headless Chromium: runs tests/browser/editor.test.js (node --test,
playwright-core from tools/node, Debian's /usr/bin/chromium) against a real
Node-RED with this checkout's shim (tests/nodered.py). Screenshots go to
test-artifacts/screenshots/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.nodered import ARTIFACTS, REPO_ROOT, free_port, running_node_red

pytestmark = pytest.mark.nodered

CHROMIUM = Path(os.environ.get("OCPP_CHROMIUM", "/usr/bin/chromium"))
PLAYWRIGHT = REPO_ROOT / "tools" / "node" / "node_modules" / "playwright-core"
SCREENSHOTS = ARTIFACTS / "screenshots"


def browser_missing_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: `make setup` installs Debian's chromium package"
    if not (PLAYWRIGHT / "package.json").is_file():
        return "tools/node/node_modules/playwright-core is missing: run `make setup`"
    return None


def test_editor_in_headless_chromium(tmp_path: Path) -> None:
    reason = browser_missing_reason()
    if reason:
        pytest.skip(reason)
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    with running_node_red(tmp_path / "node-red", "test_editor_in_headless_chromium") as runtime:
        env = dict(os.environ)
        env.update(
            OCPP_EDITOR_URL=runtime.base_url,
            OCPP_CSMS_PORT=str(free_port()),
            OCPP_SCREENSHOTS=str(SCREENSHOTS),
            OCPP_CHROMIUM=str(CHROMIUM),
        )
        started = time.monotonic()
        result = subprocess.run(
            ["node", "--test", "--test-reporter=spec", "tests/browser/editor.test.js"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
        )
        print(f"browser test: {time.monotonic() - started:.1f} s")
    output = result.stdout + result.stderr
    print(output)
    assert result.returncode == 0, output
    assert "pass 6" in output and "fail 0" in output, output
    assert sorted(p.name for p in SCREENSHOTS.glob("*.png"))
