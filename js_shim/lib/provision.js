"use strict";
// Which Python runs the OCPP engine, and making one when there is none
// (docs/install.md).
//
// 1. A Python named by settings.js (`ocppNodes.python`) or by the environment
//    (`OCPP_NODES_PYTHON`) that can import ocpp_nodes is used as it is: no
//    venv, no install (the tests and `make demo` run this way). One that is
//    not a Python at all (missing, or not answering like one) is also handed
//    back as it is, so the daemon client reports it the way it always has.
// 2. Otherwise the engine gets its own virtual environment in the Node-RED
//    user dir, `<userDir>/ocpp-nodes/venv`, made with the named Python (else
//    `python3`): `python -m venv`, then pip installs the wheel this package
//    ships in `python/` with its dependencies, then `import ocpp_nodes` is
//    checked. A stamp (package version + wheel sha256) records success, so
//    later starts only read it; a new package version or wheel rebuilds.
//
// Everything runs as asynchronous child processes: Node-RED's start never
// waits for it. Failures reject with a ProvisionError whose `status` is the
// node status text and whose `help` says what to install.

const { execFile } = require("node:child_process");
const crypto = require("node:crypto");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const PACKAGE_DIR = path.resolve(__dirname, "..");
const WHEEL_DIR = path.join(PACKAGE_DIR, "python");
const MIN_PYTHON = [3, 10];
const PROBE_TIMEOUT_MS = 30000;
const VENV_TIMEOUT_MS = 180000;
const PIP_TIMEOUT_MS = 900000;
const OUTPUT_TAIL_LINES = 15;

// Prints the version, then whether ocpp_nodes can be found, without importing
// it (a probe must be quick; a broken install shows when the daemon starts).
const PROBE_SCRIPT =
  "import sys, importlib.util as u\n" +
  "print('ocpp-nodes-probe', sys.version_info[0], sys.version_info[1], " +
  "int(u.find_spec('ocpp_nodes') is not None))";

const INSTALL_PYTHON_HELP =
  "Install Python 3.10 or newer with its venv module (Debian/Ubuntu: " +
  "`sudo apt-get install python3 python3-venv`; Fedora: `sudo dnf install python3`; " +
  "macOS: `brew install python`), or name one in settings.js " +
  "(ocppNodes: { python: '/path/to/python3' }) or in the environment variable " +
  "OCPP_NODES_PYTHON, then restart Node-RED.";

class ProvisionError extends Error {
  /**
   * @param {string} message what went wrong
   * @param {string} status node status text
   * @param {string} help what the user should do
   * @param {string} kind "no-python" (status "no python") or "install"
   */
  constructor(message, status, help, kind = "install") {
    super(message);
    this.name = "ProvisionError";
    this.status = status;
    this.help = help;
    this.kind = kind;
  }
}

function tail(text, lines = OUTPUT_TAIL_LINES) {
  return String(text || "").trim().split("\n").slice(-lines).join("\n");
}

/** Run a program; resolve {code, stdout, stderr, error}. Never rejects. */
function run(file, args, { timeout, signal, cwd } = {}) {
  return new Promise((resolve) => {
    let child;
    try {
      child = execFile(file, args, {
        cwd: cwd || os.tmpdir(),
        timeout,
        signal,
        maxBuffer: 16 * 1024 * 1024,
        windowsHide: true,
        env: { ...process.env, PIP_NO_INPUT: "1" },
      }, (error, stdout, stderr) => {
        const code = error ? (typeof error.code === "number" ? error.code : null) : 0;
        resolve({ code, stdout: String(stdout || ""), stderr: String(stderr || ""), error });
      });
    } catch (error) {
      resolve({ code: null, stdout: "", stderr: "", error });
      return;
    }
    child.stdin?.end();
  });
}

function explicitPython(RED) {
  let fromSettings;
  try {
    fromSettings = RED.settings.ocppNodes && RED.settings.ocppNodes.python;
  } catch {
    // RED.settings throws for unknown keys in some Node-RED versions.
    fromSettings = undefined;
  }
  if (fromSettings) {
    return { python: String(fromSettings), source: "settings.js ocppNodes.python" };
  }
  if (process.env.OCPP_NODES_PYTHON) {
    return { python: process.env.OCPP_NODES_PYTHON, source: "OCPP_NODES_PYTHON" };
  }
  return null;
}

