/**
 * Reads answered by reference, in-process nodes over real TCP on loopback:
 * an owner, a holder A (a managed mount that pulled the region, serves its
 * copy and offers it to the owner), a puller B (a managed mount asking the
 * owner for references). B's chunks come from A — counted at the owner (its
 * READ bytes), at A (bytes served by hold.fetch) and at B — and B's copy is
 * the owner's bytes. A lying holder is caught by the owner's signed hashes:
 * its chunks are fetched from the owner instead, and a holder that keeps
 * lying is dropped. Two holders forced onto one machine part are refused,
 * never confused. The delegation B got is good for hold.fetch at A only.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { generateIdentity, type Identity } from '../../crypto/identity.ts';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { argsOf } from '../../p2p/copy/wire.ts';
import { mountTicket, type MountedTicket } from '../../p2p/mount.ts';
import { MachineCollisionError, MachineDirectory, makeCacheId } from '../../p2p/protocol/cache-id.ts';
import { RemoteRegion } from '../../p2p/remote/region.ts';
import { shareRegion, type SharedRegion, type ShareOptions } from '../../p2p/share.ts';
import { REF_LOCATE, startHolding, type Holding } from '../../p2p/sync/held-chunks.ts';
import { openManaged, type ManagedMount } from '../../p2p/sync/managed.ts';
import { PeerDialer } from '../../p2p/copy/dial.ts';
import { openDelegation } from '../../crypto/delegation.ts';
import { openGrant } from '../../crypto/grant.ts';
import { Scope, eventually, withTimeout } from '../helpers/env.ts';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;
const CHUNK = 256 * 1024;
const CHUNKS = SIZE / CHUNK;

function pattern(seed: number): Uint8Array {
  const d = new Uint8Array(SIZE);
  for (let i = 0; i < SIZE; i += 256) d[i] = ((i >> 8) * 13 + seed) & 0xff;
  return d;
}

interface World {
  s: Scope;
  data: Uint8Array;
  share: SharedRegion;
  owner: Identity;
}

async function world(s: Scope, holders: ShareOptions['holders'] = {}): Promise<World> {
  const owner = await generateIdentity();
  const data = pattern(3);
  const store = new MemoryBackend(SIZE);
  await store.writeAt(data, 0);
  const share = await shareRegion({ identity: owner, store, transport: 'tcp', listen: '127.0.0.1:0', chunkSize: CHUNK, holders });
  s.defer(() => share.close());
  return { s, data, share, owner };
}

async function mount(w: World, id: Identity): Promise<MountedTicket> {
  const m = await mountTicket({ identity: id, ticket: w.share.ticket, region: { requestTimeoutMs: 20_000 } });
  w.s.defer(() => m.close());
  return m;
}

/** A holder: a managed mount with all of the region, serving it and offering it to the owner; `lie` alters the chunks it names. */
async function holder(w: World, opts: { lie?: (chunk: number) => boolean; copyOf?: ManagedMount } = {}): Promise<{ id: Identity; mm: ManagedMount; holding: Holding; seed: SharedRegion }> {
  const id = await generateIdentity();
  const m = await mount(w, id);
  let mm = opts.copyOf;
  if (!mm) {
    mm = await openManaged(m.region, { pullWorkers: 4 });
    const own = mm;
    w.s.defer(() => own.close());
    await mm.synced.whenComplete();
  }
  const copy = mm.synced;
  const seed = await shareRegion({ identity: id, store: mm.store, transport: 'tcp', listen: '127.0.0.1:0', readOnly: true, chunkSize: CHUNK });
  w.s.defer(() => seed.close());
  const lie = opts.lie;
  const holding = startHolding({
    owner: m.region,
    identity: id,
    copy: {
      isLocal: (i) => copy.isLocal(i),
      readIfLocal: (buf, off) => {
        const p = copy.readIfLocal(buf, off);
        return p && lie ? p.then(() => void (lie(off / CHUNK) && (buf[7] = buf[7]! ^ 0x5a))) : p;
      },
    },
    seed: { server: seed.server, regionId: seed.regionId, endpoints: seed.endpoints },
    chunkSize: CHUNK,
    intervalMs: 300,
  });
  w.s.defer(() => holding.stop());
  const key = Buffer.from(id.publicKey).toString('hex');
  await eventually(20_000, () => `the owner lists the holder with every chunk (offer: ${holding.offer.lastError ?? "no error"}, ${JSON.stringify(w.share.holders.view())})`, () => w.share.holders.view().holders.some((h) => h.key === key && h.chunks === CHUNKS));
  return { id, mm, holding, seed };
}

