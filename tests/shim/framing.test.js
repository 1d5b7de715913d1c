"use strict";
// Byte layout of shim <-> daemon frames (docs/architecture.md, "Frames").

const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");

const root = path.resolve(__dirname, "..", "..");
const {
  FrameDecoder,
  FrameTooLargeError,
  MAX_FRAME_BYTES,
  encodeFrame,
} = require(path.join(root, "js_shim/lib/framing"));

test("a frame is a 4-byte big-endian length then the msgpack map", () => {
  const frame = encodeFrame({ t: "hello", protocol: 1 });
  assert.equal(frame.readUInt32BE(0), frame.length - 4);
  // fixmap of 2 entries, then fixstr "t"
  assert.equal(frame[4], 0x82);
  assert.equal(frame[5], 0xa1);
});

test("frames round trip, whatever the chunking", () => {
  const maps = [
    { t: "input", node: "n1", seq: 1, msg: { payload: { command: "Heartbeat", data: {} } } },
    { t: "status", node: "n1", fill: "green", shape: "dot", text: "connected" },
    { t: "send", node: "n2", port: 2, msg: { payload: ["x".repeat(70000), 1.5, null, true] } },
    { t: "done", node: "n1", seq: 1 },
  ];
  const bytes = Buffer.concat(maps.map((m) => encodeFrame(m)));
  for (const size of [1, 3, 7, 4096, bytes.length]) {
    const decoder = new FrameDecoder();
    const out = [];
    for (let i = 0; i < bytes.length; i += size) {
      out.push(...decoder.push(bytes.subarray(i, i + size)));
    }
    assert.deepEqual(out, maps, `chunk size ${size}`);
  }
});

test("undefined properties are dropped, as JSON would", () => {
  const decoder = new FrameDecoder();
  const [map] = decoder.push(encodeFrame({ t: "input", msg: { topic: undefined, payload: 1 } }));
  assert.deepEqual(map, { t: "input", msg: { payload: 1 } });
});

test("an announced length over the limit is rejected before the body arrives", () => {
  const decoder = new FrameDecoder();
  const header = Buffer.alloc(4);
  header.writeUInt32BE(MAX_FRAME_BYTES + 1, 0);
  assert.throws(() => decoder.push(header), FrameTooLargeError);
  // The stream is unusable afterwards: the peer must be dropped.
  assert.throws(() => decoder.push(encodeFrame({ t: "done" })), FrameTooLargeError);
});

test("a frame of exactly the limit is accepted; the encoder refuses a larger one", () => {
  const small = 64;
  const body = encodeFrame({ t: "x", s: "a".repeat(small) }).length - 4;
  const decoder = new FrameDecoder(body);
  assert.deepEqual(decoder.push(encodeFrame({ t: "x", s: "a".repeat(small) })), [
    { t: "x", s: "a".repeat(small) },
  ]);
  assert.throws(() => encodeFrame({ t: "x", s: "a".repeat(small + 1) }, body), FrameTooLargeError);
});
