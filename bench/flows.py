"""The flows under test, as lists of Node-RED nodes ready for POST /flows.

- ``csms_flow(port, ...)``: a CSMS node whose output 1 goes to one function node
  answering BootNotification, Heartbeat, StatusNotification, MeterValues,
  TransactionEvent and Authorize (and 1.6's StartTransaction and
  StopTransaction), wired back into the CSMS node. The same flow for both
  packages (same node type ``CSMS``, same message shapes); only the CSMS
  node's properties differ where the packages differ. Ours accepts OCPP 1.6,
  2.0.1 and 2.1 (``ocpp_versions``); the function answers each in the form of
  the version the station's connection negotiated (``msg.ocpp.ocppVersion``;
  the old package speaks 2.0.1 only and does not set it). Every answer is
  checked against each version's schemas by bench/check_payloads.py.
- ``fleet_csms_flow(broker, ...)``: the same with our CSMS node in fleet mode
  (issue 24): its stations connect to ``ocpp-nodes gateway`` processes.
- ``cs_flow(url, ...)``: a CS node (ours) connected to a CSMS (the null server)
  and a function node that sends the next Heartbeat as soon as the previous
  one is answered, stamping the MessageId with the time in µs since the epoch
  just before the message leaves the function node (see null_server.py).
"""

from __future__ import annotations

import json
from typing import Any

#: The versions the bench CSMS node (ours) accepts: every one the engine speaks.
OCPP_VERSIONS = ["ocpp2.0.1", "ocpp2.1", "ocpp1.6"]

# BootNotification, Heartbeat, MeterValues and StatusNotification answers have
# the same shape in 1.6, 2.0.1 and 2.1; Authorize differs (1.6: idTagInfo), and
# 1.6 has StartTransaction/StopTransaction instead of TransactionEvent.
ANSWER_FUNC = r"""
if (!msg.topic || !msg.topic.endsWith('/Request')) return null;
const v16 = msg.ocpp !== undefined && msg.ocpp.ocppVersion === '1.6';
let data;
switch (msg.payload.command) {
    case 'BootNotification':
        data = {currentTime: new Date().toISOString(), interval: 300, status: 'Accepted'};
        break;
    case 'Heartbeat':
        data = {currentTime: new Date().toISOString()};
        break;
    case 'Authorize':
        data = v16 ? {idTagInfo: {status: 'Accepted'}} : {idTokenInfo: {status: 'Accepted'}};
        break;
    case 'TransactionEvent':
        data = (msg.payload.data && msg.payload.data.idToken)
            ? {idTokenInfo: {status: 'Accepted'}} : {};
        break;
    case 'StartTransaction': {
        const id = (context.get('transactionId') || 0) + 1;
        context.set('transactionId', id);
        data = {transactionId: id, idTagInfo: {status: 'Accepted'}};
        break;
    }
    case 'StopTransaction':
    case 'StatusNotification':
    case 'MeterValues':
        data = {};
        break;
    default:
        return null;
}
msg.payload = {msgType: 3, data: data};
return msg;
"""

# perf_hooks comes in through the function node's `libs` (a Node.js built-in
# module, allowed without installing anything).
CS_FUNC = r"""
const stamp = () => 'h' + Math.round((perf.performance.timeOrigin + perf.performance.now()) * 1000);
const next = () => {
    context.set('last', Date.now());
    return {payload: {command: 'Heartbeat', data: {}, MessageId: stamp()}};
};
if (msg.topic === 'tick') {
    // restart the chain when it stopped (not connected yet, a failed request)
    return (Date.now() - (context.get('last') || 0) > 1000) ? next() : null;
}
if (msg.ocpp && msg.ocpp.websocket === 'ONLINE') return next();
if (msg.topic && msg.topic.endsWith('/Response')) return next();
return null;
"""


def station_ids(count: int, prefix: str = "bench") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(count)]


def auth_list(count: int, password: str, prefix: str = "bench") -> str:
    return json.dumps({cb: password for cb in station_ids(count, prefix)})


