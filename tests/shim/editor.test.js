"use strict";
// The editor definitions in js_shim/nodes/*.html, run as the editor runs them
// (the shared js_shim/resources/*.js first, then registerType with
// a definition object), with the editor's globals stubbed:
// the OCPP Logging checkbox gives 2 or 3 outputs, the ports are labelled, and
// the defaults match what older exports need.

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const vm = require("node:vm");

const root = path.resolve(__dirname, "..", "..");

function editorDefinition(file, checkboxes) {
  const html = fs.readFileSync(path.join(root, "js_shim/nodes", file), "utf8");
  const script = html.match(/<script type="text\/javascript">([\s\S]*?)<\/script>/)[1];
  const registered = {};
  const RED = {
    nodes: { registerType: (type, definition) => (registered[type] = definition) },
    validators: { number: () => () => true, regex: () => () => true },
  };
  const $ = (selector) => ({
    prop: () => Boolean(checkboxes[selector]),
    typedInput: () => undefined,
    val: () => undefined,
    on: () => undefined,
  });
  // The scripts the dialogs load first (js_shim/resources, served by Node-RED).
  const context = vm.createContext({ RED, $, window: {} });
  for (const shared of ["ocpp-versions.js", "ocpp-dialog.js"]) {
    vm.runInContext(fs.readFileSync(path.join(root, "js_shim/resources", shared), "utf8"), context);
  }
  vm.runInContext(script, context);
  return registered;
}

for (const [file, type] of [
  ["cs.html", "CS"],
  ["csms.html", "CSMS"],
]) {
  test(`${type}: OCPP Logging gives 3 outputs, off gives 2, with labels`, () => {
    const on = editorDefinition(file, { "#node-input-ocpp_logging": true })[type];
    const node = { outputs: 2 };
    on.oneditsave.call(node);
    assert.equal(node.outputs, 3);
    const off = editorDefinition(file, { "#node-input-ocpp_logging": false })[type];
    off.oneditsave.call(node);
    assert.equal(node.outputs, 2);
    assert.deepEqual([...on.outputLabels], ["common", "link call", "ocpp log"]);
    assert.equal(on.defaults.outputs.value, 2);
    assert.equal(on.category, "OCPP");
  });
}

test("CS: legacy properties stay in the defaults so old exports keep them", () => {
  const cs = editorDefinition("cs.html", {}).CS;
  for (const name of ["csms_url", "csms_user", "cbId", "csms", "auto_connect", "ws_rt_minimum",
    "ws_rt_repeat", "ws_rt_rnd_range", "ocpp_logging"]) {
    assert.ok(name in cs.defaults, name);
  }
  assert.equal(cs.defaults.csms.required, false);
  assert.deepEqual(Object.keys(cs.credentials), ["csms_pw"]);
});

test("CSMS: legacy properties load, connection events on for new nodes", () => {
  const csms = editorDefinition("csms.html", {}).CSMS;
  for (const name of ["port", "path", "ws_user", "ws_pw", "log", "logpath", "ocpp_logging"]) {
    assert.ok(name in csms.defaults, name);
  }
  assert.equal(csms.defaults.connection_events.value, true);
  assert.deepEqual(Object.keys(csms.credentials), ["basic_auths", "fleet_username", "fleet_password"]);
});