function userDir(RED) {
  let dir;
  try {
    dir = RED.settings.userDir;
  } catch {
    dir = undefined;
  }
  return dir || path.join(os.homedir(), ".node-red");
}

function packageVersion() {
  try {
    return JSON.parse(fs.readFileSync(path.join(PACKAGE_DIR, "package.json"), "utf8")).version;
  } catch {
    return "unknown";
  }
}

/** The wheel shipped in python/, or null (a checkout has none until `make pack`). */
function bundledWheel() {
  let names;
  try {
    names = fs.readdirSync(WHEEL_DIR).filter((name) => /^ocpp_nodes-.*\.whl$/.test(name)).sort();
  } catch {
    return null;
  }
  return names.length ? path.join(WHEEL_DIR, names[names.length - 1]) : null;
}

function sha256(file) {
  return crypto.createHash("sha256").update(fs.readFileSync(file)).digest("hex");
}

/** {ok, version:[maj,min], hasEngine} or {ok:false, missing, result} */
async function probe(python, signal) {
  const result = await run(python, ["-c", PROBE_SCRIPT], { timeout: PROBE_TIMEOUT_MS, signal });
  if (result.error && result.error.code === "ENOENT") {
    return { ok: false, missing: true, result };
  }
  const match = /ocpp-nodes-probe (\d+) (\d+) ([01])/.exec(result.stdout);
  if (result.code !== 0 || !match) {
    return { ok: false, missing: false, result };
  }
  return { ok: true, version: [Number(match[1]), Number(match[2])], hasEngine: match[3] === "1" };
}

function versionOk([major, minor]) {
  return major > MIN_PYTHON[0] || (major === MIN_PYTHON[0] && minor >= MIN_PYTHON[1]);
}

function venvPaths(RED) {
  const base = path.join(userDir(RED), "ocpp-nodes");
  const venv = path.join(base, "venv");
  const bin = process.platform === "win32" ? path.join(venv, "Scripts", "python.exe")
    : path.join(venv, "bin", "python");
  return { base, venv, python: bin, stamp: path.join(venv, "ocpp-nodes-stamp.json") };
}

function readStamp(file) {
  try {
    return JSON.parse(fs.readFileSync(file, "utf8"));
  } catch {
    return null;
  }
}

// Successful answers for named Pythons, per process: the daemon restarts
// with back-off, and each restart need not probe again.
const asIsCache = new Set();

/**
 * The Python to run `-m ocpp_nodes serve` with.
 *
 * @param {object} RED the Node-RED runtime API (settings, log)
 * @param {object} [options]
 * @param {(status: object) => void} [options.onInstalling] called once when a
 *   venv is being built (the nodes then show "installing engine")
 * @param {AbortSignal} [options.signal] aborts the child processes
 * @returns {Promise<{python: string, source: string}>}
 */
async function ensurePython(RED, { onInstalling = () => {}, signal } = {}) {
  const named = explicitPython(RED);
  if (named && asIsCache.has(named.python)) {
    return named;
  }
  let base = "python3";
  let baseSource = "python3 on PATH";
  if (named) {
    const found = await probe(named.python, signal);
    if (!found.ok) {
      // Not a Python we can talk to: the daemon client tries it and reports
      // "no python" or "engine failed" with what it printed.
      return named;
    }
    if (found.hasEngine) {
      asIsCache.add(named.python);
      return named;
    }
    if (!versionOk(found.version)) {
      throw new ProvisionError(
        `${named.python} (${named.source}) is Python ${found.version.join(".")}; ` +
          `ocpp-nodes needs ${MIN_PYTHON.join(".")} or newer`,
        "python too old", INSTALL_PYTHON_HELP, "no-python");
    }
    base = named.python;
    baseSource = named.source;
  }
  return provisionVenv(RED, base, baseSource, onInstalling, signal);
}

