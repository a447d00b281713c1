/**
 * `npm run bench -- quic-datapath [--json] [--rounds N] [--bulk-mib N] [--duration MS]
 *   [--sizes 4k,64k,1m] [--subjects ngtcp2,quicmap-quic,quicmap-tcp]`
 *
 * The native ngtcp2 data path (Ngtcp2Transport) against the QUIC library
 * transport (QuicTransport over @chainsafe/libp2p-quic) and TCP, in one run,
 * subjects interleaved round by round:
 *   - request/response, 16 in flight, a stream per request: MB/s of payload
 *     (one direction) and CPU-s per GB of payload (client + server process);
 *   - bulk: one stream, client -> server, `--bulk-mib` MiB in 1 MiB writes:
 *     MB/s and CPU-s per GB.
 * Servers run in child processes (this file with --serve); CPU is
 * process.cpuUsage() of the client plus /proc/<pid>/stat of the server.
 * Ratios: ngtcp2 / quicmap-quic (the issue's adoption bar is >= 1.5x).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { randomBytes } from 'node:crypto';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Connection, Transport } from '../transports/transport.ts';
import { generateIdentity } from '../crypto/identity.ts';
import { TcpTransport } from '../transports/tcp.ts';
import { QuicTransport } from '../transports/quic.ts';
import { Ngtcp2Transport } from '../transports/ngtcp2.ts';
import { median } from './_lib.ts';

type Subject = 'ngtcp2' | 'quicmap-quic' | 'quicmap-tcp';
const SUBJECTS: Subject[] = ['ngtcp2', 'quicmap-quic', 'quicmap-tcp'];
const MODE_ECHO = 0x45; // 'E': echo each request back
const MODE_SINK = 0x53; // 'S': count the bytes, answer with their number

function makeTransport(subject: Subject, id: Awaited<ReturnType<typeof generateIdentity>>): Transport {
  if (subject === 'ngtcp2') return new Ngtcp2Transport(id);
  if (subject === 'quicmap-quic') return new QuicTransport(id);
  return new TcpTransport(id);
}

/** Server: per stream, the first byte picks echo or sink. */
function serve(conn: Connection): void {
  void (async () => {
    for (;;) {
      const st = await conn.acceptStream().catch(() => null);
      if (!st) return;
      void (async () => {
        let mode = -1;
        let count = 0;
        const parts: Uint8Array[] = [];
        for (;;) {
          let x = await st.read();
          if (x === null) break;
          if (mode < 0) {
            mode = x[0]!;
            x = x.subarray(1);
          }
          if (mode === MODE_SINK) count += x.length;
          else if (x.length) parts.push(x);
        }
        if (mode === MODE_SINK) await st.write(Buffer.from(String(count)));
        else await st.write(parts);
        await st.closeWrite();
      })().catch(() => st.reset());
    }
  })();
}

function cpuOfPid(pid: number): number {
  // utime + stime (fields 14, 15), in clock ticks of 1/100 s.
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

function cpuSelf(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

interface Server {
  child: ChildProcess;
  address: string;
  publicKey: Uint8Array;
}

async function spawnServer(subject: Subject): Promise<Server> {
  const self = fileURLToPath(import.meta.url);
  const child = spawn(process.execPath, ['--import', 'tsx', self, '--serve', subject], { stdio: ['pipe', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', resolve);
    child.once('exit', (c) => reject(new Error(`${subject} server exited (${c})`)));
  });
  const info = JSON.parse(line) as { address: string; publicKey: string };
  return { child, address: info.address, publicKey: Buffer.from(info.publicKey, 'hex') };
}

async function stopServer(s: Server): Promise<void> {
  const gone = new Promise((r) => s.child.once('exit', r));
  s.child.stdin!.end();
  await Promise.race([gone, new Promise((r) => setTimeout(r, 3000))]);
  if (s.child.exitCode === null) s.child.kill('SIGKILL');
}

async function drain(st: { read(): Promise<Uint8Array | null> }): Promise<number> {
  let n = 0;
  for (let x; (x = await st.read()) !== null; ) n += x.length;
  return n;
}

const HDR_ECHO = Buffer.from([MODE_ECHO]);
const HDR_SINK = Buffer.from([MODE_SINK]);

async function roundTrip(conn: Connection, payload: Uint8Array): Promise<void> {
  const st = await conn.openStream();
  await st.write([HDR_ECHO, payload]);
  await st.closeWrite();
  const n = await drain(st);
  if (n !== payload.length) throw new Error(`echo returned ${n} of ${payload.length} bytes`);
}

interface Sample {
  mbps: number;
  cpuPerGB: number;
}

async function measureRR(conn: Connection, server: Server, payload: Uint8Array, ms: number): Promise<Sample> {
  await Promise.all(Array.from({ length: 16 }, () => roundTrip(conn, payload)));
  const c0 = cpuSelf() + cpuOfPid(server.child.pid!);
  const t0 = process.hrtime.bigint();
  let ops = 0;
  const end = Date.now() + ms;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (Date.now() < end) {
        await roundTrip(conn, payload);
        ops++;
      }
    }),
  );
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = cpuSelf() + cpuOfPid(server.child.pid!) - c0;
  const bytes = ops * payload.length;
  return { mbps: bytes / secs / 1e6, cpuPerGB: cpu / (bytes / 1e9) };
}

