/**
 * SealedPages under PagedStore with in-process fake storage peers that can
 * roll back, alter, lose or refuse chunks: freshness, repair, re-replication,
 * quota placement, the cache bound, and no acknowledged write lost.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { randomBytes } from 'node:crypto';
import { QuicmapError } from '../../base/errors.ts';
import { PagedStore, type PageStore } from '../../engine/layers/paged.ts';
import { ChunkUnavailableError, SealedPages, type ChunkPeer } from '../../p2p/ram/sealed-pages.ts';
import { QuotaExceededError } from '../../p2p/ram/vault.ts';

const test = suite('ram-sealed-pages');
const CHUNK = 4096;

class FakePeer implements ChunkPeer {
  blobs = new Map<string, Uint8Array>();
  down = false;
  quota = Infinity;
  puts = 0;
  boot = 'first';
  private used(): number {
    let n = 0;
    for (const b of this.blobs.values()) n += b.length;
    return n;
  }
  private up(): void {
    if (this.down) throw new QuicmapError('EIO', 'peer unreachable');
  }
  async put(id: Uint8Array, blob: Uint8Array) {
    this.up();
    const k = Buffer.from(id).toString('hex');
    const old = this.blobs.get(k)?.length ?? 0;
    if (this.used() - old + blob.length > this.quota) throw new QuotaExceededError(blob.length, this.used(), this.quota);
    this.blobs.set(k, Uint8Array.prototype.slice.call(blob));
    this.puts++;
    return { used: this.used(), quota: this.quota, chunks: this.blobs.size };
  }
  async get(id: Uint8Array) {
    this.up();
    // The caller owns what get returns (SealedPages opens chunks in place), as with a real peer's reply.
    const b = this.blobs.get(Buffer.from(id).toString('hex'));
    return b ? Uint8Array.prototype.slice.call(b) : null;
  }
  async del(id: Uint8Array) {
    this.up();
    this.blobs.delete(Buffer.from(id).toString('hex'));
  }
  async sync() {
    this.up();
  }
  async info() {
    this.up();
    return { used: this.used(), quota: this.quota === Infinity ? 1e15 : this.quota, chunks: this.blobs.size, boot: this.boot };
  }
  /** Flip bits of byte `at` in every blob held (a peer altering what it stores). */
  alter(at: number, mask: number): void {
    for (const [k, b] of this.blobs) {
      const t = Uint8Array.prototype.slice.call(b);
      t[at]! ^= mask;
      this.blobs.set(k, t);
    }
  }
  snapshot(): Map<string, Uint8Array> {
    return new Map(this.blobs);
  }
}

function setup(n: number, k: number, chunks = 64, chunkSize = CHUNK) {
  const peers = Array.from({ length: n }, () => new FakePeer());
  const logs: string[] = [];
  const pages = new SealedPages({
    secret: randomBytes(32),
    regionId: randomBytes(16),
    chunkSize,
    chunks,
    peers: peers.map((peer, i) => ({ name: `p${i}`, peer })),
    replicas: k,
    log: (m) => logs.push(m),
  });
  return { peers, pages, logs };
}

async function rejects(fn: () => Promise<unknown>, ok: RegExp | ((e: unknown) => boolean)): Promise<void> {
  try {
    await fn();
  } catch (e) {
    assert.ok(ok instanceof RegExp ? ok.test((e as Error).message) : ok(e), `unexpected error: ${(e as Error).message}`);
    return;
  }
  assert.unreachable('it did not fail');
}

const fill = (byte: number) => new Uint8Array(CHUNK).fill(byte);

test('each saved chunk is on K peers, sealed; loads give it back', async () => {
  const { peers, pages } = setup(3, 2);
  for (let i = 0; i < 20; i++) await pages.save(i, fill(i + 1));
  const total = peers.reduce((a, p) => a + p.blobs.size, 0);
  assert.is(total, 40);
  for (const p of peers) for (const b of p.blobs.values()) assert.not.ok(Buffer.from(b).includes(Buffer.alloc(32, 5)));
  for (let i = 0; i < 20; i++) assert.equal(await pages.load(i), fill(i + 1));
  assert.is(await pages.load(30), null, 'a chunk never saved reads as zeros');
});

