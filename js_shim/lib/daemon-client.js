"use strict";
// The one connection between a Node-RED runtime and its ocpp-nodes daemon
// (docs/architecture.md): spawns `python -m ocpp_nodes serve`, does the
// hello/welcome handshake over a private Unix socket, forwards node
// create/close/input frames, applies what comes back (send, status, done,
// log, closed), and restarts the daemon with back-off when it goes away.
// No OCPP knowledge lives here.

const { spawn } = require("node:child_process");
const crypto = require("node:crypto");
const fs = require("node:fs");
const net = require("node:net");
const tls = require("node:tls");
const os = require("node:os");
const path = require("node:path");
const readline = require("node:readline");

const { FrameDecoder, encodeFrame } = require("./framing");
const { PendingInputs } = require("./pending");
const { ensurePython, ProvisionError } = require("./provision");

const PROTOCOL = 1;
const READY_TIMEOUT_MS = 30000;
const HANDSHAKE_TIMEOUT_MS = 10000;
const CLOSE_TIMEOUT_MS = 5000;
const BACKOFF_FIRST_MS = 1000;
const BACKOFF_MAX_MS = 30000;
// A daemon that stayed up this long was healthy: its next death starts the
// back-off from the beginning again.
const STABLE_AFTER_MS = 30000;
// Inputs waiting for the engine to come up; beyond this they fail at once
// rather than pile up in memory while Python is slow or broken.
const MAX_QUEUED_INPUTS = 1000;
const STDERR_TAIL_LINES = 20;
// Only these message properties are read or given back by the engine; the
// rest (an http request object, for instance) stays in Node-RED.
const MSG_FIELDS = ["_msgid", "payload", "topic", "ocpp", "customData", "_linkSource"];
// Set by the benchmark (bench/run.py, docs/benchmarks.md): input frames then
// carry the monotonic clock at which the message entered the shim, and the
// daemon (same clock, same host) writes how long each took to reach the wire.
const HOP_TRACE = Boolean(process.env.OCPP_NODES_HOP_TRACE);

const HELP_PYTHON =
  "Set ocppNodes: { python: '/path/to/python' } in settings.js, or the environment " +
  "variable OCPP_NODES_PYTHON, to a Python (>= 3.10) that can `import ocpp_nodes`, " +
  "or remove both so that ocpp-nodes installs its own engine (needs python3 with " +
  "venv), then restart Node-RED.";

const STATUS_STARTING = { fill: "yellow", shape: "ring", text: "engine starting" };
const STATUS_INSTALLING = { fill: "yellow", shape: "ring", text: "installing engine" };
const STATUS_DOWN = { fill: "red", shape: "ring", text: "engine down" };
const STATUS_NO_PYTHON = { fill: "red", shape: "ring", text: "no python" };
const STATUS_FAILED = { fill: "red", shape: "ring", text: "engine failed" };

// An engine started separately (`ocpp-nodes serve --tcp HOST:PORT`), named in
// settings.js as ocppNodes.daemon = {host, port, token?, ca?, servername?}; the
// token may come from the environment (OCPP_NODES_TOKEN) instead. With `ca`
// (a PEM file) the connection uses TLS and checks the engine against it.
function remoteDaemon(RED) {
  let daemon;
  try {
    daemon = RED.settings.ocppNodes && RED.settings.ocppNodes.daemon;
  } catch {
    daemon = undefined;
  }
  if (!daemon || !daemon.port) {
    return null;
  }
  return {
    host: daemon.host || "127.0.0.1",
    port: Number(daemon.port),
    token: daemon.token || process.env.OCPP_NODES_TOKEN || "",
    ca: daemon.ca,
    servername: daemon.servername,
  };
}

function pickPython(RED) {
  let fromSettings;
  try {
    fromSettings = RED.settings.ocppNodes && RED.settings.ocppNodes.python;
  } catch {
    // RED.settings throws for unknown keys in some Node-RED versions.
    fromSettings = undefined;
  }
  return fromSettings || process.env.OCPP_NODES_PYTHON || "python3";
}

// The `create` frame of a node: its config as Node-RED gives it, minus the
// editor's layout and wiring, plus its credentials.
const EDITOR_ONLY = new Set(["x", "y", "z", "wires", "g"]);

