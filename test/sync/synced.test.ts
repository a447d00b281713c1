import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { ChunkedLayer } from '../../engine/layers/chunked.ts';
import { SyncedLayer, type SyncedLayerOptions } from '../../engine/layers/synced.ts';
import { VirtualClock, settle } from '../../engine/sync/clock.ts';
import { reverseOrder } from '../../engine/sync/pull-order.ts';
import { assertBytes, fuzzStore, rng } from '../engine/model.ts';
import { GatedSource } from './gated-source.ts';

const CS = 4096;

function setup(chunks: number, opts: Partial<SyncedLayerOptions> = {}) {
  const size = chunks * CS;
  const source = new GatedSource(size, CS, (i) => (i * 7 + 3) & 0xff);
  const clock = new VirtualClock();
  const synced = new SyncedLayer({ cache: new MemoryBackend(size), source, clock, pullWorkers: 0, ...opts });
  const store = new ChunkedLayer(synced, CS);
  return { size, source, clock, synced, store };
}

async function read(store: { readAt(b: Uint8Array, o: number): Promise<void> }, off: number, len: number) {
  const b = new Uint8Array(len);
  await store.readAt(b, off);
  return b;
}

test('a read of a remote chunk fetches it urgently once; later reads of it never touch the source', async () => {
  const { source, store, synced } = setup(8);
  const a = await read(store, CS + 10, 100);
  assertBytes(a, source.owner.subarray(CS + 10, CS + 110), 'first read');
  assert.equal(source.calls, ['fetch 1 urgent']);
  for (let k = 0; k < 5; k++) await read(store, CS, CS);
  assert.equal(source.calls.length, 1, 'local reads stay local');
  assert.is(synced.progress().demandFetches, 1);
});

test('concurrent readers of one missing chunk share a single fetch', async () => {
  const { source, store } = setup(4);
  source.holdFetches = true;
  const reads = [read(store, 0, 10), read(store, 100, 10), read(store, 0, CS)];
  await settle();
  assert.is(source.heldCount, 1);
  source.release();
  await Promise.all(reads);
  assert.is(source.count('fetch'), 1);
});

test('a write covering a whole missing chunk needs no fetch; a partial write fetches first', async () => {
  const { source, store } = setup(4);
  const whole = new Uint8Array(CS).fill(9);
  await store.writeAt(whole, 2 * CS);
  assert.is(source.count('fetch'), 0, 'DontNeedAt');
  await store.writeAt(new Uint8Array([1, 2, 3]), CS + 5);
  assert.equal(source.calls, ['fetch 1 urgent']);
  const b = await read(store, CS, CS);
  const want = source.owner.slice(CS, 2 * CS);
  want.set([1, 2, 3], 5);
  assertBytes(b, want, 'partial write merged with the fetched chunk');
});

test('the puller skips chunks a reader already fetched, and the region becomes complete', async () => {
  const { source, synced, store } = setup(16, { pullWorkers: 2 });
  await read(store, 5 * CS, 1);
  await synced.start();
  await synced.whenComplete();
  await synced.stop();
  assert.is(synced.progress().complete, true);
  const perChunk = new Map<number, number>();
  for (const i of source.fetchOrder) perChunk.set(i, (perChunk.get(i) ?? 0) + 1);
  assert.is(perChunk.size, 16);
  for (const [i, n] of perChunk) assert.is(n, 1, `chunk ${i} fetched once`);
  const all = await read(store, 0, 16 * CS);
  assertBytes(all, source.owner, 'full copy');
  assert.is(source.count('fetch'), 16, 'reads after the pull are local');
});

test('a whole-chunk write while the chunk is being fetched wins; the stale fetch is discarded', async () => {
  const { source, store, synced } = setup(4, { pullWorkers: 1 });
  source.holdFetches = true;
  await synced.start();
  await settle();
  assert.is(source.heldCount, 1, 'the puller is fetching chunk 0');
  const mine = new Uint8Array(CS).fill(0xaa);
  await store.writeAt(mine, 0);
  source.holdFetches = false;
  source.release();
  await settle(20);
  assertBytes(await read(store, 0, CS), mine, 'local write kept');
  await synced.stop();
});

test('FLUSH returns only once every earlier write is pushed and the owner flushed', async () => {
  const { source, store, synced } = setup(4, { pushIntervalMs: 60_000 });
  await synced.start();
  await store.writeAt(new Uint8Array(CS).fill(1), 0);
  await store.writeAt(new Uint8Array(CS).fill(2), 2 * CS);
  assert.is(source.count('push'), 0, 'nothing pushed before the interval');
  source.holdPushes = true;
  let flushed = false;
  const f = store.flush().then(() => (flushed = true));
  await settle();
  assert.is(flushed, false, 'pushes are held: flush waits');
  assert.is(source.count('flush'), 0);
  source.holdPushes = false;
  source.release();
  await f;
  assert.is(source.count('flush'), 1);
  assert.is(source.durableCopy[0], 1);
  assert.is(source.durableCopy[2 * CS], 2);
  assert.is(synced.progress().dirty, 0);
  await synced.stop();
});

