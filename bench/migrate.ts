/**
 * `npm run bench -- migrate [--size|--sizes 64MiB[,256MiB,1GiB]] [--dirty 1,10] [--pull-workers 8] [--rtt 0] [--max-downtime 50ms]
 *   [--transport tcp|quic] [--post-copy] [--converge on|off] [--queue-depth 16] [--json]`
 *
 * Live migration downtime with a writer dirtying a share of the region's
 * chunks per second (whole-chunk writes through the source's tracked local
 * path, i.e. what `share --socket` serves: throttle → gate → feed), in one
 * process: the source (shareRegion + serveMigration, --on-suspend stops the
 * writer) and the target (openManaged with push off + runMigration, finalize
 * auto, auto-converge unless --converge off). The writer is paced but waits
 * for its writes (at most --queue-depth outstanding; time lost to slow or
 * throttled writes is not made up), as an application or a VM does: an
 * auto-converge throttle slows it. Prints downtime (suspend start → target
 * accepts writes) and where it went, total time, bytes pulled, dirty rounds,
 * the writes the application made and the throttle reached, per size ×
 * dirty rate. Noisy: one process.
 */
import { generateIdentity } from '../crypto/identity.ts';
import { MemoryBackend } from '../engine/backends/memory.ts';
import { FeedLayer } from '../engine/layers/feed.ts';
import { WriteGate } from '../engine/layers/write-gate.ts';
import { WriteThrottle } from '../engine/layers/write-throttle.ts';
import { runMigration } from '../engine/migrate/target.ts';
import { parseSize } from '../base/size.ts';
import { shareRegion } from '../p2p/share.ts';
import { mountTicket } from '../p2p/mount.ts';
import { openManaged } from '../p2p/sync/managed.ts';
import { RemoteMigrationControl, serveMigration } from '../p2p/sync/migrate-calls.ts';
import { openTransport } from '../p2p/transports.ts';
import { delayTransport } from './_delay.ts';
import { MiB, table } from './_lib.ts';

function arg(args: string[], name: string, def: string): string {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : def;
}

function ms(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s)?$/.exec(text);
  if (!m) throw new Error(`bad duration ${text}`);
  return Number(m[1]) * (m[2] === 's' ? 1000 : 1);
}

async function once(size: number, dirtyPct: number, rtt: number, maxDowntimeMs: number, transportName: 'tcp' | 'quic', postCopy: boolean, pullWorkers: number, converge: boolean, queueDepth: number) {
  const a = await generateIdentity();
  const b = await generateIdentity();
  const store = new MemoryBackend(size);
  const fill = new Uint8Array(MiB).fill(0x11);
  for (let at = 0; at < size; at += MiB) await store.writeAt(fill.subarray(0, Math.min(MiB, size - at)), at);
  const gate = new WriteGate();
  const shared = await shareRegion({ identity: a, store: gate.wrap(store), transport: transportName, listen: '127.0.0.1:0' });
  const throttle = new WriteThrottle();
  const app = throttle.wrap(gate.wrap(new FeedLayer(store, shared.feed)));
  const cs = 64 * 1024;
  const chunks = Math.ceil(size / cs);
  let writing = true;
  let writes = 0;
  let outstanding = 0;
  const perMs = (chunks * dirtyPct) / 100 / 1000;
  let carry = 0;
  let lastTick = performance.now();
  const buf = new Uint8Array(cs).fill(0x77);
  const timer = setInterval(() => {
    const now = performance.now();
    const elapsed = now - lastTick;
    lastTick = now;
    if (!writing) return;
    // Paced by the clock (a late timer makes up), but writes it still waits for hold it back: what it
    // could not issue for want of a free slot (slow or throttled writes) is not made up later.
    carry = Math.min(carry + perMs * elapsed, queueDepth);
    for (; carry >= 1 && outstanding < queueDepth; carry--) {
      const c = Math.floor(Math.random() * chunks);
      outstanding++;
      app.writeAt(buf.subarray(0, Math.min(cs, size - c * cs)), c * cs).then(
        () => writes++,
        () => {},
      ).finally(() => outstanding--);
    }
    if (outstanding >= queueDepth) carry = Math.min(carry, 1);
  }, 10);
  // The source's own part of the suspend (on-suspend → writes closed → flushed), to tell it from the wire's.
  let suspendStart = 0;
  let sourceSuspendMs = 0;
  const src = serveMigration(shared.server, {
    gate,
    feed: shared.feed,
    flush: async () => {
      await store.flush();
      if (suspendStart) sourceSuspendMs = performance.now() - suspendStart;
    },
    throttle,
    onSuspend: async () => {
      suspendStart = performance.now();
      writing = false;
    },
  });
  const transport = delayTransport(await openTransport(transportName, b), rtt);
  try {
    const m = await mountTicket({ identity: b, ticket: shared.ticket, transport });
    const mm = await openManaged(m.region, { pullWorkers, pullOrder: 'volatility', push: false });
    const targetGate = new WriteGate(false);
    const r = await runMigration({
      synced: mm.synced,
      control: new RemoteMigrationControl(m.region, mm.source, mm.synced),
      finalize: { kind: 'auto' },
      maxDowntimeMs,
      postCopy,
      converge: converge ? {} : false,
      resume: async () => targetGate.open(),
      ...(process.env.QUICMAP_BENCH_TRACE ? { onPhase: (ph: string, d: Record<string, unknown>) => process.stderr.write(`${performance.now().toFixed(1)} ${ph} ${JSON.stringify(d)}\n`) } : {}),
    });
    await mm.close();
    await m.close();
    return { ...r, writes, writesPerS: writes / (r.totalMs / 1000), sourceSuspendMs };
  } finally {
    clearInterval(timer);
    src.close();
    await shared.close();
    await transport.close();
  }
}

