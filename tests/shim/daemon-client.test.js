"use strict";
// The daemon client's rules (js_shim/lib/daemon-client.js): when it starts an
// engine, what inputs do meanwhile, restart and back-off, close. Driven with a
// fake engine and a fake clock: no Python, no real timers.

const test = require("node:test");
const assert = require("node:assert/strict");
const { execFileSync } = require("node:child_process");
const EventEmitter = require("node:events");
const path = require("node:path");

const root = path.resolve(__dirname, "..", "..");
const { DaemonClient, TRANSITIONS } = require(path.join(root, "js_shim/lib/daemon-client"));
const { createFrame } = require(path.join(root, "js_shim/lib/wire-msg"));

// What engine.js's Engine offers the client; the test plays the engine's part
// with welcome(), fail(), lose() and frame().
class FakeEngine extends EventEmitter {
  constructor(RED, { onFrame }) {
    super();
    this.onFrame = onFrame;
    this.started = false;
    this.ended = false;
    this.installing = false;
    this.pid = 4242;
    this.written = [];
    this.unencodable = () => false;
  }

  start() {
    this.started = true;
  }

  write(frame) {
    if (this.unencodable(frame)) {
      throw new Error("frame too big");
    }
    this.written.push(frame);
    return true;
  }

  end() {
    this.ended = true;
  }

  welcome() {
    this.emit("welcome", { version: "0.0.0", pid: this.pid });
  }

  fail(kind = "failed", reason = "python3 exited with code 1 before it was ready", status = undefined) {
    this.emit("ended", { kind, reason, help: "what to do", status });
  }

  lose(reason = "socket closed") {
    this.emit("ended", { kind: "lost", reason });
  }

  frame(frame) {
    this.onFrame(frame);
  }
}

// Timers run only when the test moves the clock on, in the order they fall due.
function fakeClock() {
  let now = 0;
  let timers = [];
  return {
    now: () => now,
    setTimer(fn, ms) {
      const timer = { fn, at: now + ms };
      timers.push(timer);
      return timer;
    },
    clearTimer(timer) {
      timers = timers.filter((t) => t !== timer);
    },
    advance(ms) {
      const until = now + ms;
      for (;;) {
        const due = timers.filter((t) => t.at <= until).sort((a, b) => a.at - b.at)[0];
        if (!due) {
          break;
        }
        timers = timers.filter((t) => t !== due);
        now = due.at;
        due.fn();
      }
      now = until;
    },
    pending: () => timers.length,
  };
}

// An event a state has no transition for is logged as a bug: that fails the
// test, unless the test is about it.
function setup({ bugsFail = true, events } = {}) {
  const clock = fakeClock();
  const engines = [];
  const logs = [];
  const log = (level) => (text) => {
    logs.push([level, String(text)]);
    if (bugsFail && /cannot happen/.test(text)) {
      throw new Error(`impossible transition: ${text}`);
    }
  };
  const RED = { log: { debug: log("debug"), info: log("info"), warn: log("warn"), error: log("error") } };
  if (events) {
    RED.events = events;
  }
  const client = new DaemonClient(RED, {
    makeEngine(red, handlers) {
      const engine = new FakeEngine(red, handlers);
      engines.push(engine);
      return engine;
    },
    now: clock.now,
    setTimer: clock.setTimer,
    clearTimer: clock.clearTimer,
  });
  return { client, clock, engines, logs, engine: () => engines[engines.length - 1] };
}

function fakeNode(id) {
  return {
    id,
    wires: [[], []],
    statuses: [],
    sent: [],
    warnings: [],
    logged: [],
    status(status) {
      this.statuses.push(status);
    },
    send(msgs) {
      this.sent.push(msgs);
    },
    warn(text) {
      this.warnings.push(text);
    },
    log(text) {
      this.logged.push(["log", text]);
    },
    debug(text) {
      this.logged.push(["debug", text]);
    },
    error(text, msg) {
      this.logged.push(["error", text, msg]);
    },
  };
}

function register(client, id) {
  const node = fakeNode(id);
  client.register(node, createFrame(node, "CSMS", { id, type: "CSMS", port: "9220", outputs: 2, wires: [[], []] }));
  return node;
}

function statusText(node) {
  const last = node.statuses[node.statuses.length - 1];
  return last && last.text;
}