async function puller(w: World, extra: { machineOf?: (k: Uint8Array) => number } = {}, workers = 4): Promise<{ id: Identity; m: MountedTicket; mm: ManagedMount }> {
  const id = await generateIdentity();
  const m = await mount(w, id);
  const mm = await openManaged(m.region, { pullWorkers: workers, byReference: { identity: id, slowMs: 30_000, ...extra } });
  w.s.defer(() => mm.close());
  return { id, m, mm };
}

async function sameBytes(mm: ManagedMount, data: Uint8Array): Promise<boolean> {
  const back = new Uint8Array(SIZE);
  await mm.store.readAt(back, 0);
  return Buffer.from(back).equals(Buffer.from(data));
}

test('the puller fetches every chunk from the holder the owner names, not from the owner', async () => {
  const s = new Scope();
  try {
    await withTimeout(90_000, 'by reference', async () => {
      const w = await world(s);
      const a = await holder(w);
      const ownerReadBefore = w.share.server.stats.bytesRead;
      const b = await puller(w);
      await b.mm.synced.whenComplete();
      assert.ok(await sameBytes(b.mm, w.data), "B's copy is the owner's bytes");
      const r = b.mm.status.references()!;
      assert.is(r.holderBytes, SIZE, `every byte from the holder (${r.holderBytes} of ${SIZE}; owner ${r.ownerBytes})`);
      assert.is(r.ownerBytes, 0);
      assert.is(r.badChunks, 0);
      assert.is(w.share.server.stats.bytesRead - ownerReadBefore, 0, 'the owner served no chunk bytes to B');
      assert.is(a.holding.served.bytes, SIZE, 'the holder served them');
      assert.ok(w.share.holders.view().stats.referenced >= CHUNKS);
      assert.is(r.holders.length, 1);
      assert.is(r.holders[0]!.chunks, CHUNKS);
    });
  } finally {
    await s.close();
  }
});

test('a lying holder: its bad chunks are refetched from the owner; one that keeps lying is dropped', async () => {
  const s = new Scope();
  try {
    await withTimeout(120_000, 'lying holder', async () => {
      const w = await world(s);
      // Two bad chunks: caught and refetched, the holder keeps serving the rest.
      const a = await holder(w, { lie: (i) => i === 2 || i === 21 });
      const before = w.share.server.stats.bytesRead;
      const b = await puller(w);
      await b.mm.synced.whenComplete();
      assert.ok(await sameBytes(b.mm, w.data), "B's copy is the owner's bytes despite the lies");
      let r = b.mm.status.references()!;
      assert.is(r.badChunks, 2);
      assert.is(r.ownerChunks, 2, 'the two bad chunks came from the owner');
      assert.is(r.holderChunks, CHUNKS - 2);
      assert.is(r.holders[0]!.banned, false, 'two strikes do not drop it');
      assert.is(w.share.server.stats.bytesRead - before, 2 * CHUNK);
      await a.holding.stop();
      await eventually(10_000, () => 'the withdrawn holder is gone from the board', () => w.share.holders.view().holders.length === 0);

      // A holder lying about every chunk: three strikes, dropped, excluded; the owner serves the rest.
      await holder(w, { lie: () => true, copyOf: a.mm });
      const c = await puller(w);
      await c.mm.synced.whenComplete();
      assert.ok(await sameBytes(c.mm, w.data), "C's copy is the owner's bytes");
      r = c.mm.status.references()!;
      assert.is(r.holderChunks, 0, 'no lying chunk was used');
      assert.is(r.holders[0]!.banned, true, 'the liar is dropped');
      assert.ok(r.badChunks >= 3, `strikes: ${r.badChunks}`);
      assert.is(r.ownerChunks, CHUNKS);
    });
  } finally {
    await s.close();
  }
});

