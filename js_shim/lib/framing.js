"use strict";
// Frames between the shim and the ocpp-nodes daemon (docs/architecture.md,
// "Frames"): a 4-byte unsigned big-endian length, then that many bytes of one
// msgpack-encoded map. This module owns only the byte layout; it knows nothing
// about frame types.

const { Encoder, Decoder } = require("@msgpack/msgpack");

const HEADER_BYTES = 4;
const MAX_FRAME_BYTES = 16 * 1024 * 1024;

// undefined is not a msgpack value: dropping such keys matches what JSON does
// with a Node-RED message, which is what flows expect.
const encoder = new Encoder({ ignoreUndefined: true });

// Deeper than this is no frame of ours (the daemon's msgpack writer refuses
// more than 1,024 levels); the fallback decoder below stops there rather than
// recurse on.
const MAX_DEPTH = 1025;

class FrameTooLargeError extends Error {
  constructor(length, max) {
    super(`frame of ${length} bytes exceeds the limit of ${max} bytes`);
    this.name = "FrameTooLargeError";
    this.code = "ERR_FRAME_TOO_LARGE";
  }
}

/**
 * Encode one frame.
 * @param {object} map - a plain object; it must carry the frame type `t`.
 * @param {number} [maxBytes] - largest body accepted (default 16 MiB).
 * @returns {Buffer} header + msgpack body.
 * @throws {FrameTooLargeError} when the body would exceed maxBytes, so the
 *   peer never has to disconnect us for it.
 */
function encodeFrame(map, maxBytes = MAX_FRAME_BYTES) {
  // A view of the encoder's own buffer, valid until its next encode: copied
  // once, into the frame, below.
  const body = encoder.encodeSharedRef(map);
  if (body.length > maxBytes) {
    throw new FrameTooLargeError(body.length, maxBytes);
  }
  const frame = Buffer.allocUnsafe(HEADER_BYTES + body.length);
  frame.writeUInt32BE(body.length, 0);
  frame.set(body, HEADER_BYTES);
  return frame;
}

/**
 * Decode one frame body. @msgpack/msgpack refuses a map key "__proto__", and a
 * station may send one (customData allows any key): such a body is decoded
 * again by decodeOwnKeys, which makes that key an ordinary own property, as
 * JSON.parse does (and so the package we replace). A body neither can decode
 * throws the library's error.
 */
function decodeBody(decoder, body) {
  try {
    return decoder.decode(body);
  } catch (err) {
    try {
      return decodeOwnKeys(body);
    } catch {
      throw err;
    }
  }
}

/**
 * msgpack (github.com/msgpack/msgpack, spec.md) without extension types: what
 * Python's msgpack writes for our frames. Map keys are set as own properties,
 * "__proto__" included; 64-bit integers become Numbers, binary a view of the input.
 * @param {Uint8Array} input - exactly one msgpack value (a Buffer or any Uint8Array).
 */
