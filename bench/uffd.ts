/**
 * `npm run bench -- uffd [--size MiB] [--samples N] [--skip-fuse] [--skip-hash]`
 *
 * - LazyRegion (userfaultfd, faults served by a JS handler from a
 *   MemoryBackend) at 4 KiB, 64 KiB and 1 MiB granules: first-touch latency
 *   (µs, one byte at a cold granule, timed in a worker thread) and cold-read
 *   throughput (MB/s, a worker copies the whole region out).
 * - Reference in the same run: the same MemoryBackend served by quicmap's
 *   NbdServer (engine/nbd/server.ts) on a unix socket, mounted with nbdfuse,
 *   mmap'd MAP_SHARED read-only in a worker: cold read and first touch.
 * - HashTracker throughput per hash function (MB/s hashed, 64 KiB chunks).
 * Anchors: r3map thesis userfaultfd ≈58 µs first chunk, 450 MB/s.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { MemoryBackend } from '../engine/backends/memory.ts';
import { HASH_NAMES, HashTracker } from '../engine/tracking/hash-tracker.ts';
import { LazyRegion } from '../engine/mmap/lazy-region.ts';
import { nativeUnavailableReason } from '../native/index.ts';

const MB = 1e6;
const MiB = 1 << 20;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}
function arg(args: string[], name: string, dflt: number): number {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
}

class BenchWorker {
  private readonly w = new Worker(new URL('./_uffd-worker.mjs', import.meta.url));
  call<T>(msg: Record<string, unknown>): Promise<T> {
    return new Promise((resolve, reject) => {
      const onMsg = (m: { ok: boolean; error?: string }): void => {
        this.w.off('error', onErr);
        if (m.ok) resolve(m as T);
        else reject(new Error(m.error));
      };
      const onErr = (e: Error): void => {
        this.w.off('message', onMsg);
        reject(e);
      };
      this.w.once('message', onMsg);
      this.w.once('error', onErr);
      this.w.postMessage(msg);
    });
  }
  close(): Promise<number> {
    return this.w.terminate();
  }
}

/** Offsets of `n` distinct cold granules spread over the region (one byte inside each). */
function coldOffsets(size: number, granule: number, n: number): number[] {
  const granules = Math.floor(size / granule);
  const step = Math.max(1, Math.floor(granules / n));
  const out: number[] = [];
  for (let g = 0; g < granules && out.length < n; g += step) out.push(g * granule + 123);
  return out;
}