def csms_flow(
    port: int,
    *,
    package: str,
    stations: int,
    password: str = "bench-password",
    path: str = "/ocpp",
    ids: str = "b0000000000000a",
    auths: str | None = None,
) -> list[dict[str, Any]]:
    """The CSMS flow for `package` "ours" or "old", on a tab of its own.

    ``ids``: the first 15 characters of the flow's node ids (two flows with
    different ``ids`` deploy side by side); ``auths``: the *CS Auth* list as
    JSON (default: ``stations`` ids with ``password``).
    """
    tab, csms, func = f"{ids}1", f"{ids}2", f"{ids}3"
    node: dict[str, Any] = {
        "id": csms,
        "type": "CSMS",
        "z": tab,
        "name": f"CSMS :{port}",
        "port": str(port),
        "path": path,
        "ocpp_logging": False,
        "credentials": {"basic_auths": auths or auth_list(stations, password)},
        "x": 170,
        "y": 120,
        "wires": [[func], [], []],
    }
    if package == "ours":
        node.update(
            outputs=2,
            connection_events=False,
            duplicate_cbid="newest",
            message_timeout=30,
            queue_size=1000,
            ping_interval=30,
            max_frame_size=1048576,
            ocpp_versions=list(OCPP_VERSIONS),
            version_preference="station",
            # every station of the load generator comes from 127.0.0.1
            handshakes_per_address=0,
            wires=[[func], []],
        )
    else:
        node.update(messageTimeout=30000)
    return [
        {"id": tab, "type": "tab", "label": "bench CSMS", "disabled": False, "info": ""},
        node,
        {
            "id": func,
            "type": "function",
            "z": tab,
            "name": "answer",
            "func": ANSWER_FUNC,
            "outputs": 1,
            "timeout": 0,
            "noerr": 0,
            "initialize": "",
            "finalize": "",
            "libs": [],
            "x": 420,
            "y": 120,
            "wires": [[csms]],
        },
    ]


def fleet_csms_flow(
    broker_url: str,
    broker_user: str,
    broker_password: str,
    *,
    group: str,
    auths: str,
    ids: str = "b0000000000000f",
) -> list[dict[str, Any]]:
    """Our CSMS node in fleet mode (docs/fleet.md) and the same answering function:
    its stations come through ``ocpp-nodes gateway`` processes and the broker."""
    nodes = csms_flow(0, package="ours", stations=0, ids=ids, auths=auths)
    node = nodes[1]
    node.update(
        name=f"CSMS fleet {group}",
        mode="fleet",
        port="",
        path="",
        fleet_broker=broker_url,
        fleet_group=group,
    )
    node["credentials"].update(fleet_username=broker_user, fleet_password=broker_password)
    return nodes


def cs_flow(
    url: str,
    *,
    cb_id: str = "bench00000",
    password: str = "bench-password",
) -> list[dict[str, Any]]:
    """The CS-side flow (ours): Heartbeats through a CS node as fast as answers come."""
    tab, target, cs, func, tick = (f"c00000000000000{i}" for i in range(1, 6))
    return [
        {"id": tab, "type": "tab", "label": "bench CS", "disabled": False, "info": ""},
        {"id": target, "type": "target-csms", "name": "null CSMS", "url": url},
        {
            "id": cs,
            "type": "CS",
            "z": tab,
            "name": "",
            "cbId": cb_id,
            "csms": target,
            "auto_connect": True,
            "ocpp_logging": False,
            "outputs": 2,
            "ws_rt_minimum": "1",
            "ws_rt_repeat": "2",
            "ws_rt_rnd_range": "0",
            "message_timeout": 30,
            "queue_size": 1000,
            "ping_interval": 30,
            "max_frame_size": 1048576,
            "offline_queue": "off",
            "credentials": {"csms_pw": password},
            "x": 400,
            "y": 120,
            "wires": [[func], []],
        },
        {
            "id": func,
            "type": "function",
            "z": tab,
            "name": "next Heartbeat",
            "func": CS_FUNC,
            "outputs": 1,
            "timeout": 0,
            "noerr": 0,
            "initialize": "",
            "finalize": "",
            "libs": [{"var": "perf", "module": "perf_hooks"}],
            "x": 200,
            "y": 120,
            "wires": [[cs]],
        },
        {
            "id": tick,
            "type": "inject",
            "z": tab,
            "name": "tick",
            "props": [{"p": "topic", "vt": "str"}],
            "repeat": "1",
            "crontab": "",
            "once": True,
            "onceDelay": "1",
            "topic": "tick",
            "x": 100,
            "y": 60,
            "wires": [[func]],
        },
    ]