test("CSMS: fleet mode's settings, direct by default; the broker's credentials", () => {
  const csms = editorDefinition("csms.html", {}).CSMS;
  assert.equal(csms.defaults.mode.value, "direct");
  assert.equal(csms.defaults.fleet_broker.value, "");
  assert.equal(csms.defaults.fleet_group.value, "default");
  assert.deepEqual({ ...csms.defaults.fleet_tls }, { value: "", type: "tls-config", required: false });
  assert.equal(csms.credentials.fleet_username.type, "text");
  assert.equal(csms.credentials.fleet_password.type, "password");
  // The port is needed in direct mode only (also when mode is absent: older exports).
  const port = csms.defaults.port.validate;
  assert.equal(port.call({ mode: "fleet" }, "", {}), true);
  assert.equal(port.call({}, "", {}), "Port: a TCP port number (stations connect to it)");
  assert.equal(port.call({ mode: "direct" }, undefined), false);
  assert.equal(port.call({}, "9000", {}), true);
  assert.equal(port.call({}, 9000, {}), true);
  assert.equal(csms.defaults.port.required, undefined, "not required: fleet mode has none");
  // The broker and group are checked in fleet mode only.
  const broker = csms.defaults.fleet_broker.validate;
  assert.equal(broker.call({}, "", {}), true);
  assert.equal(broker.call({ mode: "direct" }, "http://x", {}), true);
  assert.equal(broker.call({ mode: "fleet" }, "mqtt://127.0.0.1:1883", {}), true);
  assert.equal(broker.call({ mode: "fleet" }, "", {}),
    "Broker: fleet mode needs the broker's URL, e.g. mqtt://127.0.0.1:1883");
  assert.equal(broker.call({ mode: "fleet" }, "ws://h", {}), "Broker: the broker URL must start with mqtt:// or mqtts://");
  assert.equal(broker.call({ mode: "fleet" }, "ws://h"), false);
  assert.equal(broker.call({ mode: "fleet", fleet_tls: "tls1" }, "mqtt://h", {}),
    "Broker: a TLS configuration for the broker needs an mqtts:// URL");
  assert.equal(broker.call({ mode: "fleet", fleet_tls: "tls1" }, "mqtts://h", {}), true);
  const group = csms.defaults.fleet_group.validate;
  assert.equal(group.call({ mode: "fleet" }, "site-1.a_b", {}), true);
  assert.equal(group.call({ mode: "fleet" }, "", {}), true, "empty: default");
  assert.equal(group.call({ mode: "fleet" }, "a/b", {}), "Group: must be 1-64 letters, digits, '_', '-' or '.'");
  assert.equal(group.call({ mode: "direct" }, "a/b", {}), true);
  assert.equal(csms.label.call({ mode: "fleet", fleet_group: "north" }), "CSMS fleet north");
  assert.equal(csms.label.call({ port: "9000" }), "CSMS :9000");
});

// js_shim/resources/ocpp-dialog.js alone: what the dialogs' validators say.
function dialogHelpers() {
  const context = vm.createContext({ window: {} });
  vm.runInContext(fs.readFileSync(path.join(root, "js_shim/resources/ocpp-dialog.js"), "utf8"), context);
  return context.window.OcppNodesDialog;
}

test("cbId: the identity rules of part 4, 3.1.1 (as ocpp_nodes/transport/identity.py)", () => {
  const { cbIdValid } = dialogHelpers();
  const opt = {};
  for (const good of ["CS001", "x".repeat(48), "é".repeat(48), "a b/c%", "😀".repeat(48), "${CB_ID}"]) {
    assert.equal(cbIdValid(good, opt), true, good);
  }
  assert.equal(cbIdValid("CS:1", opt), "cbId: a cbId must not contain ':'");
  assert.equal(cbIdValid("x".repeat(49), opt), "cbId: a cbId has at most 48 characters, this one 49");
  assert.equal(cbIdValid("", opt), "cbId: the cbId is empty");
  // Node-RED before 3.1 passes no opt and takes any string for valid: false then
  assert.equal(cbIdValid("CS:1"), false);
});

test("CS Auth list: a JSON object cbId -> string; saved, empty and env variables pass", () => {
  const { authListValid } = dialogHelpers();
  const opt = {};
  for (const good of [undefined, "", "  ", "__PWRD__", "${CS_AUTH}", "{}", '{"CS1": "pw"}',
    '{"CS1": "$scrypt$ln=14,r=8,p=1$c2FsdA$aGFzaA", "CS2": ""}']) {
    assert.equal(authListValid(good, opt), true, String(good));
  }
  const bad = {
    '{"CS1": "secret1"': "CS Auth: not valid JSON (at character 18)",
    '{"CS1": secret1}': "CS Auth: not valid JSON",
    "{'CS1': 'secret1'}": "CS Auth: not valid JSON (at character 2)",
    '{"CS1": "secret1",': "CS Auth: not valid JSON",
    '{"CS1": 1234}': 'CS Auth: the password of "CS1" must be a string (in quotes), not number',
    '{"CS1": null}': 'CS Auth: the password of "CS1" must be a string (in quotes), not null',
    '{"CS1": {"pw": "x"}}': 'CS Auth: the password of "CS1" must be a string (in quotes), not object',
    '["CS1"]': 'CS Auth: must be a JSON object {"cbId": "password", ...}',
    '"pw"': 'CS Auth: must be a JSON object {"cbId": "password", ...}',
    'null': 'CS Auth: must be a JSON object {"cbId": "password", ...}',
    '{"CS:1": "pw"}': `CS Auth: "CS:1": a cbId must not contain ':'`,
    '{"": "pw"}': 'CS Auth: "": the cbId is empty',
  };
  for (const [text, reason] of Object.entries(bad)) {
    const said = authListValid(text, opt);
    assert.ok(typeof said === "string" && said.startsWith(reason), `${text}: ${said}`);
    assert.equal(authListValid(text), false);
    assert.ok(!said.includes("secret1"), `${text}: no password in ${said}`);
  }
});

