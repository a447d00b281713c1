/**
 * Third-party copy and cache references over the loopback transport, in one
 * process (p2p/copy): A shares the source, B the destination, C runs the
 * copy; what crosses C, refcounts back to zero, forced flush under a tiny
 * origin cache, a target that drops pieces and fetches them again, the
 * same-node case, and forged / widened / replayed references refused.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { randomBytes } from 'node:crypto';
import { generateIdentity, type Identity } from '../../crypto/identity.ts';
import { parseTicket } from '../../crypto/ticket.ts';
import { signDelegation } from '../../crypto/delegation.ts';
import { LoopbackNetwork, LoopbackTransport } from '../../transports/loopback.ts';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { shareRegion, type ShareOptions, type SharedRegion } from '../../p2p/share.ts';
import { runCopy } from '../../p2p/copy/orchestrate.ts';
import { RefOrigin } from '../../p2p/copy/ref-origin.ts';
import { PeerDialer } from '../../p2p/copy/dial.ts';
import { COPY_FETCH, REF_CLAIM, REF_DEREF, REF_FETCH, REF_READ, decodeRefPieces, idBytes } from '../../p2p/copy/wire.ts';
import { makeCacheId } from '../../p2p/protocol/cache-id.ts';
import { QuicmapError } from '../../base/errors.ts';
import { withTimeout } from '../helpers/env.ts';

const MiB = 1 << 20;

async function rejects(p: Promise<unknown>, code: string, re: RegExp): Promise<void> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof QuicmapError && e.code === code, `expected ${code}, got ${(e as QuicmapError).code}: ${(e as Error).message}`);
    assert.match((e as Error).message, re);
    return;
  }
  assert.unreachable('did not reject');
}

interface World {
  net: LoopbackNetwork;
  a: Identity;
  b: Identity;
  c: Identity;
  data: Uint8Array;
  srcStore: MemoryBackend;
  dstStore: MemoryBackend;
  A: SharedRegion;
  B: SharedRegion;
  srcTicket: string;
  close(): Promise<void>;
}

/** A destination whose writes take a while (a busy disk): fetched pieces pile up waiting for their write. */
class SlowStore extends MemoryBackend {
  override async writeAt(data: Uint8Array, offset: number): Promise<void> {
    await new Promise((r) => setTimeout(r, 200));
    return super.writeAt(data, offset);
  }
}

/** A destination whose write at one offset fails once (a transient disk error). */
class FailOnceStore extends MemoryBackend {
  failAt = -1;
  override async writeAt(data: Uint8Array, offset: number): Promise<void> {
    await new Promise((r) => setTimeout(r, 2));
    if (offset === this.failAt) {
      this.failAt = -1;
      throw new QuicmapError('EIO', 'injected write failure');
    }
    return super.writeAt(data, offset);
  }
}

async function world(size: number, extra: { a?: Partial<ShareOptions>; b?: Partial<ShareOptions>; slowB?: boolean; failB?: number } = {}): Promise<World> {
  const net = new LoopbackNetwork();
  const [a, b, c] = await Promise.all([generateIdentity(), generateIdentity(), generateIdentity()]);
  const data = new Uint8Array(randomBytes(size));
  const srcStore = new MemoryBackend(size);
  await srcStore.writeAt(data, 0);
  const dstStore = extra.slowB ? new SlowStore(size) : extra.failB !== undefined ? Object.assign(new FailOnceStore(size), { failAt: extra.failB }) : new MemoryBackend(size);
  const A = await shareRegion({ identity: a, store: srcStore, transport: new LoopbackTransport(a, { network: net }), listen: 'a:0', ...extra.a });
  const B = await shareRegion({ identity: b, store: dstStore, transport: new LoopbackTransport(b, { network: net }), listen: 'b:0', ...extra.b });
  const srcTicket = await A.issue({ readOnly: true });
  return {
    net, a, b, c, data, srcStore, dstStore, A, B, srcTicket,
    async close() {
      await A.close();
      await B.close();
    },
  };
}

async function read(store: MemoryBackend, offset: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  await store.readAt(out, offset);
  return out;
}