test('rollback on one replica: detected, served from the other, repaired, the peer reported', async () => {
  const { peers, pages, logs } = setup(2, 2);
  await pages.save(3, fill(1));
  await pages.probe();
  const old = peers.map((p) => p.snapshot());
  await pages.save(3, fill(2));
  peers[0]!.blobs = old[0]!; // peer 0 restarts from an old copy
  peers[0]!.boot = 'second';
  await pages.probe(); // sees the restart: audits peer 0
  assert.equal(await pages.load(3), fill(2));
  await pages.close(); // waits for the background audit and repair
  const r = pages.peerReports();
  assert.ok(r[0]!.stale >= 1);
  assert.ok(r[0]!.repaired >= 1);
  assert.is(r[1]!.stale, 0);
  assert.ok(logs.some((l) => /p0: chunk 3 (came back|is) stale \(version 1, expected 2\)/.test(l)), logs.join('\n'));
  // Repaired: peer 1 alone gone, peer 0 now serves the current version.
  peers[1]!.down = true;
  assert.equal(await pages.load(3), fill(2));
});

test('every replica stale or altered: a ChunkUnavailableError naming each, never old data', async () => {
  const { peers, pages } = setup(2, 2);
  await pages.save(0, fill(1));
  const old = peers.map((p) => p.snapshot());
  await pages.save(0, fill(2));
  peers[0]!.blobs = old[0]!;
  peers[1]!.alter(100, 0x80);
  try {
    await pages.load(0);
    assert.unreachable('read old or altered data');
  } catch (e) {
    assert.instance(e, ChunkUnavailableError);
    assert.is((e as QuicmapError).code, 'EIO');
    assert.match((e as Error).message, /p0: stale \(version 1, expected 2\)/);
    assert.match((e as Error).message, /p1: altered/);
  }
  assert.is(pages.peerReports()[1]!.tampered, 1);
});

test('K = 1 with a rolled-back peer: the read fails (typed), it does not return the old version', async () => {
  const { peers, pages } = setup(1, 1);
  await pages.save(5, fill(7));
  const old = peers[0]!.snapshot();
  await pages.save(5, fill(8));
  peers[0]!.blobs = old;
  await rejects(() => pages.load(5), (e: unknown) => e instanceof ChunkUnavailableError && /stale/.test((e as Error).message));
});

test('a swapped chunk (another index under this id) is detected', async () => {
  const { peers, pages } = setup(1, 1);
  await pages.save(1, fill(1));
  await pages.save(2, fill(2));
  const [k1, k2] = [...peers[0]!.blobs.keys()];
  const b1 = peers[0]!.blobs.get(k1!)!;
  peers[0]!.blobs.set(k1!, peers[0]!.blobs.get(k2!)!);
  peers[0]!.blobs.set(k2!, b1);
  await rejects(() => pages.load(1), (e: unknown) => e instanceof ChunkUnavailableError);
});

test('a lost peer: reads go on from the others and its chunks are copied back to K', async () => {
  const { peers, pages } = setup(3, 2);
  for (let i = 0; i < 30; i++) await pages.save(i, fill(i));
  peers[1]!.down = true;
  for (let n = 0; n < 3; n++) await pages.probe();
  assert.is(pages.peerReports()[1]!.state, 'lost');
  for (let i = 0; i < 30; i++) assert.equal(await pages.load(i), fill(i));
  await pages.idle();
  const rep = pages.replication();
  assert.is(rep.underReplicated, 0);
  assert.ok(rep.copied > 0);
  // Every chunk now on the two live peers.
  assert.is(peers[0]!.blobs.size, 30);
  assert.is(peers[2]!.blobs.size, 30);
  // And readable with only them.
  for (let i = 0; i < 30; i++) assert.equal(await pages.load(i), fill(i));
});

test('a peer past its quota: the chunk goes to another peer, the refusal counted', async () => {
  const { peers, pages } = setup(3, 1);
  peers[0]!.quota = 0;
  peers[1]!.quota = 0;
  for (let i = 0; i < 10; i++) await pages.save(i, fill(i));
  assert.is(peers[2]!.blobs.size, 10);
  const r = pages.peerReports();
  assert.ok(r[0]!.quotaRefusals + r[1]!.quotaRefusals > 0);
  peers[2]!.quota = peers[2]!.blobs.size * (CHUNK + 24);
  await rejects(() => pages.save(20, fill(1)), (e: unknown) => (e as QuicmapError).code === 'EIO' && /no storage peer took it/.test((e as Error).message));
  // The failed save changed nothing: the old chunks still read.
  assert.equal(await pages.load(3), fill(3));
});

