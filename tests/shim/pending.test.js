"use strict";
// The inputs waiting for the daemon's `done` (js_shim/lib/pending.js).

const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");

const root = path.resolve(__dirname, "..", "..");
const { PendingInputs } = require(path.join(root, "js_shim/lib/pending"));

test("an entry is taken once, by its seq", () => {
  const pending = new PendingInputs(8);
  pending.add(1, "a");
  pending.add(2, "b");
  assert.equal(pending.size, 2);
  assert.equal(pending.take(2), "b");
  assert.equal(pending.take(2), undefined);
  assert.equal(pending.take(3), undefined, "never added");
  assert.equal(pending.take(9), undefined, "the slot of seq 1, another seq");
  assert.equal(pending.take(1), "a");
  assert.equal(pending.size, 0);
});

test("an input still waiting when its slot comes round again is kept", () => {
  const pending = new PendingInputs(4);
  pending.add(1, "slow");
  for (let seq = 2; seq <= 9; seq++) {
    pending.add(seq, `fast ${seq}`);
    assert.equal(pending.take(seq), `fast ${seq}`);
  }
  // seqs 5 and 9 took the slot of seq 1 while it waited
  assert.equal(pending.size, 1);
  assert.equal(pending.take(1), "slow");
  assert.equal(pending.size, 0);
});

test("takeWhere removes what the test accepts, in the order added", () => {
  const pending = new PendingInputs(4);
  // 1 and 5, 2 and 6 share slots: 1 and 2 become stragglers
  for (let seq = 1; seq <= 6; seq++) {
    pending.add(seq, { seq, node: seq % 2 ? "odd" : "even" });
  }
  const odd = pending.takeWhere((entry) => entry.node === "odd");
  assert.deepEqual(odd.map((entry) => entry.seq), [1, 3, 5]);
  assert.equal(pending.size, 3);
  assert.equal(pending.take(3), undefined);
  const rest = pending.takeWhere();
  assert.deepEqual(rest.map((entry) => entry.seq), [2, 4, 6]);
  assert.equal(pending.size, 0);
  assert.deepEqual(pending.takeWhere(), []);
});

test("seqs beyond 32 bits keep their own slots", () => {
  const pending = new PendingInputs(16);
  const base = 2 ** 40;
  for (let i = 0; i < 16; i++) {
    pending.add(base + i, i);
  }
  assert.equal(pending.stragglers.size, 0, "16 consecutive seqs fill 16 slots");
  for (let i = 15; i >= 0; i--) {
    assert.equal(pending.take(base + i), i);
  }
  assert.equal(pending.size, 0);
});

test("the number of slots must be a power of two", () => {
  assert.throws(() => new PendingInputs(1000), RangeError);
  assert.throws(() => new PendingInputs(0), RangeError);
  assert.doesNotThrow(() => new PendingInputs(1));
});

test("closing a node fails its waiting inputs, in order, and no other node's", () => {
  const { DaemonClient } = require(path.join(root, "js_shim/lib/daemon-client"));
  const client = new DaemonClient({ log: { warn() {}, error() {} } });
  client.state = "starting"; // inputs queue until the handshake; nothing is spawned
  const ended = [];
  const input = (nodeId, name) => client.input({ id: nodeId }, { payload: { command: "Heartbeat", data: {} } },
    () => {}, (err) => ended.push([name, err && err.message]));
  input("a", "a1");
  input("b", "b1");
  input("a", "a2");
  let closed = false;
  client.deregister({ id: "a" }, () => { closed = true; });
  assert.ok(closed);
  assert.deepEqual(ended, [["a1", "node closed"], ["a2", "node closed"]]);
  assert.equal(client.pending.size, 1);
  assert.deepEqual(client.queue.map((frame) => frame.node), ["b"]);
});
