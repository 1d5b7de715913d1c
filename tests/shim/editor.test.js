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
  assert.deepEqual(Object.keys(csms.credentials), ["basic_auths"]);
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
