/**
 * `npm run bench -- ram [--size 64MiB] [--cold-cache 4MiB] [--transport tcp|quic]
 *   [--reads 2000] [--json]`
 *
 * Encrypted remote RAM (`quicmap ram`'s stack: PagedStore over SealedPages
 * over storage peers) against the same workload on an unencrypted managed
 * mount of a remote memory backend (share + `openManaged`, fetch on demand),
 * in one run, in one process (peers on loopback), like with like: the same
 * transport, the same 64 KiB chunk (the managed mount's manifest chunk and
 * ram's sealing unit), the same cache where the workload allows it:
 *   hot    random 4 KiB reads, every chunk cached (p50/p99 µs)
 *   cold   random 4 KiB reads of chunks not cached: a fetch from the peer
 *          (and, for ram, an open of the sealed chunk) per read
 *   seq    sequential 1 MiB reads, 4 in flight, over the whole region, cold
 *          (neither has a chunk of it cached at the start; ram's cache is
 *          --cold-cache, so it evicts as it goes)
 *   write  sequential 1 MiB writes over the whole region + FLUSH: the
 *          managed mount's cache is the whole region, so ram's is too (the
 *          FLUSH pushes, or seals and puts, every chunk); and again with
 *          ram's cache at --cold-cache (it seals and evicts while writing)
 *   ram K=2 sequential cold read and write with two storage peers
 * and the sealing throughput per core (64 KiB chunks, AES-256-GCM — what
 * ram uses — and ChaCha20-Poly1305 for the choice).
 * Ratios are ram / managed: >= 0.8 is the target.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { generateIdentity, type Identity } from '../crypto/identity.ts';
import { MemoryBackend } from '../engine/backends/memory.ts';
import type { ReadWriterAt } from '../engine/rwat.ts';
import { parseSize } from '../base/size.ts';
import { shareRegion } from '../p2p/share.ts';
import { mountTicket } from '../p2p/mount.ts';
import { openManaged } from '../p2p/sync/managed.ts';
import { openChunkStore, type ChunkStore } from '../p2p/ram/store.ts';
import { openRemoteRam } from '../p2p/ram/ram.ts';
import { ChunkSealer } from '../p2p/ram/seal.ts';
import { MiB, median, percentile, table } from './_lib.ts';

function arg(args: string[], name: string, def: string): string {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : def;
}

const CHUNK = 64 * 1024;

async function seq(store: ReadWriterAt, size: number, write: boolean, req = MiB, depth = 4): Promise<number> {
  let next = 0;
  const src = randomBytes(req);
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: depth }, async () => {
      const buf = write ? src : new Uint8Array(req);
      while (next < size) {
        const at = next;
        next += req;
        const part = buf.subarray(0, Math.min(req, size - at));
        if (write) await store.writeAt(part, at);
        else await store.readAt(part, at);
      }
    }),
  );
  if (write) await store.flush();
  return size / 1e6 / ((performance.now() - t0) / 1000);
}

/**
 * Random 4 KiB reads, one at a time, alternating between the two stores
 * (which goes first alternates too), so both see the same machine: on a
 * loaded one, two back-to-back passes can differ by 2× on their own.
 * `chunks` picks the chunk of each read. Returns the latencies in µs.
 */
async function randomReads(stores: [ReadWriterAt, ReadWriterAt], chunks: number[]): Promise<[number[], number[]]> {
  const buf = new Uint8Array(4096);
  const out: [number[], number[]] = [[], []];
  for (const [i, c] of chunks.entries()) {
    const at = c * CHUNK + 4096 * Math.floor(Math.random() * (CHUNK / 4096));
    for (const k of i % 2 === 0 ? [0, 1] : [1, 0]) {
      const t0 = performance.now();
      await stores[k]!.readAt(buf, at);
      out[k]!.push((performance.now() - t0) * 1000);
    }
  }
  return out;
}

function shuffled(n: number): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

function sealRate(alg: 'aes-256-gcm' | 'chacha20-poly1305', open: boolean): number {
  // (one cast: the overloads of node:crypto's types take the algorithm as a literal)
  const key = randomBytes(32);
  const cipher = (iv: Buffer) => createCipheriv(alg as 'aes-256-gcm', key, iv, { authTagLength: 16 });
  const decipher = (iv: Buffer) => createDecipheriv(alg as 'aes-256-gcm', key, iv, { authTagLength: 16 });
  const pt = randomBytes(CHUNK);
  const iv = Buffer.alloc(12);
  const ct = (() => {
    const c = cipher(iv);
    const out = c.update(pt);
    c.final();
    return { out, tag: c.getAuthTag() };
  })();
  const n = 2000;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    if (open) {
      const d = decipher(iv);
      d.setAuthTag(ct.tag);
      d.update(ct.out);
      d.final();
    } else {
      iv.writeUInt32BE(i, 8);
      const c = cipher(iv);
      c.update(pt);
      c.final();
      c.getAuthTag();
    }
  }
  return (n * CHUNK) / 1e6 / ((performance.now() - t0) / 1000);
}

