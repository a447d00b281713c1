import { spawnSync } from 'node:child_process';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { LazyRegion } from '../../engine/mmap/lazy-region.ts';
import { TRACKING } from '../../engine/capability.ts';
import { needCondition, withTimeout } from '../helpers/env.ts';
import { fillPattern, patternByte, RegionWorker, TestStore, UFFD_OK, UFFD_REASON, UFFD_WP_OK } from './helpers.ts';

const uffdTest = needCondition(test, UFFD_OK, UFFD_REASON);
const wpTest = needCondition(test, UFFD_WP_OK, UFFD_REASON || 'userfaultfd write-protect not offered by this kernel');

const KiB = 1024;
const MiB = 1024 * KiB;

async function patternedMemory(size: number, chunk: number): Promise<MemoryBackend> {
  const mem = new MemoryBackend(size);
  const buf = new Uint8Array(Math.min(size, 1 * MiB));
  for (let off = 0; off < size; off += buf.length) {
    const part = buf.subarray(0, Math.min(buf.length, size - off));
    fillPattern(part, chunk, off);
    await mem.writeAt(part, off);
  }
  return mem;
}

function firstMismatch(data: Uint8Array, chunk: number): number {
  for (let i = 0; i < data.length; i++) if (data[i] !== patternByte(i, chunk)) return i;
  return -1;
}

uffdTest('LazyRegion from a MemoryBackend, read back from a worker thread, every chunk verified', async () => {
  await withTimeout(60_000, 'lazy region worker read', async () => {
    const size = 8 * MiB + 12 * KiB; // not a multiple of the granule: the tail is partial
    const granule = 64 * KiB;
    const mem = await patternedMemory(size, granule);
    const region = await LazyRegion.open(mem, { granule });
    const worker = new RegionWorker();
    try {
      const r = await worker.request<{ ok: boolean; data?: Uint8Array }>({ op: 'readAll', id: region.mappingId, length: region.length });
      const data = new Uint8Array(r.data!);
      assert.is(data.length, size);
      assert.is(firstMismatch(data, granule), -1, 'every byte matches its chunk pattern');
      const st = region.stats();
      assert.is(st.fills, Math.ceil(size / granule), 'each granule fetched once');
      assert.ok(st.missingFaults >= st.fills);
      // Now present: a readAt (native copy) agrees, and no new fetch happens.
      const back = new Uint8Array(100_000);
      await region.readAt(back, 3 * MiB + 17);
      for (let i = 0; i < back.length; i++) if (back[i] !== patternByte(3 * MiB + 17 + i, granule)) assert.unreachable(`readAt byte ${i}`);
      assert.is(region.stats().fills, st.fills);
    } finally {
      await worker.close();
      await region.close();
      await mem.close();
    }
  });
});

uffdTest('readAt/writeAt from the serving thread fault on native threads; prefetch neighbours', async () => {
  await withTimeout(30_000, 'lazy region readAt', async () => {
    const granule = 16 * KiB;
    const size = 2 * MiB;
    const mem = await patternedMemory(size, granule);
    const region = await LazyRegion.open(mem, { granule, prefetch: 3 });
    try {
      const buf = new Uint8Array(10);
      await region.readAt(buf, 5 * granule + 3);
      for (let i = 0; i < buf.length; i++) assert.is(buf[i], patternByte(5 * granule + 3 + i, granule));
      // The next 3 granules are prefetched (in the background).
      const deadline = Date.now() + 5000;
      while (region.stats().fills < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      await new Promise((r) => setTimeout(r, 20));
      assert.is(region.stats().fills, 4);
      await region.writeAt(new Uint8Array([1, 2, 3]), 100 * granule + 10);
      const back = new Uint8Array(5);
      await region.readAt(back, 100 * granule + 9);
      assert.equal(Array.from(back), [patternByte(100 * granule + 9, granule), 1, 2, 3, patternByte(100 * granule + 13, granule)]);
      // Whole-region prefetch, then the unsafe buffer is safe to read here.
      await region.prefetch();
      const view = region.unsafeBuffer();
      assert.is(view[size - 1], patternByte(size - 1, granule));
      assert.is(view[100 * granule + 11], 2);
    } finally {
      await region.close();
    }
  });
});

wpTest('write tracking reports every written chunk across many random writes', async () => {
  await withTimeout(60_000, 'write tracking', async () => {
    const granule = 4 * KiB;
    const size = 4 * MiB;
    const chunks = size / granule;
    const store = new TestStore(size);
    const region = await LazyRegion.open(store, { granule, trackWrites: true });
    const worker = new RegionWorker();
    let falseNegatives = 0;
    let falsePositives = 0;
    let writes = 0;
    let seed = 12345;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed % n;
    };
    try {
      assert.equal(region.takeDirty(), [], 'nothing written yet');
      for (let round = 0; round < 40; round++) {
        const n = 1 + rnd(200);
        const offsets: number[] = [];
        const values: number[] = [];
        const expected = new Set<number>();
        for (let i = 0; i < n; i++) {
          // Half the writes go to a hot set of chunks, half anywhere.
          const chunk = rnd(2) ? rnd(32) : rnd(chunks);
          const off = chunk * granule + rnd(granule);
          offsets.push(off);
          values.push(1 + rnd(255));
          expected.add(chunk);
        }
        if (round % 3 === 0) {
          await worker.request({ op: 'write', id: region.mappingId, length: region.length, offsets, values });
        } else {
          for (let i = 0; i < offsets.length; i++) await region.writeAt(new Uint8Array([values[i]]), offsets[i]);
        }
        writes += n;
        const got = new Set(region.takeDirty());
        for (const c of expected) if (!got.has(c)) falseNegatives++;
        for (const c of got) if (!expected.has(c)) falsePositives++;
      }
      console.log(`  write tracking: ${writes} writes in 40 rounds, false negatives ${falseNegatives}, false positives ${falsePositives}`);
      assert.is(falseNegatives, 0, 'no write goes unreported');
      assert.equal(region.takeDirty(), [], 'reported chunks are clean again');
      const st = region.stats();
      assert.ok(st.writeFaults > 0);
    } finally {
      await worker.close();
      await region.close();
    }
  });
});