// Sends an input; `ended` collects [name, error message or null] as inputs end.
function inputTo(client, node, name, ended, msg = { _msgid: name, payload: { command: "Heartbeat", data: {} } }) {
  client.input(node, msg, () => {}, (err) => ended.push([name, err ? err.message : null]));
  return msg;
}

function kinds(frames) {
  return frames.map((frame) => (frame.t === "input" ? `input ${frame.msg._msgid}` : `${frame.t} ${frame.node}`));
}

test("the first register starts an engine; more registers while it starts do not start another", () => {
  const { client, engines, engine } = setup();
  assert.equal(client.state, "idle");
  const a = register(client, "a");
  assert.equal(engines.length, 1);
  assert.ok(engine().started);
  assert.equal(client.state, "starting");
  assert.equal(statusText(a), "engine starting");
  const b = register(client, "b");
  assert.equal(engines.length, 1);
  assert.equal(statusText(b), "engine starting");

  engine().installing = true;
  engine().emit("installing");
  assert.equal(statusText(a), "installing engine");
  assert.equal(statusText(b), "installing engine");
  const c = register(client, "c");
  assert.equal(statusText(c), "installing engine");
  assert.equal(engines.length, 1);
});

test("inputs before the welcome wait, as snapshots, and go out in order after the creates", () => {
  const { client, engine } = setup();
  const a = register(client, "a");
  const b = register(client, "b");
  const ended = [];
  const a1 = inputTo(client, a, "a1", ended);
  inputTo(client, b, "b1", ended);
  inputTo(client, a, "a2", ended);
  a1.payload.command = "changed after the input";
  assert.deepEqual(engine().written, []);

  engine().welcome();
  assert.equal(client.state, "ready");
  const written = engine().written;
  assert.deepEqual(kinds(written), ["create a", "create b", "input a1", "input b1", "input a2"]);
  assert.deepEqual(written.slice(2).map((frame) => frame.seq), [1, 2, 3]);
  assert.equal(written[2].msg.payload.command, "Heartbeat", "a queued input is a snapshot");
  assert.deepEqual(ended, []);

  // Ready: written at once, sharing what needs no change with msg.
  const a3 = inputTo(client, a, "a3", ended);
  const sent = written[written.length - 1];
  assert.equal(sent.msg._msgid, "a3");
  assert.equal(sent.msg.payload, a3.payload);

  engine().frame({ t: "done", node: "b", seq: 2 });
  engine().frame({ t: "done", node: "a", seq: 1, error: "CALLERROR NotSupported" });
  assert.deepEqual(ended, [["b1", null], ["a1", "CALLERROR NotSupported"]]);
  engine().frame({ t: "done", node: "a", seq: 1 });
  assert.equal(ended.length, 2, "a second done for a seq is ignored");
});

test("inputs while the engine failed end at once with done(err) naming the failure", () => {
  const { client, engine } = setup();
  const a = register(client, "a");
  const ended = [];
  inputTo(client, a, "queued", ended);
  engine().fail("failed", "python3 exited with code 1 before it was ready");
  assert.equal(client.state, "failed");
  assert.equal(statusText(a), "engine failed");
  assert.deepEqual(ended, [["queued", "OCPP engine failed to start: python3 exited with code 1 before it was ready"]]);

  inputTo(client, a, "later", ended);
  assert.deepEqual(ended[1], ["later", "OCPP engine not running: python3 exited with code 1 before it was ready"]);
  assert.deepEqual(engine().written, []);
});

test("at most 1000 inputs wait for the engine; the next one ends at once", () => {
  const { client, engine } = setup();
  const a = register(client, "a");
  const ended = [];
  for (let i = 1; i <= 1000; i++) {
    inputTo(client, a, `q${i}`, ended);
  }
  assert.deepEqual(ended, []);
  inputTo(client, a, "one too many", ended);
  assert.deepEqual(ended, [["one too many", "OCPP engine not ready: too many messages waiting"]]);
  engine().welcome();
  const inputs = engine().written.filter((frame) => frame.t === "input");
  assert.equal(inputs.length, 1000);
  assert.equal(inputs[999].msg._msgid, "q1000");
});