test('A → B orchestrated by C: identical bytes, C carries under 1 %, refcounts back to zero', () =>
  withTimeout(30_000, 'copy', async () => {
    const w = await world(16 * MiB);
    try {
      let progress = 0;
      const s = await runCopy({ identity: w.c, src: w.srcTicket, dst: w.B.ticket, transport: new LoopbackTransport(w.c, { network: w.net }), onProgress: (d) => (progress = d) });
      assert.is(s.bytes, 16 * MiB);
      assert.is(progress, 16 * MiB);
      assert.ok(Buffer.from(await read(w.dstStore, 0, 16 * MiB)).equals(w.data), 'destination equals source');
      assert.ok(s.throughC < 0.01 * 16 * MiB, `bytes through C: ${s.throughC}`);
      assert.is(s.inlineBytes, 0);
      assert.is(s.duplicateAcks, 0);
      assert.is(s.sameNode, false);
      assert.is(s.sourceRefs, 0);
      const v = w.A.refs.view();
      assert.is(v.refs, 0, 'every reference given back');
      assert.is(v.lines, 0, 'every cache line freed');
      assert.is(v.references, 32, 'one reference per 512 KiB piece');
      assert.is(v.fetchedBytes, 16 * MiB, 'B fetched each piece once, from A');
      assert.is(w.B.copyTarget.stats.bytes, 16 * MiB);
    } finally {
      await w.close();
    }
  }),
);

test('--through-here: the plain copy carries every byte through C (the comparison the benchmark makes)', () =>
  withTimeout(30_000, 'through', async () => {
    const w = await world(4 * MiB);
    try {
      const s = await runCopy({ identity: w.c, src: w.srcTicket, dst: w.B.ticket, through: true, transport: new LoopbackTransport(w.c, { network: w.net }) });
      assert.is(s.bytes, 4 * MiB);
      assert.ok(s.throughC > 2 * 4 * MiB, `through C: ${s.throughC}`);
      assert.is(w.A.refs.view().references, 0, 'no references made');
      assert.ok(Buffer.from(await read(w.dstStore, 0, 4 * MiB)).equals(w.data));
    } finally {
      await w.close();
    }
  }),
);

test('a piece the destination fails to write: the batch is given back and asked for again; nothing left held', () =>
  withTimeout(30_000, 'retry', async () => {
    const w = await world(8 * MiB, { failB: 2 * MiB + (512 << 10) });
    try {
      const s = await runCopy({ identity: w.c, src: w.srcTicket, dst: w.B.ticket, transport: new LoopbackTransport(w.c, { network: w.net }) });
      assert.is(s.bytes, 8 * MiB);
      assert.ok(s.retriedBatches >= 1, `retried ${s.retriedBatches}`);
      assert.is(s.duplicateAcks, 0);
      assert.is(w.B.copyTarget.stats.failedBatches, 1);
      assert.ok(Buffer.from(await read(w.dstStore, 0, 8 * MiB)).equals(w.data));
      assert.is(w.A.refs.view().refs, 0, 'the failed batch\'s references were given back');
    } finally {
      await w.close();
    }
  }),
);

test('offsets and lengths: SRC:OFFSET+LENGTH into DST:OFFSET, nothing else touched', () =>
  withTimeout(30_000, 'copy range', async () => {
    const w = await world(4 * MiB);
    try {
      const s = await runCopy({ identity: w.c, src: w.srcTicket, srcOffset: 12345, length: MiB + 77, dst: w.B.ticket, dstOffset: 2 * MiB + 1, transport: new LoopbackTransport(w.c, { network: w.net }) });
      assert.is(s.bytes, MiB + 77);
      assert.ok(Buffer.from(await read(w.dstStore, 2 * MiB + 1, MiB + 77)).equals(w.data.subarray(12345, 12345 + MiB + 77)));
      assert.ok((await read(w.dstStore, 0, 2 * MiB + 1)).every((x) => x === 0), 'before the destination range untouched');
      await rejects(runCopy({ identity: w.c, src: w.srcTicket, srcOffset: 3 * MiB, length: 2 * MiB, dst: w.B.ticket, transport: new LoopbackTransport(w.c, { network: w.net }) }), 'EINVAL', /past the source/);
      await rejects(runCopy({ identity: w.c, src: w.srcTicket, dst: await w.B.issue({ readOnly: true }), transport: new LoopbackTransport(w.c, { network: w.net }) }), 'EPERM', /read-only/);
    } finally {
      await w.close();
    }
  }),
);

