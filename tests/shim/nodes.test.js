"use strict";
// The CS, CSMS and target-csms nodes in a real Node-RED runtime (through
// node-red-node-test-helper), talking to the real ocpp-nodes daemon started by
// the shim. The Python is named by OCPP_NODES_PYTHON.

const test = require("node:test");
const assert = require("node:assert/strict");
const net = require("node:net");
const path = require("node:path");

const root = path.resolve(__dirname, "..", "..");
const toolsDir = path.join(root, "tools", "node");
// The helper looks for Node-RED from the nearest package.json above the
// working directory when it is first required; the repository root has none,
// so let it look from tools/node, where Node-RED is installed.
const cwd = process.cwd();
process.chdir(toolsDir);
const helper = require(path.join(toolsDir, "node_modules", "node-red-node-test-helper"));
process.chdir(cwd);
helper.init(require.resolve("node-red", { paths: [toolsDir] }));

const csNodeModule = require(path.join(root, "js_shim/nodes/cs.js"));
const csmsNodeModule = require(path.join(root, "js_shim/nodes/csms.js"));
const targetNodeModule = require(path.join(root, "js_shim/nodes/target-csms.js"));
const { shutdownAll, daemonPids } = require(path.join(root, "js_shim/lib/daemon-client.js"));
const NODES = [csNodeModule, csmsNodeModule, targetNodeModule];

const PYTHON = process.env.OCPP_NODES_PYTHON;
const needsDaemon = PYTHON
  ? {}
  : { skip: "OCPP_NODES_PYTHON is unset: set it to a Python that can import ocpp_nodes" };

const CB_ID = "CS001";
const PASSWORD = "0123456789abcdefABCD";

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

// Resolves with the first event args for which `accept` is true. The timer is
// what keeps the test process alive: the daemon's handles are unref'd.
function waitFor(emitter, event, accept, what, ms = 15000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.removeListener(event, listener);
      reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
    }, ms);
    function listener(...args) {
      let ok;
      try {
        ok = accept(...args);
      } catch {
        ok = false;
      }
      if (ok) {
        clearTimeout(timer);
        emitter.removeListener(event, listener);
        resolve(args);
      }
    }
    emitter.on(event, listener);
  });
}

function statusOf(call) {
  return call.args[0] || {};
}

// The helper spies on Node.prototype.status, so its calls are those of all
// nodes: pick the given node's latest.
function lastStatus(node) {
  const calls = node.status.getCalls().filter((call) => call.thisValue === node);
  return calls.length ? statusOf(calls[calls.length - 1]) : {};
}

function stationFlow(port) {
  return [
    { id: "tab", type: "tab", label: "test" },
    {
      id: "csms",
      z: "tab", x: 100, y: 100,
      type: "CSMS",
      name: "the CSMS",
      port: String(port),
      path: "/ocpp",
      ocpp_logging: false,
      outputs: 2,
      wires: [["csmsOut"], []],
    },
    { id: "csmsOut", z: "tab", x: 100, y: 100, type: "helper" },
    { id: "target", type: "target-csms", name: "local", url: `ws://127.0.0.1:${port}/ocpp` },
    {
      id: "cs",
      z: "tab", x: 100, y: 100,
      type: "CS",
      name: "",
      cbId: CB_ID,
      csms: "target",
      auto_connect: true,
      ocpp_logging: false,
      outputs: 2,
      ws_rt_minimum: 1,
      ws_rt_repeat: 1,
      ws_rt_rnd_range: 0,
      wires: [["csOut"], []],
    },
    { id: "csOut", z: "tab", x: 100, y: 100, type: "helper" },
    { id: "catch", z: "tab", x: 100, y: 100, type: "catch", scope: null, uncaught: false, wires: [["caught"]] },
    { id: "caught", z: "tab", x: 100, y: 100, type: "helper" },
  ];
}

const credentials = {
  cs: { csms_pw: PASSWORD },
  csms: { basic_auths: JSON.stringify({ [CB_ID]: PASSWORD }) },
};

