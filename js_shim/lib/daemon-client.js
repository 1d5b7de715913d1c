"use strict";
// The daemon client: one per Node-RED runtime, shared by every CS and CSMS
// node as Node-RED's MQTT broker node is shared by its mqtt in and out nodes
// (docs/architecture.md). It keeps the nodes registered with it, the inputs
// waiting for an engine and those waiting for their `done`, applies the
// engine's frames to the nodes (send, status, done, log, closed), and decides
// when to have an engine. engine.js has one (spawn or connect, handshake);
// wire-msg.js says what of a message crosses. No OCPP knowledge lives here.
//
// Theory of operation:
// 1. The client is in one of the states of TRANSITIONS and moves only as that
//    table says; an event its state has no entry for is a bug, logged and
//    ignored. Moving into "starting" from another state starts an engine.
// 2. The first register (or an input while idle) starts an engine. Inputs
//    that come before its welcome wait in a queue as snapshots, at most
//    MAX_QUEUED_INPUTS of them; at the welcome every node is created, then
//    the queue is sent in order.
// 3. While ready, an input costs one wireMsg (no copy), one pending.add and
//    one encoded write: no closure, event or Map operation per message, on
//    the way in or at its `done` (pending.js says why).
// 4. When an engine ends, every input waiting on it ends with done(err). One
//    that failed to start is tried again after the back-off (1 s, doubling
//    up to 30 s), unless Python is missing or could not be installed: then
//    only the next register (a deploy) tries again. One lost after its
//    welcome shows "engine down" and is restarted after the back-off, which
//    starts from 1 s again when that engine had lived 30 s.
// 5. With no node registered, no restart is scheduled: the next register
//    starts an engine.

const { PendingInputs } = require("./pending");
const { Engine, metricsSettings, remoteDaemon } = require("./engine");
const { createFrame, wireMsg } = require("./wire-msg");

const CLOSE_TIMEOUT_MS = 5000;
const BACKOFF_FIRST_MS = 1000;
const BACKOFF_MAX_MS = 30000;
// An engine that stayed up this long was healthy: its next loss starts the
// back-off from the beginning again.
const STABLE_AFTER_MS = 30000;
// Inputs waiting for the engine to come up; beyond this they fail at once
// rather than pile up in memory while Python is slow or broken.
const MAX_QUEUED_INPUTS = 1000;
// Set by the benchmark (bench/run.py, docs/benchmarks.md): input frames then
// carry the monotonic clock at which the message entered the shim, and the
// daemon (same clock, same host) writes how long each took to reach the wire.
const HOP_TRACE = Boolean(process.env.OCPP_NODES_HOP_TRACE);
// With the engine's metrics on (and the engine on this host: same monotonic
// clock), one input in HOP_SAMPLE carries the same stamp, for the engine's
// ocpp_nodes_shim_hop_seconds (docs/operations.md). A power of two minus one.
const HOP_SAMPLE_MASK = 63;

const STATUS_STARTING = { fill: "yellow", shape: "ring", text: "engine starting" };
const STATUS_INSTALLING = { fill: "yellow", shape: "ring", text: "installing engine" };
const STATUS_DOWN = { fill: "red", shape: "ring", text: "engine down" };
const STATUS_NO_PYTHON = { fill: "red", shape: "ring", text: "no python" };
const STATUS_FAILED = { fill: "red", shape: "ring", text: "engine failed" };

