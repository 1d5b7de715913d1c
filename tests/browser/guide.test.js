"use strict";
// docs/getting-started.md in the editor, as a reader does it, in headless
// Chromium: the demo flow running (steps 1-2), the page's flow imported
// through Menu > Import and deployed, the page's station.py started (step 3),
// the inject buttons clicked and the debug sidebar read (steps 4 and 6).
// Takes the screenshots the page shows (`make screenshots` copies them to
// docs/images/).
//
// Run by tests/browser/test_editor.py against a Node-RED with the demo flow
// deployed, with
//   OCPP_EDITOR_URL       the editor's URL
//   OCPP_GUIDE_FLOW       a file with the page's flow (its CSMS on a free port)
//   OCPP_STATION_PYTHON   the Python that runs...
//   OCPP_STATION_SCRIPT   ...the page's station.py (aimed at that port)
//   OCPP_SCREENSHOTS      where screenshots go
// Without OCPP_GUIDE_FLOW the test is skipped.

const test = require("node:test");
const assert = require("node:assert/strict");
const { spawn } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");
const readline = require("node:readline");

const { SHOTS, chromiumMissing, launchChromium } = require("./chromium");

const BASE = process.env.OCPP_EDITOR_URL;
const FLOW = process.env.OCPP_GUIDE_FLOW;

const skip = !BASE || !FLOW ? "OCPP_EDITOR_URL / OCPP_GUIDE_FLOW unset: run tests/browser/test_editor.py" :
  chromiumMissing();

