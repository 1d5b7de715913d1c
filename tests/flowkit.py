"""Building blocks for tests that observe flows in a real Node-RED (tests/nodered.py).

- `node(id, type, wires, tab=..., **props)`: a node of a flow (for a module's
  own `_node = partial(node, tab=TAB)`);
- `recorder(id, tab, tag)`: a function node that appends what it gets to the
  global context list `records` as `{tag, topic, payload, ocpp, customData,
  msgFrom, cbId, timestamp, status, error, linked}` (`linked`: the msg has a
  `_linkSource`).
- `http_api(tab, inputs)`: `GET /t/records` answers that list; `POST
  /t/in/<name>` sends the posted JSON object as a new msg to the node
  `inputs[name]` (a node id) and answers `"ok"`.
- `Flow.records(tag)` / `Flow.wait(tag, pred)`: read them back, with bounded
  waits; async variants run the blocking HTTP in a thread so a Python peer in
  the test's event loop keeps running.
- record predicates (`topic_is`, `has_custom_data`, `status_is`, `online`) and
  steps of a test that shares one Node-RED between tests: `marker` (a unique
  customData), `request` / `answer` (a flow request, the flow's CALLRESULT),
  `caught` (the error of an input that ended with done(err), from a Catch
  node recorded as `catch`), `until` (poll a peer's state in this loop).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import websockets

from tests.common import OCPP201, auth_header
from tests.nodered import NodeRed

Record = dict[str, Any]

_RECORD_JS = (
    "const records = global.get('records') || [];\n"
    "records.push({tag: %s, topic: msg.topic, payload: msg.payload, ocpp: msg.ocpp,\n"
    "    customData: msg.customData, msgFrom: msg.msgFrom, cbId: msg.cbId,\n"
    "    timestamp: msg.timestamp, status: msg.status, error: msg.error,\n"
    "    linked: msg._linkSource !== undefined, seen: Date.now()});\n"
    "global.set('records', records);\n"
    "return null;\n"
)


def node(
    node_id: str, node_type: str, wires: list[list[str]] | None = None, *, tab: str, **props: Any
) -> dict[str, Any]:
    """A node of type `node_type` on `tab` with `props`, wired to `wires`."""
    return {
        "id": node_id,
        "type": node_type,
        "z": tab,
        "x": 100,
        "y": 100,
        **props,
        "wires": wires or [],
    }


def recorder(node_id: str, tab: str, tag: str) -> dict[str, Any]:
    return {
        "id": node_id,
        "type": "function",
        "z": tab,
        "name": f"record {tag}",
        "func": _RECORD_JS % json.dumps(tag),
        "outputs": 1,
        "x": 900,
        "y": 40,
        "wires": [[]],
    }


def http_api(tab: str, inputs: dict[str, str], prefix: str = "t") -> list[dict[str, Any]]:
    """The records endpoint and one injection endpoint per entry of `inputs`."""
    nodes: list[dict[str, Any]] = [
        {
            "id": f"{prefix}.records.in",
            "type": "http in",
            "z": tab,
            "url": f"/{prefix}/records",
            "method": "get",
            "upload": False,
            "x": 100,
            "y": 900,
            "wires": [[f"{prefix}.records.fn"]],
        },
        {
            "id": f"{prefix}.records.fn",
            "type": "function",
            "z": tab,
            "func": "msg.payload = global.get('records') || []; return msg;",
            "outputs": 1,
            "x": 300,
            "y": 900,
            "wires": [[f"{prefix}.http.out"]],
        },
        {"id": f"{prefix}.http.out", "type": "http response", "z": tab, "x": 500, "y": 900},
    ]
    for name, target in inputs.items():
        nodes += [
            {
                "id": f"{prefix}.in.{name}",
                "type": "http in",
                "z": tab,
                "url": f"/{prefix}/in/{name}",
                "method": "post",
                "upload": False,
                "x": 100,
                "y": 950,
                "wires": [[f"{prefix}.in.{name}.fn"]],
            },
            {
                "id": f"{prefix}.in.{name}.fn",
                "type": "function",
                "z": tab,
                # a fresh msg (only what the test posted) for the node, the request for the answer
                "func": "const m = msg.payload; msg.payload = 'ok'; return [m, msg];",
                "outputs": 2,
                "x": 300,
                "y": 950,
                "wires": [[target], [f"{prefix}.http.out"]],
            },
        ]
    return nodes


class Flow:
    """A deployed test flow: inject messages and read the records (bounded waits)."""

    def __init__(self, runtime: NodeRed, prefix: str = "t") -> None:
        self.runtime = runtime
        self.prefix = prefix

    # Both repeat a request that gets 404: right after a deploy, its `http in`
    # routes may not exist yet (NodeRed.wait_for_endpoint).

    def records(self, tag: str | None = None) -> list[Record]:
        status, body = self.runtime.wait_for_endpoint("GET", f"/{self.prefix}/records")
        assert status == 200 and isinstance(body, list), (status, body)
        return [r for r in body if tag is None or r["tag"] == tag]

    def send(self, name: str, msg: dict[str, Any]) -> None:
        status, body = self.runtime.wait_for_endpoint("POST", f"/{self.prefix}/in/{name}", msg)
        assert status == 200, (status, body)

    def wait(
        self, tag: str, pred: Callable[[Record], bool], timeout: float = 15.0, after: int = 0
    ) -> Record:
        """The first record of `tag` (from index `after` of its list) that `pred` accepts."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.records(tag)[after:]:
                if pred(record):
                    return record
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no {tag} record matched within {timeout}s; got {self.records(tag)[after:]}"
                    f"\n--- log tail ---\n{self.runtime.log_tail(30)}"
                )
            time.sleep(0.1)

    async def arecords(self, tag: str | None = None) -> list[Record]:
        return await asyncio.to_thread(self.records, tag)

    async def asend(self, name: str, msg: dict[str, Any]) -> None:
        await asyncio.to_thread(self.send, name, msg)

    async def await_(
        self, tag: str, pred: Callable[[Record], bool], timeout: float = 15.0, after: int = 0
    ) -> Record:
        return await asyncio.to_thread(self.wait, tag, pred, timeout, after)


