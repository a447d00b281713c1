import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { DirectoryBackend } from '../../engine/backends/directory.ts';
import { FileBackend } from '../../engine/backends/file.ts';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { ChunkedLayer } from '../../engine/layers/chunked.ts';
import type { ReadWriterAt, WriteOptions, ZeroOptions } from '../../engine/rwat.ts';
import { Scope } from '../helpers/env.ts';
import { assertBytes, fuzzStore, randomBytes, rng } from './model.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * A real store behind a check that every request has the shape ChunkedLayer
 * promises (one whole chunk per read/write, whole-chunk trims and zeroes),
 * with an optional delay so concurrent requests really overlap.
 */
class ChunkShapeCheck implements ReadWriterAt {
  readonly caps;
  writes: Array<{ data: Uint8Array; offset: number }> = [];
  violations: string[] = [];
  private readonly inner: ReadWriterAt;
  private readonly cs: number;
  private readonly regionSize: number;
  private readonly delayMs: number;
  constructor(
    inner: ReadWriterAt,
    cs: number,
    regionSize: number,
    delayMs: number = 0,
  ) {
    this.inner = inner;
    this.cs = cs;
    this.regionSize = regionSize;
    this.delayMs = delayMs;
    this.caps = inner.caps;
  }
  private whole(what: string, off: number, len: number): void {
    if (off % this.cs !== 0 || len !== Math.min(this.cs, this.regionSize - off)) this.violations.push(`${what} [${off}, +${len})`);
  }
  private aligned(what: string, off: number, len: number): void {
    const end = off + len;
    if (off % this.cs !== 0 || (end % this.cs !== 0 && end !== this.regionSize) || len <= 0) this.violations.push(`${what} [${off}, +${len})`);
  }
  private pause(): Promise<void> {
    return this.delayMs ? new Promise((r) => setTimeout(r, this.delayMs * Math.random())) : Promise.resolve();
  }
  size() { return this.inner.size(); }
  async readAt(buf: Uint8Array, off: number) { this.whole('read', off, buf.length); await this.pause(); await this.inner.readAt(buf, off); await this.pause(); }
  async writeAt(data: Uint8Array, off: number, opts?: WriteOptions) {
    this.whole('write', off, data.length);
    this.writes.push({ data, offset: off });
    await this.pause();
    await this.inner.writeAt(data, off, opts);
  }
  flush() { return this.inner.flush(); }
  async trim(off: number, len: number, opts?: WriteOptions) { this.aligned('trim', off, len); await this.inner.trim(off, len, opts); }
  async writeZeroes(off: number, len: number, opts?: ZeroOptions) { this.aligned('zero', off, len); await this.inner.writeZeroes(off, len, opts); }
  capability() { return undefined; }
  close() { return this.inner.close(); }
}

async function fuzzChunked(inner: ReadWriterAt, cs: number, seed: number, trim: 'zero' | 'either') {
  const size = await inner.size();
  const check = new ChunkShapeCheck(inner, cs, size);
  const layer = new ChunkedLayer(check, cs);
  await fuzzStore(layer, { seed, ops: 500, unit: cs, trim, maxLen: 3 * cs + 17 });
  assert.equal(check.violations.slice(0, 5), [], 'inner saw only whole-chunk requests');
  await layer.close();
}

test('over memory: random unaligned I/O matches the model, inner sees whole chunks only', async () => {
  for (const seed of [1, 2]) await fuzzChunked(new MemoryBackend(MiB + 5000, { chunkSize: 64 * KiB }), 16 * KiB, seed, 'either');
  // A layer chunk larger than, and not a multiple of, the backend's.
  await fuzzChunked(new MemoryBackend(MiB + 5000, { chunkSize: 4 * KiB }), 24 * KiB, 3, 'either');
});

test('over a file: random unaligned I/O matches the model', async () => {
  const s = new Scope();
  try {
    const f = await FileBackend.open(join(s.tmpdir(), 'f.img'), { size: MiB + 999, create: true });
    await fuzzChunked(f, 32 * KiB, 4, 'either');
  } finally {
    await s.close();
  }
});

