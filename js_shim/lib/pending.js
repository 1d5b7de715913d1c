"use strict";
// The inputs the shim forwarded and the daemon has not yet answered with a
// `done` frame, by their seq.
//
// Not a Map. Every input gets a new seq and leaves a few milliseconds later,
// so a Map keyed by seq builds a new hash table every few hundred inputs, and
// V8 leaves each replaced table pointing to the one that replaced it (for
// iterators still walking it). Once one of those tables is in the old
// generation, the young-generation collector keeps its successor alive
// through that pointer, and so the next, with every entry in them and the
// message each entry's `done` holds. Measured in Node-RED under load
// (bench/notes.md, "Node-RED's garbage collector"): with the Map, about
// 0.6 KB per message was promoted to the old generation and each
// young-generation pause took 2.3 ms; with this ring, nothing and 0.8 ms.
// Seqs are consecutive, so a ring of slots indexed by seq needs neither
// hashing nor new tables; an input still waiting when its slot comes round
// again moves to a Map, which only such stragglers use.

const DEFAULT_SLOTS = 1024; // a power of two

class PendingInputs {
  constructor(slots = DEFAULT_SLOTS) {
    if (!Number.isInteger(slots) || slots < 1 || (slots & (slots - 1)) !== 0) {
      throw new RangeError(`slots must be a power of two, got ${slots}`);
    }
    this.mask = slots - 1;
    this.seqs = new Array(slots).fill(0);
    this.entries = new Array(slots).fill(null);
    this.stragglers = new Map(); // seq -> entry
    this.size = 0;
  }

  /** @param {number} seq - a positive integer, new (never added before). */
  add(seq, entry) {
    const slot = seq & this.mask;
    const held = this.entries[slot];
    if (held !== null) {
      this.stragglers.set(this.seqs[slot], held);
    }
    this.seqs[slot] = seq;
    this.entries[slot] = entry;
    this.size++;
  }

  /** Remove and return the entry of `seq`, or undefined when none waits. */
  take(seq) {
    const slot = seq & this.mask;
    if (this.seqs[slot] === seq && this.entries[slot] !== null) {
      const entry = this.entries[slot];
      this.entries[slot] = null;
      this.size--;
      return entry;
    }
    const entry = this.stragglers.get(seq);
    if (entry !== undefined) {
      this.stragglers.delete(seq);
      this.size--;
    }
    return entry;
  }

  /**
   * Remove the entries `test` accepts (all when omitted) and return them in
   * the order they were added.
   */
  takeWhere(test = () => true) {
    const taken = [];
    for (let slot = 0; slot <= this.mask; slot++) {
      const entry = this.entries[slot];
      if (entry !== null && test(entry)) {
        taken.push([this.seqs[slot], entry]);
        this.entries[slot] = null;
      }
    }
    for (const [seq, entry] of this.stragglers) {
      if (test(entry)) {
        taken.push([seq, entry]);
        this.stragglers.delete(seq);
      }
    }
    this.size -= taken.length;
    taken.sort((a, b) => a[0] - b[0]);
    return taken.map(([, entry]) => entry);
  }
}

module.exports = { PendingInputs };
