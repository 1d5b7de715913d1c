"use strict";
// js_shim/lib/provision.js without pip or a network: a copy of the module sits
// in a temp "installed package" (package.json, python/ with a wheel), and fake
// interpreters (shell scripts) play the Pythons. The real venv + pip path is
// tests/test_install.py.

const test = require("node:test");
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const root = path.resolve(__dirname, "..", "..");

const made = [];
test.after(() => {
  for (const dir of made) {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function tmpdir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ocpp-provision-test-"));
  made.push(dir);
  return dir;
}

// A package dir with lib/provision.js, package.json (version) and python/<wheel>.
function installedPackage(version = "9.9.9", wheelBytes = "not really a wheel") {
  const dir = tmpdir();
  fs.mkdirSync(path.join(dir, "lib"));
  fs.mkdirSync(path.join(dir, "python"));
  fs.copyFileSync(path.join(root, "js_shim/lib/provision.js"), path.join(dir, "lib/provision.js"));
  fs.writeFileSync(path.join(dir, "package.json"), JSON.stringify({ name: "x", version }));
  const wheel = path.join(dir, "python", `ocpp_nodes-${version}-py3-none-any.whl`);
  fs.writeFileSync(wheel, wheelBytes);
  return { dir, wheel, provision: require(path.join(dir, "lib/provision.js")) };
}

// A shell script standing in for a Python: answers the probe with `version`
// and `hasEngine`, and runs `venvAction` for `-m venv <dir>`.
function fakePython(dir, { version = "3 11", hasEngine = 0, venvAction = "exit 1" } = {}) {
  const file = path.join(dir, `fake-python-${crypto.randomBytes(4).toString("hex")}`);
  fs.writeFileSync(file, `#!/bin/sh
case "$1" in
  -c) echo "ocpp-nodes-probe ${version} ${hasEngine}"; exit 0 ;;
  -m) if [ "$2" = venv ]; then ${venvAction}; fi; exit 1 ;;
esac
exit 1
`, { mode: 0o755 });
  return file;
}

function fakeRED(userDir, ocppNodes) {
  const lines = [];
  return {
    settings: { userDir, ocppNodes },
    log: { info: (t) => lines.push(t), warn: (t) => lines.push(t), error: (t) => lines.push(t) },
    lines,
  };
}

test("a named Python that has ocpp_nodes is used as it is", async () => {
  const { dir, provision } = installedPackage();
  const python = fakePython(dir, { hasEngine: 1 });
  const RED = fakeRED(path.join(dir, "user"), { python });
  let installing = false;
  const got = await provision.ensurePython(RED, { onInstalling: () => (installing = true) });
  assert.deepEqual(got, { python, source: "settings.js ocppNodes.python" });
  assert.equal(installing, false);
  assert.equal(fs.existsSync(path.join(dir, "user", "ocpp-nodes")), false);
});

test("a named program that is no Python is handed back for the daemon client to report", async () => {
  const { dir, provision } = installedPackage();
  for (const python of ["/nonexistent/python", "/bin/false"]) {
    const got = await provision.ensurePython(fakeRED(path.join(dir, "user"), { python }));
    assert.equal(got.python, python);
  }
});

test("a stamp for this version and wheel: the venv is used without running anything", async () => {
  const { dir, wheel, provision } = installedPackage();
  const userDir = path.join(dir, "user");
  const paths = provision.venvPaths(fakeRED(userDir));
  fs.mkdirSync(path.dirname(paths.python), { recursive: true });
  fs.writeFileSync(paths.python, "");
  const sha256 = crypto.createHash("sha256").update(fs.readFileSync(wheel)).digest("hex");
  fs.writeFileSync(paths.stamp, JSON.stringify({ package: "9.9.9", sha256 }));
  // No python3 on PATH: the stamp must short-cut before any child process.
  const saved = { PATH: process.env.PATH, OCPP_NODES_PYTHON: process.env.OCPP_NODES_PYTHON };
  process.env.PATH = path.join(dir, "empty");
  delete process.env.OCPP_NODES_PYTHON;
  try {
    const got = await provision.ensurePython(fakeRED(userDir));
    assert.equal(got.python, paths.python);
  } finally {
    process.env.PATH = saved.PATH;
    if (saved.OCPP_NODES_PYTHON !== undefined) {
      process.env.OCPP_NODES_PYTHON = saved.OCPP_NODES_PYTHON;
    }
  }
});

test("another wheel (an upgrade) rebuilds: the venv is removed and made again", async () => {
  const { dir, provision } = installedPackage("9.9.10", "a newer wheel");
  const userDir = path.join(dir, "user");
  const paths = provision.venvPaths(fakeRED(userDir));
  fs.mkdirSync(path.dirname(paths.python), { recursive: true });
  fs.writeFileSync(paths.python, "");
  fs.writeFileSync(paths.stamp, JSON.stringify({ package: "9.9.9", sha256: "0".repeat(64) }));
  const python = fakePython(dir, { venvAction: "echo 'ensurepip is not available' >&2; exit 1" });
  const RED = fakeRED(userDir, { python });
  let installing = 0;
  await assert.rejects(
    provision.ensurePython(RED, { onInstalling: () => installing++ }),
    (err) => {
      assert.equal(err.name, "ProvisionError");
      assert.equal(err.status, "no python venv");
      assert.match(err.message, /ensurepip is not available/);
      assert.match(err.help, /apt-get install python3-venv/);
      return true;
    });
  assert.equal(installing, 1, "the nodes were told 'installing engine'");
  assert.equal(fs.existsSync(paths.stamp), false, "the old environment is gone");
  assert.ok(RED.lines.some((line) => /installing the OCPP engine ocpp_nodes-9\.9\.10/.test(line)));
});

test("pip failing says what to fix and the command to run by hand", async () => {
  const { dir, wheel, provision } = installedPackage();
  const userDir = path.join(dir, "user");
  const paths = provision.venvPaths(fakeRED(userDir));
  // `-m venv <dir>` makes <dir>/bin/python: a fake whose pip fails.
  const pipFails = `#!/bin/sh
echo "ERROR: Could not find a version that satisfies the requirement aiohttp" >&2
exit 1
`;
  const venvAction = `mkdir -p "$3/bin" && printf '%s' '${pipFails}' > "$3/bin/python" && chmod 755 "$3/bin/python" && exit 0`;
  const python = fakePython(dir, { venvAction });
  await assert.rejects(provision.ensurePython(fakeRED(userDir, { python })), (err) => {
    assert.equal(err.status, "engine install failed");
    assert.match(err.message, /Could not find a version that satisfies the requirement aiohttp/);
    assert.ok(err.help.includes(`${paths.python} -m pip install ${wheel}`), err.help);
    return true;
  });
  assert.equal(fs.existsSync(paths.stamp), false);
});

test("a Python older than 3.10 is refused with what to install", async () => {
  const { dir, provision } = installedPackage();
  const python = fakePython(dir, { version: "3 8" });
  await assert.rejects(provision.ensurePython(fakeRED(path.join(dir, "user"), { python })), (err) => {
    assert.equal(err.status, "python too old");
    assert.match(err.message, /Python 3\.8; ocpp-nodes needs 3\.10/);
    assert.match(err.help, /apt-get install python3 python3-venv/);
    return true;
  });
});

test("no wheel in the package (a checkout) and no named Python: says to name one", async () => {
  const { dir, wheel, provision } = installedPackage();
  fs.rmSync(wheel);
  const saved = process.env.OCPP_NODES_PYTHON;
  delete process.env.OCPP_NODES_PYTHON;
  try {
    await assert.rejects(provision.ensurePython(fakeRED(path.join(dir, "user"))), (err) => {
      assert.equal(err.status, "no python");
      assert.match(err.help, /OCPP_NODES_PYTHON/);
      return true;
    });
  } finally {
    if (saved !== undefined) {
      process.env.OCPP_NODES_PYTHON = saved;
    }
  }
});
