/**
 * `npm run bench -- swarm [--nodes 10,100] [--lookups 20] [--rounds 5] [--bytes 64MiB] [--json]`
 *
 * The swarm on loopback:
 *   - DHT: a private testnet of each size; BEP44 get (validated record) and
 *     BEP5 lookup latency from random nodes, p50/p99;
 *   - mount to first byte: a ticket without addresses, the sharer found in
 *     the DHT; direct (the record names the sharer's endpoint) vs relayed
 *     (the record names only the relay): time from mount() to the first
 *     4 KiB read;
 *   - throughput: 1 MiB reads, 16 in flight, direct TCP vs through the
 *     relay (TCP circuits, end-to-end encrypted), ratio relayed/direct
 *     (target >= 0.8x). Direct QUIC is shown for reference;
 *   - punched quic: the same relayed start with the sharer on QUIC and the
 *     mounter free to upgrade: time from mount() until the path is a
 *     QUIC hole punch through the relay (no NAT on loopback: this measures
 *     the coordination, observe + punch + QUIC handshake + the move), then
 *     the reads over it;
 *   - CPU per GiB read during the reads: this process (both peers) and the
 *     relay process (what forwarding costs);
 *   - one bulk stream (transport level, no region protocol): TcpTransport
 *     direct vs RelayTransport through the relay, same secure channel.
 * The relay runs as its own process (`quicmap relay`); sharer and mounter
 * share this process.
 */
import { parseArgs } from 'node:util';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';
import { generateIdentity } from '../crypto/identity.ts';
import { MemoryBackend } from '../engine/backends/memory.ts';
import { parseSize } from '../base/size.ts';
import { DhtClient } from '../p2p/dht/client.ts';
import { RecordPublisher } from '../p2p/dht/publisher.ts';
import { topicFor } from '../p2p/dht/topic.ts';
import { QuicmapNode } from '../p2p/node/node.ts';
import { RelayTransport } from '../p2p/relay/transport.ts';
import { TcpTransport } from '../transports/tcp.ts';
import type { Transport } from '../transports/transport.ts';
import { MiB, median, percentile } from './_lib.ts';

const QUICMAP = fileURLToPath(new URL('../bin/quicmap.js', import.meta.url));

async function dhtLatency(n: number, lookups: number) {
  const first = await DhtClient.open({ bootstrap: 'none', queryTimeoutMs: 500 });
  const nodes = [first];
  for (let i = 1; i < n; i++) nodes.push(await DhtClient.open({ bootstrap: [first.address], queryTimeoutMs: 500 }));
  try {
    const sharer = await generateIdentity();
    const regionId = new Uint8Array(16).map(() => Math.floor(Math.random() * 256));
    const pub = new RecordPublisher({ dht: nodes[1]!, identity: sharer, record: { regionId, size: 1 << 30, chunkSize: 1 << 20, version: 1, endpoints: [{ transport: 'quic', address: '127.0.0.1:1' }], relays: [] }, port: 1 });
    await pub.start();
    pub.stop();
    const get: number[] = [];
    const look: number[] = [];
    let found = 0;
    for (let i = 0; i < lookups; i++) {
      const d = nodes[2 + Math.floor(Math.random() * (n - 2))]!;
      let t = performance.now();
      const v = await d.get({ sharer: sharer.publicKey, regionId });
      get.push(performance.now() - t);
      if (v?.ok) found++;
      t = performance.now();
      await d.lookup(topicFor(regionId, sharer.publicKey));
      look.push(performance.now() - t);
    }
    return { nodes: n, getP50Ms: median(get), getP99Ms: percentile(get, 99), lookupP50Ms: median(look), lookupP99Ms: percentile(look, 99), found: `${found}/${lookups}` };
  } finally {
    await Promise.all(nodes.map((d) => d.destroy()));
  }
}

/** CPU time (ms) a process used so far, from /proc (Linux), or NaN. */
function cpuMsOf(pid: number | undefined): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // utime + stime, in USER_HZ (100 on Linux)
  } catch {
    return NaN;
  }
}

async function startRelay(): Promise<{ address: string; stop: () => void; cpuMs: () => number }> {
  const child = spawn(process.execPath, [QUICMAP, 'relay', '--listen', '127.0.0.1:0', '--identity', `/tmp/quicmap-bench-relay-${process.pid}.id`], { stdio: ['ignore', 'pipe', 'ignore'] });
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', resolve);
    child.once('exit', (c) => reject(new Error(`relay exited ${c}`)));
  });
  return { address: line, stop: () => child.kill('SIGTERM'), cpuMs: () => cpuMsOf(child.pid) };
}

