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
   */
  push(chunk) {
    if (this.failed) {
      throw this.failed;
    }
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames = [];
    while (this.buffered >= HEADER_BYTES) {
      const head = this.peek(HEADER_BYTES);
      const length = head.readUInt32BE(0);
      if (length > this.maxBytes) {
        this.failed = new FrameTooLargeError(length, this.maxBytes);
        this.chunks = [];
        this.buffered = 0;
        throw this.failed;
      }
      if (this.buffered < HEADER_BYTES + length) {
        break;
      }
      const frame = this.take(HEADER_BYTES + length);
      frames.push(this.decoder.decode(frame.subarray(HEADER_BYTES)));
    }
    return frames;
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
  encodeFrame,
};