// Statuses set while the flow loads come before anyone can listen, so look at
// the latest one first, then wait for the next ones.
async function waitForStatus(node, accept, what, ms) {
  if (accept(lastStatus(node))) {
    return;
  }
  await waitFor(node, "call:status", (call) => accept(statusOf(call)), what, ms);
}

async function loadStation() {
  const port = await freePort();
  await helper.load(NODES, stationFlow(port), credentials);
  const cs = helper.getNode("cs");
  // Connected means the CS node's status turns green.
  await waitForStatus(cs, (status) => status.fill === "green", "CS connected");
  return cs;
}

test.describe("CS and CSMS nodes with the real daemon", needsDaemon, () => {
  test.before(() => {
    helper.settings({ ocppNodes: { python: PYTHON } });
  });
  test.afterEach(() => helper.unload());
  test.after(() => shutdownAll());

  test("a BootNotification goes CS -> CSMS and the flow's answer comes back", async () => {
    const cs = await loadStation();
    const csms = helper.getNode("csms");
    const csmsOut = helper.getNode("csmsOut");
    const csOut = helper.getNode("csOut");

    // The flow on the CSMS side answers the request, reusing msg.ocpp. What
    // it saw is checked after the round trip: an assert thrown in here would
    // only become a node error.
    let request = null;
    csmsOut.on("input", (msg) => {
      if (msg.topic !== `${CB_ID}/Request`) {
        return;
      }
      request = structuredClone(msg);
      msg.payload = {
        msgType: 3,
        data: { currentTime: new Date().toISOString(), interval: 300, status: "Accepted" },
      };
      csms.receive(msg);
    });

    const response = waitFor(csOut, "input", (msg) => msg.topic === `${CB_ID}/Response`,
      "the BootNotification response on CS output 0");
    cs.receive({
      payload: {
        command: "BootNotification",
        data: {
          reason: "PowerUp",
          chargingStation: { model: "Test", vendorName: "ocpp-nodes" },
        },
      },
      customData: { step: "boot", n: 1 },
    });
    const [msg] = await response;
    assert.ok(request, "the CSMS flow saw the request");
    assert.equal(request.ocpp.command, "BootNotification");
    assert.equal(request.ocpp.cbId, CB_ID);
    assert.equal(request.ocpp.ocppVersion, "2.0.1");
    assert.equal(typeof request.ocpp.MessageId, "string");
    assert.equal(request.payload.data.reason, "PowerUp");

    assert.equal(msg.ocpp.command, "BootNotification");
    assert.equal(msg.ocpp.MessageId, request.ocpp.MessageId);
    assert.equal(msg.payload.data.status, "Accepted");
    assert.equal(msg.payload.data.interval, 300);
    assert.deepEqual(msg.customData, { step: "boot", n: 1 });
  });

  test("a request without a command ends in an error that Catch nodes see", async () => {
    const cs = await loadStation();
    const caught = helper.getNode("caught");
    const gotCaught = waitFor(caught, "input", () => true, "a caught error");
    cs.receive({ _msgid: "bad-1", payload: { data: {} } });
    const [msg] = await gotCaught;
    assert.equal(msg._msgid, "bad-1");
    assert.equal(msg.error.source.id, "cs");
    assert.ok(msg.error.message, "the error has a message");
  });

  test("inputs that arrive while the engine starts are queued, then answered", async () => {
    shutdownAll();
    const flow = [
      { id: "tab", type: "tab", label: "test" },
      {
        id: "csms", z: "tab", x: 100, y: 100, type: "CSMS",
        port: String(await freePort()), path: "/ocpp", outputs: 2, wires: [["csmsOut"], []],
      },
      { id: "csmsOut", z: "tab", x: 100, y: 100, type: "helper" },
    ];
    await helper.load(NODES, flow, {});
    const csms = helper.getNode("csms");
    assert.deepEqual(daemonPids(), [], "the daemon is not up yet");
    const answer = waitFor(helper.getNode("csmsOut"), "input", (msg) => msg._msgid === "early-1",
      "the answer to the queued command");
    csms.receive({ _msgid: "early-1", payload: { msgType: 99, command: "connections" } });
    const [msg] = await answer;
    assert.deepEqual(msg.payload.connections, {});
  });

  test("closing a CSMS node releases its port before close completes", async () => {
    const port = await freePort();
    const flow = [
      { id: "tab", type: "tab", label: "test" },
      { id: "csms", z: "tab", x: 100, y: 100, type: "CSMS", port: String(port), path: "/ocpp", outputs: 2, wires: [[], []] },
    ];
    await helper.load(NODES, flow, {});
    const csms = helper.getNode("csms");
    await waitForStatus(csms, (status) => status.fill === "green", "CSMS listening");
    await helper.unload();
    await new Promise((resolve, reject) => {
      const server = net.createServer();
      server.on("error", reject);
      server.listen(port, "127.0.0.1", () => server.close(resolve));
    });
  });

  test("when the daemon dies, inputs in flight fail, nodes go red, then come back", async () => {
    const cs = await loadStation();
    const [pid] = daemonPids();
    // A request the CSMS flow never answers stays in flight.
    const seen = waitFor(helper.getNode("csmsOut"), "input", (msg) => msg.topic === `${CB_ID}/Request`,
      "the request at the CSMS");
    const caught = waitFor(helper.getNode("caught"), "input", (msg) => msg._msgid === "inflight-1",
      "the in-flight request's error");
    cs.receive({ _msgid: "inflight-1", payload: { command: "Heartbeat", data: {} } });
    await seen;

    const down = waitFor(cs, "call:status", (call) => statusOf(call).text === "engine down",
      "status engine down");
    process.kill(pid, "SIGKILL");
    const [msg] = await caught;
    assert.match(msg.error.message, /OCPP engine stopped/);
    await down;
    await waitFor(cs, "call:status", (call) => statusOf(call).fill === "green",
      "CS connected again after the restart", 20000);
    assert.equal(daemonPids().length, 1);
    assert.notEqual(daemonPids()[0], pid);
  });
});

