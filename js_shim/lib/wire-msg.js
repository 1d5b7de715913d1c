"use strict";
// What of Node-RED's config and messages crosses to the engine
// (docs/architecture.md, "Shim -> daemon"): the `create` frame of a node, and
// the part of a message the engine reads or gives back, as JSON would carry
// it. Pure functions: no state, no I/O. No OCPP knowledge lives here.

// Only these message properties are read or given back by the engine; the
// rest (an http request object, for instance) stays in Node-RED.
const MSG_FIELDS = ["_msgid", "payload", "topic", "ocpp", "customData", "_linkSource"];

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
 *
 * @throws {Error} when msg is nested too deeply (circular)
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

module.exports = { MSG_FIELDS, createFrame, jsonLike, setOwn, wireMsg };