test('a tiny origin cache forces flushes: the target copies what it holds and de-refs; the copy completes', () =>
  withTimeout(60_000, 'flush', async () => {
    const w = await world(16 * MiB, { a: { refCache: { maxBytes: 2 * MiB, flushWaitMs: 5_000 } } });
    try {
      const s = await runCopy({ identity: w.c, src: w.srcTicket, dst: w.B.ticket, batchBytes: 2 * MiB, window: 4, transport: new LoopbackTransport(w.c, { network: w.net }) });
      assert.is(s.bytes, 16 * MiB);
      assert.ok(Buffer.from(await read(w.dstStore, 0, 16 * MiB)).equals(w.data));
      const v = w.A.refs.view();
      assert.ok(v.flushRequests > 0, `flush requests: ${v.flushRequests}`);
      assert.is(v.refs, 0);
      assert.is(v.lines, 0);
    } finally {
      await w.close();
    }
  }),
);

test('a forced flush reaches the holder, which fetches what it holds and de-refs; the read then gets a reference', () =>
  withTimeout(30_000, 'flush holder', async () => {
    const store = new MemoryBackend(4 * MiB);
    const data = new Uint8Array(randomBytes(4 * MiB));
    await store.writeAt(data, 0);
    const o = new RefOrigin({ identity: await generateIdentity(), store, maxBytes: MiB, flushWaitMs: 10_000 });
    try {
      // B holds the whole cache and sits on it.
      const held = await o.read('B', 0, MiB, 1 << 20);
      assert.is(o.view().bytes, MiB);
      const pending = o.read('C', MiB, 512 << 10, 1 << 20);
      const due = await o.events('B', 10_000);
      assert.ok(due.length >= 1, 'B is told to give references back');
      assert.ok(due.every((r) => held.some((p) => p.id === r.id)));
      // B makes the pieces its own (fetch, keep the bytes), then de-refs.
      for (const r of due) assert.ok(Buffer.from(o.fetch('B', r.id).data).equals(data.subarray(Number(held.find((p) => p.id === r.id)!.offset), Number(held.find((p) => p.id === r.id)!.offset) + (512 << 10))));
      o.deref('B', due);
      const got = await pending;
      assert.ok(got.length === 1 && got[0]!.id !== undefined, 'room was made: a reference, not inline data');
      assert.ok(o.view().flushRequests >= 1);
      assert.is(o.view().inlinePieces, 0);
    } finally {
      o.close();
    }
  }),
);

test('a full origin cache degrades to inline data, never to failure', () =>
  withTimeout(60_000, 'inline', async () => {
    // One piece of room and no time to wait for a flush: most pieces come inline through C.
    const w = await world(4 * MiB, { a: { refCache: { maxBytes: 512 << 10, flushWaitMs: 1 } } });
    try {
      const s = await runCopy({ identity: w.c, src: w.srcTicket, dst: w.B.ticket, batchBytes: 2 * MiB, transport: new LoopbackTransport(w.c, { network: w.net }) });
      assert.is(s.bytes, 4 * MiB);
      assert.ok(s.inlineBytes > 0, 'some pieces inline');
      assert.ok(Buffer.from(await read(w.dstStore, 0, 4 * MiB)).equals(w.data));
      assert.is(w.A.refs.view().refs, 0);
    } finally {
      await w.close();
    }
  }),
);

test('a target with room for one piece drops what it cannot hold and fetches it again', () =>
  withTimeout(60_000, 'drop', async () => {
    const w = await world(8 * MiB, { slowB: true, b: { copyTarget: { holdBytes: 512 << 10, fetchers: 6 } } });
    try {
      const s = await runCopy({ identity: w.c, src: w.srcTicket, dst: w.B.ticket, transport: new LoopbackTransport(w.c, { network: w.net }) });
      assert.is(s.bytes, 8 * MiB);
      assert.ok(Buffer.from(await read(w.dstStore, 0, 8 * MiB)).equals(w.data));
      const t = w.B.copyTarget.stats;
      assert.ok(t.dropped > 0 && t.refetched === t.dropped, `dropped ${t.dropped}, refetched ${t.refetched}`);
      assert.is(w.A.refs.view().fetches, 16 + t.refetched, 'each drop cost one more fetch from A');
      assert.is(w.A.refs.view().refs, 0);
    } finally {
      await w.close();
    }
  }),
);

