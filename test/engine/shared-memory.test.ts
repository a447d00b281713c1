/** SharedMemoryBackend (engine/backends/shared-memory.ts): the memory store worker threads share. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Worker } from 'node:worker_threads';
import { SharedMemoryBackend, SHARED_CHUNK } from '../../engine/backends/shared-memory.ts';
import { openSharedStore } from '../../engine/shared-store.ts';
import { nativeAvailable } from '../../native/index.ts';
import { ClosedError, ReadOnlyError } from '../../base/errors.ts';
import { needCondition } from '../helpers/env.ts';
import { fuzzStore, rejectsWith } from './model.ts';

const MiB = 1024 * 1024;
const it = needCondition(test, nativeAvailable(), 'the native addon is not built (node native/build.mjs)');

it('random unaligned I/O matches the model (odd size, unaligned tail chunk)', async () => {
  for (const seed of [1, 2, 3]) {
    const m = await SharedMemoryBackend.create(3 * MiB + 123);
    await fuzzStore(m, { seed, ops: 600, unit: SHARED_CHUNK, trim: 'zero' });
    await m.close();
  }
});

it('sparse: reading never allocates; writes allocate their chunks; trim gives them back', async () => {
  const m = await SharedMemoryBackend.create(64 * MiB);
  const buf = new Uint8Array(64 * MiB).fill(9);
  await m.readAt(buf, 0);
  assert.ok(buf.every((b) => b === 0));
  assert.is(m.allocatedBytes(), 0, 'a read of the whole region allocates nothing');
  assert.equal(await m.extents(0, 64 * MiB), [{ length: 64 * MiB, hole: true, zero: true }]);
  await m.writeAt(new Uint8Array(10).fill(4), 5 * SHARED_CHUNK - 5);
  assert.is(m.allocatedBytes(), 2 * SHARED_CHUNK);
  await m.writeZeroes(0, 64 * MiB, { noHole: true });
  assert.is(m.allocatedBytes(), 64 * MiB, 'NO_HOLE zeroing allocates, as asked');
  await m.trim(0, 64 * MiB);
  assert.is(m.allocatedBytes(), 0);
  await m.close();
});

it('read-only and closed stores refuse with typed errors', async () => {
  const m = await SharedMemoryBackend.create(MiB, { readOnly: true });
  await rejectsWith(m.writeAt(new Uint8Array(1), 0), ReadOnlyError, 'EPERM');
  await m.close();
  await rejectsWith(m.readAt(new Uint8Array(1), 0), ClosedError, 'ESHUTDOWN');
});

it('another thread attached by descriptor sees and makes the same bytes', async () => {
  const m = await SharedMemoryBackend.create(4 * MiB);
  await m.writeAt(new Uint8Array([1, 2, 3]), MiB);
  const same = await openSharedStore(m.threadDescriptor());
  const b = new Uint8Array(3);
  await same.readAt(b, MiB);
  assert.equal([...b], [1, 2, 3]);
  // And from a real worker thread: it writes, we read; it trims, we see the hole.
  const code = `
    const { register } = await import('tsx/esm/api'); register();
    const { workerData, parentPort } = await import('node:worker_threads');
    const { openSharedStore } = await import(${JSON.stringify(new URL('../../engine/shared-store.ts', import.meta.url).href)});
    const s = await openSharedStore(workerData);
    await s.writeAt(new Uint8Array(100).fill(7), 2 * 1024 * 1024);
    await s.trim(1024 * 1024, 65536);
    parentPort.postMessage('done');`;
  const w = new Worker(code, { eval: true, workerData: m.threadDescriptor(), type: 'module' } as never);
  await new Promise<void>((resolve, reject) => {
    w.once('message', () => resolve());
    w.once('error', reject);
    setTimeout(() => reject(new Error('worker timed out')), 20_000).unref();
  });
  await w.terminate();
  const c = new Uint8Array(100);
  await m.readAt(c, 2 * MiB);
  assert.ok(c.every((x) => x === 7), 'the worker write is visible here');
  await m.readAt(b, MiB);
  assert.equal([...b], [0, 0, 0], 'the worker trim is visible here');
  assert.equal((await m.extents(MiB, SHARED_CHUNK))[0]?.hole, true);
  await same.close();
  await m.close();
});

test.run();
