/**
 * `npm run bench -- managed [--size 64MiB] [--rtts 0,5,25,50] [--transport tcp|quic]
 *   [--pull-workers 8] [--json]`
 *
 * Managed vs direct mounts at several round-trip times (a userspace delay
 * line on the mounter's connection: bench/_delay.ts), in one process:
 *   direct   first-byte latency (one cold 4 KiB read) and sequential read
 *            throughput (1 MiB reads, 4 in flight) through the RemoteRegion
 *   managed  first-byte latency (a cold 4 KiB read: NeedAt), sequential
 *            read throughput while the background pull runs (cold), time
 *            until the whole region is local, and reads once it is (warm)
 *   learned  pull order from a recorded trace vs sequential: time until a
 *            workload's working set (10 % of the chunks, random order) is
 *            local, at the largest RTT
 *   cached   at RTT 0, with nbdcopy: the managed mount's NBD export once
 *            complete vs a local memory export (`quicmap nbd`'s stack)
 * The sharer runs in the same process: figures are noisy and rough; ratios
 * within one run are what to compare.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateIdentity } from '../crypto/identity.ts';
import { MemoryBackend } from '../engine/backends/memory.ts';
import { NbdServer } from '../engine/nbd/server.ts';
import { buildStack } from '../engine/stack.ts';
import { ChunkedLayer } from '../engine/layers/chunked.ts';
import type { ReadWriterAt } from '../engine/rwat.ts';
import { TraceRecorder } from '../engine/sync/access-trace.ts';
import { parseSize } from '../base/size.ts';
import { shareRegion } from '../p2p/share.ts';
import { mountTicket } from '../p2p/mount.ts';
import { openManaged } from '../p2p/sync/managed.ts';
import { openTransport } from '../p2p/transports.ts';
import { delayTransport } from './_delay.ts';
import { MiB, table } from './_lib.ts';

function arg(args: string[], name: string, def: string): string {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : def;
}

async function seqRead(store: ReadWriterAt, size: number, req = MiB, depth = 4): Promise<number> {
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: depth }, async () => {
      const buf = new Uint8Array(req);
      while (next < size) {
        const at = next;
        next += req;
        await store.readAt(buf.subarray(0, Math.min(req, size - at)), at);
      }
    }),
  );
  return size / 1e6 / ((performance.now() - t0) / 1000);
}

async function firstByte(store: ReadWriterAt, offset: number): Promise<number> {
  const t0 = performance.now();
  await store.readAt(new Uint8Array(4096), offset);
  return performance.now() - t0;
}

export default async function main(args: string[]): Promise<void> {
  const size = parseSize(arg(args, 'size', '64MiB'));
  const rtts = arg(args, 'rtts', '0,5,25,50').split(',').map(Number);
  const transportName = arg(args, 'transport', 'tcp') as 'tcp' | 'quic';
  const workers = Number(arg(args, 'pull-workers', '8'));
  const json = args.includes('--json');
  const a = await generateIdentity();
  const b = await generateIdentity();
  const backing = new MemoryBackend(size);
  const fill = new Uint8Array(MiB);
  for (let i = 0; i < fill.length; i++) fill[i] = (i * 31 + 7) & 0xff;
  for (let at = 0; at < size; at += MiB) await backing.writeAt(fill.subarray(0, Math.min(MiB, size - at)), at);
  const shared = await shareRegion({ identity: a, store: backing, transport: transportName, listen: '127.0.0.1:0' });
  const rows: (string | number)[][] = [];
  const results: Record<string, unknown>[] = [];
  try {
    for (const rtt of rtts) {
      const transport = delayTransport(await openTransport(transportName, b), rtt);
      // Direct.
      const d = await mountTicket({ identity: b, ticket: shared.ticket, transport });
      const dFirst = await firstByte(d.store, Math.floor(size / 2));
      const dRead = await seqRead(d.store, size);
      await d.close();
      // Managed.
      const m = await mountTicket({ identity: b, ticket: shared.ticket, transport });
      const urgent = await mountTicket({ identity: b, ticket: shared.ticket, transport });
      const t0 = performance.now();
      const mm = await openManaged(m.region, { pullWorkers: workers, urgent: urgent.region });
      const managedStore = await buildStack({ backend: mm.store, ownsBackend: false, maxRequest: 32 * MiB });
      const mFirst = await firstByte(managedStore, Math.floor(size / 3));
      const mCold = await seqRead(managedStore, size);
      await mm.synced.whenComplete();
      const fullS = (performance.now() - t0) / 1000;
      const mWarm = await seqRead(managedStore, size);
      const r = { rttMs: rtt, direct: { firstByteMs: dFirst, readMBps: dRead }, managed: { firstByteMs: mFirst, coldReadMBps: mCold, warmReadMBps: mWarm, fullCopyS: fullS } };
      results.push(r);
      rows.push([rtt, dRead.toFixed(0), dFirst.toFixed(2), mCold.toFixed(0), mWarm.toFixed(0), mFirst.toFixed(2), fullS.toFixed(2), (mCold / dRead).toFixed(2)]);
      if (rtt === 0 && spawnSync('nbdcopy', ['--version']).status === 0) {
        // A/B in the same run: the same synced layer through the plain chunked path (before LocalReadLayer).
        const chunkedStore = await buildStack({ backend: new ChunkedLayer(mm.synced, mm.synced.chunkSize), ownsBackend: false, maxRequest: 32 * MiB });
        results.push({ cachedVsLocal: await cachedVsLocal(managedStore, chunkedStore, size) });
      }
      await mm.close();
      await urgent.close();
      await m.close();
      await transport.close();
    }
    const maxRtt = Math.max(...rtts);
    const learned = await learnedOrder(shared.ticket, b, transportName, maxRtt, size, workers);
    results.push({ learnedOrder: learned });
    if (json) process.stdout.write(`${JSON.stringify({ size, transport: transportName, pullWorkers: workers, results })}\n`);
    else {
      process.stdout.write(`managed vs direct, ${size / MiB} MiB over ${transportName} (userspace delay; noisy, in one process)\n`);
      process.stdout.write(table(['RTT ms', 'direct MB/s', 'direct 1st ms', 'managed cold MB/s', 'managed warm MB/s', 'managed 1st ms', 'full copy s', 'cold/direct'], rows) + '\n');
      const c = results.find((x) => 'cachedVsLocal' in x) as { cachedVsLocal: { managedMBps: number; chunkedMBps: number; localMBps: number } } | undefined;
      if (c) {
        const v = c.cachedVsLocal;
        process.stdout.write(
          `cached read path via NBD (nbdcopy, median of interleaved runs): managed ${v.managedMBps.toFixed(0)} MB/s = ${(v.managedMBps / v.localMBps).toFixed(2)}x, ` +
            `through the chunked path (no LocalReadLayer) ${v.chunkedMBps.toFixed(0)} MB/s = ${(v.chunkedMBps / v.localMBps).toFixed(2)}x, local memory export ${v.localMBps.toFixed(0)} MB/s\n`,
        );
      }
      process.stdout.write(`learned pull order at ${maxRtt} ms RTT: working set (${learned.workingSet} chunks) local after ${learned.traceS.toFixed(2)} s with trace order vs ${learned.sequentialS.toFixed(2)} s sequential\n`);
    }
  } finally {
    await shared.close();
  }
}

async function cachedVsLocal(managed: ReadWriterAt, chunked: ReadWriterAt, size: number): Promise<{ managedMBps: number; chunkedMBps: number; localMBps: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'qm-bench-'));
  const server = new NbdServer();
  try {
    const local = new MemoryBackend(size);
    const fill = new Uint8Array(MiB).fill(0x5a);
    for (let at = 0; at < size; at += MiB) await local.writeAt(fill.subarray(0, Math.min(MiB, size - at)), at);
    await server.addExport({ name: 'managed', store: managed });
    await server.addExport({ name: 'chunked', store: chunked });
    await server.addExport({ name: 'local', store: await buildStack({ backend: local, maxRequest: 32 * MiB }) });
    const ep = await server.listen({ path: join(dir, 's') });
    const m: number[] = [];
    const c: number[] = [];
    const l: number[] = [];
    const runs = Number(process.env.QUICMAP_BENCH_CACHED_RUNS ?? 3);
    for (let i = 0; i < runs; i++) {
      l.push(await asyncCopy(ep.uri('local'), size));
      m.push(await asyncCopy(ep.uri('managed'), size));
      c.push(await asyncCopy(ep.uri('chunked'), size));
    }
    const med = (x: number[]) => x.sort((a, b) => a - b)[Math.floor(x.length / 2)]!;
    return { managedMBps: med(m), chunkedMBps: med(c), localMBps: med(l) };
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function asyncCopy(uri: string, size: number): Promise<number> {
  const { spawn } = await import('node:child_process');
  const t0 = performance.now();
  await new Promise<void>((resolve, reject) => {
    const c = spawn('nbdcopy', ['--no-extents', uri, 'null:'], { stdio: 'ignore', env: { ...process.env, PATH: `/usr/bin:${process.env.PATH}` } });
    c.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`nbdcopy exited ${code}`))));
  });
  return size / 1e6 / ((performance.now() - t0) / 1000);
}

async function learnedOrder(ticket: string, b: Awaited<ReturnType<typeof generateIdentity>>, transportName: 'tcp' | 'quic', rtt: number, size: number, workers: number) {
  const transport = delayTransport(await openTransport(transportName, b), rtt);
  try {
    const m0 = await mountTicket({ identity: b, ticket, transport });
    const cs = m0.region.manifest.chunkSize;
    const chunks = Math.ceil(size / cs);
    // The workload: 10 % of the chunks in a random (seeded) order, recorded as a first-touch trace.
    let seed = 42;
    const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    const set = new Set<number>();
    while (set.size < Math.max(1, Math.floor(chunks / 10))) set.add(Math.floor(rand() * chunks));
    const rec = new TraceRecorder(chunks, cs);
    const recorder = await openManaged(m0.region, { pullWorkers: 0 });
    for (const c of set) {
      rec.touch(c);
      await recorder.store.readAt(new Uint8Array(4096), c * cs);
    }
    await recorder.close();
    await m0.close();
    const { traceOrder, sequentialOrder } = await import('../engine/sync/pull-order.ts');
    const timeTo = async (order: 'trace' | 'sequential') => {
      const m = await mountTicket({ identity: b, ticket, transport });
      const fresh = await openManagedWith(m, order === 'trace' ? traceOrder([...rec.touched]) : sequentialOrder, workers);
      const t1 = performance.now();
      while (![...set].every((c) => fresh.synced.states.isLocal(c))) await new Promise((r) => setTimeout(r, 2));
      const s = (performance.now() - t1) / 1000;
      await fresh.close();
      await m.close();
      return s;
    };
    return { workingSet: set.size, traceS: await timeTo('trace'), sequentialS: await timeTo('sequential') };
  } finally {
    await transport.close();
  }
}

async function openManagedWith(m: Awaited<ReturnType<typeof mountTicket>>, order: import('../engine/sync/pull-order.ts').PullOrder, workers: number) {
  const { SyncedLayer } = await import('../engine/layers/synced.ts');
  const { RemoteChunkSource } = await import('../p2p/sync/remote-source.ts');
  const source = await RemoteChunkSource.open(m.region);
  const synced = new SyncedLayer({ cache: new MemoryBackend(m.region.manifest.size), source, pullWorkers: workers, pullOrder: order });
  await synced.start();
  return {
    synced,
    async close() {
      await synced.close();
      source.close();
    },
  };
}
