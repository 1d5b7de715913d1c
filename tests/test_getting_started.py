"""docs/getting-started.md, step by step, in a real Node-RED with a real station.

The flow, the function code and the station script are taken from the page's
own code blocks (each follows a `<!-- getting-started: NAME -->` marker), so
the page and this test cannot drift apart. As a reader would, the test runs
the demo flow and imports the page's flow next to it, starts the page's
`station.py` (the Python `ocpp` package as station CS100), presses the inject
buttons through the admin API (as the editor's button does), and checks what
the page says the debug nodes show. Only the TCP ports differ from the page:
free ones replace 9220 and 9230.

Recorders (tests/flowkit.py) sit beside every debug node of the page's flow,
tagged with the debug node's name, and a `status` node records the statuses
of the demo's CSMS and CS nodes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ocpp_nodes import __version__
from tests.flowkit import Flow, http_api, recorder, wait_port
from tests.nodered import REPO_ROOT, free_port, running_node_red

PAGE = REPO_ROOT / "docs" / "getting-started.md"
PAGE_PORT = 9230
DEMO_PORT = 9220
TEST_TAB = "gs.test.tab"

_BLOCK = re.compile(r"<!-- getting-started: ([\w ]+) -->\n```\w*\n(.*?)\n```", re.S)


def page_text() -> str:
    return PAGE.read_text()


def blocks() -> dict[str, str]:
    """The marked code blocks of the page, by marker name."""
    return dict(_BLOCK.findall(page_text()))


def guide_flow(port: int = PAGE_PORT) -> list[dict[str, Any]]:
    """The page's flow, its CSMS node on `port`."""
    nodes: list[dict[str, Any]] = json.loads(blocks()["flow"])
    for node in nodes:
        if node["type"] == "CSMS":
            node["port"] = str(port)
    return nodes


def station_script(port: int = PAGE_PORT) -> str:
    """The page's station.py, connecting to `port`."""
    script = blocks()["station"]
    assert f"127.0.0.1:{PAGE_PORT}" in script
    return script.replace(f"127.0.0.1:{PAGE_PORT}", f"127.0.0.1:{port}")


def demo_flow(port: int) -> list[dict[str, Any]]:
    """flows/demo.json with its CSMS on `port` (the target-csms URL follows)."""
    nodes: list[dict[str, Any]] = json.loads((REPO_ROOT / "flows" / "demo.json").read_text())
    for node in nodes:
        if node["type"] == "CSMS":
            node["port"] = str(port)
        elif node["type"] == "target-csms":
            node["url"] = node["url"].replace(f":{DEMO_PORT}/", f":{port}/")
    return nodes