export default async function (args: string[]): Promise<void> {
  const why = nativeUnavailableReason();
  if (why) throw new Error(`uffd bench needs the native addon: ${why}`);
  const size = arg(args, '--size', 256) * MiB;
  const samples = arg(args, '--samples', 200);
  const chunk = 1 * MiB; // worker copy size for cold reads

  const mem = new MemoryBackend(size);
  {
    const buf = new Uint8Array(4 * MiB);
    for (let off = 0; off < size; off += buf.length) {
      for (let i = 0; i < buf.length; i += 4096) buf[i] = (off / 4096 + i) & 0xff; // not all zero
      await mem.writeAt(buf, off);
    }
  }
  const worker = new BenchWorker();
  const rows: string[] = [];
  const results: Record<string, { mbps: number; p50: number; p99: number }> = {};
  console.log(`uffd bench: region ${size / MiB} MiB from a MemoryBackend, ${samples} first-touch samples, cold read = worker copies the region in ${chunk / MiB} MiB pieces`);

  try {
    for (const [label, granule, prefetch] of [
      ['4 KiB', 4096, 0],
      ['64 KiB', 64 * 1024, 0],
      ['1 MiB', MiB, 0],
      ['64 KiB +prefetch 8', 64 * 1024, 8],
    ] as const) {
      const mbpsRuns: number[] = [];
      for (let run = 0; run < 2; run++) {
        const region = await LazyRegion.open(mem, { granule, prefetch });
        try {
          const r = await worker.call<{ secs: number }>({ op: 'coldRead', id: region.mappingId, length: size, chunk });
          mbpsRuns.push(size / r.secs / MB);
        } finally {
          await region.close();
        }
      }
      const region = await LazyRegion.open(mem, { granule, prefetch });
      let lat: number[];
      try {
        lat = (await worker.call<{ us: number[] }>({ op: 'touch', id: region.mappingId, length: size, offsets: coldOffsets(size, granule, samples) })).us;
      } finally {
        await region.close();
      }
      const mbps = Math.max(...mbpsRuns);
      results[label] = { mbps, p50: median(lat), p99: pct(lat, 99) };
      rows.push(`| LazyRegion (userfaultfd), granule ${label} | ${median(lat).toFixed(1)} | ${pct(lat, 99).toFixed(1)} | ${mbps.toFixed(0)} (runs: ${mbpsRuns.map((x) => x.toFixed(0)).join(', ')}) |`);
      console.log(rows[rows.length - 1]);
    }

    if (!args.includes('--skip-fuse')) {
      try {
        const { NbdServer } = await import('../engine/nbd/server.ts');
        const { mountWithNbdfuse } = await import('../engine/attach/nbdfuse.ts');
        const work = mkdtempSync(join(tmpdir(), 'quicmap-uffd-bench-'));
        const server = new NbdServer();
        await server.addExport({ name: 'bench', store: mem });
        const ep = await server.listen({ path: join(work, 'nbd.sock') });
        try {
          const mbpsRuns: number[] = [];
          let lat: number[] = [];
          for (let run = 0; run < 3; run++) {
            // A fresh mount each time: nothing in the page cache.
            const m = await mountWithNbdfuse({ uri: ep.uri('bench'), dir: join(work, `mnt${run}`), readOnly: true });
            try {
              if (run < 2) {
                const r = await worker.call<{ secs: number }>({ op: 'fileColdRead', path: m.path, length: size, chunk });
                mbpsRuns.push(size / r.secs / MB);
              } else {
                lat = (await worker.call<{ us: number[] }>({ op: 'fileTouch', path: m.path, length: size, offsets: coldOffsets(size, 64 * 1024, samples) })).us;
              }
            } finally {
              await m.unmount();
            }
          }
          const mbps = Math.max(...mbpsRuns);
          results.fuse = { mbps, p50: median(lat), p99: pct(lat, 99) };
          rows.push(`| nbdfuse + mmap (quicmap NbdServer, unix socket, 4 conns) | ${median(lat).toFixed(1)} | ${pct(lat, 99).toFixed(1)} | ${mbps.toFixed(0)} (runs: ${mbpsRuns.map((x) => x.toFixed(0)).join(', ')}) |`);
          console.log(rows[rows.length - 1]);
        } finally {
          await ep.close();
          await server.close();
          rmSync(work, { recursive: true, force: true });
        }
      } catch (e) {
        console.log(`nbdfuse reference skipped: ${(e as Error).message}`);
      }
    }
  } finally {
    await worker.close();
  }

  console.log('\n| path | first touch p50 (µs) | p99 (µs) | cold read (MB/s) |\n|---|---|---|---|');
  for (const r of rows) console.log(r);
  const g64 = results['64 KiB'];
  if (g64) {
    console.log(`\nratios: LazyRegion 64 KiB cold read / thesis 450 MB/s = ${(g64.mbps / 450).toFixed(2)}x (target >= 1.00); first touch p50 / thesis 58 µs = ${(g64.p50 / 58).toFixed(2)}x`);
    if (results.fuse) console.log(`        LazyRegion 64 KiB / nbdfuse+mmap: cold read ${(g64.mbps / results.fuse.mbps).toFixed(2)}x, first-touch latency ${(g64.p50 / results.fuse.p50).toFixed(2)}x`);
    const g4 = results['4 KiB'];
    const g1m = results['1 MiB'];
    if (g4 && g1m) console.log(`        granule effect on cold read: 4 KiB ${(g4.mbps / g64.mbps).toFixed(2)}x, 1 MiB ${(g1m.mbps / g64.mbps).toFixed(2)}x of 64 KiB`);
  }

  if (!args.includes('--skip-hash')) {
    const hsize = Math.min(size, 256 * MiB);
    const view = new Uint8Array(hsize);
    for (let i = 0; i < hsize; i += 64) view[i] = i & 0xff;
    console.log(`\nHashTracker: full poll of ${hsize / MiB} MiB, 64 KiB chunks (best of 3)\n| hash | MB/s |\n|---|---|`);
    const speeds: Array<[string, number]> = [];
    for (const hash of HASH_NAMES) {
      const t = await HashTracker.create(view, { hash, chunkSize: 64 * 1024 });
      let best = Infinity;
      for (let i = 0; i < 3; i++) {
        const t0 = performance.now();
        t.pollSync();
        best = Math.min(best, (performance.now() - t0) / 1000);
      }
      speeds.push([hash, hsize / best / MB]);
      console.log(`| ${hash} | ${(hsize / best / MB).toFixed(0)} |`);
    }
    const sha256 = speeds.find(([h]) => h === 'sha256')![1];
    console.log(`ratios vs sha256: ${speeds.map(([h, s]) => `${h} ${(s / sha256).toFixed(2)}x`).join(', ')}`);
  }
  await mem.close();
}
