/**
 * `quicmap demo` (what `npm start` runs): a tour of what quicmap does today,
 * on loopback, needing nothing but npm. Each step prints what it did; real
 * NBD clients and FUSE are used where installed, and a missing one is named
 * with the package that brings it.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Command, UsageError, log, parseFlags } from '../command.ts';
import { generateIdentity } from '../../crypto/identity.ts';
import { buildStack } from '../../engine/stack.ts';
import { NbdClient } from '../../engine/nbd/client.ts';
import { NbdServer } from '../../engine/nbd/server.ts';
import { attachExport } from '../../engine/attach/attach.ts';
import { nbdfuseAvailable } from '../../engine/attach/nbdfuse.ts';
import type { ReadWriterAt } from '../../engine/rwat.ts';
import { formatRate, formatSize, parseSize } from '../../base/size.ts';
import { shareRegion } from '../../p2p/share.ts';
import { mountTicket } from '../../p2p/mount.ts';
import { DEFAULT_LIMITS } from '../../p2p/remote/server.ts';
import { isTransportName } from '../../crypto/endpoint.ts';

const usage = `Usage: quicmap demo [--size SIZE] [--transport quic|webtransport|tcp] [--json]

A local demo swarm on loopback (what 'npm start' runs):
  1. a region served over NBD, written and read back through the protocol;
  2. two nodes: A shares a region over authenticated QUIC, B mounts it by
     ticket and serves it as a local NBD export; writes made on B are
     checked on A;
  3. real NBD clients (nbdinfo, nbdcopy) and an nbdfuse mount on B's export,
     where installed (apt-get install libnbd-bin fuse3);
  4. a userfaultfd LazyRegion over B's remote region (native addon);
  5. a private swarm: a DHT and a relay on loopback; B mounts A's region
     from a ticket without addresses, through the relay, then moves to
     the direct path;
  6. a managed mount: B pulls A's region into a local cache in the
     background and keeps serving it after A stops;
  7. a third-party copy: C copies A's region to B by reference, B fetches
     the bytes from A directly, C carries almost nothing;
  8. encrypted remote RAM: a region whose pages live sealed on two storage
     peers, two replicas each, with a small plaintext cache;
  9. live migration with the real CLI: 'quicmap share --socket' on A,
     'quicmap migrate --json' on B; B then owns the region.
Prints a summary; --json prints it as one JSON object on stdout.

Options:
  --size SIZE        region size (default 64MiB)
  --transport NAME   quic (default), webtransport or tcp between the two nodes
  --json             machine-readable summary
  -h, --help         this help
`;

interface Step {
  step: string;
  ok: boolean;
  detail: string;
  skipped?: string;
}

export const demo: Command = {
  name: 'demo',
  usage,
  async run(argv) {
    const { values } = parseFlags('demo', argv, {
      size: { type: 'string', default: '64MiB' },
      transport: { type: 'string', default: 'quic' },
      json: { type: 'boolean', default: false },
    });
    const size = parseSize(values.size);
    if (size < 4 * 1024 * 1024) throw new UsageError('demo: --size must be at least 4MiB');
    const transport = values.transport;
    if (!isTransportName(transport)) throw new UsageError(`demo: --transport must be quic, webtransport or tcp, not "${transport}"`);
    const work = mkdtempSync(join(tmpdir(), 'quicmap-demo-'));
    const steps: Step[] = [];
    const record = (s: Step) => {
      steps.push(s);
      log(`${s.skipped ? 'skip' : s.ok ? ' ok ' : 'FAIL'}  ${s.step}: ${s.skipped ?? s.detail}`);
    };
    const cleanups: Array<() => Promise<void>> = [];
    try {
      // 1. Local block path.
      {
        const server = new NbdServer();
        const store = await buildStack({ backend: 'memory', backendOptions: { size }, maxRequest: server.limits.maxPayload });
        cleanups.push(() => store.close());
        cleanups.push(() => server.close());
        await server.addExport({ name: 'local', store, description: 'demo memory region' });
        const ep = await server.listen({ path: join(work, 'local.sock') });
        const client = await NbdClient.connect(ep.uri('local'));
        cleanups.push(() => client.close());
        const r = await exercise(client, Math.min(size, 32 * 1024 * 1024));
        record({ step: 'local NBD export (memory backend, unix socket)', ok: r.ok, detail: `${ep.uri('local')}: wrote and verified ${formatSize(r.bytes)}, write ${formatRate(r.writeRate)}, read ${formatRate(r.readRate)}, 4 KiB read p50 ${r.p50.toFixed(0)} µs p99 ${r.p99.toFixed(0)} µs` });
      }

      // 2. Two nodes over the secure transport.
      const [idA, idB] = await Promise.all([generateIdentity(), generateIdentity()]);
      const storeA = await buildStack({ backend: 'memory', backendOptions: { size }, maxRequest: DEFAULT_LIMITS.maxFrame });
      cleanups.push(() => storeA.close());
      const seed = randomBytes(1024 * 1024);
      await storeA.writeAt(seed, 0);
      const t0 = performance.now();
      const shared = await shareRegion({ identity: idA, store: storeA, transport, listen: '127.0.0.1:0' });
      cleanups.push(() => shared.close());
      const nodeB = new NbdServer();
      const mounted = await mountTicket({ identity: idB, ticket: shared.ticket, maxRequest: nodeB.limits.maxPayload });
      cleanups.push(() => mounted.close());
      const connectMs = performance.now() - t0;
      cleanups.push(() => nodeB.close());
      await nodeB.addExport({ name: 'remote', store: mounted.store, description: `region of ${mounted.sharerId.slice(0, 12)}…` });
      const epB = await nodeB.listen({ path: join(work, 'b.sock') });
      const uriB = epB.uri('remote');
      record({ step: `node A shares over ${transport}`, ok: true, detail: `A=${idA.id.slice(0, 12)}… listening at ${shared.address}; ticket ${shared.ticket.slice(0, 24)}… (${shared.ticket.length} chars)` });
      {
        const client = await NbdClient.connect(uriB);
        cleanups.push(() => client.close());
        const head = new Uint8Array(seed.length);
        await client.readAt(head, 0);
        const seen = Buffer.from(head).equals(seed);
        const r = await exercise(client, Math.min(size - seed.length, 16 * 1024 * 1024), seed.length);
        // Writes made through B must be on A.
        const onA = new Uint8Array(r.sample.length);
        await storeA.readAt(onA, r.sampleAt);
        const reached = Buffer.from(onA).equals(r.sample);
        record({ step: `node B mounts by ticket, serves NBD`, ok: seen && r.ok && reached, detail: `B=${idB.id.slice(0, 12)}… connected in ${connectMs.toFixed(0)} ms; A's data read through B ${seen ? 'matches' : 'DIFFERS'}; wrote ${formatSize(r.bytes)} through B (${formatRate(r.writeRate)}), read back ${formatRate(r.readRate)}, ${reached ? 'verified on A' : 'NOT on A'}; 4 KiB read p50 ${r.p50.toFixed(0)} µs p99 ${r.p99.toFixed(0)} µs (NBD → B → ${transport} → A)` });
      }

      // 3. Real clients on B's export.
      await realClients(uriB, size, record);
      await fuseStep(nodeB, work, seed, record);

      // 4. userfaultfd LazyRegion over the remote region.
      await lazyStep(mounted.store, seed, record);

      // 5. The swarm: DHT discovery, relay, upgrade to direct.
      const { swarmStep } = await import('../demo-swarm.ts');
      record({ step: 'private swarm: DHT lookup, relay, upgrade to direct', ...(await swarmStep(transport)) });

      // 6–9. Managed mount, third-party copy, remote RAM, live migration.
      const cluster = await import('../demo-cluster.ts');
      const part = Math.min(size, 16 * 1024 * 1024);
      record({ step: 'managed mount: background pull, outlives the sharer', ...(await cluster.managedStep(transport, part)) });
      record({ step: 'third-party copy by reference (C orchestrates A to B)', ...(await cluster.copyStep(transport, part)) });
      record({ step: 'encrypted remote RAM on two storage peers', ...(await cluster.ramStep(transport, Math.min(part, 8 * 1024 * 1024))) });
      record({ step: 'live migration (quicmap share, quicmap migrate)', ...(await cluster.migrateStep(transport, part, work)) });
    } finally {
      for (const c of cleanups.reverse()) await c().catch((e) => log(`cleanup: ${(e as Error).message}`));
      rmSync(work, { recursive: true, force: true });
    }
    const failed = steps.filter((s) => !s.ok && !s.skipped);
    if (values.json) process.stdout.write(`${JSON.stringify({ ok: failed.length === 0, steps })}\n`);
    else {
      process.stdout.write(`\nquicmap demo: ${steps.length - failed.length - steps.filter((s) => s.skipped).length} steps ok, ${failed.length} failed, ${steps.filter((s) => s.skipped).length} skipped\n`);
      for (const s of steps) process.stdout.write(`  ${s.skipped ? '-' : s.ok ? '✓' : '✗'} ${s.step}${s.skipped ? ` (skipped: ${s.skipped})` : ''}\n`);
      process.stdout.write(`\nNext: 'quicmap --help' lists every command (share, mount, migrate, copy, store, ram, relay, dht, status, nbd); tests: 'npm test'.\n`);
    }
    return failed.length ? 1 : 0;
  },
};

interface Exercise {
  ok: boolean;
  bytes: number;
  writeRate: number;
  readRate: number;
  p50: number;
  p99: number;
  sample: Uint8Array;
  sampleAt: number;
}

/** Write random data with 16 requests in flight, read it back, compare; then time 4 KiB reads. */
async function exercise(store: ReadWriterAt, bytes: number, at = 0): Promise<Exercise> {
  const block = 256 * 1024;
  const data = randomBytes(bytes);
  const inFlight = 16;
  const run = async (op: (off: number) => Promise<void>) => {
    let next = 0;
    const t = performance.now();
    await Promise.all(
      Array.from({ length: inFlight }, async () => {
        while (next < bytes) {
          const off = next;
          next += block;
          await op(off);
        }
      }),
    );
    return (bytes / (performance.now() - t)) * 1000;
  };
  const writeRate = await run((off) => store.writeAt(data.subarray(off, off + block), at + off));
  await store.flush();
  const back = Buffer.allocUnsafe(bytes);
  const readRate = await run((off) => store.readAt(back.subarray(off, off + block), at + off));
  const lat: number[] = [];
  const small = new Uint8Array(4096);
  for (let i = 0; i < 500; i++) {
    const off = at + Math.floor(Math.random() * (bytes / 4096)) * 4096;
    const t = performance.now();
    await store.readAt(small, off);
    lat.push((performance.now() - t) * 1000);
  }
  lat.sort((a, b) => a - b);
  return { ok: back.equals(data), bytes, writeRate, readRate, p50: lat[250]!, p99: lat[495]!, sample: data.subarray(0, 65536), sampleAt: at };
}