test('two holders on one machine part: their references are refused with MachineCollisionError, never confused', async () => {
  const s = new Scope();
  try {
    await withTimeout(120_000, 'collision', async () => {
      const forced = () => 0x00c0de;
      const w = await world(s, { machineOf: forced });
      const a = await holder(w);
      // A second holder of the same copy under another key (its own seed share and offer).
      await holder(w, { copyOf: a.mm });
      const b = await puller(w, { machineOf: forced });
      await b.mm.synced.whenComplete();
      assert.ok(await sameBytes(b.mm, w.data));
      const r = b.mm.status.references()!;
      assert.ok(r.collisions > 0, `collisions seen: ${r.collisions}`);
      assert.is(r.holders.length, 2);
      assert.is(r.holderChunks + r.ownerChunks, CHUNKS);
    });
  } finally {
    await s.close();
  }
});

test('a holder that keeps offering but cannot be reached: left alone for a while, every chunk from the owner', async () => {
  const s = new Scope();
  try {
    await withTimeout(90_000, 'unreachable holder', async () => {
      const w = await world(s);
      const a = await holder(w);
      // Its seed share goes away; its offers to the owner go on (the owner keeps naming it).
      await a.seed.close();
      // One worker: the first run finds the holder down, the later ones are not sent there.
      const b = await puller(w, {}, 1);
      await b.mm.synced.whenComplete();
      assert.ok(await sameBytes(b.mm, w.data));
      const r = b.mm.status.references()!;
      assert.is(r.holderChunks, 0);
      assert.is(r.ownerChunks, CHUNKS);
      assert.ok(r.holders[0]!.failures >= 1);
      assert.ok(r.fallbacks < CHUNKS, `once down, the holder is not asked for every chunk (fallbacks ${r.fallbacks} of ${CHUNKS})`);
      assert.is(w.share.holders.view().holders.length, 1, 'the owner still lists it');
    });
  } finally {
    await s.close();
  }
});

test('MachineDirectory: a forced collision names no one, and resolve says who collided', async () => {
  const dir = new MachineDirectory(() => 7);
  const k1 = new Uint8Array(32).fill(1);
  const k2 = new Uint8Array(32).fill(2);
  assert.is(dir.add(k1).collision, false);
  assert.equal(dir.resolve(makeCacheId(7, 0, 1)), k1);
  assert.is(dir.add(k2).collision, true);
  assert.is(dir.keyOf(makeCacheId(7, 0, 1)), undefined);
  try {
    dir.resolve(makeCacheId(7, 0, 1));
    assert.unreachable('resolved an ambiguous id');
  } catch (e) {
    assert.instance(e, MachineCollisionError);
    assert.is((e as MachineCollisionError).keys.length, 2);
    assert.is((e as MachineCollisionError).code, 'EINVAL');
  }
  assert.throws(() => dir.resolve(makeCacheId(8, 0, 1)), /does not know/);
});

test("the owner's delegation opens the holder for hold.fetch only, and only for the peer it names", async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'delegation', async () => {
      const w = await world(s);
      await holder(w);
      const bId = await generateIdentity();
      const b = await mount(w, bId);
      const ans = argsOf(await b.region.call(REF_LOCATE, { from: 0, count: 4 }), 'test');
      const delegation = (ans.holders as Array<{ delegation: Uint8Array }>)[0]!.delegation;
      assert.is((ans.refs as unknown[]).length, 4);
      const g = await openGrant((await openDelegation(delegation)).grant);
      const open = async (who: Identity) => {
        const dialer = new PeerDialer(who);
        s.defer(() => dialer.close());
        const r = await dialer.open({ endpoints: g.endpoints, sharer: g.sharer, regionId: g.regionId, grant: delegation, readOnly: true, agent: 'test', requestTimeoutMs: 10_000, waitForLinkMs: 0 });
        s.defer(() => r.close());
        return r;
      };
      const rb = await open(bId);
      const plain = await rb.readAt(new Uint8Array(4096), 0).then(() => 'read', (e) => (e as { code?: string }).code);
      assert.is(plain, 'EACCES', 'no plain READ on a delegated session');
      const other = await generateIdentity();
      const refused = await open(other).then(() => 'opened', (e) => (e as { code?: string }).code);
      assert.is(refused, 'EACCES', 'a delegation bound to B is refused to anyone else');
      assert.ok(RemoteRegion);
    });
  } finally {
    await s.close();
  }
});

test.run();
