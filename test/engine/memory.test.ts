import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { ClosedError, ReadOnlyError } from '../../base/errors.ts';
import { fuzzStore, rejectsWith } from './model.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

test('random unaligned I/O matches the model (small chunks, odd size)', async () => {
  for (const seed of [1, 2, 3]) {
    const m = new MemoryBackend(3 * MiB + 123, { chunkSize: 64 * KiB });
    await fuzzStore(m, { seed, ops: 600, unit: 64 * KiB, trim: 'zero' });
    await m.close();
  }
});

test('random unaligned I/O matches the model (default chunk size)', async () => {
  const m = new MemoryBackend(5 * MiB + 7);
  assert.is(m.chunkSize, 256 * KiB);
  await fuzzStore(m, { seed: 9, ops: 400, unit: m.chunkSize, trim: 'zero', maxLen: 2 * MiB });
  await m.close();
});

test('sparse: a 1 TiB region costs only the chunks written', async () => {
  const m = new MemoryBackend(2 ** 40, { chunkSize: 256 * KiB });
  assert.is(m.allocatedBytes(), 0);
  const buf = new Uint8Array(1 * MiB).fill(9);
  await m.readAt(buf, 2 ** 39);
  assert.ok(buf.every((b) => b === 0), 'untouched range reads as zeros');
  await m.writeAt(new Uint8Array([1, 2, 3]), 2 ** 40 - 2 ** 20 + 5);
  await m.writeAt(new Uint8Array([7]), 12345);
  assert.is(m.allocatedBytes(), 2 * 256 * KiB);
  const one = new Uint8Array(3);
  await m.readAt(one, 2 ** 40 - 2 ** 20 + 5);
  assert.equal([...one], [1, 2, 3]);
  // A write spanning a chunk boundary allocates both chunks.
  await m.writeAt(new Uint8Array(10).fill(4), 5 * 256 * KiB - 5);
  assert.is(m.allocatedBytes(), 4 * 256 * KiB);
  // Zeroing (almost) the whole terabyte visits only what exists: fast, and
  // the partial edge chunks are zeroed in place, not freed.
  await m.writeAt(new Uint8Array([5]), 0);
  await m.writeAt(new Uint8Array([6]), 2 ** 40 - 1);
  assert.is(m.allocatedBytes(), 5 * 256 * KiB);
  const t0 = performance.now();
  await m.writeZeroes(1, 2 ** 40 - 2);
  assert.ok(performance.now() - t0 < 500, 'sparse walk');
  assert.is(m.allocatedBytes(), 2 * 256 * KiB);
  const edges = new Uint8Array(2);
  await m.readAt(edges, 0);
  assert.equal([...edges], [5, 0]);
  await m.readAt(edges, 2 ** 40 - 2);
  assert.equal([...edges], [0, 6]);
  await m.trim(0, 2 ** 40);
  assert.is(m.allocatedBytes(), 0);
});

test('trim and writeZeroes free whole chunks and zero partial ones', async () => {
  const cs = 64 * KiB;
  const m = new MemoryBackend(10 * cs, { chunkSize: cs });
  await m.writeAt(new Uint8Array(10 * cs).fill(5), 0);
  assert.is(m.allocatedBytes(), 10 * cs);
  // [cs/2, 3cs + 1): frees chunks 1 and 2, zeroes half of 0 and a byte of 3.
  await m.trim(cs / 2, 2.5 * cs + 1);
  assert.is(m.allocatedBytes(), 8 * cs);
  const b = new Uint8Array(4 * cs);
  await m.readAt(b, 0);
  assert.is(b[cs / 2 - 1], 5);
  assert.ok(b.subarray(cs / 2, 3 * cs + 1).every((x) => x === 0));
  assert.is(b[3 * cs + 1], 5);
  await m.writeZeroes(4 * cs, 6 * cs);
  assert.is(m.allocatedBytes(), 2 * cs);
  // noHole keeps (and allocates) chunks.
  await m.writeZeroes(4 * cs, 2 * cs, { noHole: true });
  assert.is(m.allocatedBytes(), 4 * cs);
  const z = new Uint8Array(6 * cs).fill(1);
  await m.readAt(z, 4 * cs);
  assert.ok(z.every((x) => x === 0));
});

test('the last, shorter chunk is sized to the region', async () => {
  const m = new MemoryBackend(64 * KiB + 100, { chunkSize: 64 * KiB });
  await m.writeAt(new Uint8Array([8]), 64 * KiB + 99);
  assert.is(m.allocatedBytes(), 100);
  await m.trim(64 * KiB, 100);
  assert.is(m.allocatedBytes(), 0);
});

test('read-only refuses writes; closed refuses everything', async () => {
  const ro = new MemoryBackend(4096, { readOnly: true });
  assert.ok(ro.caps.readOnly);
  await rejectsWith(ro.writeAt(new Uint8Array(1), 0), ReadOnlyError, 'EPERM');
  await rejectsWith(ro.trim(0, 1), ReadOnlyError, 'EPERM');
  await rejectsWith(ro.writeZeroes(0, 1), ReadOnlyError, 'EPERM');
  const m = new MemoryBackend(4096);
  await m.writeAt(new Uint8Array([1]), 0);
  await m.close();
  await m.close(); // idempotent
  assert.is(m.allocatedBytes(), 0);
  await rejectsWith(m.readAt(new Uint8Array(1), 0), ClosedError, 'ESHUTDOWN');
  await rejectsWith(m.size(), ClosedError);
});

test.run();