/** One stream carrying `bytes` to an endpoint that counts them; MB/s per round. */
async function streamRuns(relayAddress: string, rounds: number, bytes: number) {
  const a = await generateIdentity();
  const b = await generateIdentity();
  const out: Record<string, number[]> = {};
  const subjects: Array<[string, Transport, Transport, string]> = [
    ['direct-tcp', new TcpTransport(a), new TcpTransport(b), '127.0.0.1:0'],
    ['relayed', new RelayTransport(a), new RelayTransport(b), relayAddress],
  ];
  for (const [name, srv, cli, addr] of subjects) {
    const l = await srv.listen(addr);
    void (async () => {
      for (let c = await l.accept(); c; c = await l.accept()) {
        const conn = c;
        void (async () => {
          for (let st = await conn.acceptStream(); st; st = await conn.acceptStream()) {
            const s = st;
            void (async () => {
              while ((await s.read()) !== null);
              await s.write(new Uint8Array(1));
              await s.closeWrite();
            })().catch(() => {});
          }
        })().catch(() => {});
      }
    })();
    const c = await cli.dial(l.address, a.publicKey);
    const buf = new Uint8Array(MiB).fill(1);
    for (let r = 0; r < rounds; r++) {
      const st = await c.openStream();
      const t = performance.now();
      for (let i = 0; i < bytes; i += buf.length) await st.write(buf);
      await st.closeWrite();
      await st.read();
      (out[name] ??= []).push(bytes / 1e6 / ((performance.now() - t) / 1000));
    }
    await c.close();
    await l.close();
    await srv.close();
    await cli.close();
  }
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, median(v)]));
}

async function pathRuns(relayAddress: string, boot: DhtClient, rounds: number, bytes: number, relayCpuMs: () => number) {
  const rows: Record<string, { firstByteMs: number[]; mbps: number[]; punchMs: number[]; cpu: { self: number; relay: number; bytes: number } }> = {};
  for (let r = 0; r < rounds; r++) {
    for (const mode of ['direct-tcp', 'relayed', 'direct-quic', 'punched-quic'] as const) {
      const transport = mode === 'direct-quic' || mode === 'punched-quic' ? 'quic' : 'tcp';
      const punching = mode === 'punched-quic';
      const a = await QuicmapNode.open({ identity: await generateIdentity(), dht: { bootstrap: [boot.address], queryTimeoutMs: 250 }, relays: [relayAddress] });
      const b = await QuicmapNode.open({ identity: await generateIdentity(), dht: { bootstrap: [boot.address], queryTimeoutMs: 250 }, upgradeIntervalMs: punching ? 200 : 0, punch: punching });
      try {
        const store = new MemoryBackend(bytes);
        await store.writeAt(new Uint8Array(bytes).fill(7), 0);
        const share = await a.share({ store, listen: '127.0.0.1:0', transport });
        if (mode === 'relayed' || punching) await share.publisher!.update({ ...share.record!, endpoints: [] });
        const t0 = performance.now();
        const m = await b.mount({ ticket: share.ticket });
        const buf = new Uint8Array(4096);
        await m.mounted.region.readAt(buf, 0);
        const firstByteMs = performance.now() - t0;
        if (punching) {
          while (!m.dialer.path?.punched) {
            if (performance.now() - t0 > 30_000) throw new Error(`punched-quic: no punch within 30 s (${m.dialer.punch ?? 'not tried'})`);
            await new Promise((res) => setTimeout(res, 10));
          }
          await m.mounted.region.readAt(buf, 0); // the move is done once a request went over the new path
          (rows[mode] ??= { firstByteMs: [], mbps: [], punchMs: [], cpu: { self: 0, relay: 0, bytes: 0 } }).punchMs.push(performance.now() - t0);
        }
        const chunk = MiB;
        let next = 0;
        const cpu0 = process.cpuUsage();
        const relay0 = relayCpuMs();
        const t1 = performance.now();
        await Promise.all(
          Array.from({ length: 16 }, async () => {
            const b2 = new Uint8Array(chunk);
            for (let off = (next += chunk) - chunk; off < bytes; off = (next += chunk) - chunk) await m.mounted.region.readAt(b2, off);
          }),
        );
        const mbps = bytes / 1e6 / ((performance.now() - t1) / 1000);
        const used = process.cpuUsage(cpu0);
        const row = (rows[mode] ??= { firstByteMs: [], mbps: [], punchMs: [], cpu: { self: 0, relay: 0, bytes: 0 } });
        row.cpu.self += (used.user + used.system) / 1000;
        row.cpu.relay += relayCpuMs() - relay0;
        row.cpu.bytes += bytes;
        row.firstByteMs.push(firstByteMs);
        rows[mode]!.mbps.push(mbps);
        if (m.dialer.path?.kind !== (mode === 'relayed' ? 'relay' : 'direct')) throw new Error(`${mode}: path was ${m.dialer.path?.kind}`);
      } finally {
        await b.close();
        await a.close();
      }
    }
  }
  // CPU seconds per GiB read: this process (both peers' TLS and mux) and the relay process (forwarding).
  const perGiB = (ms: number, b: number) => ms / 1000 / (b / 2 ** 30);
  return Object.fromEntries(
    Object.entries(rows).map(([k, v]) => [
      k,
      { firstByteP50Ms: median(v.firstByteMs), mbpsP50: median(v.mbps), cpuSPerGiB: perGiB(v.cpu.self, v.cpu.bytes), relayCpuSPerGiB: perGiB(v.cpu.relay, v.cpu.bytes), ...(v.punchMs.length ? { punchedP50Ms: median(v.punchMs) } : {}) },
    ]),
  );
}