// TRANSITIONS[state][event] is the state an event leads to; no entry: the
// event cannot happen in that state.
//
// States: idle (no engine, none needed yet), starting (an engine is on its
// way), ready (its welcome came), waiting (it was lost; a restart is
// scheduled), failed (it could not start; a restart is scheduled unless that
// is hopeless), stopped (shut down for good).
//
// Events: register (a node starts), input (see INPUTS), welcome (the
// engine's handshake is done), failed (the engine ended before its welcome),
// hopeless (the same, because Python is missing or could not be installed),
// lost (the engine ended after its welcome), timer (the restart is due),
// unneeded (a restart would be due but no node is registered), shutdown.
// deregister changes no state: it waits for `closed` only while ready.
//
//            register  input     welcome  failed  hopeless  lost     timer     unneeded  shutdown
// idle       starting  starting                                                          stopped
// starting   starting  starting  ready    failed  failed                                 stopped
// ready      ready     ready                                waiting                      stopped
// waiting    waiting   waiting                                       starting  idle      stopped
// failed     starting  failed                                        starting  idle      stopped
// stopped    stopped   stopped                                                           stopped
const TRANSITIONS = Object.freeze({
  idle: Object.freeze({ register: "starting", input: "starting", shutdown: "stopped" }),
  starting: Object.freeze({
    register: "starting", input: "starting", welcome: "ready", failed: "failed", hopeless: "failed",
    shutdown: "stopped",
  }),
  ready: Object.freeze({ register: "ready", input: "ready", lost: "waiting", shutdown: "stopped" }),
  waiting: Object.freeze({
    register: "waiting", input: "waiting", timer: "starting", unneeded: "idle", shutdown: "stopped",
  }),
  failed: Object.freeze({
    register: "starting", input: "failed", timer: "starting", unneeded: "idle", shutdown: "stopped",
  }),
  stopped: Object.freeze({ register: "stopped", input: "stopped", shutdown: "stopped" }),
});

// What an input does in each state: sent at once, queued until the welcome,
// or refused with done(err) because no engine is on its way.
const INPUTS = Object.freeze({
  idle: "queue", starting: "queue", ready: "send", waiting: "queue", failed: "refuse", stopped: "refuse",
});

function setUnrefTimeout(fn, ms) {
  const timer = setTimeout(fn, ms);
  // Neither a restart nor a close must keep Node-RED (or a test run) alive.
  timer.unref();
  return timer;
}

class DaemonClient {
  /**
   * @param {object} RED the Node-RED runtime API (log, settings)
   * @param {object} [options] what tests replace
   * @param {(RED: object, handlers: {onFrame: Function}) => Engine} [options.makeEngine]
   *   makes one engine (engine.js's Engine, not yet started)
   * @param {() => number} [options.now] milliseconds, for how long an engine lived
   * @param {(fn: Function, ms: number) => any} [options.setTimer] the restart and close timers
   * @param {(timer: any) => void} [options.clearTimer]
   */
  constructor(RED, {
    makeEngine = (red, handlers) => new Engine(red, handlers),
    now = Date.now,
    setTimer = setUnrefTimeout,
    clearTimer = clearTimeout,
  } = {}) {
    this.RED = RED;
    this.makeEngine = makeEngine;
    this.now = now;
    this.setTimer = setTimer;
    this.clearTimer = clearTimer;
    this.state = "idle"; // see TRANSITIONS
    this.nodes = new Map(); // node id -> { node, createFrame, outputs }
    this.pending = new PendingInputs(); // seq -> { nodeId, done }
    this.queue = []; // input frames waiting for the welcome
    this.closeWaiters = new Map(); // node id -> [finish()]
    this.seq = 0;
    this.backoffMs = BACKOFF_FIRST_MS;
    this.restartTimer = null;
    this.engine = null; // the current engine, from startEngine() until it ends
    this.readyAt = 0; // now() at its welcome
    this.lastFailure = "";
    this.restarts = 0; // engines lost after their welcome and started again
    this.hopSampled = 0; // inputs counted for the hop-time sample
    // Stamp a sample of inputs for the engine's hop-time metric.
    this.sampleHops = !HOP_TRACE && Boolean(metricsSettings(RED)) && !remoteDaemon(RED);
    // A close with removed false is a redeploy only when the flows stopping
    // are not those that started: for a deploy, Node-RED swaps in the new
    // config before it stops the old flows; a plain stop (flows stopped from
    // the editor, the runtime stopping) keeps it. Only a redeploy lets the
    // engine keep a node's stations for the node that replaces it.
    this.startedConfig = undefined;
    this.redeploying = true;
    if (RED.events && typeof RED.events.on === "function") {
      RED.events.on("flows:started", (event) => {
        this.startedConfig = event && event.config;
      });
      RED.events.on("flows:stopping", (event) => {
        this.redeploying = !event || event.config !== this.startedConfig;
      });
    }
    // Made once: the engine calls it for every frame.
    this.onFrame = (frame) => this.dispatch(frame);
    this.onRestartDue = () => {
      this.restartTimer = null;
      this.move(this.nodes.size ? "timer" : "unneeded");
    };
  }

