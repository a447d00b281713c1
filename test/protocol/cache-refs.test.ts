/** Cache IDs and cache-by-reference bookkeeping (p2p/protocol/cache-id.ts, cache-refs.ts). */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { QuicmapError } from '../../base/errors.ts';
import { MachineDirectory, machineOf, makeCacheId, splitCacheId, type CacheId } from '../../p2p/protocol/cache-id.ts';
import { HeldRefs, OriginCache } from '../../p2p/protocol/cache-refs.ts';

const key = (b: number) => new Uint8Array(32).fill(b);

function throwsCode(f: () => unknown, code: string): void {
  try {
    f();
  } catch (e) {
    assert.instance(e, QuicmapError);
    assert.is((e as QuicmapError).code, code);
    return;
  }
  assert.unreachable(`expected ${code}`);
}

test('a cache id packs machine, slot and line into 64 bits and back', () => {
  const id = makeCacheId(0xabcdef, 0x1234, 0x987654);
  assert.is(id, 0xabcdef_1234_987654n);
  assert.equal(splitCacheId(id), { machine: 0xabcdef, slot: 0x1234, line: 0x987654 });
  assert.throws(() => makeCacheId(1 << 24, 0, 0));
  throwsCode(() => splitCacheId(1n << 64n), 'EINVAL');
});

test('the machine part comes from the node key; the directory maps it back and flags collisions', () => {
  const dir = new MachineDirectory();
  const a = dir.add(key(1));
  assert.is(a.machine, machineOf(key(1)));
  assert.not.ok(a.collision);
  assert.equal(dir.keyOf(makeCacheId(a.machine, 0, 5)), key(1));
  assert.is(dir.keyOf(makeCacheId((a.machine + 1) % (1 << 24), 0, 5)), undefined);
  // Find two keys that collide on 24 bits (a birthday search, ~5k keys).
  const seen = new Map<number, Uint8Array>();
  let pair: [Uint8Array, Uint8Array] | undefined;
  for (let i = 0; !pair; i++) {
    const k = new Uint8Array(32);
    new DataView(k.buffer).setUint32(0, i);
    const m = machineOf(k);
    const prev = seen.get(m);
    if (prev) pair = [prev, k];
    else seen.set(m, k);
  }
  const d2 = new MachineDirectory();
  d2.add(pair[0]);
  assert.ok(d2.add(pair[1]).collision);
  assert.is(d2.keyOf(makeCacheId(machineOf(pair[0]), 0, 0)), undefined, 'an ambiguous machine part names no one');
});

test('origin ref-counts per holder; de-refs bring it back to zero and free the line', () => {
  const o = new OriginCache<string>({ machine: 7, slot: 1, maxLines: 8, maxBytes: 1000 });
  const id = o.reference('B', 'data', 100, 2)!;
  assert.ok(o.addRef('C', id));
  assert.is(o.refCount(id), 3);
  assert.is(o.fetch('C', id), 'data');
  o.deref('B', id, 2);
  assert.is(o.refCount(id), 1);
  throwsCode(() => o.fetch('B', id), 'EACCES'); // B gave its references back
  throwsCode(() => o.deref('C', id, 2), 'EPROTO'); // more than held
  o.deref('C', id, 1);
  assert.is(o.lineCount, 0);
  assert.is(o.byteCount, 0);
  throwsCode(() => o.fetch('C', id), 'EACCES');
});

test('a forged id (another origin, another slot, an unknown line) is refused', () => {
  const o = new OriginCache<string>({ machine: 7, slot: 1, maxLines: 8, maxBytes: 1000 });
  const id = o.reference('B', 'x', 1)!;
  const { line } = splitCacheId(id);
  throwsCode(() => o.fetch('B', makeCacheId(8, 1, line)), 'EACCES');
  throwsCode(() => o.fetch('B', makeCacheId(7, 2, line)), 'EACCES');
  throwsCode(() => o.fetch('B', makeCacheId(7, 1, line + 1)), 'EACCES');
  throwsCode(() => o.fetch('Mallory', id), 'EACCES');
});

test('a full origin degrades to inline data instead of failing', () => {
  const o = new OriginCache<string>({ machine: 1, slot: 0, maxLines: 2, maxBytes: 150 });
  assert.ok(o.reference('B', 'a', 100));
  assert.is(o.reference('B', 'b', 100), undefined, 'over the byte bound');
  assert.ok(o.reference('B', 'c', 10));
  assert.is(o.reference('B', 'd', 1), undefined, 'over the line bound');
});

test('forwarded references are claimed by the new holder, who then fetches from the origin', () => {
  const o = new OriginCache<string>({ machine: 1, slot: 0, maxLines: 4, maxBytes: 100 });
  const id = o.reference('C', 'payload', 10)!;
  throwsCode(() => o.fetch('B', id), 'EACCES');
  throwsCode(() => o.transfer('C', 'B', id, 2), 'EACCES'); // widened: C holds only one
  o.transfer('C', 'B', id, 1);
  assert.is(o.fetch('B', id), 'payload');
  throwsCode(() => o.fetch('C', id), 'EACCES');
  o.deref('B', id, 1);
  assert.is(o.lineCount, 0);
});