test("a lost engine fails its inputs, shows engine down, restarts after 1 s, 2 s, 4 s ... at most 30 s", () => {
  const { client, clock, engines, engine } = setup();
  const a = register(client, "a");
  engine().welcome();
  const ended = [];
  inputTo(client, a, "in flight 1", ended);
  inputTo(client, a, "in flight 2", ended);
  engine().lose("daemon killed by SIGKILL");
  assert.deepEqual(ended, [
    ["in flight 1", "OCPP engine stopped: daemon killed by SIGKILL"],
    ["in flight 2", "OCPP engine stopped: daemon killed by SIGKILL"],
  ]);
  assert.equal(statusText(a), "engine down");
  assert.equal(client.state, "waiting");

  for (const delay of [1000, 2000, 4000, 8000, 16000, 30000, 30000]) {
    const before = engines.length;
    clock.advance(delay - 1);
    assert.equal(engines.length, before, `no restart before ${delay} ms`);
    clock.advance(1);
    assert.equal(engines.length, before + 1, `a restart after ${delay} ms`);
    assert.equal(statusText(a), "engine starting");
    engine().welcome();
    clock.advance(1000); // a short life
    engine().lose();
  }
});

test("an engine that lived 30 s resets the back-off to 1 s; one that lived less does not", () => {
  const { client, clock, engines, engine } = setup();
  register(client, "a");
  engine().welcome();
  engine().lose();
  clock.advance(1000);
  assert.equal(engines.length, 2);
  engine().welcome();
  clock.advance(29999);
  engine().lose();
  clock.advance(1999);
  assert.equal(engines.length, 2, "29.999 s was not long enough: 2 s back-off");
  clock.advance(1);
  assert.equal(engines.length, 3);
  engine().welcome();
  clock.advance(30000);
  engine().lose();
  clock.advance(999);
  assert.equal(engines.length, 3);
  clock.advance(1);
  assert.equal(engines.length, 4, "after 30 s of life the back-off starts at 1 s again");
  assert.equal(client.state, "starting");
});

test("a failed start is tried again with the back-off; only the first of a streak is an error", () => {
  const { client, clock, engines, engine, logs } = setup();
  const a = register(client, "a");
  engine().fail("failed", "no handshake answer from the daemon");
  assert.equal(logs.filter(([level]) => level === "error").length, 1);
  clock.advance(999);
  assert.equal(engines.length, 1);
  clock.advance(1);
  assert.equal(engines.length, 2);
  assert.equal(statusText(a), "engine starting");
  engine().fail("failed", "no handshake answer from the daemon");
  assert.equal(logs.filter(([level]) => level === "error").length, 1);
  assert.match(logs[logs.length - 1][1], /failed to start again/);
  clock.advance(1999);
  assert.equal(engines.length, 2);
  clock.advance(1);
  assert.equal(engines.length, 3);
  engine().welcome();
  const ended = [];
  inputTo(client, a, "after", ended);
  assert.deepEqual(ended, [], "the welcome ends the failure");
});

for (const [kind, status, shown] of [
  ["no-python", undefined, "no python"],
  ["install", "engine install failed", "engine install failed"],
]) {
  test(`a ${kind} failure is not tried again by itself; the next register tries again`, () => {
    const { client, clock, engines, engine, logs } = setup();
    const a = register(client, "a");
    engine().fail(kind, "pip could not install the wheel", status);
    assert.equal(client.state, "failed");
    assert.equal(statusText(a), shown);
    assert.ok(logs.some(([level, text]) => level === "error" && /what to do/.test(text)), "the log says what to do");
    assert.equal(clock.pending(), 0, "no restart timer");
    clock.advance(10 * 60 * 1000);
    assert.equal(engines.length, 1);
    const ended = [];
    inputTo(client, a, "meanwhile", ended);
    assert.deepEqual(ended, [["meanwhile", "OCPP engine not running: pip could not install the wheel"]]);

    register(client, "b"); // a deploy
    assert.equal(engines.length, 2);
    assert.equal(client.state, "starting");
    assert.equal(statusText(a), "engine starting");
  });
}

