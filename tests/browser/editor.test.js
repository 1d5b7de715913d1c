"use strict";
// The editor as a person uses it, in headless Chromium (playwright-core from
// tools/node, Debian's /usr/bin/chromium): the OCPP palette category, a CSMS
// and a CS with a target-csms created by dragging from the palette and
// configured through their dialogs, OCPP Logging giving 2 or 3 output ports
// (and their labels on hover), each node's help in the help sidebar, a deploy,
// and the statuses "1 connected" / "connected" in the workspace. The dialogs'
// tabs (every field on one), their validators (cbId, CS Auth list, limits),
// the CS Auth list not shown again once deployed, and an older export that
// opens with its values and saves unchanged.
//
// Needs a running Node-RED with this checkout's shim: tests/browser/test_editor.py
// starts one (tests/nodered.py) and runs this file with
//   OCPP_EDITOR_URL   the editor's URL
//   OCPP_CSMS_PORT    a free TCP port for the CSMS node
//   OCPP_SCREENSHOTS  where screenshots go (default .local/screenshots)
// Without OCPP_EDITOR_URL the test is skipped.

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");

const root = path.resolve(__dirname, "..", "..");
const BASE = process.env.OCPP_EDITOR_URL;
const CSMS_PORT = Number(process.env.OCPP_CSMS_PORT || 0);
const SHOTS = process.env.OCPP_SCREENSHOTS || path.join(root, ".local", "screenshots");
const CHROMIUM = process.env.OCPP_CHROMIUM || "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];
const CB_ID = "CS001";
const PASSWORD = "browser-test-password";

function playwright() {
  return require(require.resolve("playwright-core", { paths: [path.join(root, "tools", "node")] }));
}

const skip = !BASE ? "OCPP_EDITOR_URL is unset: run tests/browser/test_editor.py (pytest)" :
  !fs.existsSync(CHROMIUM) ? `${CHROMIUM} is missing: run make setup` : false;

