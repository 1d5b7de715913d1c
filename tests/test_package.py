"""The example flows reach users: in the npm tarball and under Import > Examples."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.nodered import REPO_ROOT, running_node_red

EXAMPLES = sorted(path.stem for path in (REPO_ROOT / "flows").glob("*.json"))


def test_npm_tarball_ships_every_example_flow_as_examples() -> None:
    subprocess.run(["make", "-s", "pack"], cwd=REPO_ROOT, check=True, timeout=120)
    (tarball,) = (REPO_ROOT / "build").glob("node-red-contrib-ocpp-nodes-*.tgz")
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
    assert {f"package/examples/{name}.json" for name in EXAMPLES} <= names
    assert "package/nodes/locales/en-US/cs.html" in names
    # the scripts both dialogs load (js_shim/resources)
    assert {"package/resources/ocpp-versions.js", "package/resources/ocpp-dialog.js"} <= names


@pytest.mark.nodered
def test_node_red_lists_the_examples_under_import(tmp_path: Path) -> None:
    with running_node_red(tmp_path, "test_package_examples") as runtime:
        status, modules = runtime.http("GET", "/library/examples/flows/")
        assert status == 200 and "node-red-contrib-ocpp-nodes" in modules
        status, entries = runtime.http(
            "GET", "/library/examples/flows/node-red-contrib-ocpp-nodes/"
        )
        assert status == 200
        assert sorted(entry["fn"] for entry in entries) == EXAMPLES
        status, flow = runtime.http(
            "GET", "/library/examples/flows/node-red-contrib-ocpp-nodes/demo"
        )
        assert status == 200 and any(node["type"] == "CSMS" for node in flow)
