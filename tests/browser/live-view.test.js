"use strict";
// The live view (flows/csms-live-view.json) as an operator uses it, in
// headless Chromium (playwright-core from tools/node, Debian's
// /usr/bin/chromium): the dashboard page lists every station with its OCPP
// version and boot status, the chart gets data, and a station selected in the
// table gets a Reset from the button and its answer is shown.
//
// Needs a running Node-RED with the flow deployed and stations connected:
// tests/browser/test_live_view.py starts them and runs this file with
//   OCPP_DASHBOARD_URL  the dashboard's URL (http://127.0.0.1:<port>/dashboard)
//   OCPP_STATIONS       how many stations are connected
//   OCPP_VERSIONS       the OCPP versions among them, comma-separated
//   OCPP_RESET_STATION  the cbId of the station that answers Reset
//   OCPP_SCREENSHOTS    where screenshots go (default .local/screenshots)
// Without OCPP_DASHBOARD_URL the test is skipped.

const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const { SHOTS, chromiumMissing, launchChromium } = require("./chromium");

const URL = process.env.OCPP_DASHBOARD_URL;
const STATIONS = Number(process.env.OCPP_STATIONS || 0);
const VERSIONS = (process.env.OCPP_VERSIONS || "").split(",").filter(Boolean);
const RESET_STATION = process.env.OCPP_RESET_STATION;
const SHOT_POINTS = 10; // seconds of the chart on the screenshot

const skip = !URL ? "OCPP_DASHBOARD_URL is unset: run tests/browser/test_live_view.py (pytest)" :
  chromiumMissing();

// A widget of the flow by its node id (the dashboard gives each one this element id).
const widget = (nodeId) => `[id="nrdb-ui-widget-${nodeId}"]`;

test("the live view: stations, versions, chart, Reset", { skip, timeout: 120000 }, async (t) => {
  const browser = await launchChromium();
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.setDefaultTimeout(30000);
  const errors = [];
  page.on("pageerror", (err) => errors.push(String(err)));

  // What the dashboard's socket.io connection brings to the chart widget:
  // frames `42["msg-input:lv.chart", {...payload...}]`.
  const chartPoints = [];
  const waiting = []; // [count, least, resolve, timer]
  // Resolved once `count` points of at least `least` messages a second came;
  // rejected with the points seen after `ms`.
  const chartPointsCame = (count, least = 1, ms = 60000) => new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`not ${count} chart points >= ${least} in ${ms} ms: ${chartPoints}`)), ms);
    waiting.push([count, least, resolve, timer]);
    settle();
  });
  function settle() {
    for (const [count, least, resolve, timer] of waiting) {
      if (chartPoints.filter((p) => p >= least).length >= count) {
        clearTimeout(timer);
        resolve();
      }
    }
  }
  page.on("websocket", (ws) => {
    ws.on("framereceived", ({ payload }) => {
      const text = String(payload);
      if (text.startsWith("42[\"msg-input:lv.chart\"")) {
        chartPoints.push(JSON.parse(text.slice(2))[1].payload);
        settle();
      }
    });
  });

  await page.goto(URL);
  const summary = page.locator(`${widget("lv.summary")} .nrdb-ui-text-value`);
  const table = page.locator(widget("lv.table"));
  const cells = (key) => table.locator(`tbody td[data-column-key="${key}"]`);

  await t.test(`the table lists the ${STATIONS} stations with their versions`, async () => {
    // every station connected and its version known ("OCPP ?" until its first message)
    await page.waitForFunction(
      ({ sel, n }) => {
        const text = document.querySelector(sel)?.textContent || "";
        return text.startsWith(`${n} of ${n} connected`) && !text.includes("?");
      },
      { sel: `${widget("lv.summary")} .nrdb-ui-text-value`, n: STATIONS }, { timeout: 60000 });
    const text = await summary.textContent();
    for (const version of VERSIONS) {
      assert.match(text, new RegExp(`OCPP ${version.replaceAll(".", "\\.")}: \\d+`), text);
    }
    await table.locator(".v-data-table-footer__info").filter({ hasText: `of ${STATIONS}` }).waitFor();
    // the first page: every version, and the boots the flow accepted
    await page.waitForFunction((sel) => {
      const boots = [...document.querySelectorAll(`${sel} tbody td[data-column-key="boot"]`)];
      return boots.length > 0 && boots.every((td) => td.textContent.trim() === "Accepted");
    }, widget("lv.table"));
    const versions = new Set(await cells("version").allTextContents());
    assert.deepEqual([...versions].sort(), [...VERSIONS].sort());
    const states = new Set(await cells("state").allTextContents());
    assert.deepEqual([...states], ["connected"]);
    assert.ok((await cells("last").allTextContents()).every((last) => last.length > 0));
  });

  await t.test("the chart gets the messages per second", async () => {
    // 101 stations, a Heartbeat a second each (the reset station is quiet)
    await chartPointsCame(1, 50);
    await page.locator(`${widget("lv.chart")} canvas`).first().waitFor();
  });

  const answer = page.locator(`${widget("lv.resetText")} .nrdb-ui-text-value`);

  // Find `cbId` with the table's search field, click its row, press the button.
  async function selectAndReset(cbId, version) {
    await table.locator("input").first().fill(cbId);
    const row = table.locator("tbody tr").filter({
      has: page.locator(`td[data-column-key="cbId"]`, { hasText: cbId }),
    });
    await row.click();
    const selected = page.locator(`${widget("lv.selected")} .nrdb-ui-text-value`);
    await selected.filter({ hasText: `${cbId} (OCPP ${version}, connected)` }).waitFor();
    await page.locator(`${widget("lv.button")} button`).click();
  }

  await t.test("a Reset to a generator's station shows why it failed", async (st) => {
    // the generator answers every CSMS request with {}: no valid ResetResponse
    await selectAndReset("bench00001", "2.0.1");
    await answer.filter({ hasText: "Reset to bench00001 failed:" }).waitFor();
    st.diagnostic(await answer.textContent());
  });

  await t.test("a station selected in the table gets a Reset from the button", async () => {
    await selectAndReset(RESET_STATION, "2.0.1");
    await answer.filter({ hasText: `${RESET_STATION} answered Reset: Accepted` }).waitFor();
    // the table, the station's last message: the answer to the Reset
    await cells("last").filter({ hasText: "Reset response" }).waitFor();
  });

  await t.test("the screenshot for the docs", async () => {
    const search = table.locator("input").first();
    await search.fill("");
    await search.blur();
    await table.locator(".v-data-table-footer__info").filter({ hasText: `of ${STATIONS}` }).waitFor();
    await chartPointsCame(SHOT_POINTS); // a chart with some history
    // one page: the flow turns the dashboard's navigation drawer off (kept off screen)
    await page.waitForFunction(() => [...document.querySelectorAll(".v-navigation-drawer")]
      .every((drawer) => drawer.getBoundingClientRect().right <= 0));
    await page.screenshot({ path: path.join(SHOTS, "live-view.png"), fullPage: true });
  });

  assert.deepEqual(errors, [], "no errors in the page");
});