test("deregister while the engine is not ready finishes at once and drops the node's queued inputs", () => {
  const { client, engine } = setup();
  const a = register(client, "a");
  const b = register(client, "b");
  const ended = [];
  inputTo(client, a, "a1", ended);
  inputTo(client, b, "b1", ended);
  let closed = false;
  client.deregister(a, () => {
    closed = true;
  });
  assert.ok(closed);
  assert.deepEqual(ended, [["a1", "node closed"]]);
  engine().welcome();
  assert.deepEqual(kinds(engine().written), ["create b", "input b1"]);
});

test("deregister while ready sends close and finishes at closed, or after 5 s", () => {
  const { client, clock, engine } = setup();
  const a = register(client, "a");
  const b = register(client, "b");
  engine().welcome();
  const ended = [];
  inputTo(client, a, "a1", ended);
  let aClosed = false;
  client.deregister(a, () => {
    aClosed = true;
  });
  assert.equal(aClosed, false);
  assert.deepEqual(kinds(engine().written.slice(-1)), ["close a"]);
  assert.deepEqual(ended, []);
  engine().frame({ t: "closed", node: "a" });
  assert.ok(aClosed);
  assert.deepEqual(ended, [["a1", "node closed"]]);

  let bClosed = false;
  client.deregister(b, () => {
    bClosed = true;
  });
  clock.advance(4999);
  assert.equal(bClosed, false);
  clock.advance(1);
  assert.ok(bClosed);
  assert.match(b.warnings[0], /did not confirm close within 5 s/);
});

test("deregister tells the engine whether the node was removed or is being redeployed", () => {
  const { client, engine } = setup();
  const a = register(client, "a");
  const b = register(client, "b");
  const c = register(client, "c");
  engine().welcome();
  client.deregister(a, () => {}, false);
  client.deregister(b, () => {}, true);
  client.deregister(c, () => {});
  const closes = engine().written.filter((frame) => frame.t === "close");
  assert.deepEqual(
    closes.map((frame) => [frame.node, frame.removed]),
    [["a", false], ["b", true], ["c", true]],
  );
});

test("a close while the flows just stop (not a redeploy) removes the node", () => {
  const EventEmitter = require("node:events");
  const events = new EventEmitter();
  const { client, engine } = setup({ events });
  const a = register(client, "a");
  const b = register(client, "b");
  engine().welcome();
  const running = { flows: [], rev: "1" };
  events.emit("flows:started", { config: running });
  events.emit("flows:stopping", { config: running }); // stopped, the same flows
  client.deregister(a, () => {}, false);
  events.emit("flows:started", { config: running });
  events.emit("flows:stopping", { config: { flows: [], rev: "1" } }); // a deploy swaps it
  client.deregister(b, () => {}, false);
  const closes = engine().written.filter((frame) => frame.t === "close");
  assert.deepEqual(closes.map((frame) => [frame.node, frame.removed]), [["a", true], ["b", false]]);
});

test("an engine lost while a node waits for closed finishes that close", () => {
  const { client, engine } = setup();
  const a = register(client, "a");
  engine().welcome();
  let closed = false;
  client.deregister(a, () => {
    closed = true;
  });
  engine().lose();
  assert.ok(closed);
});

test("shutdown ends the engine and everything waiting, and nothing starts after", () => {
  const { client, clock, engines, engine } = setup();
  const a = register(client, "a");
  engine().welcome();
  const ended = [];
  inputTo(client, a, "in flight", ended);
  client.shutdown();
  assert.ok(engine().ended);
  assert.equal(client.state, "stopped");
  assert.deepEqual(ended, [["in flight", "OCPP engine shut down"]]);
  engine().lose(); // an engine that reports its end anyway is not listened to
  clock.advance(60000);
  register(client, "b");
  inputTo(client, a, "after", ended);
  assert.equal(engines.length, 1);
  assert.deepEqual(ended[1], ["after", "OCPP engine not running: stopped"]);
});

test("shutdown while a restart is scheduled cancels it and ends the queued inputs", () => {
  const { client, clock, engines, engine } = setup();
  const a = register(client, "a");
  engine().welcome();
  engine().lose();
  const ended = [];
  inputTo(client, a, "queued", ended);
  assert.deepEqual(ended, [], "a lost engine is coming back: inputs wait for it");
  client.shutdown();
  assert.deepEqual(ended, [["queued", "OCPP engine shut down"]]);
  clock.advance(60000);
  assert.equal(engines.length, 1);
});