function has(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0;
}

/** Run a client asynchronously: the NBD server it talks to lives on this same event loop. */
function runAsync(cmd: string, args: string[], timeoutMs: number): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (e) => resolve({ status: null, stdout, stderr: e.message }));
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

async function realClients(uri: string, size: number, record: (s: Step) => void): Promise<void> {
  if (!has('nbdinfo')) record({ step: 'nbdinfo on B', ok: false, detail: '', skipped: 'nbdinfo not installed (apt-get install libnbd-bin)' });
  else {
    const r = await runAsync('nbdinfo', ['--json', uri], 20_000);
    const seen = r.status === 0 ? (JSON.parse(r.stdout).exports?.[0]?.['export-size'] as number) : undefined;
    record({ step: 'nbdinfo on B', ok: r.status === 0 && seen === size, detail: r.status === 0 ? `export-size ${formatSize(seen ?? 0)}` : r.stderr.trim() });
  }
  if (!has('nbdcopy')) record({ step: 'nbdcopy from B', ok: false, detail: '', skipped: 'nbdcopy not installed (apt-get install libnbd-bin)' });
  else {
    const t = performance.now();
    const r = await runAsync('nbdcopy', ['--no-extents', uri, 'null:'], 120_000);
    const rate = (size / (performance.now() - t)) * 1000;
    record({ step: 'nbdcopy from B (whole region over the remote link)', ok: r.status === 0, detail: r.status === 0 ? `${formatSize(size)} at ${formatRate(rate)}` : r.stderr.trim() });
  }
}