wpTest('write tracking: writes racing takeDirty are never lost', async () => {
  await withTimeout(60_000, 'racing writes', async () => {
    const granule = 4 * KiB;
    const size = 1 * MiB;
    const chunks = size / granule;
    const region = await LazyRegion.open(new TestStore(size), { granule, trackWrites: true });
    await region.prefetch();
    const worker = new RegionWorker();
    const reported = new Set<number>();
    try {
      const written = new Set<number>();
      const batches: Promise<unknown>[] = [];
      for (let b = 0; b < 20; b++) {
        const offsets: number[] = [];
        for (let i = 0; i < 50; i++) {
          const c = (b * 53 + i * 17) % chunks;
          written.add(c);
          offsets.push(c * granule + ((b * 7 + i) % granule));
        }
        batches.push(worker.request({ op: 'write', id: region.mappingId, length: region.length, offsets, values: offsets.map(() => b + 1) }));
        for (const c of region.takeDirty()) reported.add(c);
      }
      await Promise.all(batches);
      for (const c of region.takeDirty()) reported.add(c);
      const missed = [...written].filter((c) => !reported.has(c));
      assert.equal(missed, [], 'every written chunk reported by some takeDirty');
    } finally {
      await worker.close();
      await region.close();
    }
  });
});

wpTest('write tracking sees writes made by the kernel (read(2) into the mapping from a worker)', async () => {
  const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = mkdtempSync(join(tmpdir(), 'quicmap-kwrite-'));
  const granule = 4 * KiB;
  const region = await LazyRegion.open(new TestStore(256 * KiB), { granule, trackWrites: true });
  const worker = new RegionWorker();
  try {
    await withTimeout(20_000, 'kernel writes', async () => {
      const file = join(dir, 'data');
      writeFileSync(file, Buffer.alloc(3 * granule, 0x5a));
      const r = await worker.request<{ ok: boolean; sum?: number }>({ op: 'readFileInto', id: region.mappingId, length: region.length, path: file, offset: 10 * granule + 100, count: 3 * granule });
      assert.is(r.sum, 3 * granule);
      assert.equal(region.takeDirty(), [10, 11, 12, 13]);
      const back = new Uint8Array(2);
      await region.readAt(back, 13 * granule + 99);
      assert.equal(Array.from(back), [0x5a, 0]);
    });
  } finally {
    await worker.close();
    await region.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

uffdTest('a failing source read fails the access (EIO), never hangs', async () => {
  await withTimeout(20_000, 'failing handler', async () => {
    const granule = 64 * KiB;
    const store = new TestStore(1 * MiB);
    store.failAt = (off) => (off === 2 * granule ? 'throw' : undefined);
    const errors: number[] = [];
    const region = await LazyRegion.open(store, { granule, onError: (_e, g) => errors.push(g) });
    try {
      const ok = new Uint8Array(16);
      await region.readAt(ok, granule + 5);
      const bad = new Uint8Array(16);
      const err = await region.readAt(bad, 2 * granule + 5).then(
        () => undefined,
        (e: unknown) => e as { code?: string },
      );
      assert.ok(err, 'read of the failed granule rejects');
      assert.is(err!.code, 'EIO');
      assert.equal(errors, [2]);
      // Later accesses fail at once (the pages are poisoned), other granules still work.
      const again = await region.readAt(bad, 2 * granule + 100).then(() => 'ok', (e: { code?: string }) => e.code);
      assert.is(again, 'EIO');
      await region.readAt(ok, 5 * granule);
      assert.is(region.stats().fetchErrors, 1);
    } finally {
      await region.close();
    }
  });
});

uffdTest('a source read that hangs times out and fails the access', async () => {
  await withTimeout(20_000, 'hanging handler', async () => {
    const granule = 64 * KiB;
    const store = new TestStore(1 * MiB);
    store.failAt = (off) => (off === 0 ? 'hang' : undefined);
    const region = await LazyRegion.open(store, { granule, handlerTimeoutMs: 200 });
    try {
      const t0 = Date.now();
      const code = await region.readAt(new Uint8Array(8), 10).then(() => 'ok', (e: { code?: string }) => e.code);
      assert.is(code, 'EIO');
      assert.ok(Date.now() - t0 < 5000, 'failed promptly after the timeout');
      assert.is(region.stats().timeouts, 1);
    } finally {
      await region.close();
    }
  });
});

uffdTest('a raw access to a failed granule gets SIGBUS (in a child process), not a hang', async () => {
  await withTimeout(30_000, 'SIGBUS child', async () => {
    const child = new URL('./sigbus-child.ts', import.meta.url).pathname;
    const r = spawnSync(process.execPath, ['--import', 'tsx', child], { timeout: 20_000, encoding: 'utf8' });
    assert.is(r.error, undefined, `child ran: ${r.error}`);
    assert.is(r.signal, 'SIGBUS', `child ended by SIGBUS (got signal ${r.signal}, status ${r.status}, stderr ${r.stderr.slice(0, 300)})`);
  });
});

uffdTest('closing a region while faults are pending is safe', async () => {
  await withTimeout(20_000, 'close with pending faults', async () => {
    const granule = 64 * KiB;
    const store = new TestStore(1 * MiB);
    store.failAt = () => 'hang';
    const region = await LazyRegion.open(store, { granule });
    const pending = [0, 3, 7].map((g) => region.readAt(new Uint8Array(32), g * granule).then(() => 'ok', (e: { code?: string }) => e.code));
    await new Promise((r) => setTimeout(r, 100));
    assert.is(region.stats().inFlight, 3, 'three fetches pending');
    await region.close();
    const codes = await Promise.all(pending);
    for (const c of codes) assert.ok(c === 'ESHUTDOWN' || c === 'EIO', `pending read failed cleanly (${c})`);
    const after = await region.readAt(new Uint8Array(1), 0).then(() => 'ok', (e: { code?: string }) => e.code);
    assert.is(after, 'ESHUTDOWN');
    await region.close(); // idempotent
  });
});

uffdTest('writeBack pushes written chunks to the source', async () => {
  await withTimeout(20_000, 'writeBack', async () => {
    if (!UFFD_WP_OK) return;
    const granule = 4 * KiB;
    const store = new TestStore(256 * KiB);
    const region = await LazyRegion.open(store, { granule, trackWrites: true });
    try {
      await region.writeAt(new Uint8Array([9, 9, 9]), 5 * granule + 1);
      await region.writeAt(new Uint8Array([7]), 40 * granule);
      const pushed = await region.writeBack();
      assert.equal(pushed, [5, 40]);
      assert.equal(Array.from(store.bytes.subarray(5 * granule, 5 * granule + 4)), [0, 9, 9, 9]);
      assert.is(store.bytes[40 * granule], 7);
    } finally {
      await region.close();
    }
  });
});

wpTest('TRACKING capability: writes through the mapping since a mark, kept until cleared', async () => {
  const granule = 4 * KiB;
  const region = await LazyRegion.open(new TestStore(256 * KiB), { granule, trackWrites: true });
  const worker = new RegionWorker();
  try {
    await withTimeout(20_000, 'tracking capability', async () => {
      const t = region.capability(TRACKING)!;
      assert.ok(t, 'a tracking lazy region offers TRACKING');
      assert.is(t.trackChunkSize, granule);
      await region.writeAt(new Uint8Array([1]), 2 * granule);
      await t.mark();
      assert.equal(await t.dirty(), [], 'the mark forgets earlier writes');
      await worker.request({ op: 'write', id: region.mappingId, length: region.length, offsets: [5 * granule + 7, 9 * granule], values: [3, 4] });
      assert.equal(await t.dirty(), [5, 9]);
      t.clear([5]);
      assert.equal(await t.dirty(), [9], 'a cleared chunk is gone, the rest stays');
    });
  } finally {
    await worker.close();
    await region.close();
  }
  const untracked = await LazyRegion.open(new TestStore(64 * KiB), { granule });
  try {
    assert.is(untracked.capability(TRACKING), undefined, 'no tracking without trackWrites');
  } finally {
    await untracked.close();
  }
});

test.run();
