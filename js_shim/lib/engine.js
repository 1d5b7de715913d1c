"use strict";
// One attempt at having an OCPP engine (docs/architecture.md, "Starting the
// daemon"), as the `mqtt` library is one connection under Node-RED's MQTT
// broker node: it starts `python -m ocpp_nodes serve` on a private Unix
// socket, or connects to an engine started separately (ocppNodes.daemon in
// settings.js), and does the hello/welcome handshake. It knows nothing of
// nodes or inputs: the daemon client (daemon-client.js) decides when to have
// an engine and what its frames mean. No OCPP knowledge lives here.
//
// Theory of operation:
// 1. `new Engine(RED, { onFrame })`, then `start()`. Events: "installing"
//    (a virtual environment is being built first), "welcome" ({version,
//    pid}: the handshake is done, write() may be called).
// 2. Every frame after the welcome goes to `onFrame(frame)`, a plain call and
//    not an event: `done` frames are the hot path, and emit() allocates its
//    arguments on each call (bench/notes.md, "Node-RED's garbage collector").
// 3. An engine ends once. Unless end() came first, it then emits exactly one
//    "ended" event, after its process, socket and private directory are gone:
//    {kind, reason, help, status} where kind is "no-python", "install" or
//    "failed" when it ended before its welcome (status: the node status
//    text provisioning asks for, or undefined), or {kind: "lost", reason}
//    when it ended after.
// 4. end() tears everything down at once (synchronously, so that it also
//    works from the process 'exit' handler) and emits nothing.

const { spawn } = require("node:child_process");
const crypto = require("node:crypto");
const EventEmitter = require("node:events");
const fs = require("node:fs");
const net = require("node:net");
const tls = require("node:tls");
const os = require("node:os");
const path = require("node:path");
const readline = require("node:readline");

const { FrameDecoder, encodeFrame } = require("./framing");
const { ensurePython, ProvisionError } = require("./provision");

const PROTOCOL = 1;
const READY_TIMEOUT_MS = 30000;
const HANDSHAKE_TIMEOUT_MS = 10000;
const STDERR_TAIL_LINES = 20;

const HELP_PYTHON =
  "Set ocppNodes: { python: '/path/to/python' } in settings.js, or the environment " +
  "variable OCPP_NODES_PYTHON, to a Python (>= 3.10) that can `import ocpp_nodes`, " +
  "or remove both so that ocpp-nodes installs its own engine (needs python3 with " +
  "venv), then restart Node-RED.";