test("after a restart every node is created again, those registered meanwhile too", () => {
  const { client, clock, engine } = setup();
  const a = register(client, "a");
  register(client, "b");
  engine().welcome();
  const firstCreates = engine().written.filter((frame) => frame.t === "create");
  engine().lose();
  const c = register(client, "c");
  assert.equal(statusText(c), "engine down");
  clock.advance(1000);
  const ended = [];
  inputTo(client, a, "a1", ended);
  engine().welcome();
  assert.deepEqual(kinds(engine().written), ["create a", "create b", "create c", "input a1"]);
  assert.deepEqual(engine().written.slice(0, 2), firstCreates);
});

test("with no node left, no restart is scheduled; the next register starts an engine at once", () => {
  const { client, clock, engines, engine } = setup();
  const a = register(client, "a");
  engine().welcome();
  client.deregister(a, () => {});
  engine().frame({ t: "closed", node: "a" });
  engine().lose();
  assert.equal(client.state, "idle");
  assert.equal(clock.pending(), 0);
  clock.advance(60000);
  assert.equal(engines.length, 1);
  register(client, "b");
  assert.equal(engines.length, 2);
});

test("a restart that falls due when every node has gone starts nothing, and the next register does", () => {
  const { client, clock, engines, engine } = setup();
  const a = register(client, "a");
  engine().welcome();
  engine().lose();
  client.deregister(a, () => {});
  clock.advance(1000);
  assert.equal(engines.length, 1);
  assert.equal(client.state, "idle");
  register(client, "b");
  assert.equal(engines.length, 2);
});

test("the engine's frames reach the nodes: send on its port, status, log", () => {
  const { client, engine, logs } = setup();
  const a = register(client, "a");
  engine().welcome();
  engine().frame({ t: "send", node: "a", port: 1, msg: { payload: 1 } });
  assert.deepEqual(a.sent, [[null, { payload: 1 }]]);
  engine().frame({ t: "status", node: "a", fill: "green", shape: "dot", text: "listening", extra: 1 });
  assert.deepEqual(a.statuses[a.statuses.length - 1], { fill: "green", shape: "dot", text: "listening" });
  engine().frame({ t: "log", node: "a", level: "error", text: "bad request", msg: { _msgid: "m" } });
  assert.deepEqual(a.logged, [["error", "bad request", { _msgid: "m" }]]);
  engine().frame({ t: "log", level: "warn", text: "runtime line" });
  engine().frame({ t: "wat", node: "a" });
  assert.ok(logs.some(([level, text]) => level === "warn" && text === "[ocpp-nodes] runtime line"));
  assert.ok(logs.some(([level, text]) => level === "warn" && /unknown frame type wat/.test(text)));
});

test("an input that cannot be encoded ends alone with done(err)", () => {
  const { client, engine } = setup();
  const a = register(client, "a");
  engine().welcome();
  engine().unencodable = (frame) => frame.t === "input" && frame.seq === 2;
  const ended = [];
  inputTo(client, a, "m1", ended);
  inputTo(client, a, "m2", ended);
  inputTo(client, a, "m3", ended);
  assert.deepEqual(ended, [["m2", "cannot pass message to the OCPP engine: frame too big"]]);
  assert.equal(client.pending.size, 2);
});

test("TRANSITIONS is frozen and complete; an event a state has none for is logged and ignored", () => {
  const states = Object.keys(TRANSITIONS);
  assert.deepEqual(states.sort(), ["failed", "idle", "ready", "starting", "stopped", "waiting"]);
  assert.ok(Object.isFrozen(TRANSITIONS));
  for (const state of states) {
    assert.ok(Object.isFrozen(TRANSITIONS[state]), state);
    for (const event of ["register", "input", "shutdown"]) {
      assert.ok(TRANSITIONS[state][event], `${event} can happen in ${state}`);
    }
    for (const next of Object.values(TRANSITIONS[state])) {
      assert.ok(states.includes(next), `${state} leads to a state: ${next}`);
    }
  }

  const { client, engine, logs } = setup({ bugsFail: false });
  register(client, "a");
  engine().welcome();
  engine().welcome(); // a second welcome from a confused engine
  assert.equal(client.state, "ready");
  assert.ok(logs.some(([level, text]) => level === "error" && /welcome cannot happen while ready/.test(text)));
});