export default async function bench(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { nodes: { type: 'string', default: '10,100' }, lookups: { type: 'string', default: '20' }, rounds: { type: 'string', default: '5' }, bytes: { type: 'string', default: '64MiB' }, json: { type: 'boolean', default: false } },
  });
  const dht = [];
  for (const n of values.nodes.split(',').map(Number)) dht.push(await dhtLatency(n, Number(values.lookups)));
  const boot = await DhtClient.open({ bootstrap: 'none', queryTimeoutMs: 250 });
  const relay = await startRelay();
  let paths;
  let streams: Record<string, number> = {};
  try {
    paths = await pathRuns(relay.address, boot, Number(values.rounds), parseSize(values.bytes), relay.cpuMs);
    streams = await streamRuns(relay.address, Number(values.rounds), 4 * parseSize(values.bytes));
  } finally {
    relay.stop();
    await boot.destroy();
  }
  const ratio = paths.relayed!.mbpsP50 / paths['direct-tcp']!.mbpsP50;
  if (values.json) {
    process.stdout.write(`${JSON.stringify({ dht, paths, relayedVsDirectTcp: ratio, streams })}\n`);
    return;
  }
  process.stdout.write('DHT (private testnet, loopback)\n| nodes | get p50 | get p99 | lookup p50 | lookup p99 | found |\n|---|---|---|---|---|---|\n');
  for (const d of dht) process.stdout.write(`| ${d.nodes} | ${d.getP50Ms.toFixed(1)} ms | ${d.getP99Ms.toFixed(1)} ms | ${d.lookupP50Ms.toFixed(1)} ms | ${d.lookupP99Ms.toFixed(1)} ms | ${d.found} |\n`);
  process.stdout.write('\nMount (ticket without addresses, DHT lookup included)\n| path | mount to first byte p50 | 1 MiB reads, 16 in flight | CPU s/GiB, peers | CPU s/GiB, relay |\n|---|---|---|---|---|\n');
  for (const [k, v] of Object.entries(paths)) process.stdout.write(`| ${k} | ${v.firstByteP50Ms.toFixed(1)} ms | ${v.mbpsP50.toFixed(0)} MB/s | ${v.cpuSPerGiB.toFixed(2)} | ${v.relayCpuSPerGiB.toFixed(2)} |\n`);
  if (paths['punched-quic']?.punchedP50Ms !== undefined) process.stdout.write(`\npunched quic: mount start to the punched path in use, p50 ${paths['punched-quic'].punchedP50Ms.toFixed(0)} ms (first byte through the relay, then the punch; loopback, no NAT)\n`);
  process.stdout.write(`\nrelayed / direct tcp throughput: ${ratio.toFixed(2)}x (target >= 0.8x)\n`);
  process.stdout.write(`\nOne bulk stream (transport level): direct tcp ${streams['direct-tcp']?.toFixed(0)} MB/s, relayed ${streams.relayed?.toFixed(0)} MB/s (${((streams.relayed ?? 0) / (streams['direct-tcp'] ?? 1)).toFixed(2)}x)\n`);
}