function createFrame(node, type, config) {
  const nodeConfig = {};
  for (const [key, value] of Object.entries(config)) {
    if (!EDITOR_ONLY.has(key)) {
      nodeConfig[key] = value;
    }
  }
  return { t: "create", node: node.id, type, config: nodeConfig, credentials: node.credentials || {} };
}

// Deeper than this is almost surely a circular structure; msgpack would
// refuse it at the same depth.
const MAX_MSG_DEPTH = 100;

// JSON.stringify semantics for values that define toJSON (a Date becomes its
// ISO string, a Buffer {type, data}): the package we replace sent messages as
// JSON, so `currentTime: new Date()` in a flow must keep arriving as a string.
// Returns `value` itself where nothing in it changes (plain objects and arrays
// without such values: the usual message, no copy and no garbage per input),
// else copies of the parts that change; with `copy`, a copy throughout (a
// snapshot that later changes to msg do not reach).
function jsonLike(value, depth, copy) {
  if (value === null || typeof value !== "object") {
    // JSON leaves out functions and symbols (null in an array): undefined
    // does the same through the encoder.
    return typeof value === "function" || typeof value === "symbol" ? undefined : value;
  }
  if (depth > MAX_MSG_DEPTH) {
    throw new Error("message nested too deeply (circular?)");
  }
  if (typeof value.toJSON === "function") {
    return jsonLike(value.toJSON(), depth + 1, copy);
  }
  if (Array.isArray(value)) {
    let out = copy ? [] : null;
    for (let i = 0; i < value.length; i++) {
      const item = value[i];
      const wire = jsonLike(item, depth + 1, copy);
      if (out === null && wire !== item) {
        out = value.slice(0, i);
      }
      if (out !== null) {
        out.push(wire);
      }
    }
    return out === null ? value : out;
  }
  const keys = Object.keys(value);
  // Anything but a plain object (of any realm: a function node makes its
  // objects in a context of its own) is copied into one, as JSON would see
  // it: the encoder would write a typed array as binary, for one.
  const proto = Object.getPrototypeOf(value);
  const plain = proto === null || Object.getPrototypeOf(proto) === null;
  let out = copy || !plain ? {} : null;
  for (let i = 0; i < keys.length; i++) {
    const item = value[keys[i]];
    const wire = jsonLike(item, depth + 1, copy);
    if (out === null && wire !== item) {
      out = {};
      for (let j = 0; j < i; j++) {
        setOwn(out, keys[j], value[keys[j]]);
      }
    }
    if (out !== null) {
      setOwn(out, keys[i], wire);
    }
  }
  return out === null ? value : out;
}

function setOwn(out, key, item) {
  if (key === "__proto__") {
    // An own key of that name (JSON.parse makes them) stays a key; `out[key] =`
    // would set out's prototype instead.
    Object.defineProperty(out, key, { value: item, enumerable: true, writable: true, configurable: true });
  } else {
    out[key] = item;
  }
}

/**
 * The part of a Node-RED message the engine reads or gives back, JSON-like.
 * Shares what needs no change with msg, unless `snapshot` (for a frame that
 * is encoded later, not at once).
 */
function wireMsg(msg, snapshot = false) {
  const out = {};
  for (const key of MSG_FIELDS) {
    if (msg[key] !== undefined) {
      out[key] = jsonLike(msg[key], 0, snapshot);
    }
  }
  return out;
}

class DaemonClient {
  constructor(RED) {
    this.RED = RED;
    // idle: no daemon, none needed yet; starting: spawned, not welcomed yet;
    // ready: handshake done; waiting: a ready daemon died, restart scheduled;
    // failed: it could not start (restart scheduled unless hopeless);
    // stopped: shut down for good.
    this.state = "idle";
    this.nodes = new Map(); // node id -> { node, createFrame, outputs }
    this.pending = new PendingInputs(); // seq -> { nodeId, done }
    this.queue = []; // frames waiting for the handshake
    this.closeWaiters = new Map(); // node id -> [finish()]
    this.seq = 0;
    this.backoffMs = BACKOFF_FIRST_MS;
    this.restartTimer = null;
    this.attempt = null; // the current daemon process and its connection
    this.lastFailure = "";
  }

  // ---- API for node files -------------------------------------------------