async def connect_station(url: str, cb_id: str, password: str) -> Any:
    """A raw websocket station (subprotocol ocpp2.0.1, Basic auth)."""
    return await websockets.connect(
        f"{url}/{cb_id}",
        subprotocols=OCPP201,
        additional_headers=auth_header(cb_id, password),
        open_timeout=10,
        ping_interval=None,
    )


def wait_port(port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"port {port} not listening after {timeout}s") from None
            time.sleep(0.1)


# -- reading and driving a flow's records (tests that share one Node-RED) --------------

_markers = itertools.count(1)


def marker(what: str) -> str:
    """A customData value no other input of the run carries."""
    return f"{what}-{next(_markers)}"


def has_custom_data(value: str) -> Callable[[Record], bool]:
    return lambda record: record.get("customData") == value


def topic_is(topic: str, command: str | None = None) -> Callable[[Record], bool]:
    def pred(record: Record) -> bool:
        payload = record.get("payload")
        return record.get("topic") == topic and (
            command is None or (isinstance(payload, dict) and payload.get("command") == command)
        )

    return pred


def status_is(node_id: str, text: str) -> Callable[[Record], bool]:
    def pred(record: Record) -> bool:
        status = record.get("status") or {}
        return (status.get("source") or {}).get("id") == node_id and status.get("text") == text

    return pred


def online(record: Record) -> bool:
    return (record.get("ocpp") or {}).get("websocket") == "ONLINE"


async def until(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll in-process state (the peers in this event loop) until ``probe`` is truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if value:
            return value
        if loop.time() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def caught(flow: Flow, node_id: str, custom_data: str, timeout: float = 10.0) -> str:
    """The error of the input with ``customData`` that ended with done(err)."""
    record = await flow.await_("catch", has_custom_data(custom_data), timeout=timeout)
    error = record.get("error") or {}
    assert (error.get("source") or {}).get("id") == node_id, record
    message = error.get("message")
    assert isinstance(message, str) and message, record
    return message


async def request(
    flow: Flow, name: str, command: str, data: dict[str, Any], custom_data: str, **extra: Any
) -> None:
    """A flow request into node ``name`` (``extra``: more payload fields, e.g. cbId)."""
    await flow.asend(
        name, {"payload": {"command": command, "data": data, **extra}, "customData": custom_data}
    )


async def answer(flow: Flow, name: str, received: Record, data: dict[str, Any]) -> None:
    """The flow's CALLRESULT to a received request (its msg.ocpp names it)."""
    await flow.asend(name, {"ocpp": received["ocpp"], "payload": {"msgType": 3, "data": data}})