test('a background fetch made stale by an owner change is pulled again (regression: the chunk stayed remote)', async () => {
  const { source, synced } = setup(2, { pullWorkers: 1 });
  await synced.start();
  await synced.whenComplete(); // the plan and the sweep are done: only re-pulls are left
  source.holdFetches = true;
  source.ownerWrite(0, new Uint8Array(CS).fill(0x98));
  await settle();
  assert.is(source.heldCount, 1, 'the re-pull of chunk 0 is in flight');
  source.ownerWrite(0, new Uint8Array(CS).fill(0x99)); // changes again: that fetch is stale
  source.holdFetches = false;
  source.release();
  await settle(30);
  assert.is(synced.states.isLocal(0), true, 'pulled again after the stale fetch');
  const b = new Uint8Array(CS);
  await synced.readAt(b, 0);
  assert.is(b[0], 0x99, 'the new bytes');
  await synced.stop();
});

test('a chunk written again while it is being pushed is pushed again; flush carries the newer bytes', async () => {
  const { source, store, synced } = setup(2, { pushIntervalMs: 0 });
  await synced.start();
  source.holdPushes = true;
  await store.writeAt(new Uint8Array(CS).fill(1), 0);
  await settle();
  assert.is(source.heldCount, 1, 'first push in flight');
  await store.writeAt(new Uint8Array(CS).fill(2), 0);
  const f = store.flush();
  source.holdPushes = false;
  source.release();
  await f;
  assert.is(source.durableCopy[0], 2, 'the second write reached the owner');
  assert.ok(source.count('push') >= 2);
  assert.is(synced.progress().dirty, 0);
  await synced.stop();
});

test('a failed push fails FLUSH with EIO and keeps the chunk dirty; the next flush delivers it', async () => {
  const { source, store } = setup(2, { pushIntervalMs: 60_000 });
  await store.writeAt(new Uint8Array(CS).fill(5), CS);
  source.failPushes = true;
  try {
    await store.flush();
    assert.unreachable('flush should fail');
  } catch (e) {
    assert.is((e as { code?: string }).code, 'EIO');
  }
  source.failPushes = false;
  await store.flush();
  assert.is(source.durableCopy[CS], 5);
});

test('zeroed chunks are pushed as zero requests, not as data', async () => {
  const { source, store } = setup(4, { pushIntervalMs: 60_000 });
  await store.writeZeroes(CS, 2 * CS);
  await store.trim(3 * CS, CS);
  await store.flush();
  assert.equal(source.calls.filter((c) => c.startsWith('zero') || c.startsWith('push')).sort(), ['zero 1', 'zero 2', 'zero 3']);
  assert.ok(source.durableCopy.subarray(CS, 4 * CS).every((b) => b === 0));
});

test('push schedule on a virtual clock: after the interval, or at once past the dirty-bytes threshold', async () => {
  const { source, store, synced, clock } = setup(8, { pushIntervalMs: 1000, maxDirtyBytes: 4 * CS });
  await synced.start();
  await store.writeAt(new Uint8Array(CS).fill(1), 0);
  await clock.advance(999);
  assert.is(source.count('push'), 0, 'not before the interval');
  await clock.advance(1);
  assert.is(source.count('push'), 1, 'pushed at the interval');
  for (let i = 1; i <= 4; i++) await store.writeAt(new Uint8Array(CS).fill(i), i * CS);
  await settle();
  assert.is(source.count('push'), 5, 'threshold reached: pushed without waiting');
  await synced.stop();
});

test('owner changes invalidate clean cached chunks (re-pulled), dirty ones keep the local bytes', async () => {
  const { source, store, synced } = setup(4, { pullWorkers: 1, pushIntervalMs: 60_000 });
  await synced.start();
  await synced.whenComplete();
  await store.writeAt(new Uint8Array(CS).fill(0x11), 3 * CS); // dirty, unpushed
  source.ownerWrite(CS, new Uint8Array(CS).fill(0x77));
  source.ownerWrite(3 * CS, new Uint8Array(CS).fill(0x66));
  await settle(20);
  assertBytes(await read(store, CS, CS), new Uint8Array(CS).fill(0x77), 'clean chunk re-read from the owner');
  assertBytes(await read(store, 3 * CS, CS), new Uint8Array(CS).fill(0x11), 'dirty chunk keeps the local write');
  assert.is(synced.progress().invalidations, 2);
  await synced.stop();
});