test("getting started, in the editor", { skip, timeout: 120000 }, async (t) => {
  const browser = await launchChromium();
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1500, height: 900 } });
  page.setDefaultTimeout(10000);
  const errors = [];
  page.on("pageerror", (err) => errors.push(String(err)));
  const shot = async (name) => {
    await page.mouse.move(0, 0);
    // the editor's notifications (imported, deployed, injected) would cover the flow
    await page.evaluate(() => document.querySelectorAll(".red-ui-notification").forEach((n) => n.remove()));
    await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
  };

  let station = null;
  const stationLines = [];
  t.after(() => station && station.kill());

  const idOf = (name) => page.evaluate((n) => {
    const found = [];
    RED.nodes.eachNode((node) => { if (node.name === n) found.push(node.id); });
    return found.length === 1 ? found[0] : null;
  }, name);
  const nodeSel = (id) => `#red-ui-workspace-chart g.red-ui-flow-node-group[id="${id}"]`;
  const waitStatus = (id, text, timeout = 30000) => page.waitForFunction(
    ({ sel, want }) => {
      const el = document.querySelector(`${sel} .red-ui-flow-node-status-label`);
      return el && el.textContent.trim() === want;
    }, { sel: nodeSel(id), want: text }, { timeout });
  const debugText = () => page.locator("#red-ui-sidebar-content .red-ui-debug-content-list").innerText();
  const waitDebug = (text) => page.waitForFunction(
    (want) => [...document.querySelectorAll(".red-ui-debug-msg")].some((el) => el.innerText.includes(want)),
    text, { timeout: 20000 });

  async function zoomOut(steps) {
    for (let i = 0; i < steps; i++) {
      await page.click("#red-ui-view-zoom-out");
    }
  }

  await page.goto(BASE);
  // the tips box under the sidebar would cover part of the screenshots
  await page.evaluate(() => RED.settings.set("editor.view.view-show-tips", false)).catch(() => {});
  await page.locator("#red-ui-palette-container-OCPP").waitFor({ state: "attached", timeout: 30000 });
  // the deployed flow reaches the editor after the palette (later with more
  // node types installed, such as the dashboard's)
  await page.waitForFunction(() => {
    let found = false;
    RED.nodes.eachNode((node) => { found = found || node.type === "CSMS"; });
    return found;
  }, null, { timeout: 30000 });

  await t.test("step 2: the demo flow, CSMS 1 connected, CS001 connected", async () => {
    const csms = await idOf("CSMS :9220");
    const cs = await idOf("CS001");
    assert.ok(csms && cs, "the demo's CSMS and CS nodes are in the editor");
    await waitStatus(csms, "1 connected");
    await waitStatus(cs, "connected");
    await zoomOut(3);
    await shot("demo-flow");
  });

  await t.test("step 3: import the page's flow, deploy, a station boots", async () => {
    await page.click("#red-ui-header-button-sidemenu");
    await page.click("#menu-item-import");
    const text = page.locator("#red-ui-clipboard-dialog-import-text");
    await text.fill(fs.readFileSync(FLOW, "utf8"));
    await text.press("End"); // the dialog checks the JSON on keyup
    await page.click("#red-ui-clipboard-dialog-ok");
    await text.waitFor({ state: "hidden" });
    // the import adds a tab beside the demo's; the page says to click it
    await page.locator("#red-ui-workspace-tabs li", { hasText: "Getting started" }).click();
    await page.click("#red-ui-view-zoom-zero");
    await page.evaluate(() => { const c = document.getElementById("red-ui-workspace-chart"); c.scrollTop = 0; c.scrollLeft = 0; });
    const tab = await page.locator("#red-ui-workspace-tabs li.active").innerText();
    assert.equal(tab.trim(), "Getting started");
    await page.click("#red-ui-header-button-deploy");
    const csms = await idOf("CSMS :9230");
    await waitStatus(csms, "0 connected");
    station = spawn(process.env.OCPP_STATION_PYTHON, ["-u", process.env.OCPP_STATION_SCRIPT],
      { stdio: ["ignore", "pipe", "pipe"] });
    readline.createInterface({ input: station.stdout }).on("line", (line) => stationLines.push(line));
    readline.createInterface({ input: station.stderr }).on("line", (line) => stationLines.push(line));
    await waitStatus(csms, "1 connected");
    const deadline = Date.now() + 20000;
    while (!stationLines.some((l) => l.startsWith("Heartbeat:")) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.ok(stationLines.includes("BootNotification: Accepted, interval 300 s"), stationLines.join("\n"));
    await shot("getting-started-flow");
  });

  // Open a message of the debug sidebar, then the property rows along `keys`.
  async function expand(msg, keys) {
    await msg.locator(".red-ui-debug-msg-top-level > .red-ui-debug-msg-row").first().click();
    for (const key of keys) {
      await msg.locator(`xpath=.//span[contains(@class, 'red-ui-debug-msg-row')]` +
        `[span[contains(@class, 'red-ui-debug-msg-object-key')][normalize-space() = '${key}']]`)
        .first().click();
    }
  }

  async function press(name) {
    const id = await idOf(name);
    await page.locator(`${nodeSel(id)} .red-ui-flow-node-button rect.red-ui-flow-node-button-button`).click();
  }

  await t.test("step 4: the link call's answer in the debug sidebar", async () => {
    await page.click("#red-ui-tab-debug-link-button");
    // only this tab's messages: the demo keeps sending its own
    await page.click("#red-ui-sidebar-debug-filter");
    await page.click("input[name='filter-type'][value='filterCurrent']");
    await page.keyboard.press("Escape");
    await page.click("#red-ui-sidebar-debug-clear");
    await press("GetVariables to CS100");
    await waitDebug("CS100/Response");
    // open the answer's payload down to the value
    const answer = page.locator(".red-ui-debug-msg", { hasText: "CS100/Response" }).last();
    await expand(answer, ["payload", "data", "getVariableResult", "0"]);
    assert.match(await debugText(), /attributeValue: "300"/);
    await shot("getting-started-debug");
  });

  await t.test("step 6: the Catch node's message", async () => {
    await page.click("#red-ui-sidebar-debug-clear");
    await press("Reset to CS999");
    await waitDebug("node: errors");
    const caught = page.locator(".red-ui-debug-msg", { hasText: "node: errors" }).last();
    await expand(caught, ["error"]);
    assert.match(await debugText(), /station 'CS999' is not connected/);
    await shot("getting-started-catch");
  });

  assert.deepEqual(errors, [], "no script errors in the editor");
});