test('same node: a copy within one region resolves references locally, the bytes never leave A', () =>
  withTimeout(30_000, 'same node', async () => {
    const w = await world(8 * MiB);
    try {
      const s = await runCopy({ identity: w.c, src: w.srcTicket, length: 4 * MiB, dst: w.A.ticket, dstOffset: 4 * MiB, transport: new LoopbackTransport(w.c, { network: w.net }) });
      assert.ok(s.sameNode);
      assert.ok(Buffer.from(await read(w.srcStore, 4 * MiB, 4 * MiB)).equals(w.data.subarray(0, 4 * MiB)));
      assert.is(w.A.copyTarget.stats.localPieces, 8);
      assert.is(w.A.server.stats.sessions, 2, 'only C\'s two sessions: A never dialed itself');
      assert.ok(s.throughC < 0.01 * 4 * MiB);
      assert.is(w.A.refs.view().refs, 0);
      await rejects(runCopy({ identity: w.c, src: w.srcTicket, length: 4 * MiB, dst: w.A.ticket, dstOffset: MiB, transport: new LoopbackTransport(w.c, { network: w.net }) }), 'EINVAL', /overlap/);
    } finally {
      await w.close();
    }
  }),
);

test('a keyed read or de-ref retried after a lost answer is applied once', () =>
  withTimeout(30_000, 'keys', async () => {
    const w = await world(2 * MiB);
    try {
      const o = w.A.refs;
      const first = await o.read('C', 0, MiB, 1 << 20, 'k1');
      const again = await o.read('C', 0, MiB, 1 << 20, 'k1');
      assert.equal(again.map((p) => p.id), first.map((p) => p.id), 'the same references');
      assert.is(o.view().refs, 2, 'not made twice');
      const other = await o.read('C', 0, MiB, 1 << 20, 'k2');
      assert.is(o.view().refs, 4, 'another key is another read');
      const all = [...first, ...other].map((p) => ({ id: p.id!, n: 1 }));
      o.deref('C', all, false, 'd1');
      o.deref('C', all, false, 'd1');
      assert.is(o.view().refs, 0);
      // A retry that arrives while the read it repeats is still running gets that read's answer.
      const [r1, r2] = await Promise.all([o.read('C', MiB, MiB, 1 << 20, 'k3'), o.read('C', MiB, MiB, 1 << 20, 'k3')]);
      assert.equal(r2.map((p) => p.id), r1.map((p) => p.id));
      assert.is(o.view().refs, 2, 'the concurrent retry made nothing new');
      o.deref('C', r1.map((p) => ({ id: p.id!, n: 1 })));
      // Once given back, the key answers afresh (new references), never dangling ones.
      const after = await o.read('C', 0, MiB, 1 << 20, 'k1');
      assert.ok(after.every((p) => o.cache.heldBy('C', p.id!) === 1));
      o.deref('C', after.map((p) => ({ id: p.id!, n: 1 })));
      assert.is(o.view().refs, 0);
    } finally {
      await w.close();
    }
  }),
);