  // ---- API for node files -------------------------------------------------

  /** Start (or re-create) a node in the engine. createFrame is the full `create` frame. */
  register(node, createFrame) {
    const outputs = Number(createFrame.config && createFrame.config.outputs) || node.wires.length;
    this.nodes.set(node.id, { node, createFrame, outputs });
    const from = this.state;
    // From idle or failed this starts an engine: a deploy is the user's way to
    // say "try again" after a fix.
    if (this.move("register") === null) {
      return;
    }
    if (this.state === "ready") {
      this.write(createFrame);
    } else if (this.state === "starting" && from === "starting") {
      node.status(this.engine && this.engine.installing ? STATUS_INSTALLING : STATUS_STARTING);
    } else if (this.state === "waiting") {
      node.status(STATUS_DOWN);
    }
  }

  /**
   * Stop a node; done() once the engine released its ports (or after a timeout).
   * With `removed` false during a redeploy (not when the flows just stop), the
   * engine keeps its server or connection a while for the node created next
   * with the same id (docs/reliability.md, "Redeploys"); absent means removed.
   */
  deregister(node, done, removed = true) {
    const finished = () => {
      this.failPendingOf(node.id, "node closed");
      done();
    };
    this.nodes.delete(node.id);
    if (this.state !== "ready") {
      // Nothing runs for it in the engine; a restart will not re-create it.
      finished();
      return;
    }
    let called = false;
    const finishOnce = () => {
      if (called) {
        return;
      }
      called = true;
      this.clearTimer(timer);
      const waiters = this.closeWaiters.get(node.id) || [];
      const rest = waiters.filter((w) => w !== finishOnce);
      if (rest.length) {
        this.closeWaiters.set(node.id, rest);
      } else {
        this.closeWaiters.delete(node.id);
      }
      finished();
    };
    const timer = this.setTimer(() => {
      node.warn(`OCPP engine did not confirm close within ${CLOSE_TIMEOUT_MS / 1000} s`);
      finishOnce();
    }, CLOSE_TIMEOUT_MS);
    const waiters = this.closeWaiters.get(node.id) || [];
    waiters.push(finishOnce);
    this.closeWaiters.set(node.id, waiters);
    this.write({ t: "close", node: node.id, removed: removed !== false || !this.redeploying });
  }

  /** Forward an input message; `done` is called when the engine answers with `done`. */
  input(node, msg, send, done) {
    const entered = HOP_TRACE || (this.sampleHops && (++this.hopSampled & HOP_SAMPLE_MASK) === 0)
      ? Number(process.hrtime.bigint()) : 0;
    // Replies come later as `send` frames naming only node and port, so they
    // go out through node.send; the per-input send() is not needed.
    const ready = this.state === "ready"; // INPUTS.ready, without a lookup
    if (!ready && INPUTS[this.state] === "refuse") {
      done(new Error(`OCPP engine not running: ${this.lastFailure || this.state}`));
      return;
    }
    let wire;
    try {
      // encoded at once when ready; a queued frame must not change with msg
      wire = wireMsg(msg, !ready);
    } catch (err) {
      done(new Error(`cannot pass message to the OCPP engine: ${err.message}`));
      return;
    }
    const seq = ++this.seq;
    const frame = { t: "input", node: node.id, seq, msg: wire };
    if (entered) {
      frame.hop_t0 = entered;
    }
    if (ready) {
      this.pending.add(seq, { nodeId: node.id, done });
      this.write(frame);
      return;
    }
    if (this.queue.length >= MAX_QUEUED_INPUTS) {
      done(new Error("OCPP engine not ready: too many messages waiting"));
      return;
    }
    this.pending.add(seq, { nodeId: node.id, done });
    this.queue.push(frame);
    // After the queueing: from idle this starts an engine, which may fail at
    // once and must then fail this input too.
    this.move("input");
  }

  /** End the engine for good (Node-RED stopping, or a test finishing). */
  shutdown() {
    if (this.move("shutdown") === null) {
      return;
    }
    this.clearRestartTimer();
    const engine = this.engine;
    this.engine = null;
    if (engine) {
      engine.end();
    }
    this.failWaiting("OCPP engine shut down");
  }

  // ---- states -------------------------------------------------------------