def by_name(nodes: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [n for n in nodes if n.get("name") == name]
    assert len(found) == 1, (name, found)
    return found[0]


# -- the page agrees with itself (no Node-RED) --------------------------------------------


def test_the_page_has_every_block_the_test_needs() -> None:
    assert set(blocks()) >= {
        "flow",
        "answer requests",
        "station",
        "station output",
        "GetVariables payload",
        "error",
    }


def test_the_function_code_shown_is_the_code_in_the_flow() -> None:
    answer = by_name(guide_flow(), "answer requests")
    assert answer["func"].rstrip("\n") == blocks()["answer requests"]


def test_the_inject_payload_shown_is_the_one_in_the_flow() -> None:
    inject = by_name(guide_flow(), "GetVariables to CS100")
    assert json.loads(inject["payload"]) == json.loads(blocks()["GetVariables payload"])


def test_every_node_the_page_names_in_bold_is_in_the_flow() -> None:
    names = {n.get("name") for n in guide_flow()}
    section = re.sub(r"```.*?```", "", page_text().split("## 3.", 1)[1], flags=re.S)
    named = {" ".join(n.split()) for n in re.findall(r"\*\*([^*]+)\*\*", section)}
    # bold words that are buttons of the editor, not nodes
    named -= {"Import", "Deploy"}
    assert named and named <= names, sorted(named - names)


def test_the_demo_command_prints_what_the_page_shows() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "DEMO_PORT := 1880" in makefile
    shown = "Node-RED: http://127.0.0.1:$(DEMO_PORT)  (Ctrl-C to stop)"
    assert shown in makefile
    assert shown.replace("$(DEMO_PORT)", "1880") in page_text()
    assert f"[ocpp-nodes] engine {__version__} ready (pid " in page_text()


# -- the steps, in a real Node-RED -----------------------------------------------------------


class Guide(Flow):
    nodes: list[dict[str, Any]]
    port: int
    station: subprocess.Popen[str]
    station_lines: list[str]

    def press(self, inject_name: str) -> None:
        node = by_name(self.nodes, inject_name)
        status, body = self.runtime.http("POST", f"/inject/{node['id']}")
        assert status == 200, (status, body)

    def station_says(self, count: int, timeout: float = 20.0) -> list[str]:
        """The station's first `count` lines of output (bounded wait)."""
        assert self.station.stdout is not None
        deadline = time.monotonic() + timeout
        while len(self.station_lines) < count:
            assert time.monotonic() < deadline, (self.station_lines, self.runtime.log_tail(30))
            line = self.station.stdout.readline()
            if not line:
                pytest.fail(f"station.py ended: {self.station_lines}\n{self.runtime.log_tail(30)}")
            self.station_lines.append(line.rstrip("\n"))
        return self.station_lines[:count]


def _with_recorders(nodes: list[dict[str, Any]], tab: str) -> list[dict[str, Any]]:
    """A recorder beside every debug node, fed by the same wires, tagged with its name."""
    extra = []
    for debug in [n for n in nodes if n["type"] == "debug"]:
        rec = recorder(f"rec.{debug['id']}", tab, debug["name"])
        extra.append(rec)
        for node in nodes:
            for port in node.get("wires", []):
                if debug["id"] in port:
                    port.append(rec["id"])
    return extra


@pytest.fixture(scope="module")
def guide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guide]:
    user_dir: Path = tmp_path_factory.mktemp("getting-started-node-red")
    port, demo_port = free_port(), free_port()
    demo = demo_flow(demo_port)
    nodes = guide_flow(port)
    extra: list[dict[str, Any]] = [{"id": TEST_TAB, "type": "tab", "label": "test"}]
    extra += _with_recorders(nodes, TEST_TAB)
    # a status node sees only the nodes of its own tab
    demo_tab = next(n["id"] for n in demo if n["type"] == "tab")
    demo_ids = [n["id"] for n in demo if n["type"] in ("CSMS", "CS")]
    extra.append(
        {
            "id": "gs.test.status",
            "type": "status",
            "z": demo_tab,
            "scope": demo_ids,
            "wires": [["gs.test.status.rec"]],
        }
    )
    extra.append(recorder("gs.test.status.rec", demo_tab, "demo status"))
    extra += http_api(TEST_TAB, {})
    script = user_dir / "station.py"
    with running_node_red(user_dir, "test_getting_started") as runtime:
        runtime.deploy(demo + nodes + extra)
        runtime.wait_for_endpoint("GET", "/t/records")
        wait_port(port)
        wait_port(demo_port)
        script.write_text(station_script(port))
        station = subprocess.Popen(
            [sys.executable, "-u", str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=user_dir,
        )
        try:
            guide = Guide(runtime)
            guide.nodes, guide.port, guide.station, guide.station_lines = nodes, port, station, []
            yield guide
        finally:
            station.kill()
            station.wait(timeout=10)


def test_step1_the_engine_says_it_is_ready(guide: Guide) -> None:
    guide.runtime.wait_for_log(f"[ocpp-nodes] engine {__version__} ready (pid ")


def test_step2_the_demo_nodes_show_their_statuses(guide: Guide) -> None:
    for text in ("1 connected", "connected"):
        guide.wait("demo status", lambda r, text=text: (r.get("status") or {}).get("text") == text)
        assert f"`{text}`" in page_text()


def test_step3_the_station_boots_and_output_1_shows_it(guide: Guide) -> None:
    shown = blocks()["station output"].replace(f":{PAGE_PORT}/", f":{guide.port}/").splitlines()
    said = guide.station_says(len(shown))
    time_pattern = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"
    assert [re.sub(time_pattern, "<time>", line) for line in said] == [
        re.sub(time_pattern, "<time>", line) for line in shown
    ]
    seen = guide.wait("output 1", lambda r: r.get("payload", {}).get("command") == "Heartbeat")
    assert seen["topic"] == "CS100/Request"
    out1 = guide.records("output 1")
    assert [r["topic"] for r in out1][:3] == ["CS100/Connection", "CS100/Request", "CS100/Request"]
    assert out1[0]["ocpp"]["websocket"] == "ONLINE" and out1[0]["payload"]["remote"]
    assert out1[1]["payload"]["command"] == "BootNotification"
    assert out1[1]["payload"]["data"]["chargingStation"]["model"] == "Example"
    assert out1[1]["payload"]["MessageId"] and out1[1]["ocpp"]["cbId"] == "CS100"


def test_step4_a_link_call_asks_the_station(guide: Guide) -> None:
    guide.station_says(3)
    guide.press("GetVariables to CS100")
    assert guide.station_says(4)[3] == "GetVariables from the CSMS: HeartbeatInterval"
    assert "GetVariables from the CSMS: HeartbeatInterval" in page_text()
    answer = guide.wait("answer", lambda r: r.get("topic") == "CS100/Response")
    assert answer["payload"]["command"] == "GetVariables"
    assert answer["payload"]["data"]["getVariableResult"][0]["attributeValue"] == "300"
    # the answer went out of output 2 only: output 1 never saw it
    assert not [r for r in guide.records("output 1") if r.get("topic") == "CS100/Response"]


def test_step5_the_log_port_shows_every_frame(guide: Guide) -> None:
    guide.wait("OCPP log", lambda r: r["payload"][0] == 3 and r["msgFrom"] == "CS")
    log = guide.records("OCPP log")
    assert all(r["cbId"] == "CS100" and isinstance(r["timestamp"], int) for r in log)
    first = log[0]
    assert first["msgFrom"] == "CS" and first["payload"][0] == 2
    assert first["payload"][2] == "BootNotification"
    assert first["payload"][3]["chargingStation"]["vendorName"] == "Getting started"
    assert log[1]["msgFrom"] == "CSMS" and log[1]["payload"][:2] == [3, first["payload"][1]]
    request, answer = log[-2:]
    assert request["msgFrom"] == "CSMS" and request["payload"][2] == "GetVariables"
    assert answer["msgFrom"] == "CS" and answer["payload"][:2] == [3, request["payload"][1]]


def test_step6_the_catch_node_gets_the_error(guide: Guide) -> None:
    guide.press("Reset to CS999")
    caught = guide.wait("errors", lambda r: bool(r.get("error")))
    assert caught["error"]["message"] == blocks()["error"]
    assert caught["payload"]["command"] == "Reset" and caught["payload"]["cbId"] == "CS999"
    assert len(guide.records("errors")) == 1
