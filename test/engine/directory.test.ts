import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DirectoryBackend, METADATA_FILE, RegionMetadataError, chunkFileName } from '../../engine/backends/directory.ts';
import { MissingSizeError } from '../../engine/backends/file.ts';
import { ClosedError, ReadOnlyError } from '../../base/errors.ts';
import { Scope } from '../helpers/env.ts';
import { assertBytes, fuzzStore, randomBytes, rejectsWith, rng } from './model.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

const chunkFilesIn = (dir: string) => readdirSync(dir).filter((n) => n.endsWith('.chunk')).sort();

test('random unaligned I/O matches the model; a tiny fd LRU still works; reopen keeps it', async () => {
  const s = new Scope();
  try {
    const dir = join(s.tmpdir(), 'region');
    const size = 2 * MiB + 777;
    const cs = 64 * KiB;
    const d = await DirectoryBackend.open(dir, { size, chunkSize: cs, create: true, maxOpenFiles: 3 });
    const model = await fuzzStore(d, { seed: 21, ops: 700, unit: cs, trim: 'either', maxLen: 4 * cs });
    await d.flush();
    await d.close();
    // Every chunk file on disk is one the backend knows about, and no file is larger than a chunk.
    for (const name of chunkFilesIn(dir)) assert.ok(statSync(join(dir, name)).size <= cs, name);
    const again = await DirectoryBackend.open(dir, { size });
    assert.is(again.chunkSize, cs);
    const all = new Uint8Array(size);
    await again.readAt(all, 0);
    assertBytes(all, model, 'after reopen');
    await again.close();
  } finally {
    await s.close();
  }
});

test('default chunk size, large requests', async () => {
  const s = new Scope();
  try {
    const d = await DirectoryBackend.open(join(s.tmpdir(), 'r'), { size: 13 * MiB + 1, create: true });
    assert.is(d.chunkSize, 4 * MiB);
    await fuzzStore(d, { seed: 5, ops: 150, unit: d.chunkSize, trim: 'either', maxLen: 6 * MiB });
    await d.close();
  } finally {
    await s.close();
  }
});

test('sparse: no chunk files for untouched ranges; whole-chunk trim and zero delete files', async () => {
  const s = new Scope();
  try {
    const dir = s.tmpdir();
    const cs = 64 * KiB;
    const d = await DirectoryBackend.open(dir, { size: 2 ** 40, chunkSize: cs, create: true });
    assert.equal(chunkFilesIn(dir), []);
    const buf = new Uint8Array(MiB).fill(1);
    await d.readAt(buf, 2 ** 39);
    assert.ok(buf.every((x) => x === 0));
    assert.equal(chunkFilesIn(dir), [], 'reads create nothing');
    const last = 2 ** 40 / cs - 1;
    await d.writeAt(new Uint8Array([1, 2, 3]), 2 ** 40 - 3);
    assert.equal(chunkFilesIn(dir), [chunkFileName(last)]);
    await d.writeAt(new Uint8Array(10).fill(4), 3 * cs - 5); // spans chunks 2 and 3
    assert.equal(chunkFilesIn(dir), [chunkFileName(2), chunkFileName(3), chunkFileName(last)]);
    assert.equal(d.chunkFiles(), [2, 3, last]);
    // A chunk file holds only up to the last byte written (the rest reads as zeros).
    assert.is(statSync(join(dir, chunkFileName(3))).size, 5);
    // Partial trim: advisory, keeps the file; partial zero: zeroes in place.
    await d.trim(2 * cs, cs - 1);
    await d.writeZeroes(3 * cs, 2);
    assert.equal(d.chunkFiles(), [2, 3, last]);
    const b = new Uint8Array(10);
    await d.readAt(b, 3 * cs - 5);
    assert.equal([...b], [4, 4, 4, 4, 4, 0, 0, 4, 4, 4]);
    // Whole chunks: files go.
    await d.trim(2 * cs, cs);
    await d.writeZeroes(3 * cs, cs, { fua: true });
    assert.equal(chunkFilesIn(dir), [chunkFileName(last)]);
    await d.readAt(b, 3 * cs - 5);
    assert.ok(b.every((x) => x === 0));
    // ... unless the caller asks for no hole.
    await d.writeZeroes(5 * cs, cs, { noHole: true });
    assert.equal(chunkFilesIn(dir), [chunkFileName(5), chunkFileName(last)]);
    // A whole-device discard visits only existing chunk files.
    const t0 = performance.now();
    await d.trim(0, 2 ** 40, { fua: true });
    assert.ok(performance.now() - t0 < 1000, 'sparse walk');
    assert.equal(chunkFilesIn(dir), []);
    await d.close();
  } finally {
    await s.close();
  }
});