  /**
   * Take the transition of `event` from the current state.
   *
   * @returns {string|null} the new state, or null (logged) when TRANSITIONS
   *   has none: the caller then does nothing
   */
  move(event) {
    const from = this.state;
    const next = TRANSITIONS[from][event];
    if (next === undefined) {
      this.RED.log.error(`[ocpp-nodes] daemon client: ${event} cannot happen while ${from} (ignored)`);
      return null;
    }
    this.state = next;
    if (next === "starting" && from !== "starting") {
      this.startEngine();
    }
    return next;
  }

  startEngine() {
    this.clearRestartTimer();
    for (const { node } of this.nodes.values()) {
      node.status(STATUS_STARTING);
    }
    const engine = this.makeEngine(this.RED, { onFrame: this.onFrame, restarts: this.restarts });
    this.engine = engine;
    engine.on("installing", () => {
      if (this.engine === engine) {
        for (const { node } of this.nodes.values()) {
          node.status(STATUS_INSTALLING);
        }
      }
    });
    engine.on("welcome", (info) => {
      if (this.engine === engine) {
        this.onWelcome(info);
      }
    });
    engine.on("ended", (how) => {
      if (this.engine === engine) {
        this.engine = null;
        if (how.kind === "lost") {
          this.onLost(how.reason);
        } else {
          this.onFailed(how);
        }
      }
    });
    engine.start();
  }

  onWelcome({ version, pid }) {
    if (this.move("welcome") === null) {
      return;
    }
    this.readyAt = this.now();
    this.lastFailure = "";
    this.RED.log.info(`[ocpp-nodes] engine ${version} ready (pid ${pid})`);
    for (const { createFrame } of this.nodes.values()) {
      this.write(createFrame);
    }
    const queued = this.queue;
    this.queue = [];
    for (const inputFrame of queued) {
      this.write(inputFrame);
    }
  }

  /** The engine never got to its welcome. */
  onFailed({ kind, reason, help, status }) {
    const hopeless = kind === "no-python" || kind === "install";
    if (this.move(hopeless ? "hopeless" : "failed") === null) {
      return;
    }
    const firstInStreak = this.lastFailure === "";
    this.lastFailure = reason;
    this.failWaiting(`OCPP engine failed to start: ${reason}`);
    const shown = status ? { fill: "red", shape: "ring", text: status }
      : kind === "no-python" ? STATUS_NO_PYTHON : STATUS_FAILED;
    for (const { node } of this.nodes.values()) {
      node.status(shown);
    }
    if (hopeless) {
      // Retrying cannot make a missing interpreter (or a failed install) right;
      // the next deploy or restart tries again.
      this.RED.log.error(`[ocpp-nodes] cannot start the OCPP engine: ${reason}. ${help}`);
      return;
    }
    if (firstInStreak) {
      this.RED.log.error(`[ocpp-nodes] the OCPP engine failed to start: ${reason}\n${help}`);
    } else {
      this.RED.log.warn(`[ocpp-nodes] the OCPP engine failed to start again: ${reason}`);
    }
    this.scheduleRestart();
  }

  /** A welcomed engine went away. */
  onLost(reason) {
    if (this.move("lost") === null) {
      return;
    }
    this.failWaiting(`OCPP engine stopped: ${reason}`);
    this.restarts++;
    if (this.now() - this.readyAt >= STABLE_AFTER_MS) {
      this.backoffMs = BACKOFF_FIRST_MS;
    }
    this.RED.log.warn(`[ocpp-nodes] OCPP engine stopped (${reason}); restarting`);
    for (const { node } of this.nodes.values()) {
      node.status(STATUS_DOWN);
    }
    this.scheduleRestart();
  }

  scheduleRestart() {
    this.clearRestartTimer();
    if (this.nodes.size === 0) {
      // Nobody needs an engine now; the next register() starts one.
      this.move("unneeded");
      return;
    }
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
    this.restartTimer = this.setTimer(this.onRestartDue, delay);
  }

  clearRestartTimer() {
    if (this.restartTimer) {
      this.clearTimer(this.restartTimer);
      this.restartTimer = null;
    }
  }

  /** The engine is gone: everything waiting on it ends, inputs with `error`. */
  failWaiting(error) {
    this.queue = [];
    for (const { done } of this.pending.takeWhere()) {
      done(new Error(error));
    }
    for (const finish of [...this.closeWaiters.values()].flat()) {
      finish();
    }
  }

