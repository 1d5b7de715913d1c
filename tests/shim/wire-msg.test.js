"use strict";
// What of a Node-RED message crosses to the daemon (docs/architecture.md,
// "Shim -> daemon": only the properties the engine reads or gives back).

const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const vm = require("node:vm");

const root = path.resolve(__dirname, "..", "..");
const { wireMsg, createFrame } = require(path.join(root, "js_shim/lib/wire-msg"));
const { FrameDecoder, encodeFrame } = require(path.join(root, "js_shim/lib/framing"));

test("only _msgid, payload, topic, ocpp, customData and _linkSource are sent", () => {
  const msg = {
    _msgid: "m1",
    payload: { command: "Heartbeat", data: {} },
    topic: "t",
    ocpp: { MessageId: "x" },
    customData: { step: 1 },
    _linkSource: [{ id: "link", node: "n" }],
    req: { socket: {} },
    res: {},
    other: 1,
  };
  assert.deepEqual(Object.keys(wireMsg(msg)).sort(),
    ["_linkSource", "_msgid", "customData", "ocpp", "payload", "topic"]);
});

test("values with toJSON travel as JSON would carry them", () => {
  const when = new Date("2024-05-06T07:08:09.123Z");
  const wire = wireMsg({ payload: { data: { currentTime: when, list: [when] } } });
  assert.deepEqual(wire.payload.data, {
    currentTime: "2024-05-06T07:08:09.123Z",
    list: ["2024-05-06T07:08:09.123Z"],
  });
});

test("what needs no change is shared with msg, and msg is never changed", () => {
  const when = new Date("2024-05-06T07:08:09.123Z");
  const msg = {
    payload: { msgType: 3, data: { currentTime: when, idTokenInfo: { status: "Accepted" } } },
    ocpp: { MessageId: "m1" },
  };
  const wire = wireMsg(msg);
  assert.equal(wire.ocpp, msg.ocpp); // nothing to change: not copied
  assert.notEqual(wire.payload, msg.payload); // a Date below: the path to it is copied
  assert.equal(wire.payload.data.idTokenInfo, msg.payload.data.idTokenInfo);
  assert.equal(wire.payload.data.currentTime, "2024-05-06T07:08:09.123Z");
  assert.equal(msg.payload.data.currentTime, when);
  const list = [1, { a: 1 }, when, "x"];
  const wireList = wireMsg({ payload: list }).payload;
  assert.deepEqual(wireList, [1, { a: 1 }, "2024-05-06T07:08:09.123Z", "x"]);
  assert.equal(wireList[1], list[1]);
  assert.equal(list[2], when);
});

test("objects that are not plain travel as JSON would carry them; plain ones of any realm are shared", () => {
  class Reading { constructor() { this.value = 1; } }
  const payload = { map: new Map([["a", 1]]), bytes: new Uint8Array([7, 8]), reading: new Reading() };
  const wire = wireMsg({ payload }).payload;
  assert.deepEqual(wire, JSON.parse(JSON.stringify(payload)));
  assert.equal(Object.getPrototypeOf(wire.bytes), Object.prototype);
  const fromContext = vm.runInNewContext("({ msgType: 3, data: { list: [1, 2] } })");
  assert.equal(wireMsg({ payload: fromContext }).payload, fromContext);
});

test("functions and symbols are left out as JSON leaves them out, not refused by the encoder", () => {
  const payload = { command: "Heartbeat", data: {}, check() {}, tag: Symbol("t"), list: [1, () => 2] };
  const [frame] = new FrameDecoder().push(encodeFrame({ t: "input", msg: wireMsg({ payload }) }));
  assert.deepEqual(frame.msg.payload, JSON.parse(JSON.stringify(payload)));
  assert.equal(typeof payload.check, "function");
});

test("a snapshot (a frame queued until the engine is ready) does not change with msg", () => {
  const msg = { payload: { command: "Heartbeat", data: { list: [{ a: 1 }] } } };
  const wire = wireMsg(msg, true);
  msg.payload.data.list[0].a = 2;
  msg.payload.command = "Changed";
  assert.deepEqual(wire.payload, { command: "Heartbeat", data: { list: [{ a: 1 }] } });
});

test("an own key __proto__ (JSON.parse makes them) crosses as a key", () => {
  const msg = JSON.parse('{"payload":{"data":{"customData":{"vendorId":"V","__proto__":{"x":1}}}}}');
  for (const customData of [
    wireMsg(msg).payload.data.customData,
    wireMsg(msg, true).payload.data.customData,
  ]) {
    assert.equal(Object.getPrototypeOf(customData), Object.prototype);
    assert.deepEqual(Object.keys(customData), ["vendorId", "__proto__"]);
    assert.deepEqual(Object.getOwnPropertyDescriptor(customData, "__proto__").value, { x: 1 });
  }
  // copied, key by key, because of the Date after it
  const withDate = JSON.parse('{"__proto__":{"x":1},"vendorId":"V"}');
  withDate.when = new Date(0);
  const copied = wireMsg({ payload: withDate }).payload;
  assert.equal(Object.getPrototypeOf(copied), Object.prototype);
  assert.deepEqual(Object.keys(copied), ["__proto__", "vendorId", "when"]);
  assert.deepEqual(Object.getOwnPropertyDescriptor(copied, "__proto__").value, { x: 1 });
});

test("a circular message is refused with an error, not a crash", () => {
  const payload = { command: "Heartbeat" };
  payload.self = payload;
  assert.throws(() => wireMsg({ payload }), /nested too deeply/);
});

test("the create frame carries config without layout and wiring, plus credentials", () => {
  const node = { id: "n1", credentials: { csms_pw: "secret" } };
  const config = { id: "n1", type: "CS", z: "tab", x: 1, y: 2, g: "grp", wires: [[]], cbId: "CS1", name: "" };
  assert.deepEqual(createFrame(node, "CS", config), {
    t: "create",
    node: "n1",
    type: "CS",
    config: { id: "n1", type: "CS", cbId: "CS1", name: "" },
    credentials: { csms_pw: "secret" },
  });
  assert.deepEqual(createFrame({ id: "n2" }, "CSMS", { port: 1 }).credentials, {});
});
