"""Checks that the benchmark speaks valid OCPP in every version.

- every request bench/loadgen.py sends (BootNotification, Heartbeat,
  MeterValues; the MeterValues text exactly as the loop sends it) against the
  request schema of the station's version;
- every answer of bench/flows.py's function node (run in Node.js on a message
  as our CSMS node hands it over, ``msg.ocpp.ocppVersion`` set, and as the old
  package does, without it) against the response schema of that version.

The validators are the engine's own (``ocpp_nodes.rpc.VERSIONS[name].schemas``),
so a payload that passes here is one the daemon accepts. bench/run.py runs this
before the versions scenario; stand-alone: ``.venv/bin/python bench/check_payloads.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402

import flows  # noqa: E402

# Runs the function node's body as Node-RED does (a function of msg, with a
# flow context), once for each message of stdin's list.
NODE_RUNNER = r"""
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const store = new Map();
const context = {get: (k) => store.get(k), set: (k, v) => store.set(k, v)};
const fn = new Function('msg', 'context', input.func);
const out = input.messages.map((msg) => {
    const answer = fn(msg, context);
    return answer ? answer.payload : null;
});
process.stdout.write(JSON.stringify(out));
"""

#: what a station of each version sends in the bench, besides the loop actions
STATION_ACTIONS = {
    "1.6": ["Authorize", "StartTransaction", "StopTransaction", "StatusNotification"],
    "2.0.1": ["Authorize", "TransactionEvent", "StatusNotification"],
    "2.1": ["Authorize", "TransactionEvent", "StatusNotification"],
}


def requests(version: str) -> dict[str, Any]:
    """The requests bench/loadgen.py sends as a station of ``version``."""
    return {
        "BootNotification": loadgen.boot_payload(version),
        "Heartbeat": json.loads(loadgen.payload_text("Heartbeat", version)()),
        "MeterValues": json.loads(loadgen.payload_text("MeterValues", version)()),
    }


def answers(messages: list[dict[str, Any]]) -> list[Any]:
    """The function node's answer (``msg.payload``) to each message, from Node.js."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node (Node.js) is not on PATH; it runs the flow's function node")
    done = subprocess.run(
        [node, "-e", NODE_RUNNER],
        input=json.dumps({"func": flows.ANSWER_FUNC, "messages": messages}),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: list[Any] = json.loads(done.stdout)
    return result


def check() -> list[str]:
    """Every problem found, as one line each (empty: all valid)."""
    from ocpp_nodes.rpc import VERSIONS
    from ocpp_nodes.schemas import Direction

    problems = []
    if set(VERSIONS) != set(loadgen.SUBPROTOCOLS):
        problems.append(
            f"loadgen knows {sorted(loadgen.SUBPROTOCOLS)}, the engine {sorted(VERSIONS)}"
        )
    cases: list[tuple[str, str]] = []
    messages = []
    for name, version in VERSIONS.items():
        for action, payload in requests(name).items():
            bad = version.schemas.validate(action, Direction.REQUEST, payload)
            if bad is not None:
                problems.append(f"{name} {action} request: {bad.error_code}: {bad.description}")
        ocpp: dict[str, Any] = {"ocppVersion": name, "cbId": "bench00000", "MessageId": "1"}
        for action in [*requests(name), *STATION_ACTIONS[name]]:
            data = (
                {"idToken": {"idToken": "X", "type": "Central"}}
                if action == "TransactionEvent"
                else {}
            )
            cases.append((name, action))
            messages.append(
                {
                    "topic": "bench00000/Request",
                    "ocpp": ocpp,
                    "payload": {"command": action, "data": data},
                }
            )
    # the old package: no msg.ocpp.ocppVersion, 2.0.1 only
    for action in [*requests("2.0.1"), *STATION_ACTIONS["2.0.1"]]:
        cases.append(("2.0.1", action))
        messages.append({"topic": "cb/Request", "payload": {"command": action, "data": {}}})
    for (name, action), answer in zip(cases, answers(messages), strict=True):
        if not isinstance(answer, dict) or answer.get("msgType") != 3:
            problems.append(f"{name} {action}: the flow gives no CALLRESULT ({answer!r})")
            continue
        bad = VERSIONS[name].schemas.validate(action, Direction.RESPONSE, answer.get("data"))
        if bad is not None:
            problems.append(f"{name} {action} answer: {bad.error_code}: {bad.description}")
    return problems


def main() -> int:
    problems = check()
    for line in problems:
        print(f"check_payloads: {line}", file=sys.stderr)
    if not problems:
        print("check_payloads: every request and answer of the bench is schema-valid")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