interface Subject {
  store: ReadWriterAt;
  close(): Promise<void>;
}

async function managedSubject(a: Identity, b: Identity, size: number, transport: 'tcp' | 'quic', fill: boolean): Promise<Subject & { complete(): Promise<void> }> {
  const backing = new MemoryBackend(size);
  if (fill) for (let at = 0; at < size; at += MiB) await backing.writeAt(randomBytes(MiB), at);
  const shared = await shareRegion({ identity: a, store: backing, transport, listen: '127.0.0.1:0', chunkSize: CHUNK });
  // A generous liveness: the sharer runs in this process, and on a loaded machine it may not answer for seconds.
  const region = { livenessMs: 30_000, requestTimeoutMs: 60_000 };
  const m = await mountTicket({ identity: b, ticket: shared.ticket, region });
  const urgent = await mountTicket({ identity: b, ticket: shared.ticket, region });
  const mm = await openManaged(m.region, { pullWorkers: 0, urgent: urgent.region, chunkSize: CHUNK });
  return {
    store: mm.store,
    complete: async () => {
      const buf = new Uint8Array(MiB);
      for (let at = 0; at < size; at += MiB) await mm.store.readAt(buf, at);
    },
    async close() {
      await mm.close();
      await urgent.close();
      await m.close();
      await shared.close();
    },
  };
}

async function ramSubject(b: Identity, stores: ChunkStore[], size: number, cacheBytes: number, replicas: number): Promise<Subject & { status: () => unknown }> {
  const r = await openRemoteRam({ identity: b, size, tickets: stores.map((s) => s.ticket), replicas, cacheBytes, chunkSize: CHUNK, writeBackMs: 0, livenessMs: 30_000 });
  // end(): the region's chunks are deleted from the stores (what SIGTERM does), so the next subject starts with empty stores.
  return { store: r.store, status: () => r.status(), close: () => r.end({ releaseMs: 30_000 }).then(() => {}) };
}