async function provisionVenv(RED, base, baseSource, onInstalling, signal) {
  const wheel = bundledWheel();
  if (!wheel) {
    throw new ProvisionError(
      `no Python with ocpp_nodes was named, and this copy of the package has no ` +
        `bundled engine wheel in ${WHEEL_DIR}`,
      "no python",
      "Install the package from npm (its tarball carries the wheel), or set " +
        "ocppNodes: { python: '/path/to/python' } in settings.js or OCPP_NODES_PYTHON " +
        "to a Python that can `import ocpp_nodes`, then restart Node-RED.",
      "no-python");
  }
  const paths = venvPaths(RED);
  const want = { package: packageVersion(), wheel: path.basename(wheel), sha256: sha256(wheel) };
  const have = readStamp(paths.stamp);
  if (have && have.package === want.package && have.sha256 === want.sha256 &&
      fs.existsSync(paths.python)) {
    return { python: paths.python, source: `venv ${paths.venv}` };
  }

  const found = await probe(base, signal);
  if (!found.ok) {
    const why = found.missing ? `${base} was not found` :
      `${base} did not run as a Python: ${tail(found.result.stderr) || found.result.error?.message}`;
    throw new ProvisionError(`cannot build the engine's Python environment: ${why}`,
      "no python", INSTALL_PYTHON_HELP, "no-python");
  }
  if (!versionOk(found.version)) {
    throw new ProvisionError(
      `${base} (${baseSource}) is Python ${found.version.join(".")}; ocpp-nodes needs ` +
        `${MIN_PYTHON.join(".")} or newer`,
      "python too old", INSTALL_PYTHON_HELP, "no-python");
  }

  onInstalling();
  const log = RED.log;
  log.info(`[ocpp-nodes] installing the OCPP engine ${want.wheel} into ${paths.venv} ` +
    `(with ${base}); this takes a minute the first time`);
  await fs.promises.rm(paths.venv, { recursive: true, force: true });
  await fs.promises.mkdir(paths.base, { recursive: true });

  const venv = await run(base, ["-m", "venv", paths.venv], { timeout: VENV_TIMEOUT_MS, signal });
  if (venv.code !== 0 || !fs.existsSync(paths.python)) {
    const output = tail(`${venv.stdout}\n${venv.stderr}`) || venv.error?.message || "";
    throw new ProvisionError(
      `${base} -m venv ${paths.venv} failed:\n${output}`,
      "no python venv",
      "Install the venv module for that Python (Debian/Ubuntu: " +
        "`sudo apt-get install python3-venv`, or python3.X-venv for your version), " +
        "then restart Node-RED.");
  }

  const pipArgs = ["-m", "pip", "install", "--disable-pip-version-check", "--no-input",
    "--prefer-binary", wheel];
  const pip = await run(paths.python, pipArgs, { timeout: PIP_TIMEOUT_MS, signal });
  if (pip.code !== 0) {
    const output = tail(`${pip.stdout}\n${pip.stderr}`) || pip.error?.message || "";
    throw new ProvisionError(
      `pip could not install ${want.wheel} into ${paths.venv}:\n${output}`,
      "engine install failed",
      "pip needs to reach a package index (PyPI, or the one in your pip.conf) for " +
        "aiohttp, websockets, msgpack, jsonschema, fastjsonschema and ocpp. Fix the " +
        "network or proxy (pip honours HTTPS_PROXY and pip.conf) and restart Node-RED, " +
        `or install it yourself: \`${paths.python} -m pip install ${wheel}\`, or set ` +
        "ocppNodes.python / OCPP_NODES_PYTHON to a Python that can `import ocpp_nodes`.");
  }

  const check = await run(paths.python, ["-c", "import ocpp_nodes"],
    { timeout: PROBE_TIMEOUT_MS, signal, cwd: paths.venv });
  if (check.code !== 0) {
    throw new ProvisionError(
      `the new environment ${paths.venv} cannot import ocpp_nodes:\n` +
        tail(check.stderr || check.error?.message),
      "engine install failed",
      `Remove ${paths.venv} and restart Node-RED; if it fails again, report the lines above.`);
  }
  fs.writeFileSync(paths.stamp, JSON.stringify({ ...want, python: base,
    installed: new Date().toISOString() }, null, 2) + "\n");
  log.info(`[ocpp-nodes] OCPP engine installed in ${paths.venv}`);
  return { python: paths.python, source: `venv ${paths.venv}` };
}

module.exports = { ensurePython, ProvisionError, venvPaths, bundledWheel, INSTALL_PYTHON_HELP };