function decodeOwnKeys(input) {
  // A Buffer over the same memory (no copy): its toString decodes UTF-8 ranges,
  // where a plain Uint8Array's would list the numbers.
  const bytes = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  const need = (n) => {
    if (n > bytes.length - pos) {
      throw new RangeError(`msgpack: ${n} bytes needed at ${pos}, ${bytes.length - pos} left`);
    }
  };
  const uint = (size) => {
    need(size);
    const at = pos;
    pos += size;
    return size === 1 ? view.getUint8(at) : size === 2 ? view.getUint16(at) : view.getUint32(at);
  };
  const str = (n) => {
    need(n);
    pos += n;
    return bytes.toString("utf8", pos - n, pos);
  };
  const bin = (n) => {
    need(n);
    pos += n;
    return bytes.subarray(pos - n, pos);
  };
  const array = (n, depth) => {
    need(n); // every item takes at least one byte
    const out = [];
    for (let i = 0; i < n; i++) {
      out.push(read(depth));
    }
    return out;
  };
  const map = (n, depth) => {
    need(2 * n);
    const out = {};
    for (let i = 0; i < n; i++) {
      const key = read(depth);
      if (typeof key !== "string" && typeof key !== "number") {
        throw new TypeError(`msgpack: a map key of type ${typeof key}`);
      }
      const value = read(depth);
      Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
    }
    return out;
  };
  const read = (depth) => {
    if (depth > MAX_DEPTH) {
      throw new RangeError(`msgpack: nested deeper than ${MAX_DEPTH}`);
    }
    const type = uint(1);
    if (type <= 0x7f) return type;
    if (type >= 0xe0) return type - 0x100;
    if (type >= 0xa0 && type <= 0xbf) return str(type & 0x1f);
    if (type >= 0x90 && type <= 0x9f) return array(type & 0x0f, depth + 1);
    if (type >= 0x80 && type <= 0x8f) return map(type & 0x0f, depth + 1);
    const fixed = (size, get) => {
      need(size);
      pos += size;
      return get(pos - size);
    };
    switch (type) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return bin(uint(1));
      case 0xc5: return bin(uint(2));
      case 0xc6: return bin(uint(4));
      case 0xca: return fixed(4, (at) => view.getFloat32(at));
      case 0xcb: return fixed(8, (at) => view.getFloat64(at));
      case 0xcc: return uint(1);
      case 0xcd: return uint(2);
      case 0xce: return uint(4);
      case 0xcf: return fixed(8, (at) => Number(view.getBigUint64(at)));
      case 0xd0: return fixed(1, (at) => view.getInt8(at));
      case 0xd1: return fixed(2, (at) => view.getInt16(at));
      case 0xd2: return fixed(4, (at) => view.getInt32(at));
      case 0xd3: return fixed(8, (at) => Number(view.getBigInt64(at)));
      case 0xd9: return str(uint(1));
      case 0xda: return str(uint(2));
      case 0xdb: return str(uint(4));
      case 0xdc: return array(uint(2), depth + 1);
      case 0xdd: return array(uint(4), depth + 1);
      case 0xde: return map(uint(2), depth + 1);
      case 0xdf: return map(uint(4), depth + 1);
      default:
        throw new TypeError(`msgpack: type byte 0x${type.toString(16)} is not read here`);
    }
  };
  const value = read(0);
  if (pos !== bytes.length) {
    throw new RangeError(`msgpack: ${bytes.length - pos} bytes after the value`);
  }
  return value;
}

/**
 * Incremental decoder: feed it the chunks a stream delivers, in order, and it
 * returns the complete frames they finish. A header announcing more than
 * maxBytes throws FrameTooLargeError at once (before the body arrives), after
 * which the decoder refuses further input: the stream must be dropped.
 */
class FrameDecoder {
  constructor(maxBytes = MAX_FRAME_BYTES) {
    this.maxBytes = maxBytes;
    this.chunks = [];
    this.buffered = 0;
    this.failed = null;
    // A Decoder instance is reusable and not re-entrant; one per stream.
    this.decoder = new Decoder();
  }

  /**
   * @param {Buffer} chunk
   * @returns {object[]} the decoded maps completed by this chunk (maybe none).
   * @throws the first broken frame's error (too large, or a body that does
   *   not decode), with `frames`: the whole frames of this chunk before it.
   *   The stream is then unusable: every later push throws it again.
   */
  push(chunk) {
    if (this.failed) {
      this.failed.frames = [];
      throw this.failed;
    }
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames = [];
    while (this.buffered >= HEADER_BYTES) {
      const head = this.peek(HEADER_BYTES);
      const length = head.readUInt32BE(0);
      if (length > this.maxBytes) {
        this.fail(new FrameTooLargeError(length, this.maxBytes), frames);
      }
      if (this.buffered < HEADER_BYTES + length) {
        break;
      }
      const frame = this.take(HEADER_BYTES + length);
      try {
        frames.push(decodeBody(this.decoder, frame.subarray(HEADER_BYTES)));
      } catch (err) {
        this.fail(err, frames);
      }
    }
    return frames;
  }

  fail(err, frames) {
    this.failed = err;
    this.chunks = [];
    this.buffered = 0;
    err.frames = frames;
    throw err;
  }

  // Join only as much as needed, so a frame split over many small chunks is
  // not re-copied once per chunk.
  peek(n) {
    if (this.chunks[0].length < n) {
      this.chunks = [Buffer.concat(this.chunks)];
    }
    return this.chunks[0].subarray(0, n);
  }

  take(n) {
    const first = this.peek(n);
    const out = Buffer.from(first);
    const rest = this.chunks[0].subarray(n);
    this.chunks[0] = rest;
    if (rest.length === 0) {
      this.chunks.shift();
    }
    this.buffered -= n;
    return out;
  }
}

module.exports = {
  HEADER_BYTES,
  MAX_FRAME_BYTES,
  FrameTooLargeError,
  FrameDecoder,
  decodeOwnKeys,
  encodeFrame,
};
