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