test('over a directory: random unaligned I/O matches the model', async () => {
  const s = new Scope();
  try {
    const d = await DirectoryBackend.open(join(s.tmpdir(), 'd'), { size: MiB + 999, chunkSize: 64 * KiB, create: true, maxOpenFiles: 4 });
    await fuzzChunked(d, 32 * KiB, 5, 'either');
  } finally {
    await s.close();
  }
});

test('aligned whole chunks pass straight through (no copy); only edges are read-modify-written', async () => {
  const cs = 16 * KiB;
  const check = new ChunkShapeCheck(new MemoryBackend(8 * cs), cs, 8 * cs);
  const layer = new ChunkedLayer(check, cs);
  const data = randomBytes(rng(1), 4 * cs);
  await layer.writeAt(data, cs);
  assert.is(check.writes.length, 4);
  for (const w of check.writes) assert.ok(w.data.buffer === data.buffer, 'a view of the caller\'s buffer');
  check.writes = [];
  // Unaligned: [cs/2, 3cs + cs/2) -> RMW of chunks 0 and 3, pass-through of 1 and 2.
  const data2 = randomBytes(rng(2), 3 * cs);
  await layer.writeAt(data2, cs / 2);
  const direct = check.writes.filter((w) => w.data.buffer === data2.buffer).map((w) => w.offset).sort((a, b) => a - b);
  assert.equal(direct, [cs, 2 * cs]);
  assert.is(check.writes.length, 4);
  assert.equal(check.violations, []);
  const back = new Uint8Array(3 * cs);
  await layer.readAt(back, cs / 2);
  assertBytes(back, data2, 'read back');
  assert.is(layer.caps.preferredBlockSize, cs);
});

test('concurrent partial writes to one chunk lose nothing', async () => {
  const cs = 64 * KiB;
  for (const seed of [1, 2, 3]) {
    const rand = rng(seed);
    const check = new ChunkShapeCheck(new MemoryBackend(4 * cs), cs, 4 * cs, 3);
    const layer = new ChunkedLayer(check, cs);
    const expected = new Uint8Array(4 * cs);
    const jobs: Promise<void>[] = [];
    // 64 disjoint 1 KiB slices of chunk 1 (in random order), plus a few that straddle chunks 1|2.
    const slots = Array.from({ length: 64 }, (_, i) => i).sort(() => rand() - 0.5);
    for (const i of slots) {
      const d = randomBytes(rand, 1000);
      expected.set(d, cs + i * 1024);
      jobs.push(layer.writeAt(d, cs + i * 1024));
    }
    const straddle = randomBytes(rand, 24);
    expected.set(straddle, 2 * cs - 12);
    jobs.push(layer.writeAt(straddle, 2 * cs - 12));
    await Promise.all(jobs);
    const back = new Uint8Array(4 * cs);
    await layer.readAt(back, 0);
    assertBytes(back, expected, `seed ${seed}`);
    await layer.close();
  }
});

test('a whole-chunk write racing partial writes ends in arrival order, never torn', async () => {
  const cs = 8 * KiB;
  for (let round = 0; round < 10; round++) {
    const check = new ChunkShapeCheck(new MemoryBackend(2 * cs), cs, 2 * cs, 3);
    const layer = new ChunkedLayer(check, cs);
    const full = new Uint8Array(cs).fill(9);
    await Promise.all([
      layer.writeAt(new Uint8Array(100).fill(1), 10),
      layer.writeAt(full, 0),
      layer.writeAt(new Uint8Array(100).fill(2), 500),
    ]);
    const back = new Uint8Array(cs);
    await layer.readAt(back, 0);
    const want = new Uint8Array(cs).fill(9);
    want.fill(2, 500, 600);
    assertBytes(back, want, `round ${round}`);
    await layer.close();
  }
});

test.run();