test('adjacent chunks are pulled in runs (one request each); a reverse order pulls descending runs; content is right', async () => {
  for (const order of [undefined, reverseOrder]) {
    const size = 40 * CS;
    const source = new GatedSource(size, CS, (i) => (i * 11 + 5) & 0xff);
    source.ranges = true;
    const synced = new SyncedLayer({ cache: new MemoryBackend(size), source, clock: new VirtualClock(), pullWorkers: 1, maxPullRun: 16, ...(order ? { pullOrder: order } : {}) });
    await synced.start();
    await synced.whenComplete();
    await synced.stop();
    const ranges = source.calls.filter((c) => c.startsWith('range'));
    assert.is(ranges.length, 3, ranges.join(', '));
    assert.equal(ranges, order ? ['range 24 16', 'range 8 16', 'range 0 8'] : ['range 0 16', 'range 16 16', 'range 32 8']);
    const all = new Uint8Array(size);
    for (let i = 0; i < 40; i++) await synced.readAt(all.subarray(i * CS, (i + 1) * CS), i * CS);
    assertBytes(all, source.owner, 'content');
  }
});

test('random I/O while run pulls are in flight matches a model; the owner has it all after flush', async () => {
  const chunks = 48;
  const size = chunks * CS;
  const { source, store, synced } = setup(chunks, { pullWorkers: 3, pushIntervalMs: 0, maxPullRun: 8 });
  source.ranges = true;
  await synced.start();
  const model = await fuzzStore(store, { seed: 9, ops: 300, unit: CS, trim: 'either', maxLen: 3 * CS + 5 }, source.owner.slice());
  await store.flush();
  assertBytes(source.durableCopy, model, 'owner after flush');
  assertBytes(await read(store, 0, size), model, 'mount');
  await synced.stop();
});

test('an urgent read is not queued behind background pulls: it goes out at once, and while it waits at most 2 background pulls are in flight, each one chunk', async () => {
  for (const ranges of [false, true]) {
    const { source, store, synced } = setup(512, { pullWorkers: 8, maxPullRun: 16 });
    source.ranges = ranges;
    source.holdFetches = true;
    await synced.start();
    await settle();
    assert.is(source.heldCount, 8, 'eight background pulls in flight');
    const reading = read(store, 400 * CS, CS);
    await settle();
    const at = source.calls.indexOf('fetch 400 urgent');
    assert.is(at, 8, `${ranges ? 'runs' : 'chunks'}: the urgent fetch went out right after the 8 in flight, not behind more`);
    // The background pulls finish while the urgent one still waits: the puller may not refill the link.
    assert.is(source.releaseBackground(), 8);
    await settle(20);
    const after = source.calls.slice(at + 1);
    assert.ok(after.length <= 2, `${ranges ? 'runs' : 'chunks'}: ${after.length} background requests while the urgent read waited: ${after.join(', ')}`);
    assert.ok(after.length >= 1, 'the background is slowed, not stopped');
    for (const c of after) assert.match(c, ranges ? /^(range \d+ 1|fetch \d+)$/ : /^fetch \d+$/, `one chunk each: ${c}`);
    assert.ok(synced.progress().backgroundHeld > 0);
    // The urgent read completes: the background fills its window again.
    source.release();
    await reading;
    await settle(20);
    assert.is(source.heldCount, 8, 'eight background pulls in flight again');
    source.holdFetches = false;
    source.release();
    await synced.whenComplete();
    await synced.stop();
  }
});

test('pull order is followed: one worker, reverse order', async () => {
  const { source, synced } = setup(6, { pullWorkers: 1, pullOrder: reverseOrder });
  await synced.start();
  await synced.whenComplete();
  await synced.stop();
  assert.equal(source.fetchOrder, [5, 4, 3, 2, 1, 0]);
  assert.ok(source.fetchUrgent.every((u) => !u));
});

test('first touches are reported once per chunk, in order (trace recording)', async () => {
  const touches: number[] = [];
  const { store } = setup(8, { onFirstTouch: (i) => touches.push(i) });
  await read(store, 6 * CS, 10);
  await read(store, 2 * CS, 10);
  await store.writeAt(new Uint8Array(10), 6 * CS + 1);
  await store.writeAt(new Uint8Array(2 * CS), 0);
  assert.equal(touches, [6, 2, 0, 1]);
});

test('random I/O through ChunkedLayer+SyncedLayer with a background puller and pusher matches a model; the owner gets it all on flush', async () => {
  for (const seed of [1, 2, 3]) {
    const chunks = 24;
    const size = chunks * CS;
    const { source, store, synced } = setup(chunks, { pullWorkers: 3, pushIntervalMs: 0, maxDirtyBytes: 3 * CS });
    await synced.start();
    const initial = source.owner.slice();
    const model = await fuzzStore(store, { seed, ops: 300, unit: CS, trim: 'either', maxLen: 3 * CS + 5 }, initial);
    await store.flush();
    assertBytes(source.durableCopy, model, `seed ${seed}: owner after flush`);
    assertBytes(await read(store, 0, size), model, `seed ${seed}: mount`);
    await synced.stop();
    void rng;
  }
});

test.run();
