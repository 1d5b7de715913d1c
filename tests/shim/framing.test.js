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
  decodeOwnKeys,
  encodeFrame,
} = require(path.join(root, "js_shim/lib/framing"));
const { Decoder } = require(path.join(root, "js_shim/node_modules/@msgpack/msgpack"));

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

test("the whole frames before a broken one come with its error", () => {
  const broken = Buffer.from([0, 0, 0, 1, 0xc1]); // 0xc1: never used in msgpack
  const tooLarge = Buffer.alloc(4);
  tooLarge.writeUInt32BE(MAX_FRAME_BYTES + 1, 0);
  for (const bad of [broken, tooLarge]) {
    const decoder = new FrameDecoder();
    const chunk = Buffer.concat([encodeFrame({ t: "done", seq: 7 }), encodeFrame({ t: "done", seq: 8 }), bad,
      encodeFrame({ t: "done", seq: 9 })]);
    let error = null;
    try {
      decoder.push(chunk);
    } catch (err) {
      error = err;
    }
    assert.ok(error);
    assert.deepEqual(error.frames.map((frame) => frame.seq), [7, 8]);
    // unusable afterwards, and the frames are not handed out twice
    assert.throws(() => decoder.push(encodeFrame({ t: "done" })), (err) => err === error && err.frames.length === 0);
  }
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

test("a key __proto__ from the daemon arrives as an ordinary own key", () => {
  // customData admits any key, so a station can send this one; @msgpack/msgpack
  // refuses it, which dropped the daemon's connection (and every station).
  const sent = JSON.parse(
    '{"t":"send","node":"n1","port":0,"msg":{"payload":{"data":{"customData":' +
      '{"vendorId":"V","__proto__":{"polluted":true}}}}}}');
  const [got] = new FrameDecoder().push(encodeFrame(sent));
  const customData = got.msg.payload.data.customData;
  assert.equal(Object.getPrototypeOf(customData), Object.prototype);
  assert.deepEqual(Object.keys(customData), ["vendorId", "__proto__"]);
  assert.equal(JSON.stringify(got), JSON.stringify(sent));
  assert.equal({}.polluted, undefined);
});

test("the fallback decoder reads what the library reads", () => {
  const value = {
    t: "send",
    ints: [0, 127, -1, -32, 200, 60000, 4000000000, 2 ** 53 - 1, -100, -30000, -2e9, -(2 ** 40)],
    floats: [1.5, -0.25, 1e300],
    strings: ["", "x", "é".repeat(40), "a".repeat(300), "b".repeat(70000)],
    nested: { list: new Array(20).fill({ a: null, b: true, c: false }) },
    wide: Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`k${i}`, i])),
  };
  const body = encodeFrame(value).subarray(4);
  assert.deepEqual(decodeOwnKeys(body), new Decoder().decode(body));
  // Written by Python's msgpack (uint64, int64, bin, float64) and a float32 0.5.
  const python = Buffer.from(
    "88a174a473656e64a1699c007fffe0ccc8cdea60ceee6b2800cf001fffffffffffffd09cd18ad0d288ca6c00" +
      "d3ffffff0000000000a16692cb3ff8000000000000cbbfd0000000000000a162c4020001a16ec0a37965" +
      "73c3a26e6fc2a5617272313693000102", "hex");
  assert.deepEqual(decodeOwnKeys(python), new Decoder().decode(python));
  assert.equal(decodeOwnKeys(Buffer.from("ca3f000000", "hex")), 0.5);
  // a plain Uint8Array (what @msgpack/msgpack's own encode returns) reads the same
  const plain = new Uint8Array(body);
  assert.deepEqual(decodeOwnKeys(plain), new Decoder().decode(plain));
});

test("the fallback decoder refuses what is not one whole msgpack value", () => {
  const body = encodeFrame({ t: "x", list: [1, 2, 3] }).subarray(4);
  assert.throws(() => decodeOwnKeys(body.subarray(0, body.length - 1)), RangeError);
  assert.throws(() => decodeOwnKeys(Buffer.concat([body, Buffer.from([0xc0])])), RangeError);
  assert.throws(() => decodeOwnKeys(Buffer.from("d40000", "hex")), TypeError); // an extension
  assert.throws(() => decodeOwnKeys(Buffer.from("dfffffffff", "hex")), RangeError); // 4G entries, no bytes
  assert.throws(() => decodeOwnKeys(Buffer.from("91".repeat(1100) + "c0", "hex")), /nested deeper/);
});

test("a body neither decoder reads throws the library's error", () => {
  const frame = Buffer.from("00000001c1", "hex"); // 0xc1: "never used" in msgpack
  assert.throws(() => new FrameDecoder().push(frame), { name: "DecodeError" });
});