test('forged, widened and replayed references are refused with EACCES', () =>
  withTimeout(30_000, 'refusals', async () => {
    const w = await world(4 * MiB);
    const cDial = new PeerDialer(w.c, new LoopbackTransport(w.c, { network: w.net }));
    const bDial = new PeerDialer(w.b, new LoopbackTransport(w.b, { network: w.net }));
    try {
      const src = await parseTicket(w.srcTicket);
      const dst = await parseTicket(w.B.ticket);
      const at = (t: typeof src, d: PeerDialer, grant: Uint8Array, readOnly = true) =>
        d.open({ endpoints: t.claims.endpoints, sharer: t.claims.sharer, regionId: t.claims.regionId, grant, readOnly, agent: 'test' });
      // C gets references to [0, 2 MiB) and [2 MiB, 4 MiB).
      const cA = await at(src, cDial, src.grant);
      const low = decodeRefPieces(await cA.call(REF_READ, { offset: 0, length: 2 * MiB }), 'read');
      const high = decodeRefPieces(await cA.call(REF_READ, { offset: 2 * MiB, length: 2 * MiB }), 'read');
      assert.is(w.A.refs.view().refs, 8);
      // C delegates only [0, 2 MiB) to B.
      const delegation = await signDelegation(w.c, { grant: src.grant, delegate: w.b.publicKey, offset: 0, length: 2 * MiB, validFor: 60 });
      const bA = await at(src, bDial, delegation);
      // A forged id: right machine, a line nobody holds.
      const forged = makeCacheId(w.A.refs.machine, 0, 99_999);
      await rejects(bA.call(REF_CLAIM, { ids: [idBytes(forged)] }), 'EACCES', /not held/);
      // Widened: a real reference outside the delegated range.
      await rejects(bA.call(REF_CLAIM, { ids: [idBytes(high[0]!.id!)] }), 'EACCES', /outside the delegated/);
      // Not claimed: B holds nothing, so it cannot fetch it.
      await rejects(bA.call(REF_FETCH, { id: idBytes(low[0]!.id!) }), 'EACCES', /not held/);
      // A delegated session fetches by reference only.
      await rejects(bA.readAt(new Uint8Array(4096), 0), 'EACCES', /by reference only/);
      // Claimed; a repeat by the same delegate (its answer lost) is answered as made, and takes nothing more.
      await bA.call(REF_CLAIM, { ids: [idBytes(low[0]!.id!)] });
      assert.equal(await bA.call(REF_CLAIM, { ids: [idBytes(low[0]!.id!)] }), { claimed: 0 });
      const got = (await bA.call(REF_FETCH, { id: idBytes(low[0]!.id!) })) as { data: Uint8Array };
      assert.ok(Buffer.from(got.data).equals(w.data.subarray(0, 512 << 10)));
      // Given back, the reference is gone: replaying the claim (or a fetch) is refused.
      await bA.call(REF_DEREF, { refs: [{ id: idBytes(low[0]!.id!), n: 1 }] });
      await rejects(bA.call(REF_CLAIM, { ids: [idBytes(low[0]!.id!)] }), 'EACCES', /not held/);
      await rejects(bA.call(REF_FETCH, { id: idBytes(low[0]!.id!) }), 'EACCES', /not held/);
      // A widened delegation (re-signed by nobody) does not open a session; another peer cannot use B's.
      const tampered = Uint8Array.from(delegation);
      tampered[tampered.length - 70]! ^= 1;
      await rejects(at(src, bDial, tampered), 'EACCES', /delegation refused/);
      await rejects(at(src, cDial, delegation), 'EACCES', /bound to peer/);
      // Through B: C forwards a forged id; B's claim at A is refused and so is the batch.
      const cB = await at(dst, cDial, dst.grant, false);
      await rejects(cB.call(COPY_FETCH, { delegation, pieces: [{ id: idBytes(forged), src: 0, length: 512 << 10, dst: 0 }] }), 'EACCES', /not held/);
      assert.ok(w.A.refs.view().refused >= 4, `refusals counted: ${w.A.refs.view().refused}`);
      await Promise.all([cA.close(), bA.close(), cB.close()]);
    } finally {
      await cDial.close();
      await bDial.close();
      await w.close();
    }
  }),
);

test('two origins on one machine part at the destination: refused with MachineCollisionError, the copy goes inline, the origins are never confused', () =>
  withTimeout(60_000, 'collision', async () => {
    // Forced: both sources issue IDs with the same machine part, and the destination computes it so too.
    const X = 0xc0de00;
    const size = 4 * MiB;
    const w = await world(size, { a: { refCache: { machine: X } }, b: { copyTarget: { machineOf: () => X } } });
    const a2 = await generateIdentity();
    const data2 = new Uint8Array(randomBytes(size));
    const store2 = new MemoryBackend(size);
    await store2.writeAt(data2, 0);
    const A2 = await shareRegion({ identity: a2, store: store2, transport: new LoopbackTransport(a2, { network: w.net }), listen: 'a2:0', refCache: { machine: X } });
    try {
      const copy = (src: string) => runCopy({ identity: w.c, src, dst: w.B.ticket, transport: new LoopbackTransport(w.c, { network: w.net }) });
      const first = await copy(w.srcTicket);
      assert.is(first.machineCollision, false, 'one origin known: its IDs name it');
      assert.is(first.inlineBytes, 0);
      assert.ok(Buffer.from(await read(w.dstStore, 0, size)).equals(w.data));

      const second = await copy(await A2.issue({ readOnly: true }));
      assert.is(second.machineCollision, true, 'a second origin on the same machine part is detected');
      assert.is(second.inlineBytes, size, 'and the bytes come inline instead');
      assert.ok(w.B.copyTarget.stats.collisions >= 1);
      assert.ok(Buffer.from(await read(w.dstStore, 0, size)).equals(data2), "the destination holds A2's bytes, not A's");
      assert.is(A2.refs.view().refs, 0, 'the refused references were given back');

      const third = await copy(w.srcTicket);
      assert.is(third.machineCollision, true, "A's IDs are ambiguous now too");
      assert.ok(Buffer.from(await read(w.dstStore, 0, size)).equals(w.data));
      assert.is(w.A.refs.view().refs, 0);
    } finally {
      await A2.close();
      await w.close();
    }
  }),
);

test.run();