test("the events of an engine that has been replaced are ignored", () => {
  const { client, clock, engines } = setup();
  register(client, "a");
  engines[0].fail();
  clock.advance(1000);
  assert.equal(engines.length, 2);
  engines[0].welcome();
  engines[0].lose();
  assert.equal(client.state, "starting");
  engines[1].welcome();
  assert.equal(client.state, "ready");
});

test("input frames carry hop_t0 only when OCPP_NODES_HOP_TRACE is set", () => {
  // HOP_TRACE is read when the module loads: one fresh process per setting.
  const script = `
    const { DaemonClient } = require(${JSON.stringify(path.join(root, "js_shim/lib/daemon-client"))});
    const EventEmitter = require("node:events");
    const engine = Object.assign(new EventEmitter(), { written: [], start() {}, end() {},
      write(frame) { this.written.push(frame); } });
    const client = new DaemonClient({ log: { info() {} } }, { makeEngine: () => engine });
    const node = { id: "a", wires: [[]], status() {} };
    client.register(node, { t: "create", node: "a", config: {} });
    engine.emit("welcome", { version: "0", pid: 1 });
    client.input(node, { payload: 1 }, () => {}, () => {});
    const input = engine.written.find((frame) => frame.t === "input");
    process.stdout.write(typeof input.hop_t0);
  `;
  const env = { ...process.env };
  delete env.OCPP_NODES_HOP_TRACE;
  assert.equal(execFileSync(process.execPath, ["-e", script], { env, encoding: "utf8" }), "undefined");
  env.OCPP_NODES_HOP_TRACE = path.join(root, "no-such-dir", "hops");
  assert.equal(execFileSync(process.execPath, ["-e", script], { env, encoding: "utf8" }), "number");
});

test("with ocppNodes.metrics one input in 64 carries hop_t0, and each engine knows the restarts before it", () => {
  const RED = {
    log: { debug() {}, info() {}, warn() {}, error() {} },
    settings: { ocppNodes: { metrics: { port: 9464 } } },
  };
  const made = [];
  const clock = fakeClock();
  const client = new DaemonClient(RED, {
    makeEngine(red, handlers) {
      made.push(handlers.restarts);
      const engine = new FakeEngine(red, handlers);
      made.engine = engine;
      return engine;
    },
    now: clock.now,
    setTimer: clock.setTimer,
    clearTimer: clock.clearTimer,
  });
  const node = register(client, "m");
  made.engine.welcome();
  const ended = [];
  for (let i = 0; i < 128; i++) {
    inputTo(client, node, `i${i}`, ended);
  }
  const stamped = made.engine.written.filter((frame) => frame.t === "input" && frame.hop_t0 !== undefined);
  assert.equal(stamped.length, 2);
  assert.ok(stamped.every((frame) => Number.isInteger(frame.hop_t0) && frame.hop_t0 > 0));
  made.engine.lose();
  clock.advance(1000);
  made.engine.welcome();
  made.engine.lose();
  clock.advance(2000);
  assert.deepEqual(made.slice(0, 3), [0, 1, 2]);
});

test("metricsSettings: absent is off; a bad port or host is an error and off; host defaults to loopback", () => {
  const { metricsSettings } = require(path.join(root, "js_shim/lib/engine"));
  const errors = [];
  const red = (metrics) => ({ log: { error: (text) => errors.push(text) }, settings: { ocppNodes: { metrics } } });
  assert.equal(metricsSettings({ log: {}, settings: {} }), null);
  assert.equal(metricsSettings(red(undefined)), null);
  assert.deepEqual(metricsSettings(red({ port: "9464" })), { host: "127.0.0.1", port: 9464, stationLabels: false });
  assert.deepEqual(metricsSettings(red({ port: 9, host: "0.0.0.0", stationLabels: true })),
    { host: "0.0.0.0", port: 9, stationLabels: true });
  assert.equal(errors.length, 0);
  assert.equal(metricsSettings(red({ port: 70000 })), null);
  assert.equal(metricsSettings(red({ port: 9464, host: "a b; rm -rf" })), null);
  assert.equal(errors.length, 2);
  assert.match(errors[0], /not a TCP port number/);
});