class MapPages implements PageStore {
  saved = new Map<number, Uint8Array>();
  failSaves = false;
  // A turn of the event loop per call, as a real peer takes: races between requests show.
  async load(i: number) {
    await new Promise((r) => setImmediate(r));
    return this.saved.get(i)?.slice() ?? null;
  }
  async save(i: number, d: Uint8Array) {
    await new Promise((r) => setImmediate(r));
    if (this.failSaves) throw new QuicmapError('EIO', 'save failed');
    this.saved.set(i, d);
  }
  async discard(i: number) {
    this.saved.delete(i);
  }
  async flush() {}
  async close() {}
}

test('PagedStore: random I/O matches a model, the cache never exceeds its bound', async () => {
  const size = 64 * CHUNK;
  const pages = new MapPages();
  const store = new PagedStore({ size, chunkSize: CHUNK, cacheBytes: 6 * CHUNK, pages, writeBackMs: 0 });
  const model = new Uint8Array(size);
  let seed = 7;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
  for (let op = 0; op < 600; op++) {
    const off = rnd(size - 1);
    const len = 1 + rnd(Math.min(3 * CHUNK, size - off));
    const kind = rnd(10);
    if (kind < 5) {
      const d = randomBytes(len);
      // Several requests at once, as an NBD client would send them.
      await Promise.all([store.writeAt(d, off), store.readAt(new Uint8Array(16), rnd(size - 16))]);
      model.set(d, off);
    } else if (kind < 6) {
      await store.writeZeroes(off, len);
      model.fill(0, off, off + len);
    } else if (kind < 7) {
      await store.flush();
    } else {
      const b = new Uint8Array(len);
      await store.readAt(b, off);
      assert.ok(Buffer.from(b).equals(Buffer.from(model.subarray(off, off + len))), `op ${op}: read [${off}, +${len}) differs`);
    }
    assert.ok(store.pagedStats.cachedChunks <= 6, `op ${op}: ${store.pagedStats.cachedChunks} chunks cached`);
  }
  await store.flush();
  assert.is(store.pagedStats.dirtyChunks, 0);
  const all = new Uint8Array(size);
  await store.readAt(all, 0);
  assert.ok(Buffer.from(all).equals(Buffer.from(model)));
});

test('PagedStore: a failed save keeps the write (dirty, cached); FLUSH fails until it can save', async () => {
  const pages = new MapPages();
  const store = new PagedStore({ size: 16 * CHUNK, chunkSize: CHUNK, cacheBytes: 4 * CHUNK, pages, writeBackMs: 0 });
  await store.writeAt(fill(9), 0);
  pages.failSaves = true;
  await rejects(() => store.flush(), /save failed/);
  // Needing room for other chunks fails too, rather than dropping chunk 0.
  const results = await Promise.allSettled([1, 2, 3, 4, 5].map((i) => store.writeAt(fill(i), i * CHUNK)));
  assert.ok(results.some((r) => r.status === 'rejected'));
  pages.failSaves = false;
  await store.flush();
  assert.equal(pages.saved.get(0), fill(9));
  const b = new Uint8Array(CHUNK);
  await store.readAt(b, 0);
  assert.equal(b, fill(9));
});

test('PagedStore: making room saves several dirty chunks at once (evictions stream), and loses none', async () => {
  const pages = new MapPages();
  let running = 0;
  let most = 0;
  const save = pages.save.bind(pages);
  pages.save = async (i: number, d: Uint8Array) => {
    most = Math.max(most, ++running);
    try {
      await save(i, d);
    } finally {
      running--;
    }
  };
  const store = new PagedStore({ size: 64 * CHUNK, chunkSize: CHUNK, cacheBytes: 16 * CHUNK, pages, writeBackMs: 0 });
  const data = randomBytes(64 * CHUNK);
  await Promise.all([0, 1, 2, 3].map((q) => store.writeAt(data.subarray(q * 16 * CHUNK, (q + 1) * 16 * CHUNK), q * 16 * CHUNK)));
  assert.ok(most > 1, `saves to make room went ${most} at a time`);
  assert.ok(most <= 8, `at most saveAhead (half the cache) at once, saw ${most}`);
  await store.flush();
  const back = new Uint8Array(data.length);
  await store.readAt(back, 0);
  assert.ok(Buffer.from(back).equals(data));
});

