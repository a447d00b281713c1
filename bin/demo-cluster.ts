/**
 * The demo's later steps, one per user of the design beyond a plain mount:
 * a managed mount that outlives its sharer, a third-party copy that never
 * passes through the node that runs it, encrypted remote RAM on two
 * storage peers, and a live migration run by the real CLI processes (as a
 * user would: `quicmap share --socket`, then `quicmap migrate --json`).
 * Each returns ok and a one-line detail; a failure is reported, not thrown.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TransportName } from '../crypto/endpoint.ts';
import { generateIdentity } from '../crypto/identity.ts';
import { formatRate, formatSize } from '../base/size.ts';
import { splitRange } from '../base/split-range.ts';
import { buildStack } from '../engine/stack.ts';
import { NbdClient } from '../engine/nbd/client.ts';
import type { ReadWriterAt } from '../engine/rwat.ts';
import { shareRegion } from '../p2p/share.ts';
import { mountTicket } from '../p2p/mount.ts';
import { DEFAULT_LIMITS } from '../p2p/remote/server.ts';
import { openManaged } from '../p2p/sync/managed.ts';
import { runCopy } from '../p2p/copy/orchestrate.ts';
import { openChunkStore } from '../p2p/ram/store.ts';
import { openRemoteRam } from '../p2p/ram/ram.ts';

export interface StepResult {
  ok: boolean;
  detail: string;
}

type Cleanups = Array<() => Promise<void>>;

async function guarded(body: (cleanups: Cleanups) => Promise<StepResult>): Promise<StepResult> {
  const cleanups: Cleanups = [];
  try {
    return await body(cleanups);
  } catch (e) {
    return { ok: false, detail: (e as Error).message };
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => {});
  }
}

/** A request at most this large: a guard or an NBD export caps one request. */
const PIECE = 1 << 20;

/** Writes `data` at 0 in 1 MiB requests (the project's range splitter, all settled). */
function writeAll(store: ReadWriterAt, data: Uint8Array): Promise<void> {
  return splitRange(data.length, PIECE, (at, n) => store.writeAt(data.subarray(at, at + n), at));
}

async function memoryRegion(size: number, cleanups: Cleanups, fill?: Uint8Array) {
  const store = await buildStack({ backend: 'memory', backendOptions: { size }, maxRequest: DEFAULT_LIMITS.maxFrame });
  cleanups.push(() => store.close());
  if (fill) await writeAll(store, fill);
  return store;
}

async function readAll(store: ReadWriterAt, size: number): Promise<Buffer> {
  const out = Buffer.alloc(size);
  await splitRange(size, PIECE, (at, n) => store.readAt(out.subarray(at, at + n), at));
  return out;
}

/** A managed mount: B pulls A's region into a local cache in the background, then A goes away and B still serves every byte. */
export function managedStep(transport: TransportName, size: number): Promise<StepResult> {
  return guarded(async (cleanups) => {
    const data = randomBytes(size);
    const storeA = await memoryRegion(size, cleanups, data);
    const shared = await shareRegion({ identity: await generateIdentity(), store: storeA, transport, listen: '127.0.0.1:0' });
    let sharerUp = true;
    cleanups.push(async () => void (sharerUp && (await shared.close())));
    const mounted = await mountTicket({ identity: await generateIdentity(), ticket: shared.ticket });
    cleanups.push(() => mounted.close());
    let pulled!: () => void;
    const complete = new Promise<void>((r) => (pulled = r));
    const t0 = performance.now();
    const mm = await openManaged(mounted.region, { onEvent: (e) => e.type === 'pull-complete' && pulled() });
    cleanups.push(() => mm.close());
    await Promise.race([complete, new Promise((_, no) => setTimeout(() => no(new Error('the background pull did not complete in 60 s')), 60_000).unref())]);
    const pullMs = performance.now() - t0;
    await shared.close();
    sharerUp = false;
    const back = await readAll(mm.store, size);
    const same = back.equals(data);
    const p = mm.synced.progress();
    return {
      ok: same,
      detail: `B pulled ${formatSize(size)} of A's region into its cache in the background in ${pullMs.toFixed(0)} ms (${formatRate(size / (pullMs / 1000))}, ${formatSize(p.pulledBytes)} pulled, ${p.demandFetches} on demand); A then stopped, and every byte read on B ${same ? 'still matches' : 'DIFFERS'} (served from the cache)`,
    };
  });
}

/** Third-party copy: C copies A's region to B by reference; B fetches from A directly, and C carries almost nothing. */
export function copyStep(transport: TransportName, size: number): Promise<StepResult> {
  return guarded(async (cleanups) => {
    const data = randomBytes(size);
    const a = await shareRegion({ identity: await generateIdentity(), store: await memoryRegion(size, cleanups, data), transport, listen: '127.0.0.1:0' });
    cleanups.push(() => a.close());
    const storeB = await memoryRegion(size, cleanups);
    const b = await shareRegion({ identity: await generateIdentity(), store: storeB, transport, listen: '127.0.0.1:0' });
    cleanups.push(() => b.close());
    const s = await runCopy({ identity: await generateIdentity(), src: a.ticket, dst: b.ticket });
    const same = (await readAll(storeB, size)).equals(data);
    const share = (100 * s.throughC) / Math.max(1, s.bytes);
    return {
      ok: same && s.throughC < s.bytes / 10,
      detail: `C copied ${formatSize(s.bytes)} from A to B in ${s.ms.toFixed(0)} ms; B fetched the bytes from A by reference, C carried ${formatSize(s.throughC)} (${share.toFixed(2)} % of the data); B's copy ${same ? 'matches' : 'DIFFERS'}; references left at A: ${s.sourceRefs ?? 'unknown'}`,
    };
  });
}