export default async function main(args: string[]): Promise<void> {
  const size = parseSize(arg(args, 'size', '64MiB'));
  const coldCache = parseSize(arg(args, 'cold-cache', '4MiB'));
  const transport = arg(args, 'transport', 'tcp') as 'tcp' | 'quic';
  const reads = Number(arg(args, 'reads', '2000'));
  const json = args.includes('--json');
  const chunks = size / CHUNK;
  const [a, b, c, d] = await Promise.all([generateIdentity(), generateIdentity(), generateIdentity(), generateIdentity()]);
  const stores = [
    await openChunkStore({ identity: c, listen: '127.0.0.1:0', transport, quota: 4 * size }),
    await openChunkStore({ identity: d, listen: '127.0.0.1:0', transport, quota: 4 * size }),
  ];
  const rows: (string | number)[][] = [];
  const results: Record<string, number> = {};
  const t0 = performance.now();
  const step = (what: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1)} s] ${what}\n`);
  const put = (name: string, ram: number, managed: number, unit: string, higherBetter: boolean) => {
    results[`${name}.ram`] = ram;
    results[`${name}.managed`] = managed;
    const ratio = higherBetter ? ram / managed : managed / ram;
    results[`${name}.ratio`] = ratio;
    rows.push([name, `${ram.toFixed(1)} ${unit}`, `${managed.toFixed(1)} ${unit}`, ratio.toFixed(2)]);
  };
  try {
    // Writes (each subject fresh): ram with the managed mount's cache (the whole region), then with the small one.
    {
      const man = await managedSubject(a, b, size, transport, false);
      const ram = await ramSubject(b, stores.slice(0, 1), size, size, 1);
      const small = await ramSubject(b, stores.slice(0, 1), size, coldCache, 1);
      step('seq write: managed');
      const wm = await seq(man.store, size, true);
      step('seq write: ram');
      const wr = await seq(ram.store, size, true);
      step('seq write: ram, small cache');
      const ws = await seq(small.store, size, true);
      put('seq write MB/s', wr, wm, 'MB/s', true);
      put(`seq write, ram cache ${coldCache / MiB} MiB`, ws, wm, 'MB/s', true);
      await man.close();
      await ram.close();
      await small.close();
    }
    {
      const man = await managedSubject(a, b, size, transport, true);
      const ram = await ramSubject(b, stores.slice(0, 1), size, coldCache, 1);
      await seq(ram.store, size, true); // fill the peer (then nothing of it is cached but the last chunks)
      step('seq read cold: managed');
      const rm = await seq(man.store, size, false);
      step('seq read cold: ram');
      const rr = await seq(ram.store, size, false);
      step('4K cold');
      put('seq read cold MB/s', rr, rm, 'MB/s', true);
      // Cold random 4 KiB reads: ram evicts as it goes (small cache), managed has not pulled these chunks.
      const man2 = await managedSubject(a, b, size, transport, true);
      // Not the chunks ram's cache holds after the sequential pass (its last ones): cold for both.
      const cold = chunks - Math.ceil(coldCache / CHUNK);
      const order = shuffled(cold).slice(0, Math.min(reads, cold));
      const [lr, lm] = await randomReads([ram.store, man2.store], order);
      put('4K cold p50 µs', median(lr), median(lm), 'µs', false);
      put('4K cold p99 µs', percentile(lr, 99), percentile(lm, 99), 'µs', false);
      await man2.close();
      await man.close();
      await ram.close();
    }
    // Hot: every chunk cached on both.
    {
      const man = await managedSubject(a, b, size, transport, true);
      const ram = await ramSubject(b, stores.slice(0, 1), size, size, 1);
      await seq(ram.store, size, true);
      await man.complete();
      step('4K hot');
      const order = Array.from({ length: reads }, () => Math.floor(Math.random() * chunks));
      await randomReads([ram.store, man.store], order.slice(0, 200)); // warm the JIT on both
      const [lr, lm] = await randomReads([ram.store, man.store], order);
      put('4K hot p50 µs', median(lr), median(lm), 'µs', false);
      put('4K hot p99 µs', percentile(lr, 99), percentile(lm, 99), 'µs', false);
      await man.close();
      await ram.close();
    }
    // Two replicas.
    {
      step('K=2');
      const ram = await ramSubject(b, stores, size, coldCache, 2);
      const w = await seq(ram.store, size, true);
      const r = await seq(ram.store, size, false);
      results['k2.seq write MB/s'] = w;
      results['k2.seq read cold MB/s'] = r;
      rows.push(['K=2 seq write / read cold', `${w.toFixed(1)} / ${r.toFixed(1)} MB/s`, '', '']);
      await ram.close();
    }
    step('sealing');
    // Sealing per core.
    const sealer = new ChunkSealer(randomBytes(32), randomBytes(16));
    const chunk = randomBytes(CHUNK);
    const t0 = performance.now();
    for (let i = 0; i < 2000; i++) sealer.open(i, 1, sealer.seal(i, 1, chunk));
    const both = (2000 * CHUNK) / 1e6 / ((performance.now() - t0) / 1000);
    const gcmSeal = median([sealRate('aes-256-gcm', false), sealRate('aes-256-gcm', false), sealRate('aes-256-gcm', false)]);
    const gcmOpen = median([sealRate('aes-256-gcm', true), sealRate('aes-256-gcm', true), sealRate('aes-256-gcm', true)]);
    const chaSeal = median([sealRate('chacha20-poly1305', false), sealRate('chacha20-poly1305', false), sealRate('chacha20-poly1305', false)]);
    const chaOpen = median([sealRate('chacha20-poly1305', true), sealRate('chacha20-poly1305', true), sealRate('chacha20-poly1305', true)]);
    Object.assign(results, { 'seal+open (ChunkSealer) MB/s': both, 'aes-256-gcm seal MB/s': gcmSeal, 'aes-256-gcm open MB/s': gcmOpen, 'chacha20-poly1305 seal MB/s': chaSeal, 'chacha20-poly1305 open MB/s': chaOpen });
    rows.push(['sealing per core (64 KiB)', `AES-256-GCM seal ${gcmSeal.toFixed(0)} / open ${gcmOpen.toFixed(0)} MB/s`, `ChaCha20-Poly1305 ${chaSeal.toFixed(0)} / ${chaOpen.toFixed(0)} MB/s`, '']);
    rows.push([`ChunkSealer seal+open round (${sealer.engine})`, `${both.toFixed(0)} MB/s`, '', '']);
  } finally {
    for (const s of stores) await s.close();
  }
  const sealEngine = new ChunkSealer(randomBytes(32), randomBytes(16)).engine;
  if (json) process.stdout.write(`${JSON.stringify({ size, coldCache, transport, reads, sealer: sealEngine, results })}\n`);
  else {
    process.stdout.write(`ram vs managed mount (unencrypted, remote memory backend), ${size / MiB} MiB over ${transport}, ram cold cache ${coldCache / MiB} MiB, K=1 unless said\n`);
    process.stdout.write(table(['workload', 'ram', 'managed', 'ratio (>= 0.8)'], rows));
  }
}