test('metadata: recorded, checked on reopen, mismatch and junk refused', async () => {
  const s = new Scope();
  try {
    const dir = join(s.tmpdir(), 'r');
    await rejectsWith(DirectoryBackend.open(dir), RegionMetadataError, 'EINVAL');
    await rejectsWith(DirectoryBackend.open(dir, { create: true }), MissingSizeError, 'EINVAL');
    const d = await DirectoryBackend.open(dir, { size: MiB, chunkSize: 128 * KiB, create: true });
    await d.writeAt(new Uint8Array([42]), 1000);
    await d.close();
    const meta = JSON.parse(readFileSync(join(dir, METADATA_FILE), 'utf8'));
    assert.is(meta.size, MiB);
    assert.is(meta.chunkSize, 128 * KiB);
    const e1 = await rejectsWith(DirectoryBackend.open(dir, { size: 2 * MiB }), RegionMetadataError, 'EINVAL');
    assert.match(e1.message, /1048576/);
    await rejectsWith(DirectoryBackend.open(dir, { size: MiB, chunkSize: 4 * MiB, create: true }), RegionMetadataError, 'EINVAL');
    // Same parameters (or none): accepted, data still there.
    const again = await DirectoryBackend.open(dir, { size: MiB, chunkSize: 128 * KiB });
    const one = new Uint8Array(1);
    await again.readAt(one, 1000);
    assert.is(one[0], 42);
    await again.close();
    writeFileSync(join(dir, METADATA_FILE), '{"format":"something-else"}');
    await rejectsWith(DirectoryBackend.open(dir), RegionMetadataError, 'EINVAL');
    writeFileSync(join(dir, METADATA_FILE), 'not json');
    await rejectsWith(DirectoryBackend.open(dir), RegionMetadataError, 'EINVAL');
  } finally {
    await s.close();
  }
});

test('flush after the fd LRU evicted dirty chunks; read-only; closed', async () => {
  const s = new Scope();
  try {
    const dir = join(s.tmpdir(), 'r');
    const cs = 4 * KiB;
    const d = await DirectoryBackend.open(dir, { size: 64 * cs, chunkSize: cs, create: true, maxOpenFiles: 2 });
    const data = randomBytes(rng(8), 64 * cs);
    // Many concurrent writes, each into its own chunk, through 2 cached fds.
    await Promise.all(Array.from({ length: 64 }, (_, i) => d.writeAt(data.subarray(i * cs, (i + 1) * cs), i * cs)));
    await d.flush();
    await d.flush(); // nothing dirty: still fine
    await d.close();
    await d.close();
    await rejectsWith(d.readAt(new Uint8Array(1), 0), ClosedError, 'ESHUTDOWN');
    const ro = await DirectoryBackend.open(dir, { readOnly: true });
    assert.ok(ro.caps.readOnly);
    const all = new Uint8Array(64 * cs);
    await ro.readAt(all, 0);
    assertBytes(all, data, 'read back');
    await rejectsWith(ro.writeAt(new Uint8Array(1), 0), ReadOnlyError, 'EPERM');
    await rejectsWith(ro.trim(0, cs), ReadOnlyError, 'EPERM');
    await ro.close();
  } finally {
    await s.close();
  }
});

test('concurrent writes and whole-chunk trims of the same chunks never break the store', async () => {
  const s = new Scope();
  try {
    const cs = 4 * KiB;
    const d = await DirectoryBackend.open(join(s.tmpdir(), 'r'), { size: 8 * cs, chunkSize: cs, create: true, maxOpenFiles: 2 });
    const rand = rng(77);
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < 400; i++) {
      const c = Math.floor(rand() * 8);
      const r = rand();
      if (r < 0.5) jobs.push(d.writeAt(randomBytes(rand, 100), c * cs + 50));
      else if (r < 0.7) jobs.push(d.trim(c * cs, cs));
      else if (r < 0.8) jobs.push(d.flush());
      else jobs.push(d.readAt(new Uint8Array(cs), c * cs));
    }
    await Promise.all(jobs);
    // After the storm, ordinary I/O still behaves (no stale fd reused for a deleted file).
    const data = randomBytes(rand, 8 * cs);
    await d.writeAt(data, 0);
    await d.flush();
    const back = new Uint8Array(8 * cs);
    await d.readAt(back, 0);
    assertBytes(back, data, 'after concurrent trims');
    await d.close();
  } finally {
    await s.close();
  }
});

test.run();