/** Encrypted remote RAM: a region whose pages live sealed on two storage peers (two replicas each), with a small plaintext cache here. */
export function ramStep(transport: TransportName, size: number): Promise<StepResult> {
  return guarded(async (cleanups) => {
    const stores = [];
    for (let i = 0; i < 2; i++) {
      const st = await openChunkStore({ identity: await generateIdentity(), listen: '127.0.0.1:0', transport, quota: 2 * size });
      cleanups.push(() => st.close());
      stores.push(st);
    }
    const cacheBytes = Math.max(256 * 1024, size / 8);
    const ram = await openRemoteRam({ identity: await generateIdentity(), size, tickets: stores.map((s) => s.ticket), replicas: 2, cacheBytes });
    cleanups.push(() => ram.close());
    const data = randomBytes(size);
    await writeAll(ram.store, data);
    await ram.store.flush();
    // The cache holds an eighth of the region: most of this read comes back from the peers and is opened here.
    const back = await readAll(ram.store, size);
    const same = back.equals(data);
    const held = stores.map((s) => s.vault.stats());
    const heldBytes = held.reduce((n, s) => n + s.used, 0);
    const chunks = held.reduce((n, s) => n + s.chunks, 0);
    return {
      ok: same && heldBytes >= 2 * size,
      detail: `${formatSize(size)} written through a RAM region with a ${formatSize(cacheBytes)} plaintext cache; the two storage peers hold ${chunks} sealed chunks, ${formatSize(heldBytes)} (AES-256-GCM, 2 replicas, opaque ids); read back ${same ? 'matches' : 'DIFFERS'}`,
    };
  });
}

const QUICMAP = fileURLToPath(new URL('./quicmap.js', import.meta.url));

/** A quicmap child process with its own home (identity), stdout read line by line. */
class CliChild {
  readonly child: ChildProcess;
  private readonly lines: string[] = [];
  private readonly waiters: Array<() => void> = [];
  private err = '';

  constructor(args: string[], home: string) {
    mkdirSync(home, { recursive: true });
    this.child = spawn(process.execPath, [QUICMAP, ...args], { env: { ...process.env, QUICMAP_HOME: home }, stdio: ['ignore', 'pipe', 'pipe'] });
    let partial = '';
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      partial += d;
      for (let i = partial.indexOf('\n'); i >= 0; i = partial.indexOf('\n')) {
        this.lines.push(partial.slice(0, i));
        partial = partial.slice(i + 1);
      }
      this.waiters.splice(0).forEach((w) => w());
    });
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.err = (this.err + d).slice(-4000)));
    this.child.once('exit', () => this.waiters.splice(0).forEach((w) => w()));
  }

  async line(what: string, timeoutMs = 60_000): Promise<string> {
    const end = Date.now() + timeoutMs;
    while (this.lines.length === 0) {
      if (this.child.exitCode !== null || this.child.signalCode !== null) throw new Error(`${what}: the process exited (${this.err.trim().split('\n').pop() ?? ''})`);
      if (Date.now() > end) throw new Error(`${what}: no output in ${timeoutMs / 1000} s`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 250).unref();
      });
    }
    return this.lines.shift()!;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const gone = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
    await gone;
    clearTimeout(t);
  }
}

/** Live migration with the real CLI: a region written on A's local export moves to B; B then owns it, A's export is read-only. */
export function migrateStep(transport: TransportName, size: number, work: string): Promise<StepResult> {
  return guarded(async (cleanups) => {
    const srcSock = join(work, 'migrate-src.sock');
    const dstSock = join(work, 'migrate-dst.sock');
    const share = new CliChild(['share', '--size', String(size), '--listen', '127.0.0.1:0', '--transport', transport, '--socket', srcSock], join(work, 'home-a'));
    cleanups.push(() => share.stop());
    const ticket = await share.line('quicmap share');
    const srcUri = await share.line('quicmap share (its local export)');
    const data = randomBytes(size);
    const src = await NbdClient.connect(srcUri);
    await writeAll(src, data);
    await src.flush();
    const mig = new CliChild(['migrate', ticket, '--socket', dstSock, '--json'], join(work, 'home-b'));
    cleanups.push(() => mig.stop());
    const dstUri = await mig.line('quicmap migrate');
    let summary: { downtimeMs: number; totalMs: number; bytes: number; rounds: number } | undefined;
    for (;;) {
      const l = await mig.line('quicmap migrate (its summary)');
      if (l.startsWith('{')) {
        const o = JSON.parse(l) as Record<string, unknown>;
        if (typeof o.downtimeMs === 'number' && typeof o.totalMs === 'number') {
          summary = o as unknown as typeof summary;
          break;
        }
      }
    }
    const dst = await NbdClient.connect(dstUri);
    cleanups.push(() => dst.close());
    const same = (await readAll(dst, size)).equals(data);
    // The old source must refuse writes now: exactly one owner.
    const refused = await src.writeAt(Buffer.alloc(4096, 1), 0).then(
      () => false,
      () => true,
    );
    await src.close().catch(() => {});
    return {
      ok: same && refused && summary !== undefined,
      detail: `quicmap migrate moved ${formatSize(size)} from A to B in ${summary!.totalMs.toFixed(0)} ms (${summary!.rounds} round${summary!.rounds === 1 ? '' : 's'}, ${formatSize(summary!.bytes)} moved), downtime ${summary!.downtimeMs.toFixed(1)} ms; B's export ${same ? 'matches' : 'DIFFERS'}, A's export ${refused ? 'now refuses writes' : 'STILL TAKES WRITES'}`,
    };
  });
}
