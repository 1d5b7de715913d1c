"use strict";
// Headless Chromium for the browser tests: Debian's /usr/bin/chromium driven
// through playwright-core from tools/node (a browser download by playwright
// itself does not work here), and where screenshots go.
//   OCPP_CHROMIUM     the browser (default /usr/bin/chromium)
//   OCPP_SCREENSHOTS  where screenshots go (default .local/screenshots)

const fs = require("node:fs");
const path = require("node:path");

const root = path.resolve(__dirname, "..", "..");
const SHOTS = process.env.OCPP_SCREENSHOTS || path.join(root, ".local", "screenshots");
const CHROMIUM = process.env.OCPP_CHROMIUM || "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

/** Why the browser cannot run here, or false when it can. */
function chromiumMissing() {
  return fs.existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing: run make setup`;
}

/** A started browser (close it with browser.close()); the screenshot folder exists. */
async function launchChromium() {
  fs.mkdirSync(SHOTS, { recursive: true });
  const { chromium } = require(require.resolve("playwright-core", { paths: [path.join(root, "tools", "node")] }));
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
}

module.exports = { SHOTS, chromiumMissing, launchChromium };