test("the editor: palette, dialogs, ports, help, deploy, status", { skip, timeout: 90000 }, async (t) => {
  fs.mkdirSync(SHOTS, { recursive: true });
  const { chromium } = playwright();
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.setDefaultTimeout(10000);
  const errors = [];
  page.on("pageerror", (err) => errors.push(String(err)));
  const shot = (name) => page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
  // The open dialog (the top tray) alone, once it has stopped moving: it
  // slides in (a CSS transition of `right`) and is then resized, so wait
  // until it runs no animation and its box stays the same for 10 frames.
  async function shotTray(name) {
    await page.mouse.move(0, 0);
    await page.evaluate(() => { window.ocppTrayBox = null; window.ocppTrayStill = 0; });
    await page.waitForFunction(() => {
      const trays = document.querySelectorAll("#red-ui-editor-stack .red-ui-tray");
      const tray = trays[trays.length - 1];
      if (!tray || tray.getAnimations().length > 0) {
        window.ocppTrayStill = 0;
        return false;
      }
      const stack = document.querySelector("#red-ui-editor-stack").getBoundingClientRect();
      const box = JSON.stringify(tray.getBoundingClientRect());
      const inPlace = Math.abs(tray.getBoundingClientRect().right - stack.right) < 1;
      window.ocppTrayStill = inPlace && box === window.ocppTrayBox ? window.ocppTrayStill + 1 : 0;
      window.ocppTrayBox = box;
      return window.ocppTrayStill >= 10;
    }, null, { polling: "raf", timeout: 10000 });
    await page.locator("#red-ui-editor-stack .red-ui-tray").last()
      .screenshot({ path: path.join(SHOTS, `${name}.png`) });
  }
  // Show a tab of the open dialog: click its label near its left end (the
  // label may be wider than its tab) and wait for its page. The tab bar takes
  // a second click within 400 ms of the one before for a double click, which
  // selects nothing: click again then.
  async function showTab(tabId) {
    for (let attempt = 1; ; attempt++) {
      await page.locator(`#red-ui-tab-${tabId} a`).click({ position: { x: 12, y: 8 } });
      try {
        await page.locator(`#${tabId}`).waitFor({ state: "visible", timeout: 1000 });
        return;
      } catch (err) {
        if (attempt === 3) {
          throw err;
        }
      }
    }
  }

  await page.goto(BASE);
  const palette = (type) =>
    page.locator(`#red-ui-palette-container-OCPP .red-ui-palette-node[data-palette-type='${type}']`);
  await palette("CSMS").waitFor({ state: "attached", timeout: 30000 });

  await t.test("the OCPP palette category shows CS and CSMS", async () => {
    const types = await page.$$eval("#red-ui-palette-container-OCPP .red-ui-palette-node",
      (els) => els.map((el) => [el.getAttribute("data-palette-type"), el.textContent.trim()]));
    assert.deepEqual(types.sort(), [["CS", "CS"], ["CSMS", "CSMS"]]);
    await page.locator("#red-ui-palette-container-OCPP").scrollIntoViewIfNeeded();
    await shot("palette");
  });

  // Drag a palette entry onto the workspace at (x, y) of the visible chart; the id of the new node.
  async function drop(type, x, y) {
    const before = await page.evaluate((tp) => RED.nodes.filterNodes({ type: tp }).map((n) => n.id), type);
    const item = palette(type);
    await item.scrollIntoViewIfNeeded();
    const from = await item.boundingBox();
    const chart = await page.locator("#red-ui-workspace-chart").boundingBox();
    await page.mouse.move(from.x + from.width / 2, from.y + from.height / 2);
    await page.mouse.down();
    await page.mouse.move(from.x + from.width / 2 + 30, from.y + from.height / 2, { steps: 5 });
    await page.mouse.move(chart.x + x, chart.y + y, { steps: 15 });
    await page.mouse.up();
    const after = await page.evaluate((tp) => RED.nodes.filterNodes({ type: tp }).map((n) => n.id), type);
    const added = after.filter((id) => !before.includes(id));
    assert.equal(added.length, 1, `one ${type} dropped on the workspace`);
    return added[0];
  }

  const nodeSel = (id) => `#red-ui-workspace-chart g.red-ui-flow-node-group[id="${id}"]`;
  // CS Auth is a typedInput: its visible text field sits beside the hidden input.
  const authListField = () =>
    page.locator("#node-input-basic_auths + .red-ui-typedInput-container input.red-ui-typedInput-input");
  const outputPorts = (id) => page.locator(`${nodeSel(id)} g.red-ui-flow-port-output`);

  async function openDialog(id) {
    // On a busy machine the editor can take the two clicks for two single
    // clicks: try the double click again before giving up.
    for (let attempt = 1; ; attempt++) {
      await page.mouse.move(0, 0); // off any port label left by hoverLabel
      await page.locator(`${nodeSel(id)} rect.red-ui-flow-node`).dblclick();
      try {
        await page.locator("#node-dialog-ok").waitFor({ state: "visible", timeout: 5000 });
        return;
      } catch (err) {
        if (attempt === 3) {
          throw err;
        }
      }
    }
  }

  async function closeDialog() {
    await page.click("#node-dialog-ok");
    await page.locator("#node-dialog-ok").waitFor({ state: "detached" });
  }

  async function setLogging(id, on) {
    await openDialog(id);
    await showTab(await page.evaluate((nid) => RED.nodes.node(nid).type === "CS" ? "cs-tab-ocppj" : "csms-tab-ocppj", id));
    await page.setChecked("#node-input-ocpp_logging", on);
    await closeDialog();
  }

  async function portCount(id, expected) {
    await page.waitForFunction(
      ({ sel, n }) => document.querySelectorAll(`${sel} g.red-ui-flow-port-output`).length === n,
      { sel: nodeSel(id), n: expected }, { timeout: 5000 }).catch(() => {});
    return outputPorts(id).count();
  }

  async function hoverLabel(id, port) {
    await page.mouse.move(5, 5);
    await outputPorts(id).nth(port).hover();
    const tip = page.locator("#red-ui-workspace-chart .red-ui-flow-port-tooltip").last();
    await tip.waitFor({ state: "visible", timeout: 5000 });
    return (await tip.textContent()).trim();
  }

  let csmsId;
  let csId;

  await t.test("a CSMS configured through its dialog; OCPP Logging gives 3 outputs, off 2", async () => {
    csmsId = await drop("CSMS", 200, 120);
    await openDialog(csmsId);
    await page.fill("#node-input-name", "browser CSMS");
    await page.fill("#node-input-port", String(CSMS_PORT));
    await page.fill("#node-input-path", "/ocpp");
    await shotTray("csms-dialog");
    await showTab("csms-tab-security");
    await authListField().fill(JSON.stringify({ [CB_ID]: PASSWORD }));
    await showTab("csms-tab-ocppj");
    await page.setChecked("#node-input-ocpp_logging", true);
    await closeDialog();
    assert.equal(await portCount(csmsId, 3), 3, "CSMS with OCPP Logging: 3 outputs");
    assert.equal(await hoverLabel(csmsId, 0), "common");
    assert.equal(await hoverLabel(csmsId, 1), "link call");
    assert.equal(await hoverLabel(csmsId, 2), "ocpp log");
    await shot("csms-3-outputs");
    await setLogging(csmsId, false);
    assert.equal(await portCount(csmsId, 2), 2, "CSMS without OCPP Logging: 2 outputs");
    const node = await page.evaluate((id) => {
      const n = RED.nodes.node(id);
      return { port: n.port, path: n.path, outputs: n.outputs, name: n.name };
    }, csmsId);
    assert.deepEqual(node, { port: String(CSMS_PORT), path: "/ocpp", outputs: 2, name: "browser CSMS" });
  });

  await t.test("a CS with a new target-csms configured through the dialogs", async () => {
    csId = await drop("CS", 200, 300);
    await openDialog(csId);
    await page.fill("#node-input-cbId", CB_ID);
    await showTab("cs-tab-security");
    await page.fill("#node-input-csms_pw", PASSWORD);
    await showTab("cs-tab-ocppj");
    await page.setChecked("#node-input-ocpp_logging", true);
    await showTab("cs-tab-connection");
    // The + beside the CSMS select adds a target-csms config node.
    await page.click("#node-input-btn-csms-add");
    await page.locator("#node-config-input-url").waitFor({ state: "visible" });
    await page.fill("#node-config-input-name", "browser target");
    await page.fill("#node-config-input-url", `ws://127.0.0.1:${CSMS_PORT}/ocpp`);
    await shot("target-csms-dialog");
    await page.click("#node-config-dialog-ok");
    await page.locator("#node-config-input-url").waitFor({ state: "detached" });
    await shotTray("cs-dialog");
    await closeDialog();
    assert.equal(await portCount(csId, 3), 3, "CS with OCPP Logging: 3 outputs");
    assert.equal(await hoverLabel(csId, 2), "ocpp log");
    await setLogging(csId, false);
    assert.equal(await portCount(csId, 2), 2, "CS without OCPP Logging: 2 outputs");
    await setLogging(csId, true);
    assert.equal(await portCount(csId, 3), 3);
    const node = await page.evaluate((id) => {
      const n = RED.nodes.node(id);
      const target = RED.nodes.node(n.csms);
      return { cbId: n.cbId, outputs: n.outputs, url: target && target.url, type: target && target.type };
    }, csId);
    assert.deepEqual(node, {
      cbId: CB_ID, outputs: 3, url: `ws://127.0.0.1:${CSMS_PORT}/ocpp`, type: "target-csms",
    });
    await shot("workspace");
  });

  await t.test("the help sidebar shows each node's help", async () => {
    await page.click("#red-ui-tab-help-link-button");
    for (const [id, name] of [[csmsId, "CSMS"], [csId, "CS"]]) {
      await page.locator(`${nodeSel(id)} rect.red-ui-flow-node`).click();
      const headings = page.locator("#red-ui-sidebar-content h3");
      await page.waitForFunction(
        () => [...document.querySelectorAll("#red-ui-sidebar-content h3")]
          .some((h) => h.offsetParent !== null && h.textContent.trim() === "Inputs"),
        null, { timeout: 5000 });
      const visible = await headings.evaluateAll(
        (els) => els.filter((h) => h.offsetParent !== null).map((h) => h.textContent.trim()));
      assert.ok(visible.includes("Inputs") && visible.includes("Outputs"),
        `${name} help shows Inputs and Outputs headings: ${visible}`);
      const text = await page.locator("#red-ui-sidebar-content").innerText();
      assert.ok(text.includes(name === "CS" ? "Charging Station" : "CSMS"), `${name} help text`);
      await shot(`help-${name}`);
    }
  });

  await t.test("deploy: CSMS shows 1 connected, CS connected", async () => {
    await page.click("#red-ui-header-button-deploy");
    const statusOf = (id) => page.locator(`${nodeSel(id)} .red-ui-flow-node-status-label`);
    const waitText = (id, text) => page.waitForFunction(
      ({ sel, want }) => {
        const el = document.querySelector(`${sel} .red-ui-flow-node-status-label`);
        return el && el.textContent.trim() === want;
      }, { sel: nodeSel(id), want: text }, { timeout: 30000 });
    try {
      await waitText(csmsId, "1 connected");
      await waitText(csId, "connected, not booted"); // a new node applies the boot rules
    } finally {
      await shot("deployed");
    }
    assert.equal((await statusOf(csmsId).textContent()).trim(), "1 connected");
    assert.equal((await statusOf(csId).textContent()).trim(), "connected, not booted");
  });

  assert.deepEqual(errors, [], "no script errors in the editor");
});