test('PagedStore over SealedPages: written bytes survive eviction through sealed peers', async () => {
  const { peers, pages } = setup(2, 2, 32);
  const store = new PagedStore({ size: 32 * CHUNK, chunkSize: CHUNK, cacheBytes: 4 * CHUNK, pages, writeBackMs: 0 });
  const data = randomBytes(32 * CHUNK);
  await store.writeAt(data, 0);
  await store.flush();
  const back = new Uint8Array(data.length);
  await store.readAt(back, 0);
  assert.ok(Buffer.from(back).equals(data));
  assert.ok(store.stats.evictions >= 28);
  for (const p of peers) for (const b of p.blobs.values()) assert.not.ok(Buffer.from(b).includes(data.subarray(100, 164)));
});

test('PagedStore over SealedPages: a read opens only its segments; a bad one is found when read, served from the other replica, repaired', async () => {
  const big = 65536;
  const { peers, pages } = setup(2, 2, 8, big);
  const data = new Uint8Array(randomBytes(big));
  await pages.save(2, data);
  // Segment 7 of chunk 2 altered on peer 0 only.
  peers[0]!.alter(8 + 7 * 4096 + 9, 0x01);
  // Two cold reads (each PagedStore starts empty): the loads take the two replicas in turn, so one of them starts on peer 0.
  for (let round = 0; round < 2; round++) {
    const store = new PagedStore({ size: 8 * big, chunkSize: big, cacheBytes: 4 * big, pages, writeBackMs: 0 });
    const page = new Uint8Array(4096);
    await store.readAt(page, 2 * big);
    assert.equal(page, data.subarray(0, 4096), 'segment 0');
    if (round === 0) assert.is(pages.peerReports()[0]!.tampered, 0, 'reading segment 0 did not open segment 7');
    await store.readAt(page, 2 * big + 7 * 4096);
    assert.equal(page, data.subarray(7 * 4096, 8 * 4096), 'segment 7, from whichever replica is good');
    const all = new Uint8Array(big);
    await store.readAt(all, 2 * big);
    assert.equal(all, data);
  }
  await pages.close(); // the background repair
  const r = pages.peerReports();
  assert.is(r[0]!.tampered, 1, 'peer 0 caught once');
  assert.is(r[0]!.repaired, 1);
  assert.is(r[1]!.tampered, 0);
  peers[1]!.down = true;
  assert.equal(await pages.load(2), data, 'peer 0 holds a good copy again');
});

test('PagedStore over SealedPages, K = 1: a bad segment fails its reads (typed) and any write to its chunk; the rest reads', async () => {
  const big = 65536;
  const { peers, pages } = setup(1, 1, 8, big);
  const data = new Uint8Array(randomBytes(big));
  await pages.save(1, data);
  peers[0]!.alter(8 + 3 * 4096, 0x40);
  const store = new PagedStore({ size: 8 * big, chunkSize: big, cacheBytes: 4 * big, pages, writeBackMs: 0 });
  const page = new Uint8Array(4096);
  await store.readAt(page, big + 4096);
  assert.equal(page, data.subarray(4096, 8192));
  await rejects(() => store.readAt(page, big + 3 * 4096), (e) => e instanceof ChunkUnavailableError && /altered/.test((e as Error).message));
  await rejects(() => store.writeAt(new Uint8Array(512).fill(7), big), (e) => e instanceof ChunkUnavailableError);
  await store.readAt(page, big);
  assert.equal(page, data.subarray(0, 4096), 'the refused write left the chunk as it was');
  // Overwriting the whole chunk needs none of its old bytes: it is taken, and saved.
  const fresh = new Uint8Array(randomBytes(big));
  await store.writeAt(fresh, big);
  await store.flush();
  assert.equal(await pages.load(1), fresh);
});

test.run();