async function measureBulk(conn: Connection, server: Server, total: number): Promise<Sample> {
  const chunk = randomBytes(1 << 20);
  const c0 = cpuSelf() + cpuOfPid(server.child.pid!);
  const t0 = process.hrtime.bigint();
  const st = await conn.openStream();
  await st.write(HDR_SINK);
  for (let off = 0; off < total; off += chunk.length) await st.write(chunk);
  await st.closeWrite();
  const parts: Uint8Array[] = [];
  for (let x; (x = await st.read()) !== null; ) parts.push(x);
  const got = Number(Buffer.concat(parts).toString());
  if (got !== total) throw new Error(`sink counted ${got} of ${total} bytes`);
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = cpuSelf() + cpuOfPid(server.child.pid!) - c0;
  return { mbps: total / secs / 1e6, cpuPerGB: cpu / (total / 1e9) };
}

function parseSize(s: string): number {
  const m = /^(\d+)([kKmM]?)$/.exec(s.trim());
  if (!m) throw new Error(`bad size ${s}`);
  return Number(m[1]) * (m[2]!.toLowerCase() === 'k' ? 1024 : m[2]!.toLowerCase() === 'm' ? 1 << 20 : 1);
}

const label = (b: number) => (b >= 1 << 20 ? `${b >> 20} MiB` : `${b >> 10} KiB`);

export default async function main(args: string[]): Promise<void> {
  const opt = (name: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const json = args.includes('--json');
  const rounds = Number(opt('--rounds') ?? 3);
  const durationMs = Number(opt('--duration') ?? 1500);
  const bulkBytes = Number(opt('--bulk-mib') ?? 256) << 20;
  const sizes = (opt('--sizes')?.split(',') ?? ['4k', '64k', '1m']).map(parseSize);
  let subjects = (opt('--subjects')?.split(',') ?? SUBJECTS) as Subject[];
  const why = Ngtcp2Transport.unavailableReason();
  if (why) {
    process.stdout.write(`(ngtcp2 subject skipped: ${why})\n`);
    subjects = subjects.filter((s) => s !== 'ngtcp2');
  }
  const log = json ? () => {} : (l: string) => process.stdout.write(`${l}\n`);
  log(`quic-datapath bench: servers in child processes, loopback, ${rounds} interleaved rounds, ${durationMs} ms per request/response sample, bulk ${bulkBytes >> 20} MiB, node ${process.version}`);
  const id = await generateIdentity();
  const servers = new Map<Subject, Server>();
  const clients = new Map<Subject, { t: Transport; conn: Connection }>();
  const results = new Map<string, Sample[]>();
  const add = (k: string, s: Sample) => (results.get(k) ?? results.set(k, []).get(k)!).push(s);
  try {
    for (const s of subjects) {
      const sv = await spawnServer(s);
      servers.set(s, sv);
      const t = makeTransport(s, id);
      clients.set(s, { t, conn: await t.dial(sv.address, sv.publicKey) });
    }
    for (let r = 0; r < rounds; r++) {
      for (const bytes of sizes) {
        const payload = randomBytes(bytes);
        for (const s of subjects) add(`${s} rr ${bytes}`, await measureRR(clients.get(s)!.conn, servers.get(s)!, payload, durationMs));
      }
      for (const s of subjects) add(`${s} bulk`, await measureBulk(clients.get(s)!.conn, servers.get(s)!, bulkBytes));
    }
  } finally {
    for (const c of clients.values()) await c.t.close().catch(() => {});
    for (const sv of servers.values()) await stopServer(sv).catch(() => {});
  }
  const rows: Array<{ subject: Subject; what: string; mbps: number; cpuPerGB: number; rounds: number[] }> = [];
  for (const what of [...sizes.map((b) => `rr ${b}`), 'bulk']) {
    for (const s of subjects) {
      const xs = results.get(`${s} ${what}`)!;
      rows.push({ subject: s, what, mbps: median(xs.map((x) => x.mbps)), cpuPerGB: median(xs.map((x) => x.cpuPerGB)), rounds: xs.map((x) => x.mbps) });
    }
  }
  const ratio = (what: string, a: Subject, b: Subject) => {
    const xa = results.get(`${a} ${what}`), xb = results.get(`${b} ${what}`);
    return xa && xb ? median(xa.map((x, i) => x.mbps / xb[i]!.mbps)) : NaN;
  };
  if (json) {
    process.stdout.write(`${JSON.stringify({ node: process.version, rounds, durationMs, bulkBytes, rows }, null, 2)}\n`);
    return;
  }
  for (const r of rows) {
    const what = r.what === 'bulk' ? 'bulk, 1 stream' : `rr ${label(Number(r.what.slice(3)))} x16`;
    log(`${r.subject.padEnd(13)} ${what.padEnd(16)} ${r.mbps.toFixed(0).padStart(6)} MB/s  ${r.cpuPerGB.toFixed(2).padStart(5)} CPU-s/GB  (rounds ${r.rounds.map((x) => x.toFixed(0)).join('/')})`);
  }
  if (subjects.includes('ngtcp2') && subjects.includes('quicmap-quic')) {
    log('\nngtcp2 / quicmap-quic (median of per-round throughput ratios):');
    for (const what of [...sizes.map((b) => `rr ${b}`), 'bulk']) log(`  ${what === 'bulk' ? 'bulk' : `rr ${label(Number(what.slice(3)))}`}: ${ratio(what, 'ngtcp2', 'quicmap-quic').toFixed(2)}x`);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href && process.argv[2] === '--serve') {
  const subject = process.argv[3] as Subject;
  const sid = await generateIdentity();
  const t = makeTransport(subject, sid);
  const l = await t.listen('127.0.0.1:0');
  void (async () => {
    for (let c; (c = await l.accept()); ) serve(c);
  })();
  process.stdout.write(`${JSON.stringify({ address: l.address, publicKey: Buffer.from(sid.publicKey).toString('hex') })}\n`);
  process.stdin.resume();
  process.stdin.on('end', () => void t.close().finally(() => process.exit(0)));
}