async function fuseStep(server: NbdServer, work: string, seed: Uint8Array, record: (s: Step) => void): Promise<void> {
  const fuse = nbdfuseAvailable();
  if (!fuse.ok) {
    record({ step: 'mmap-able file on B (nbdfuse)', ok: false, detail: '', skipped: fuse.reason ?? 'nbdfuse unavailable' });
    return;
  }
  try {
    const m = await attachExport({ server, exportName: 'remote', dir: join(work, 'mnt') });
    try {
      // Async I/O only: a blocking read would stall the event loop that serves this very file.
      const fh = await open(m.path, 'r');
      const buf = Buffer.alloc(4096);
      await fh.read(buf, 0, 4096, 0);
      await fh.close();
      const ok = buf.equals(Buffer.from(seed.subarray(0, 4096)));
      record({ step: 'mmap-able file on B', ok, detail: `${m.method} at ${m.path}; first 4 KiB ${ok ? 'match' : 'DIFFER from'} A's region` });
    } finally {
      await m.unmount();
    }
  } catch (e) {
    record({ step: 'mmap-able file on B', ok: false, detail: '', skipped: `mount failed: ${(e as Error).message}` });
  }
}

async function lazyStep(remote: ReadWriterAt, seed: Uint8Array, record: (s: Step) => void): Promise<void> {
  const { nativeAvailable, nativeUnavailableReason } = await import('../../native/index.ts');
  if (!nativeAvailable()) {
    record({ step: 'LazyRegion over the remote region', ok: false, detail: '', skipped: `native addon unavailable: ${nativeUnavailableReason()}` });
    return;
  }
  try {
    const { LazyRegion } = await import('../../engine/mmap/lazy-region.ts');
    const lazy = await LazyRegion.open(remote, { granule: 64 * 1024 });
    try {
      const buf = new Uint8Array(seed.length);
      const t = performance.now();
      await lazy.readAt(buf.subarray(0, 4096), 0);
      const first = (performance.now() - t) * 1000;
      await lazy.readAt(buf, 0);
      const ok = Buffer.from(buf).equals(Buffer.from(seed));
      record({ step: 'LazyRegion (userfaultfd) over the remote region', ok, detail: `first touch ${first.toFixed(0)} µs; 1 MiB faulted in from A ${ok ? 'matches' : 'DIFFERS'}` });
    } finally {
      await lazy.close();
    }
  } catch (e) {
    record({ step: 'LazyRegion over the remote region', ok: false, detail: '', skipped: `userfaultfd unavailable: ${(e as Error).message}` });
  }
}
