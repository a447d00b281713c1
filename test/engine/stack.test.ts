/**
 * The stack builder and capabilities: a description becomes backend →
 * layers → guard; capability queries travel down the stack and come back
 * checked by the guard; layers that remap writes hide VECTORED; the
 * lifecycle runs bottom-up / top-down; TrackingLayer and trackChanges give
 * dirty lists since a mark.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { DirectoryBackend } from '../../engine/backends/directory.ts';
import { EXTENTS, TRACKING, VECTORED } from '../../engine/capability.ts';
import { PassThroughLayer } from '../../engine/layers/pass-through.ts';
import { buildStack, chunked, tracking, type LayerSpec } from '../../engine/stack.ts';
import { trackChanges } from '../../engine/tracking/tracking-store.ts';
import type { ChangeTracker } from '../../engine/tracking/tracker.ts';
import { HashTracker } from '../../engine/tracking/hash-tracker.ts';
import { writeParts } from '../../engine/rwat.ts';
import { Scope } from '../helpers/env.ts';

const code = (c: string) => (e: unknown) => (e as { code?: string }).code === c;

async function rejects(p: Promise<unknown>, c: string): Promise<void> {
  try {
    await p;
  } catch (e) {
    assert.ok(code(c)(e), `expected ${c}, got ${(e as Error).message}`);
    return;
  }
  assert.unreachable(`expected ${c}`);
}

test('a spec becomes backend → layers → guard, and the guard checks every request', async () => {
  const s = await buildStack({ backend: 'memory', backendOptions: { size: 1 << 20 }, layers: [chunked(64 * 1024)], maxRequest: 256 * 1024 });
  assert.is(s.layers.length, 3);
  assert.instance(s.layers[0], MemoryBackend);
  assert.is(s.describe(), 'GuardLayer → chunked(65536) → MemoryBackend(memory)');
  assert.is(await s.size(), 1 << 20);
  const data = Buffer.alloc(5000, 7);
  await s.writeAt(data, 3);
  const back = Buffer.alloc(5000);
  await s.readAt(back, 3);
  assert.ok(back.equals(data));
  await rejects(s.readAt(new Uint8Array(10), (1 << 20) - 5), 'EINVAL');
  await rejects(s.readAt(new Uint8Array(300 * 1024), 0), 'EOVERFLOW');
  await s.close();
  await rejects(s.readAt(new Uint8Array(1), 0), 'ESHUTDOWN');
});

test('read-only stacks refuse writes with EPERM, whatever the backend allows', async () => {
  const s = await buildStack({ backend: new MemoryBackend(4096), maxRequest: 4096, readOnly: true });
  assert.ok(s.caps.readOnly);
  await rejects(s.writeAt(new Uint8Array(1), 0), 'EPERM');
  await rejects(s.writeZeroes(0, 10), 'EPERM');
  await s.close();
});

test('capability queries travel down the stack; extents and writev come back range-checked', async () => {
  const mem = new MemoryBackend(1 << 20, { chunkSize: 64 * 1024 });
  const plain = await buildStack({ backend: mem, maxRequest: 1 << 20 });
  const ext = plain.capability(EXTENTS);
  assert.ok(ext, 'memory extents reach the top');
  assert.equal(await ext!.extents(0, 1 << 20), [{ length: 1 << 20, hole: true, zero: true }]);
  await rejects(ext!.extents((1 << 20) - 1, 2), 'EINVAL');
  const v = plain.capability(VECTORED);
  assert.ok(v, 'memory writev reaches the top');
  await v!.writev([Buffer.from('ab'), Buffer.from('cd')], 10);
  const back = Buffer.alloc(4);
  await plain.readAt(back, 10);
  assert.is(back.toString(), 'abcd');
  await rejects(v!.writev([Buffer.alloc(8)], (1 << 20) - 4), 'EINVAL');
  assert.is(plain.capability(TRACKING), undefined, 'nobody tracks');
  await plain.close();
  // A chunked layer remaps writes: writev would skip it, so it is hidden; extents keep their offsets.
  const chunkedStack = await buildStack({ backend: new MemoryBackend(1 << 20), layers: [chunked(4096)], maxRequest: 1 << 20 });
  assert.is(chunkedStack.capability(VECTORED), undefined);
  assert.ok(chunkedStack.capability(EXTENTS));
  await chunkedStack.close();
});

test('a store without a capability says so (directory backend: no writev); writeParts gathers', async () => {
  const scope = new Scope();
  try {
    const s = await buildStack({ backend: `dir:${join(scope.tmpdir(), 'd')}`, backendOptions: { size: 1 << 20, create: true, chunkSize: 64 * 1024 }, maxRequest: 1 << 20 });
    assert.is(s.capability(VECTORED), undefined);
    assert.ok(s.capability(EXTENTS));
    await writeParts(s, [Buffer.from('xy'), Buffer.from('z')], 65535);
    const back = Buffer.alloc(3);
    await s.readAt(back, 65535);
    assert.is(back.toString(), 'xyz');
    await s.close();
  } finally {
    await scope.close();
  }
});

test('lifecycle: start bottom-up, stop top-down, close stops first; a borrowed backend stays open', async () => {
  const order: string[] = [];
  class Background extends PassThroughLayer {
    readonly tag: string;
    constructor(inner: ConstructorParameters<typeof PassThroughLayer>[0], tag: string) {
      super(inner);
      this.tag = tag;
    }
    override async start() {
      order.push(`start ${this.tag}`);
    }
    override async stop() {
      order.push(`stop ${this.tag}`);
    }
  }
  const layer = (tag: string): LayerSpec => ({ name: tag, wrap: (inner) => new Background(inner, tag) });
  const mem = new MemoryBackend(4096);
  const s = await buildStack({ backend: mem, ownsBackend: false, layers: [layer('puller'), layer('pusher')], maxRequest: 4096 });
  await s.start();
  await s.start();
  assert.equal(order, ['start puller', 'start pusher']);
  await s.close();
  assert.equal(order, ['start puller', 'start pusher', 'stop pusher', 'stop puller']);
  await mem.writeAt(Buffer.from('still open'), 0);
  await mem.close();
});

test('TrackingLayer: dirty chunks since the mark, for writes, writev, zeroes and trims; clear forgets', async () => {
  const s = await buildStack({ backend: new MemoryBackend(1 << 20), layers: [tracking(4096)], maxRequest: 1 << 20 });
  const t = s.capability(TRACKING)!;
  assert.ok(t);
  assert.is(t.trackChunkSize, 4096);
  await s.writeAt(new Uint8Array(10), 4090); // chunks 0 and 1
  await t.mark();
  assert.equal(await t.dirty(), []);
  await s.writeAt(new Uint8Array(1), 3 * 4096);
  await s.capability(VECTORED)!.writev([new Uint8Array(4096), new Uint8Array(1)], 8 * 4096); // 8, 9
  await s.writeZeroes(20 * 4096, 4096);
  await s.trim(30 * 4096, 2);
  assert.equal(await t.dirty(), [3, 8, 9, 20, 30]);
  t.clear([3, 8]);
  assert.equal(await t.dirty(), [9, 20, 30]);
  await s.writeAt(new Uint8Array(1), 3 * 4096 + 5);
  assert.equal(await t.dirty(), [3, 9, 20, 30]);
  await s.close();
});

test('trackChanges keeps what a ChangeTracker reported until cleared (a failed push loses nothing)', async () => {
  const reports = [[1, 5], [2], [], [5]];
  const tracker: ChangeTracker = { chunkSize: 65536, changedChunks: async () => reports.shift() ?? [] };
  const t = trackChanges(tracker);
  await t.mark(); // consumes [1, 5]
  assert.equal(await t.dirty(), [2]);
  assert.equal(await t.dirty(), [2], 'not cleared by reading');
  t.clear([2]);
  assert.equal(await t.dirty(), [5]);
});

test('HashTracker behind the TrackingStore interface: writes to plain memory since the mark', async () => {
  const view = Buffer.alloc(16 * 4096);
  const t = trackChanges(await HashTracker.create(view, { chunkSize: 4096 }));
  assert.is(t.trackChunkSize, 4096);
  view[5] = 1; // before the mark: forgotten
  await t.mark();
  assert.equal(await t.dirty(), []);
  view[3 * 4096 + 7] = 9;
  view[15 * 4096] = 2;
  assert.equal(await t.dirty(), [3, 15]);
  t.clear([15]);
  assert.equal(await t.dirty(), [3]);
});

test.run();