  failPendingOf(nodeId, reason) {
    for (const { done } of this.pending.takeWhere((pending) => pending.nodeId === nodeId)) {
      done(new Error(reason));
    }
    this.queue = this.queue.filter((frame) => frame.node !== nodeId);
  }

  // ---- frames -------------------------------------------------------------

  dispatch(frame) {
    switch (frame.t) {
      case "send":
        this.onSend(frame);
        break;
      case "status":
        this.onStatus(frame);
        break;
      case "done":
        this.onDone(frame);
        break;
      case "log":
        this.onLog(frame);
        break;
      case "closed":
        this.onClosed(frame);
        break;
      default:
        this.RED.log.warn(`[ocpp-nodes] ignoring unknown frame type ${String(frame.t)}`);
    }
  }

  onSend(frame) {
    const entry = this.nodes.get(frame.node);
    if (!entry || !Number.isInteger(frame.port) || frame.port < 0) {
      return;
    }
    const out = new Array(Math.max(entry.outputs, frame.port + 1)).fill(null);
    out[frame.port] = frame.msg;
    entry.node.send(out);
  }

  onStatus(frame) {
    const entry = this.nodes.get(frame.node);
    if (!entry) {
      return;
    }
    const status = {};
    for (const key of ["fill", "shape", "text"]) {
      if (frame[key] !== undefined && frame[key] !== null) {
        status[key] = frame[key];
      }
    }
    entry.node.status(status);
  }

  onDone(frame) {
    const pending = this.pending.take(frame.seq);
    if (!pending) {
      return;
    }
    if (frame.error) {
      pending.done(new Error(frame.error));
    } else {
      pending.done();
    }
  }

  onLog(frame) {
    const entry = frame.node ? this.nodes.get(frame.node) : null;
    const text = String(frame.text);
    if (!entry) {
      const level = { debug: "debug", info: "info", warn: "warn", error: "error" }[frame.level];
      this.RED.log[level || "info"](`[ocpp-nodes] ${text}`);
      return;
    }
    const node = entry.node;
    switch (frame.level) {
      case "debug":
        node.debug(text);
        break;
      case "warn":
        node.warn(text);
        break;
      case "error":
        // With a msg, node.error reaches Catch nodes.
        if (frame.msg) {
          node.error(text, frame.msg);
        } else {
          node.error(text);
        }
        break;
      default:
        node.log(text);
    }
  }

  onClosed(frame) {
    const waiters = this.closeWaiters.get(frame.node);
    if (waiters && waiters.length) {
      waiters[0]();
    }
  }

  write(frame) {
    try {
      this.engine.write(frame);
    } catch (err) {
      // A message too big (or not encodable) fails that input alone.
      if (frame.t === "input") {
        const pending = this.pending.take(frame.seq);
        if (pending) {
          pending.done(new Error(`cannot pass message to the OCPP engine: ${err.message}`));
        }
        return;
      }
      this.RED.log.error(`[ocpp-nodes] cannot encode ${frame.t} frame: ${err.message}`);
    }
  }
}

// One client per runtime. Node-RED hands each node module its own RED object,
// but they share RED.events, so that is the key.
const clients = new Map();

function getClient(RED) {
  const key = RED.events || RED;
  let client = clients.get(key);
  if (!client) {
    client = new DaemonClient(RED);
    clients.set(key, client);
  }
  return client;
}

/** Process ids of the engines running now that this runtime started (diagnostics and tests). */
function daemonPids() {
  const pids = [];
  for (const client of clients.values()) {
    const pid = client.state === "ready" && client.engine.pid;
    if (pid) {
      pids.push(pid);
    }
  }
  return pids;
}

/** Stop every engine; a later getClient() starts afresh. */
function shutdownAll() {
  for (const client of clients.values()) {
    client.shutdown();
  }
  clients.clear();
}

// Node-RED stopping: the daemon also sees stdin close, but killing it here
// makes the exit prompt even if the pipe lingers.
process.once("exit", shutdownAll);

module.exports = { getClient, shutdownAll, daemonPids, DaemonClient, TRANSITIONS, createFrame, wireMsg };