// An engine started separately (`ocpp-nodes serve --tcp HOST:PORT`), named in
// settings.js as ocppNodes.daemon = {host, port, token?, ca?, servername?}; the
// token may come from the environment (OCPP_NODES_TOKEN) instead. With `ca`
// (a PEM file) the connection uses TLS and checks the engine against it.
function remoteDaemon(RED) {
  let daemon;
  try {
    daemon = RED.settings.ocppNodes && RED.settings.ocppNodes.daemon;
  } catch {
    // RED.settings throws for unknown keys in some Node-RED versions.
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

// The engine's metrics endpoint (docs/operations.md), from settings.js as
// ocppNodes.metrics = {host?, port, stationLabels?}: {host, port,
// stationLabels}, or null when absent (off) or unusable (logged).
function metricsSettings(RED) {
  let metrics;
  try {
    metrics = RED.settings.ocppNodes && RED.settings.ocppNodes.metrics;
  } catch {
    metrics = undefined;
  }
  if (!metrics) {
    return null;
  }
  const port = Number(metrics.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    RED.log.error(`[ocpp-nodes] ocppNodes.metrics.port ${JSON.stringify(metrics.port)} ` +
      "is not a TCP port number (1-65535): no metrics endpoint");
    return null;
  }
  const host = metrics.host === undefined ? "127.0.0.1" : String(metrics.host);
  if (!/^[A-Za-z0-9.:_\-[\]]+$/.test(host)) {
    RED.log.error(`[ocpp-nodes] ocppNodes.metrics.host ${JSON.stringify(host)} is not a host name ` +
      "or address: no metrics endpoint");
    return null;
  }
  return { host, port, stationLabels: metrics.stationLabels === true };
}

class Engine extends EventEmitter {
  /**
   * @param {object} RED the Node-RED runtime API (settings, log)
   * @param {object} options
   * @param {(frame: object) => void} options.onFrame called with each frame
   *   after the welcome, in the order they arrive
   * @param {number} [options.restarts] engines the caller restarted before
   *   this one (a metric of the engine)
   */
  constructor(RED, { onFrame, restarts = 0 }) {
    super();
    this.RED = RED;
    this.onFrame = onFrame;
    this.restarts = restarts;
    this.token = crypto.randomBytes(32).toString("hex");
    this.abort = new AbortController();
    this.remote = null; // {host, port, ...} of an engine started separately
    this.python = null;
    this.dir = null; // the private directory of an engine we started
    this.child = null;
    this.socket = null;
    this.decoder = new FrameDecoder();
    this.installing = false; // a virtual environment is being built
    this.ready = false; // the "ready" line came
    this.welcomed = false;
    this.stderrTail = [];
    this.timer = null;
    this.over = false;
  }

  /** The process id of an engine this started (null for one started separately). */
  get pid() {
    return this.child ? this.child.pid : null;
  }

  start() {
    const remote = remoteDaemon(this.RED);
    if (remote) {
      // Started by someone else: connect, nothing to spawn or install.
      if (!remote.token) {
        this.fail("failed", "ocppNodes.daemon is set but no token is",
          { help: "Give ocppNodes.daemon.token in settings.js or OCPP_NODES_TOKEN, the token the engine was started with." });
        return;
      }
      this.token = remote.token;
      this.remote = remote;
      if (metricsSettings(this.RED)) {
        this.RED.log.warn("[ocpp-nodes] ocppNodes.metrics is ignored with ocppNodes.daemon: " +
          "start that engine with `ocpp-nodes serve --metrics HOST:PORT` instead");
      }
      this.connect(remote);
      return;
    }
    // provision.js names the Python, building a venv first when none has the
    // engine (asynchronous: Node-RED's start never waits for it).
    const onInstalling = () => {
      this.installing = true;
      this.emit("installing");
    };
    ensurePython(this.RED, { onInstalling, signal: this.abort.signal }).then(
      ({ python }) => {
        if (!this.over) {
          this.installing = false;
          this.python = python;
          this.launch();
        }
      },
      (err) => {
        this.installing = false;
        if (err instanceof ProvisionError) {
          this.fail(err.kind, err.message, { help: err.help, status: err.status });
        } else {
          this.fail("failed", `cannot find a Python: ${err.message}`);
        }
      });
  }

  launch() {
    try {
      this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "ocpp-nodes-"));
      fs.chmodSync(this.dir, 0o700);
      this.spawnDaemon();
    } catch (err) {
      // Never throw into Node-RED: a node constructor may be calling us.
      this.fail(err.code === "ENOENT" ? "no-python" : "failed", err.message);
      return;
    }
    this.timer = setTimeout(() => {
      this.fail("failed", `${this.python} did not report ready within ${READY_TIMEOUT_MS / 1000} s`);
    }, READY_TIMEOUT_MS);
    this.timer.unref();
  }

  spawnDaemon() {
    const { python } = this;
    const socketPath = path.join(this.dir, "daemon.sock");
    const args = ["-m", "ocpp_nodes", "serve", "--socket", socketPath];
    const metrics = metricsSettings(this.RED);
    if (metrics) {
      args.push("--metrics", `${metrics.host.includes(":") ? `[${metrics.host}]` : metrics.host}:${metrics.port}`,
        "--engine-restarts", String(this.restarts));
      if (metrics.stationLabels) {
        args.push("--metrics-station-labels");
      }
    }
    const child = spawn(python, args, {
      stdio: ["pipe", "pipe", "pipe"],
      // `python -m` puts the working directory first on sys.path: run in the
      // private dir so a stray ocpp_nodes folder where Node-RED was started
      // cannot shadow the installed package.
      cwd: this.dir,
      // Its own process group: a Ctrl-C in Node-RED's terminal must not stop
      // the engine while Node-RED is still closing the nodes through it. Its
      // life ends with stdin EOF or our kill instead.
      detached: true,
      env: { ...process.env, OCPP_NODES_TOKEN: this.token },
      windowsHide: true,
    });
    this.child = child;
    // The daemon must never keep Node-RED (or a test run) alive by itself.
    child.unref();
    for (const stream of [child.stdin, child.stdout, child.stderr]) {
      stream.unref?.();
    }
    // Writing to a dead daemon's stdin raises EPIPE; its exit is handled below.
    child.stdin.on("error", () => {});

    child.on("error", (err) => {
      const kind = err.code === "ENOENT" ? "no-python" : "failed";
      this.fail(kind, `cannot run ${python}: ${err.message}`);
    });
    // 'close' rather than 'exit': it comes after the last stderr line, which
    // is what tells the user why a daemon died before it was ready.
    child.on("close", (code, signal) => {
      const how = signal ? `killed by ${signal}` : `exited with code ${code}`;
      if (this.welcomed) {
        this.lose(`daemon ${how}`);
        return;
      }
      const tail = this.stderrTail.join("\n");
      this.fail("failed", `${python} ${how} before it was ready${tail ? `:\n${tail}` : ""}`);
    });
    readline.createInterface({ input: child.stderr })
      .on("line", (line) => this.onStderrLine(line));
    readline.createInterface({ input: child.stdout })
      .on("line", (line) => this.onStdoutLine(line, socketPath));
  }

  onStderrLine(line) {
    this.stderrTail.push(line);
    if (this.stderrTail.length > STDERR_TAIL_LINES) {
      this.stderrTail.shift();
    }
    const warn = /\b(WARNING|ERROR|CRITICAL|Traceback)\b/.test(line);
    this.RED.log[warn ? "warn" : "info"](`[ocpp-nodes] ${line}`);
  }

  // The first stdout line of a healthy daemon is its JSON "ready" event;
  // anything else there is only passed on to the log.
  onStdoutLine(line, socketPath) {
    let event = null;
    if (!this.ready) {
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
    this.ready = true;
    if (event.protocol !== PROTOCOL) {
      this.fail("failed", `daemon speaks protocol ${event.protocol}, this shim speaks ${PROTOCOL}`);
      return;
    }
    this.connect(event.socket || socketPath);
  }

  // `where`: the Unix socket path of a daemon we started, or the
  // {host, port, ca?, servername?} of one started separately.
  connect(where) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.fail("failed", "no handshake answer from the daemon");
    }, HANDSHAKE_TIMEOUT_MS);
    this.timer.unref();
    let socket;
    try {
      socket = typeof where === "string"
        ? net.createConnection(where)
        : where.ca
          ? tls.connect({ host: where.host, port: where.port, ca: fs.readFileSync(where.ca),
            servername: where.servername || where.host, minVersion: "TLSv1.2" })
          : net.createConnection({ host: where.host, port: where.port });
    } catch (err) {
      this.fail("failed", `cannot reach the engine: ${err.message}`);
      return;
    }
    this.socket = socket;
    socket.unref();
    socket.on(typeof where !== "string" && where.ca ? "secureConnect" : "connect", () => {
      socket.write(encodeFrame({ t: "hello", protocol: PROTOCOL, token: this.token }));
    });
    socket.on("data", (chunk) => {
      let frames;
      let broken = null;
      try {
        frames = this.decoder.push(chunk);
      } catch (err) {
        frames = err.frames || []; // the whole frames before the broken one
        broken = err;
      }
      for (let i = 0; i < frames.length; i++) {
        if (this.over) {
          return;
        }
        if (this.welcomed) {
          this.onFrame(frames[i]);
        } else {
          this.onHandshakeFrame(frames[i]);
        }
      }
      if (broken && !this.over) {
        this.drop(`bad frame from daemon: ${broken.message}`);
      }
    });
    socket.on("error", (err) => {
      this.drop(`socket error: ${err.message}`);
    });
    socket.on("close", () => {
      this.drop("socket closed");
    });
  }

  onHandshakeFrame(frame) {
    if (frame.t === "welcome") {
      clearTimeout(this.timer);
      this.welcomed = true;
      this.emit("welcome", { version: frame.version, pid: frame.pid });
    } else if (frame.t === "reject") {
      this.fail("failed", `daemon rejected the handshake: ${frame.reason}`);
    } else {
      this.fail("failed", `expected welcome, got ${String(frame.t)}`);
    }
  }

  /**
   * Encode a frame and write it to the engine; nothing happens when the
   * connection is gone (its end is reported by the "ended" event).
   *
   * @returns {boolean} whether it was written
   * @throws {Error} when the frame cannot be encoded (over 16 MiB, say): the
   *   caller fails that input alone
   */
  write(frame) {
    const socket = this.socket;
    if (socket === null || socket.destroyed) {
      return false;
    }
    socket.write(encodeFrame(frame));
    return true;
  }

  /** Tear down at once: kill the process, close the socket, remove the directory. Emits nothing. */
  end() {
    if (this.over) {
      return;
    }
    this.over = true;
    this.abort.abort();
    clearTimeout(this.timer);
    if (this.socket) {
      this.socket.destroy();
    }
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      child.stdin.end();
      child.kill("SIGTERM");
    }
    if (this.dir) {
      // Synchronous so it also happens from the process 'exit' handler.
      fs.rmSync(this.dir, { recursive: true, force: true });
    }
  }

  /** It never got to its welcome. */
  fail(kind, reason, { help = HELP_PYTHON, status } = {}) {
    if (this.over) {
      return;
    }
    this.end();
    if (this.remote) {
      help = `Check that \`ocpp-nodes serve --tcp\` runs at ${this.remote.host}:${this.remote.port} ` +
        "with the token given in ocppNodes.daemon.token or OCPP_NODES_TOKEN.";
    }
    this.emit("ended", { kind, reason, help, status });
  }

  /** It went away after its welcome. */
  lose(reason) {
    if (this.over) {
      return;
    }
    this.end();
    this.emit("ended", { kind: "lost", reason });
  }

  /** The connection broke: whichever phase it was in decides the handling. */
  drop(reason) {
    if (this.welcomed) {
      this.lose(reason);
    } else {
      this.fail("failed", reason);
    }
  }
}

module.exports = { Engine, PROTOCOL, metricsSettings, remoteDaemon };