test.describe("without a usable Python", () => {
  test.beforeEach(() => shutdownAll());
  test.afterEach(() => helper.unload());
  test.after(() => {
    shutdownAll();
    helper.settings({});
  });

  async function loadLoneCsms() {
    const flow = [
      { id: "tab", type: "tab", label: "test" },
      {
        id: "csms", z: "tab", x: 100, y: 100, type: "CSMS",
        port: String(await freePort()), path: "/ocpp", outputs: 2, wires: [[], []],
      },
      { id: "catch", z: "tab", x: 100, y: 100, type: "catch", scope: null, uncaught: false, wires: [["caught"]] },
      { id: "caught", z: "tab", x: 100, y: 100, type: "helper" },
    ];
    await helper.load(NODES, flow, {});
    return helper.getNode("csms");
  }

  function loggedErrors() {
    return helper.log().getCalls()
      .map((call) => call.args[0])
      .filter((entry) => entry.level === helper.log().ERROR)
      .map((entry) => String(entry.msg));
  }

  test("a missing interpreter shows 'no python', says what to do, fails inputs", async () => {
    helper.settings({ ocppNodes: { python: "/nonexistent/python3" } });
    const csms = await loadLoneCsms();
    await waitForStatus(csms, (status) => status.text === "no python", "status no python");
    assert.ok(loggedErrors().some((text) => /OCPP_NODES_PYTHON/.test(text) && /settings\.js/.test(text)),
      "the log says how to name a Python");

    const gotCaught = waitFor(helper.getNode("caught"), "input", () => true, "a caught error");
    csms.receive({ payload: { command: "GetVariables", data: {} } });
    const [msg] = await gotCaught;
    assert.match(msg.error.message, /OCPP engine not running/);
  });

  test("an interpreter that exits before ready shows 'engine failed'", async () => {
    helper.settings({ ocppNodes: { python: "/bin/false" } });
    const csms = await loadLoneCsms();
    await waitForStatus(csms, (status) => status.text === "engine failed", "status engine failed");
    assert.ok(loggedErrors().some((text) => /before it was ready/.test(text)));
  });
});