  /** Start (or re-create) a node in the engine. createFrame is the full `create` frame. */
  register(node, createFrame) {
    const outputs = Number(createFrame.config && createFrame.config.outputs) || node.wires.length;
    this.nodes.set(node.id, { node, createFrame, outputs });
    if (this.state === "ready") {
      this.write(createFrame);
      return;
    }
    if (this.state === "failed" || this.state === "idle") {
      // A deploy is the user's way to say "try again" after a fix.
      this.clearRestartTimer();
      this.start();
    }
    if (this.state === "starting") {
      node.status(this.installing ? STATUS_INSTALLING : STATUS_STARTING);
    } else if (this.state === "waiting") {
      node.status(STATUS_DOWN);
    }
  }

  /** Stop a node; done() once the engine released its ports (or after a timeout). */
  deregister(node, done) {
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
      clearTimeout(timer);
      const waiters = this.closeWaiters.get(node.id) || [];
      const rest = waiters.filter((w) => w !== finishOnce);
      if (rest.length) {
        this.closeWaiters.set(node.id, rest);
      } else {
        this.closeWaiters.delete(node.id);
      }
      finished();
    };
    const timer = setTimeout(() => {
      node.warn(`OCPP engine did not confirm close within ${CLOSE_TIMEOUT_MS / 1000} s`);
      finishOnce();
    }, CLOSE_TIMEOUT_MS);
    timer.unref();
    const waiters = this.closeWaiters.get(node.id) || [];
    waiters.push(finishOnce);
    this.closeWaiters.set(node.id, waiters);
    this.write({ t: "close", node: node.id });
  }

  /** Forward an input message; `done` is called when the engine answers with `done`. */
  input(node, msg, send, done) {
    const entered = HOP_TRACE ? Number(process.hrtime.bigint()) : 0;
    // Replies come later as `send` frames naming only node and port, so they
    // go out through node.send; the per-input send() is not needed.
    if (this.state === "failed" || this.state === "stopped") {
      done(new Error(`OCPP engine not running: ${this.lastFailure || this.state}`));
      return;
    }
    let wire;
    try {
      // encoded at once when ready; a queued frame must not change with msg
      wire = wireMsg(msg, this.state !== "ready");
    } catch (err) {
      done(new Error(`cannot pass message to the OCPP engine: ${err.message}`));
      return;
    }
    const seq = ++this.seq;
    const frame = { t: "input", node: node.id, seq, msg: wire };
    if (entered) {
      frame.hop_t0 = entered;
    }
    if (this.state === "ready") {
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
    if (this.state === "idle") {
      this.start();
    }
  }

  /** Kill the daemon for good (Node-RED stopping, or a test finishing). */
  shutdown() {
    this.state = "stopped";
    this.clearRestartTimer();
    this.endAttempt("OCPP engine shut down");
  }

  // ---- daemon lifecycle ---------------------------------------------------

  start() {
    this.state = "starting";
    this.installing = false;
    for (const { node } of this.nodes.values()) {
      node.status(STATUS_STARTING);
    }
    const attempt = {
      python: pickPython(this.RED),
      abort: new AbortController(),
      dir: null,
      token: crypto.randomBytes(32).toString("hex"),
      child: null,
      socket: null,
      decoder: new FrameDecoder(),
      ready: false,
      welcomed: false,
      startedAt: 0,
      stderrTail: [],
      timer: null,
      over: false,
    };
    this.attempt = attempt;
    const remote = remoteDaemon(this.RED);
    if (remote) {
      // Started by someone else: connect, nothing to spawn or install.
      if (!remote.token) {
        this.failAttempt(attempt, "failed", "ocppNodes.daemon is set but no token is",
          { help: "Give ocppNodes.daemon.token in settings.js or OCPP_NODES_TOKEN, the token the engine was started with." });
        return;
      }
      attempt.token = remote.token;
      attempt.remote = remote;
      this.connect(attempt, remote);
      return;
    }
    // provision.js names the Python, building a venv first when none has the
    // engine (asynchronous: Node-RED's start never waits for it).
    const onInstalling = () => {
      this.installing = true;
      for (const { node } of this.nodes.values()) {
        node.status(STATUS_INSTALLING);
      }
    };
    ensurePython(this.RED, { onInstalling, signal: attempt.abort.signal }).then(
      ({ python }) => {
        if (!attempt.over) {
          this.installing = false;
          attempt.python = python;
          this.launch(attempt);
        }
      },
      (err) => {
        if (!attempt.over) {
          this.installing = false;
        }
        if (err instanceof ProvisionError) {
          this.failAttempt(attempt, "install", err.message,
            { help: err.help, status: { fill: "red", shape: "ring", text: err.status } });
        } else {
          this.failAttempt(attempt, "failed", `cannot find a Python: ${err.message}`);
        }
      });
  }

  launch(attempt) {
    try {
      attempt.dir = fs.mkdtempSync(path.join(os.tmpdir(), "ocpp-nodes-"));
      fs.chmodSync(attempt.dir, 0o700);
      this.spawnDaemon(attempt);
    } catch (err) {
      // Never throw into Node-RED: a node constructor is calling us.
      this.failAttempt(attempt, err.code === "ENOENT" ? "no-python" : "failed", err.message);
      return;
    }
    attempt.timer = setTimeout(() => {
      this.failAttempt(attempt, "failed",
        `${attempt.python} did not report ready within ${READY_TIMEOUT_MS / 1000} s`);
    }, READY_TIMEOUT_MS);
    attempt.timer.unref();
  }

  spawnDaemon(attempt) {
    const { python } = attempt;
    const socketPath = path.join(attempt.dir, "daemon.sock");
    const child = spawn(python, ["-m", "ocpp_nodes", "serve", "--socket", socketPath], {
      stdio: ["pipe", "pipe", "pipe"],
      // `python -m` puts the working directory first on sys.path: run in the
      // private dir so a stray ocpp_nodes folder where Node-RED was started
      // cannot shadow the installed package.
      cwd: attempt.dir,
      // Its own process group: a Ctrl-C in Node-RED's terminal must not stop
      // the engine while Node-RED is still closing the nodes through it. Its
      // life ends with stdin EOF or our kill instead.
      detached: true,
      env: { ...process.env, OCPP_NODES_TOKEN: attempt.token },
      windowsHide: true,
    });
    attempt.child = child;
    // The daemon must never keep Node-RED (or a test run) alive by itself.
    child.unref();
    for (const stream of [child.stdin, child.stdout, child.stderr]) {
      stream.unref?.();
    }
    // Writing to a dead daemon's stdin raises EPIPE; its exit is handled below.
    child.stdin.on("error", () => {});

    child.on("error", (err) => {
      const kind = err.code === "ENOENT" ? "no-python" : "failed";
      this.failAttempt(attempt, kind, `cannot run ${python}: ${err.message}`);
    });
    // 'close' rather than 'exit': it comes after the last stderr line, which
    // is what tells the user why a daemon died before it was ready.
    child.on("close", (code, signal) => {
      const how = signal ? `killed by ${signal}` : `exited with code ${code}`;
      if (attempt.welcomed) {
        this.lostAttempt(attempt, `daemon ${how}`);
        return;
      }
      const tail = attempt.stderrTail.join("\n");
      this.failAttempt(attempt, "failed",
        `${python} ${how} before it was ready${tail ? `:\n${tail}` : ""}`);
    });
    readline.createInterface({ input: child.stderr })
      .on("line", (line) => this.onStderrLine(attempt, line));
    readline.createInterface({ input: child.stdout })
      .on("line", (line) => this.onStdoutLine(attempt, line, socketPath));
  }

  onStderrLine(attempt, line) {
    attempt.stderrTail.push(line);
    if (attempt.stderrTail.length > STDERR_TAIL_LINES) {
      attempt.stderrTail.shift();
    }
    const warn = /\b(WARNING|ERROR|CRITICAL|Traceback)\b/.test(line);
    this.RED.log[warn ? "warn" : "info"](`[ocpp-nodes] ${line}`);
  }

  // The first stdout line of a healthy daemon is its JSON "ready" event;
  // anything else there is only passed on to the log.
  onStdoutLine(attempt, line, socketPath) {
    let event = null;
    if (!attempt.ready) {
      try {
        event = JSON.parse(line);
      } catch {
        event = null;
      }
    }
    if (!event || event.event !== "ready") {
      this.RED.log.info(`[ocpp-nodes] ${line}`);
      return;
    }
    attempt.ready = true;
    if (event.protocol !== PROTOCOL) {
      this.failAttempt(attempt, "failed",
        `daemon speaks protocol ${event.protocol}, this shim speaks ${PROTOCOL}`);
      return;
    }
    this.connect(attempt, event.socket || socketPath);
  }

  // `where`: the Unix socket path of a daemon we started, or the
  // {host, port, ca?, servername?} of one started separately.
  connect(attempt, where) {
    clearTimeout(attempt.timer);
    attempt.timer = setTimeout(() => {
      this.failAttempt(attempt, "failed", "no handshake answer from the daemon");
    }, HANDSHAKE_TIMEOUT_MS);
    attempt.timer.unref();
    let socket;
    try {
      socket = typeof where === "string"
        ? net.createConnection(where)
        : where.ca
          ? tls.connect({ host: where.host, port: where.port, ca: fs.readFileSync(where.ca),
            servername: where.servername || where.host, minVersion: "TLSv1.2" })
          : net.createConnection({ host: where.host, port: where.port });
    } catch (err) {
      this.failAttempt(attempt, "failed", `cannot reach the engine: ${err.message}`);
      return;
    }
    attempt.socket = socket;
    socket.unref();
    socket.on(typeof where !== "string" && where.ca ? "secureConnect" : "connect", () => {
      socket.write(encodeFrame({ t: "hello", protocol: PROTOCOL, token: attempt.token }));
    });
    socket.on("data", (chunk) => {
      let frames;
      let broken = null;
      try {
        frames = attempt.decoder.push(chunk);
      } catch (err) {
        frames = err.frames || []; // the whole frames before the broken one
        broken = err;
      }
      for (const frame of frames) {
        if (attempt.over) {
          return;
        }
        this.onFrame(attempt, frame);
      }
      if (broken && !attempt.over) {
        this.dropAttempt(attempt, `bad frame from daemon: ${broken.message}`);
      }
    });
    socket.on("error", (err) => {
      this.dropAttempt(attempt, `socket error: ${err.message}`);
    });
    socket.on("close", () => {
      this.dropAttempt(attempt, "socket closed");
    });
  }

  onFrame(attempt, frame) {
    if (!attempt.welcomed) {
      if (frame.t === "welcome") {
        this.onWelcome(attempt, frame);
      } else if (frame.t === "reject") {
        this.failAttempt(attempt, "failed", `daemon rejected the handshake: ${frame.reason}`);
      } else {
        this.failAttempt(attempt, "failed", `expected welcome, got ${String(frame.t)}`);
      }
      return;
    }
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

  onWelcome(attempt, frame) {
    clearTimeout(attempt.timer);
    attempt.welcomed = true;
    attempt.startedAt = Date.now();
    this.state = "ready";
    this.lastFailure = "";
    this.RED.log.info(`[ocpp-nodes] engine ${frame.version} ready (pid ${frame.pid})`);
    for (const { createFrame } of this.nodes.values()) {
      this.write(createFrame);
    }
    const queued = this.queue;
    this.queue = [];
    for (const inputFrame of queued) {
      this.write(inputFrame);
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
    const socket = this.attempt && this.attempt.socket;
    if (!socket || socket.destroyed) {
      return;
    }
    let bytes;
    try {
      bytes = encodeFrame(frame);
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
      return;
    }
    socket.write(bytes);
  }

  // ---- failure handling ---------------------------------------------------

  /** The daemon never got ready (or the handshake failed). */
  failAttempt(attempt, kind, reason, { help = HELP_PYTHON, status: shown = null } = {}) {
    if (attempt.over) {
      return;
    }
    this.endAttempt(`OCPP engine failed to start: ${reason}`, attempt);
    if (this.state === "stopped") {
      return;
    }
    if (attempt.remote) {
      help = `Check that \`ocpp-nodes serve --tcp\` runs at ${attempt.remote.host}:${attempt.remote.port} ` +
        "with the token given in ocppNodes.daemon.token or OCPP_NODES_TOKEN.";
    }
    const firstInStreak = this.lastFailure === "";
    this.lastFailure = reason;
    const status = shown || (kind === "no-python" ? STATUS_NO_PYTHON : STATUS_FAILED);
    for (const { node } of this.nodes.values()) {
      node.status(status);
    }
    if (kind === "no-python" || kind === "install") {
      this.RED.log.error(`[ocpp-nodes] cannot start the OCPP engine: ${reason}. ${help}`);
      // Retrying cannot make a missing interpreter (or a failed install) right;
      // the next deploy or restart tries again.
      this.state = "failed";
      return;
    }
    if (firstInStreak) {
      this.RED.log.error(`[ocpp-nodes] the OCPP engine failed to start: ${reason}\n${help}`);
    } else {
      this.RED.log.warn(`[ocpp-nodes] the OCPP engine failed to start again: ${reason}`);
    }
    this.state = "failed";
    this.scheduleRestart();
  }

  /** A ready daemon went away. */
  lostAttempt(attempt, reason) {
    if (attempt.over) {
      return;
    }
    this.endAttempt(`OCPP engine stopped: ${reason}`, attempt);
    if (this.state === "stopped") {
      return;
    }
    if (Date.now() - attempt.startedAt >= STABLE_AFTER_MS) {
      this.backoffMs = BACKOFF_FIRST_MS;
    }
    this.RED.log.warn(`[ocpp-nodes] OCPP engine stopped (${reason}); restarting`);
    for (const { node } of this.nodes.values()) {
      node.status(STATUS_DOWN);
    }
    this.state = this.nodes.size ? "waiting" : "idle";
    this.scheduleRestart();
  }

  /** The connection broke: whichever phase we were in decides the handling. */
  dropAttempt(attempt, reason) {
    if (attempt.welcomed) {
      this.lostAttempt(attempt, reason);
    } else {
      this.failAttempt(attempt, "failed", reason);
    }
  }

  /** Tear down one daemon process; everything waiting on it ends with `error`. */
  endAttempt(error, attempt = this.attempt) {
    if (!attempt || attempt.over) {
      return;
    }
    attempt.over = true;
    attempt.abort.abort();
    clearTimeout(attempt.timer);
    if (attempt.socket) {
      attempt.socket.destroy();
    }
    if (attempt.child && attempt.child.exitCode === null && attempt.child.signalCode === null) {
      attempt.child.stdin.end();
      attempt.child.kill("SIGTERM");
    }
    if (attempt.dir) {
      // Synchronous so it also happens from the process 'exit' handler.
      fs.rmSync(attempt.dir, { recursive: true, force: true });
    }
    if (this.attempt === attempt) {
      this.attempt = null;
    }
    this.queue = [];
    for (const { done } of this.pending.takeWhere()) {
      done(new Error(error));
    }
    const waiters = [...this.closeWaiters.values()].flat();
    for (const finish of waiters) {
      finish();
    }
  }

  failPendingOf(nodeId, reason) {
    for (const { done } of this.pending.takeWhere((pending) => pending.nodeId === nodeId)) {
      done(new Error(reason));
    }
    this.queue = this.queue.filter((frame) => frame.node !== nodeId);
  }

  scheduleRestart() {
    this.clearRestartTimer();
    if (this.nodes.size === 0) {
      // Nobody needs it now; the next register() starts it.
      return;
    }
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      const due = this.state === "waiting" || this.state === "failed";
      if (due && this.nodes.size > 0) {
        this.start();
      }
    }, delay);
    this.restartTimer.unref();
  }

  clearRestartTimer() {
    if (this.restartTimer) {
      clearTimeout(this.restartTimer);
      this.restartTimer = null;
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

/** Process ids of the daemons running now (diagnostics and tests). */
function daemonPids() {
  const pids = [];
  for (const client of clients.values()) {
    const child = client.attempt && client.attempt.welcomed && client.attempt.child;
    if (child) {
      pids.push(child.pid);
    }
  }
  return pids;
}

/** Stop every daemon; a later getClient() starts afresh. */
function shutdownAll() {
  for (const client of clients.values()) {
    client.shutdown();
  }
  clients.clear();
}

// Node-RED stopping: the daemon also sees stdin close, but killing it here
// makes the exit prompt even if the pipe lingers.
process.once("exit", shutdownAll);

module.exports = { getClient, shutdownAll, daemonPids, createFrame, wireMsg, DaemonClient };