test('forced flush under a tiny origin cache: the holder adopts what it needs, then de-refs', () => {
  const o = new OriginCache<Uint8Array>({ machine: 3, slot: 0, maxLines: 2, maxBytes: 64 });
  const h = new HeldRefs<Uint8Array>({ maxCopyBytes: 32, derefBatch: 100, derefDelayMs: 50 });
  const a = o.reference('B', new Uint8Array(32).fill(1), 32)!;
  const b = o.reference('B', new Uint8Array(32).fill(2), 32)!;
  h.receive(a);
  h.receive(b);
  assert.ok(h.keep(a, o.fetch('B', a), 32), 'a is copied locally');
  assert.not.ok(h.keep(b, o.fetch('B', b), 32), 'no room to copy b too');
  assert.is(o.reference('B', new Uint8Array(1), 1), undefined, 'origin full');
  const [req] = o.forceFlush(64);
  assert.is(req!.holder, 'B');
  assert.not.ok(o.addRef('B', a), 'a line being flushed gets no new references');
  const needs = h.flushNeeds(req!.refs);
  assert.equal(needs, [b], 'only b must be fetched before it can be given back');
  const keptA = h.adopt(a, 0);
  const keptB = h.adopt(b, 0, o.fetch('B', b));
  assert.is(keptA[0], 1);
  assert.is(keptB[0], 2);
  const derefs = h.pollDerefs(0)!;
  for (const d of derefs) o.deref('B', d.id, d.n);
  assert.is(o.lineCount, 0, 'origin freed both');
  assert.ok(o.reference('B', new Uint8Array(1), 1), 'and has room again');
});

test('a holder may drop its copy and fetch again until it de-refs', () => {
  const o = new OriginCache<string>({ machine: 3, slot: 0, maxLines: 2, maxBytes: 64 });
  const h = new HeldRefs<string>({ maxCopyBytes: 64, derefBatch: 2, derefDelayMs: 10 });
  const id = o.reference('B', 'v1', 2)!;
  h.receive(id);
  h.keep(id, o.fetch('B', id), 2);
  h.drop(id);
  assert.is(h.local(id), undefined);
  assert.is(h.copyByteCount, 0);
  assert.is(o.fetch('B', id), 'v1', 'fetched again');
  h.release(id, 1, 100);
  assert.is(h.pollDerefs(105), undefined, 'batched: not yet');
  assert.is(h.nextTimeout(), 110);
  assert.equal(h.pollDerefs(110), [{ id, n: 1 }]);
});

test('de-refs batch by count', () => {
  const h = new HeldRefs<string>({ maxCopyBytes: 0, derefBatch: 3, derefDelayMs: 1000 });
  const ids: CacheId[] = [1n, 2n, 3n];
  for (const id of ids) h.receive(id);
  h.release(1n, 1, 0);
  h.release(2n, 1, 0);
  assert.is(h.pollDerefs(0), undefined);
  h.release(3n, 1, 0);
  assert.is(h.pollDerefs(0)!.length, 3);
});

test('random references, forwards, drops and de-refs always return every origin count to zero (500 cases)', () => {
  for (let seed = 1; seed <= 500; seed++) {
    let s = seed;
    const r = () => ((s = (s * 1103515245 + 12345) & 0x7fffffff) / 0x80000000);
    const o = new OriginCache<number>({ machine: 9, slot: 2, maxLines: 16, maxBytes: 1 << 20 });
    const holders = ['B', 'C', 'D'];
    const tables = new Map(holders.map((n) => [n, new HeldRefs<number>({ maxCopyBytes: 8, derefBatch: 4, derefDelayMs: 5 })]));
    const issued = new Set<CacheId>();
    const heldBy = (h: HeldRefs<number>) => [...issued].filter((id) => h.count(id) > 0);
    let now = 0;
    for (let step = 0; step < 200; step++) {
      now++;
      const hName = holders[Math.floor(r() * holders.length)]!;
      const h = tables.get(hName)!;
      const x = r();
      if (x < 0.3) {
        const id = o.reference(hName, step, 1, 1 + Math.floor(r() * 2));
        if (id !== undefined) {
          issued.add(id);
          h.receive(id, o.refCount(id));
        }
      } else if (x < 0.5) {
        // Forward one reference to another holder, which claims it.
        const mine = heldBy(h);
        const id = mine[Math.floor(r() * mine.length)];
        const to = holders[Math.floor(r() * holders.length)]!;
        if (id !== undefined && to !== hName) {
          h.release(id, 1, now);
          // The forward replaces a de-ref: take it back out of the batch by claiming at the origin instead.
          const batch = h.pollDerefs(Number.POSITIVE_INFINITY) ?? [];
          for (const d of batch) {
            if (d.id === id) {
              o.transfer(hName, to, id, 1);
              tables.get(to)!.receive(id, 1);
              if (d.n > 1) o.deref(hName, id, d.n - 1);
            } else o.deref(hName, d.id, d.n);
          }
        }
      } else if (x < 0.8) {
        const mine = heldBy(h);
        const id = mine[Math.floor(r() * mine.length)];
        if (id !== undefined) {
          assert.is(typeof o.fetch(hName, id), 'number');
          if (r() < 0.5) h.keep(id, o.fetch(hName, id), 1);
          else h.drop(id);
          h.release(id, 1, now);
        }
      }
      for (const [n, t] of tables) for (const d of t.pollDerefs(now) ?? []) o.deref(n, d.id, d.n);
    }
    // Everyone lets go of everything.
    for (const [n, t] of tables) {
      for (const id of heldBy(t)) t.release(id, t.count(id), now);
      for (const d of t.pollDerefs(Number.POSITIVE_INFINITY) ?? []) o.deref(n, d.id, d.n);
    }
    assert.ok(issued.size > 10, `seed ${seed}: only ${issued.size} references issued`);
    assert.is(o.lineCount, 0, `seed ${seed}: origin still holds ${o.lineCount} lines`);
    assert.is(o.byteCount, 0);
  }
});

test.run();