test("broker URL: mqtt:// or mqtts://, a host, no user or password (as ocpp_nodes/fleet/broker.py)", () => {
  const { brokerUrlProblem } = dialogHelpers();
  for (const good of ["mqtt://127.0.0.1:1883", "mqtts://broker.example.com", "MQTT://h", "mqtt://[::1]:1883",
    "mqtts://h:8883/", " mqtt://h "]) {
    assert.equal(brokerUrlProblem(good), null, good);
  }
  const bad = {
    "": "fleet mode needs the broker's URL, e.g. mqtt://127.0.0.1:1883",
    "http://h": "the broker URL must start with mqtt:// or mqtts://",
    "tcp://h:1883": "the broker URL must start with mqtt:// or mqtts://",
    "h:1883": "the broker URL must start with mqtt:// or mqtts://",
    "mqtt://user:secret1@h": "put the broker's user and password in the credentials, not the URL",
    "mqtt://user@h": "put the broker's user and password in the credentials, not the URL",
    "mqtt://": "the broker URL names no host",
    "mqtt://:1883": "the broker URL names no host",
    "mqtt://h:65536": "the broker URL's port is not a TCP port number (1-65535)",
    "mqtt://h:x": "the broker URL's port is not a TCP port number (1-65535)",
  };
  for (const [url, reason] of Object.entries(bad)) {
    assert.equal(brokerUrlProblem(url), reason, url);
  }
});

test("fleet group: 1-64 of [A-Za-z0-9_.-] (GROUP_PATTERN of ocpp_nodes/fleet/topics.py); empty is default", () => {
  const { fleetGroupProblem } = dialogHelpers();
  for (const good of [undefined, "", "default", "a.b-c_D9", "g".repeat(64)]) {
    assert.equal(fleetGroupProblem(good), null, String(good));
  }
  for (const bad of ["g".repeat(65), "a/b", "a+", "#", "a b", "é", "$share"]) {
    assert.equal(fleetGroupProblem(bad), "must be 1-64 letters, digits, '_', '-' or '.'", bad);
  }
});

test("number settings: empty is the default, else a number at least min", () => {
  const { numberSetting } = dialogHelpers();
  const atLeastZero = numberSetting(0, false);
  for (const good of [undefined, null, "", "0", "0.5", 20, "10"]) {
    assert.equal(atLeastZero(good, {}), true, String(good));
  }
  assert.equal(atLeastZero("-1", { label: "Upgrade timeout" }), "Upgrade timeout: must be a number of at least 0");
  assert.equal(atLeastZero("ten", {}), "must be a number of at least 0");
  assert.equal(numberSetting(1, true)("1.5", { label: "Attempts" }), "Attempts: must be a whole number of at least 1");
});

test("CSMS: the limits fields, 20 per address and 10 s by default", () => {
  const csms = editorDefinition("csms.html", {}).CSMS;
  assert.equal(csms.defaults.handshakes_per_address.value, 20);
  assert.equal(csms.defaults.upgrade_timeout.value, 10);
  assert.equal(csms.credentials.basic_auths.type, "password");
});

test("help property lines render as property rows (two colons, one line each)", () => {
  // Node-RED's help renderer takes `: name (type) : description` only when the
  // line has exactly these two colons; otherwise it is plain list text.
  for (const file of ["cs.html", "csms.html", "target-csms.html"]) {
    const help = fs.readFileSync(path.join(root, "js_shim/nodes/locales/en-US", file), "utf8");
    const lines = help.split("\n");
    lines.forEach((line, index) => {
      if (line.startsWith(": ")) {
        assert.match(line, /^:[^:\n]+:[^:\n]*$/, `${file}:${index + 1}: ${line}`);
        const next = lines[index + 1] || "";
        assert.ok(!/^\s+\S/.test(next), `${file}:${index + 2} continues a property line`);
      }
    });
  }
});