export default async function main(args: string[]): Promise<void> {
  const sizes = arg(args, 'sizes', arg(args, 'size', '64MiB')).split(',').map(parseSize);
  const dirty = arg(args, 'dirty', '1,10').split(',').map(Number);
  const rtt = Number(arg(args, 'rtt', '0'));
  const maxDowntimeMs = ms(arg(args, 'max-downtime', '50ms'));
  const transportName = arg(args, 'transport', 'tcp') as 'tcp' | 'quic';
  const postCopy = args.includes('--post-copy');
  const pullWorkers = Number(arg(args, 'pull-workers', '8'));
  const converge = arg(args, 'converge', 'on') !== 'off';
  const queueDepth = Number(arg(args, 'queue-depth', '16'));
  const rows: (string | number)[][] = [];
  const results: unknown[] = [];
  for (const size of sizes) {
    for (const d of dirty) {
      const r = await once(size, d, rtt, maxDowntimeMs, transportName, postCopy, pullWorkers, converge, queueDepth);
      results.push({ size, dirtyPctPerS: d, rttMs: rtt, converge, queueDepth, ...r });
      const st = r.stopMs;
      rows.push([
        `${size / MiB} MiB`,
        `${d} %/s`,
        r.downtimeMs.toFixed(1),
        `${st.suspend.toFixed(1)} (${r.sourceSuspendMs.toFixed(1)})/${st.finalPull.toFixed(1)}/${st.handover.toFixed(1)}`,
        r.finalChunks,
        (r.totalMs / 1000).toFixed(2),
        (r.bytes / MiB).toFixed(1),
        `${r.rounds} (${r.dirtyRounds})`,
        `${r.writes} (${((r.writesPerS / Math.ceil(size / (64 * 1024))) * 100).toFixed(1)} %/s)`,
        r.throttle.steps > 0 ? `${r.throttle.pct} % (${r.throttle.steps} steps)` : '-',
      ]);
    }
  }
  if (args.includes('--json')) process.stdout.write(`${JSON.stringify({ transport: transportName, maxDowntimeMs, postCopy, converge, queueDepth, results })}\n`);
  else {
    process.stdout.write(`migration downtime over ${transportName}, RTT ${rtt} ms (userspace delay), max-downtime ${maxDowntimeMs} ms${postCopy ? ', post-copy' : ''}, auto-converge ${converge ? 'on' : 'off'}, writer queue depth ${queueDepth} (noisy, one process)\n`);
    process.stdout.write(table(['region', 'dirtied', 'downtime ms', 'suspend (at source)/pull/handover ms', 'final chunks', 'total s', 'pulled MiB', 'rounds (dirty)', 'app writes (rate)', 'throttle'], rows) + '\n');
  }
}
