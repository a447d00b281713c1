/**
 * `npm run bench -- transport [--json] [--duration MS] [--rounds N] [--sizes 4k,64k,1m]
 *   [--subjects plain-tcp,quicmap-tcp,raw-quic,quicmap-quic] [--inproc]`
 *
 * Request/response over each transport: the client sends a payload, the
 * server reads all of it and sends it back. Per payload size:
 *   - latency: one request in flight, p50/p99 of the round trip;
 *   - throughput: 16 in flight, MB/s of payload echoed (one direction).
 * Subjects, all in one run:
 *   plain-tcp     node:net, one connection, length-prefixed, no crypto (floor)
 *   node-tls      node:tls 1.3 with quicmap's cipher order (AES-128-GCM), one connection,
 *                 length-prefixed (reference for quicmap-tcp)
 *   quicmap-tcp   TcpTransport (TLS 1.3 + identity check + mux), a stream per request
 *   raw-quic      the chainsafe native layer in its best design (reference for quicmap-quic): one
 *                 long-lived stream, pipelined length-prefixed messages, 64 KiB combined writes,
 *                 256 KiB reads, 4 MiB server UDP buffer
 *   raw-quic-streams  the same library with a new stream per request (not run unless asked)
 *   quicmap-quic  the `quic` transport as commands get it (transports/quic-choice.ts: ngtcp2 where
 *                 its addon is built), a stream per request (mux streams over its carrier stream)
 *   quicmap-quic-lib  QuicTransport, the library fallback, the same way
 *   ngtcp2        Ngtcp2Transport (the ngtcp2 data path with a native QUIC stream per request);
 *                 skipped with a note where the addon lacks it
 * Ratios: quicmap-quic and quicmap-quic-lib vs raw-quic, quicmap-quic vs quicmap-quic-lib and
 * ngtcp2, quicmap-tcp vs node-tls and plain-tcp, ngtcp2 vs raw-quic.
 *
 * Servers run in a child process (this file with --serve) so client and
 * server do not share one event loop; --inproc keeps them in-process.
 *
 * The measurement helpers are exported for other benchmarks (e.g. the wire
 * protocol rows): implement a RoundTripper, then call measure()/runMatrix().
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, connect, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { randomBytes } from 'node:crypto';
import { connect as tlsConnect, createServer as createTlsServer } from 'node:tls';
import { createPeerCertificate } from '../crypto/peer-cert.ts';
import { TLS_CIPHERSUITES } from '../transports/secure-channel.ts';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { generateKeyPairFromSeed, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import type { Connection, Listener, Transport } from '../transports/transport.ts';
import { generateIdentity, type Identity } from '../crypto/identity.ts';
import { TcpTransport } from '../transports/tcp.ts';
import { createQuicTransport, quicImplementation } from '../transports/quic-choice.ts';
import { QUIC_DEFAULTS, QuicTransport, WRITE_CHUNK, carrierWindows } from '../transports/quic.ts';
import { WebTransportTransport } from '../transports/webtransport.ts';
import { setUdpBuffers } from '../transports/udp-buffer.ts';
import { loadNativeQuic, type NativeConnection, type NativeServer, type NativeStream } from '../transports/quic-native.ts';
import { ByteAccumulator } from '../transports/byte-accumulator.ts';
import { Ngtcp2Transport } from '../transports/ngtcp2.ts';

// ---------------------------------------------------------------- helpers

/** One request/response exchange of `payload`; resolves when the whole answer arrived. */
export interface RoundTripper {
  readonly name: string;
  roundTrip(payload: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

export interface LatencyStats {
  n: number;
  p50Us: number;
  p99Us: number;
  meanUs: number;
}

export interface ThroughputStats {
  ops: number;
  seconds: number;
  /** Payload bytes echoed per second (one direction), in MB/s (10^6). */
  mbps: number;
}

function quantile(sorted: number[], q: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/** Round trips one at a time; the first `warmup` are not counted. (Single subject, no interleaving.) */
export async function measureLatency(rt: RoundTripper, payload: Uint8Array, iterations: number, warmup = Math.ceil(iterations / 10)): Promise<LatencyStats> {
  for (let i = 0; i < warmup; i++) await rt.roundTrip(payload);
  const us: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const t0 = process.hrtime.bigint();
    await rt.roundTrip(payload);
    us.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  us.sort((a, b) => a - b);
  return { n: us.length, p50Us: quantile(us, 0.5), p99Us: quantile(us, 0.99), meanUs: us.reduce((a, b) => a + b, 0) / us.length };
}

/** `inflight` workers issue round trips back to back for `durationMs`. */
export async function measureThroughput(rt: RoundTripper, payload: Uint8Array, inflight: number, durationMs: number): Promise<ThroughputStats> {
  // Short warm-up with the same concurrency.
  await Promise.all(Array.from({ length: inflight }, () => rt.roundTrip(payload)));
  let ops = 0;
  const t0 = process.hrtime.bigint();
  const end = Date.now() + durationMs;
  await Promise.all(
    Array.from({ length: inflight }, async () => {
      while (Date.now() < end) {
        await rt.roundTrip(payload);
        ops++;
      }
    }),
  );
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { ops, seconds, mbps: (ops * payload.length) / seconds / 1e6 };
}

export interface Row {
  subject: string;
  bytes: number;
  latency: LatencyStats;
  throughput: ThroughputStats;
  /** Throughput of each round, MB/s (the row reports their median). */
  rounds: number[];
}

export interface MatrixOptions {
  sizes: number[];
  inflight: number;
  /** Throughput time per subject, split over `rounds`. */
  durationMs: number;
  /** Latency iterations for a payload of `bytes` (split over `rounds`). */
  iterations: (bytes: number) => number;
  /**
   * Subjects take turns in this many rounds per size (A B C D A B C D ...),
   * so load from other processes on a shared machine hits all of them alike.
   */
  rounds: number;
  log?: (line: string) => void;
}

export const DEFAULT_SIZES = [4096, 65536, 1 << 20];

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/**
 * Every size against every subject, interleaved in rounds. Latency samples
 * of all rounds are pooled; throughput is the median of the rounds.
 */
export async function measure(subjects: RoundTripper[], o: MatrixOptions): Promise<Row[]> {
  const rows: Row[] = [];
  for (const bytes of o.sizes) {
    const payload = randomBytes(bytes);
    const samples = new Map<string, number[]>(subjects.map((s) => [s.name, []]));
    const tput = new Map<string, ThroughputStats[]>(subjects.map((s) => [s.name, []]));
    const perRound = Math.max(1, Math.ceil(o.iterations(bytes) / o.rounds));
    for (let r = 0; r < o.rounds; r++) {
      for (const rt of subjects) {
        samples.get(rt.name)!.push(...(await latencySamples(rt, payload, perRound, r === 0 ? Math.ceil(perRound / 5) : 2)));
        tput.get(rt.name)!.push(await measureThroughput(rt, payload, o.inflight, o.durationMs / o.rounds));
      }
    }
    for (const rt of subjects) {
      const us = samples.get(rt.name)!.sort((a, b) => a - b);
      const ts = tput.get(rt.name)!;
      const row: Row = {
        subject: rt.name,
        bytes,
        latency: { n: us.length, p50Us: quantile(us, 0.5), p99Us: quantile(us, 0.99), meanUs: us.reduce((a, b) => a + b, 0) / us.length },
        throughput: { ops: ts.reduce((a, t) => a + t.ops, 0), seconds: ts.reduce((a, t) => a + t.seconds, 0), mbps: median(ts.map((t) => t.mbps)) },
        rounds: ts.map((t) => t.mbps),
      };
      o.log?.(formatRow(row));
      rows.push(row);
    }
  }
  return rows;
}

async function latencySamples(rt: RoundTripper, payload: Uint8Array, n: number, warmup: number): Promise<number[]> {
  for (let i = 0; i < warmup; i++) await rt.roundTrip(payload);
  const us: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await rt.roundTrip(payload);
    us.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  return us;
}

export function sizeLabel(bytes: number): string {
  return bytes >= 1 << 20 ? `${bytes / (1 << 20)} MiB` : `${bytes / 1024} KiB`;
}

export function formatRow(r: Row): string {
  return `${r.subject.padEnd(14)} ${sizeLabel(r.bytes).padStart(7)}  p50 ${r.latency.p50Us.toFixed(0).padStart(6)} µs  p99 ${r.latency.p99Us
    .toFixed(0)
    .padStart(6)} µs  ${r.throughput.mbps.toFixed(0).padStart(6)} MB/s (16 in flight; rounds ${r.rounds.map((x) => x.toFixed(0)).join('/')})`;
}

export interface Ratio {
  what: string;
  bytes: number;
  throughput: number;
  p50: number;
}

/**
 * subject vs reference, per size. Throughput: the median of per-round ratios
 * (each round ran the two back to back, so slow drifts in machine load
 * cancel). p50: ratio of the pooled p50s.
 */
export function ratios(rows: Row[], subject: string, reference: string): Ratio[] {
  const out: Ratio[] = [];
  for (const r of rows.filter((x) => x.subject === subject)) {
    const ref = rows.find((x) => x.subject === reference && x.bytes === r.bytes);
    if (!ref) continue;
    const paired = r.rounds.map((v, i) => v / ref.rounds[i]!).filter((x) => Number.isFinite(x));
    out.push({
      what: `${subject} / ${reference}`,
      bytes: r.bytes,
      throughput: paired.length ? median(paired) : r.throughput.mbps / ref.throughput.mbps,
      p50: r.latency.p50Us / ref.latency.p50Us,
    });
  }
  return out;
}

/** Read a stream to its end and count the bytes. */
async function drain(read: () => Promise<Uint8Array | null>): Promise<number> {
  let n = 0;
  for (;;) {
    const c = await read();
    if (c === null) return n;
    n += c.length;
  }
}

function check(got: number, want: number): void {
  if (got !== want) throw new Error(`echo returned ${got} bytes, expected ${want}`);
}

/** A Transport connection: one new stream per request (write, half-close, read to the end). */
export function connectionRoundTripper(name: string, conn: Connection, cleanup: () => Promise<void>): RoundTripper {
  return {
    name,
    async roundTrip(payload) {
      const st = await conn.openStream();
      await st.write(payload);
      await st.closeWrite();
      check(await drain(() => st.read()), payload.length);
    },
    async close() {
      await conn.close();
      await cleanup();
    },
  };
}

/** Echo server for any Transport: per stream, read the whole request, then send it back. */
export function serveTransportEcho(l: Listener): void {
  void (async () => {
    for (;;) {
      const c = await l.accept().catch(() => null);
      if (!c) return;
      void (async () => {
        for (;;) {
          const st = await c.acceptStream().catch(() => null);
          if (!st) return;
          void (async () => {
            const parts: Uint8Array[] = [];
            for (;;) {
              const x = await st.read();
              if (x === null) break;
              parts.push(x);
            }
            await st.write(parts);
            await st.closeWrite();
          })().catch(() => st.reset());
        }
      })();
    }
  })();
}

// ---------------------------------------------------------------- subjects

export type SubjectName = 'plain-tcp' | 'node-tls' | 'quicmap-tcp' | 'raw-quic' | 'raw-quic-streams' | 'quicmap-quic' | 'quicmap-quic-lib' | 'ngtcp2' | 'quicmap-webtransport';
export const SUBJECTS: SubjectName[] = ['plain-tcp', 'node-tls', 'quicmap-tcp', 'raw-quic', 'quicmap-quic', 'quicmap-quic-lib', 'ngtcp2', 'quicmap-webtransport'];

/** The transport of a subject that is one of ours. */
async function ourTransport(subject: SubjectName, id: Identity): Promise<Transport> {
  switch (subject) {
    case 'quicmap-tcp':
      return new TcpTransport(id);
    case 'ngtcp2':
      return new Ngtcp2Transport(id);
    case 'quicmap-webtransport':
      return new WebTransportTransport(id);
    case 'quicmap-quic':
      return createQuicTransport(id);
    default:
      return new QuicTransport(id);
  }
}

/**
 * The raw library's best request/response design (FACTS.md, measured
 * ceiling): one long-lived stream, length-prefixed messages pipelined on it,
 * small writes combined into 64 KiB chunks (large pieces written as they
 * are), one native write at a time, 256 KiB reads.
 */
class RawQuicPipe {
  private queue: Uint8Array[] = [];
  private writing = false;
  private readonly acc = new ByteAccumulator();

  private readonly s: NativeStream;

  private readonly onMessage: (msg: Buffer, len: number) => void;

  constructor(
    s: NativeStream,
    onMessage: (msg: Buffer, len: number) => void,) {
    this.s = s;

    this.onMessage = onMessage;
    void this.readLoop();
  }

  private async readLoop(): Promise<void> {
    for (;;) {
      const c = await this.s.read(RAW_READ).catch(() => null);
      if (!c) return;
      this.acc.push(Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength));
      while (this.acc.length >= 4) {
        const n = this.acc.peekU32();
        if (this.acc.length < 4 + n) break;
        this.onMessage(this.acc.take(4 + n), n);
      }
    }
  }

  send(parts: Uint8Array[]): void {
    for (const p of parts) this.queue.push(p);
    if (!this.writing) void this.pump();
  }

  private async pump(): Promise<void> {
    this.writing = true;
    while (this.queue.length) {
      const first = this.queue[0]!;
      let out: Uint8Array;
      if (first.length >= 2 * WRITE_CHUNK) out = this.queue.shift()!;
      else {
        let n = 0;
        let i = 0;
        for (; i < this.queue.length && n < WRITE_CHUNK; i++) n += this.queue[i]!.length;
        const size = Math.min(n, WRITE_CHUNK);
        const chunk = Buffer.allocUnsafe(size);
        let off = 0;
        while (off < size) {
          const b = this.queue[0]!;
          const take = Math.min(b.length, size - off);
          chunk.set(take === b.length ? b : b.subarray(0, take), off);
          off += take;
          if (take === b.length) this.queue.shift();
          else this.queue[0] = b.subarray(take);
        }
        out = chunk;
      }
      await this.s.write(out);
    }
    this.writing = false;
  }
}

/** A throwaway certificate for the node:tls reference (its check is not part of what is measured). */
async function referenceCert(): Promise<{ key: string; cert: string }> {
  const c = createPeerCertificate(await generateIdentity());
  return { key: c.keyPem, cert: c.certPem };
}

/** Echo length-prefixed messages on a stream socket (plain-tcp, node-tls). */
function echoFramed(sock: Socket): void {
  const acc = new ByteAccumulator();
  sock.on('data', (d: Buffer) => {
    acc.push(d);
    while (acc.length >= 4) {
      const n = acc.peekU32();
      if (acc.length < 4 + n) break;
      const msg = acc.take(4 + n);
      sock.write(msg);
    }
  });
  sock.on('error', () => {});
}

/** Client side of echoFramed: pipelined requests on one socket, answers in order. */
function framedClient(name: string, sock: Socket): RoundTripper {
  const waiting: Array<{ n: number; resolve: () => void }> = [];
  const acc = new ByteAccumulator();
  sock.on('data', (d: Buffer) => {
    acc.push(d);
    while (acc.length >= 4 && waiting.length) {
      const n = acc.peekU32();
      if (acc.length < 4 + n) break;
      acc.take(4 + n);
      const w = waiting.shift()!;
      check(n, w.n);
      w.resolve();
    }
  });
  return {
    name,
    roundTrip(payload) {
      return new Promise<void>((resolve) => {
        waiting.push({ n: payload.length, resolve });
        const h = Buffer.allocUnsafe(4);
        h.writeUInt32BE(payload.length, 0);
        sock.cork();
        sock.write(h);
        sock.write(payload);
        sock.uncork();
      });
    },
    async close() {
      sock.destroy();
    },
  };
}

interface ServerInfo {
  address: string;
  publicKey: string;
}

/**
 * The raw QUIC floor runs with exactly QuicTransport's defaults (windows,
 * buffers, timeouts, read size), so the ratio measures our adapter alone.
 */
const RAW_QUIC = {
  handshakeTimeout: QUIC_DEFAULTS.handshakeTimeoutMs,
  maxIdleTimeout: QUIC_DEFAULTS.idleTimeoutMs,
  keepAliveInterval: QUIC_DEFAULTS.keepAliveMs,
  maxConcurrentStreamLimit: QUIC_DEFAULTS.maxStreams,
  // The windows of QuicTransport's carrier stream.
  ...carrierWindows(QUIC_DEFAULTS),
  receiveBufferSize: QUIC_DEFAULTS.udpBufferBytes,
  sendBufferSize: QUIC_DEFAULTS.udpBufferBytes,
};
const RAW_READ = QUIC_DEFAULTS.readChunk;

async function rawQuicConfig(): Promise<object> {
  const native = await loadNativeQuic();
  const key = await generateKeyPairFromSeed('Ed25519', randomBytes(32));
  return new native.QuinnConfig({ ...RAW_QUIC, privateKeyProto: privateKeyToProtobuf(key) });
}

/** Start the server half of a subject; returns how to reach it and how to stop it. */
export async function startServer(subject: SubjectName): Promise<{ info: ServerInfo; stop: () => Promise<void> }> {
  switch (subject) {
    case 'plain-tcp':
    case 'node-tls': {
      const server =
        subject === 'plain-tcp'
          ? createServer({ noDelay: true }, echoFramed)
          : createTlsServer({ ...(await referenceCert()), minVersion: 'TLSv1.3', ciphers: TLS_CIPHERSUITES }, (sock) => {
              sock.setNoDelay(true);
              echoFramed(sock);
            });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
      const a = server.address() as { port: number };
      return { info: { address: `127.0.0.1:${a.port}`, publicKey: '' }, stop: () => new Promise<void>((r) => server.close(() => r())) };
    }
    case 'raw-quic':
    case 'raw-quic-streams': {
      const native = await loadNativeQuic();
      const server: NativeServer = new native.Server(await rawQuicConfig(), '127.0.0.1', 0);
      // The library leaves the server socket at the OS default; the best design sets 4 MiB.
      if (subject === 'raw-quic') setUdpBuffers(server.port(), 4, QUIC_DEFAULTS.udpBufferBytes);
      let open = true;
      const serveConn = async (c: NativeConnection) => {
        for (;;) {
          const s = await c.inboundStream().catch(() => null);
          if (!s) return;
          if (subject === 'raw-quic') {
            const pipe: RawQuicPipe = new RawQuicPipe(s, (msg) => pipe.send([msg]));
            continue;
          }
          void (async () => {
            const parts: Uint8Array[] = [];
            for (;;) {
              const x = await s.read(RAW_READ);
              if (x === null) break;
              parts.push(x);
            }
            for (const p of parts) await s.write(p);
            await s.finishWrite();
          })().catch(() => {});
        }
      };
      void (async () => {
        while (open) {
          const c = await server.inboundConnection().catch(() => null);
          if (c) void serveConn(c);
        }
      })();
      return {
        info: { address: `127.0.0.1:${server.port()}`, publicKey: '' },
        stop: async () => {
          open = false;
          await server.abort();
        },
      };
    }
    case 'quicmap-tcp':
    case 'quicmap-quic':
    case 'quicmap-quic-lib':
    case 'ngtcp2':
    case 'quicmap-webtransport': {
      const id = await generateIdentity();
      const t = await ourTransport(subject, id);
      const l = await t.listen('127.0.0.1:0');
      serveTransportEcho(l);
      return { info: { address: l.address, publicKey: Buffer.from(id.publicKey).toString('hex') }, stop: () => t.close() };
    }
  }
}

/** The client half of a subject. */
export async function connectClient(subject: SubjectName, info: ServerInfo, identity: Identity): Promise<RoundTripper> {
  switch (subject) {
    case 'plain-tcp':
    case 'node-tls': {
      const [host, port] = [info.address.slice(0, info.address.lastIndexOf(':')), Number(info.address.slice(info.address.lastIndexOf(':') + 1))];
      const sock: Socket =
        subject === 'plain-tcp' ? connect({ host, port, noDelay: true }) : tlsConnect({ host, port, rejectUnauthorized: false, minVersion: 'TLSv1.3', ciphers: TLS_CIPHERSUITES }).setNoDelay(true);
      await new Promise<void>((r, j) => sock.once(subject === 'plain-tcp' ? 'connect' : 'secureConnect', r).once('error', j));
      return framedClient(subject, sock);
    }
    case 'raw-quic':
    case 'raw-quic-streams': {
      const native = await loadNativeQuic();
      const client = new native.Client(await rawQuicConfig(), 0);
      const [host, port] = [info.address.slice(0, info.address.lastIndexOf(':')), Number(info.address.slice(info.address.lastIndexOf(':') + 1))];
      const conn = await client.outboundConnection(host, port);
      const close = async () => {
        conn.abort();
        client.abort();
      };
      if (subject === 'raw-quic-streams') {
        return {
          name: subject,
          async roundTrip(payload) {
            const s = await conn.outboundStream();
            await s.write(payload);
            await s.finishWrite();
            check(await drain(() => s.read(RAW_READ)), payload.length);
          },
          close,
        };
      }
      const waiting: Array<{ n: number; resolve: () => void }> = [];
      const pipe = new RawQuicPipe(await conn.outboundStream(), (_msg, n) => {
        const w = waiting.shift()!;
        check(n, w.n);
        w.resolve();
      });
      return {
        name: subject,
        roundTrip(payload) {
          return new Promise<void>((resolve) => {
            waiting.push({ n: payload.length, resolve });
            const h = Buffer.allocUnsafe(4);
            h.writeUInt32BE(payload.length, 0);
            pipe.send([h, payload]);
          });
        },
        close,
      };
    }
    case 'quicmap-tcp':
    case 'quicmap-quic':
    case 'quicmap-quic-lib':
    case 'ngtcp2':
    case 'quicmap-webtransport': {
      const t = await ourTransport(subject, identity);
      const conn = await t.dial(info.address, Buffer.from(info.publicKey, 'hex'));
      return connectionRoundTripper(subject, conn, () => t.close());
    }
  }
}

/** Start `subject`'s server in a child process running this file with --serve. */
export async function spawnServer(subject: SubjectName): Promise<{ info: ServerInfo; stop: () => Promise<void> }> {
  const self = fileURLToPath(import.meta.url);
  // QUICMAP_BENCH_SERVER_NODE_ARGS: extra node flags for the server (e.g. "--cpu-prof").
  const extra = process.env.QUICMAP_BENCH_SERVER_NODE_ARGS?.split(' ').filter(Boolean) ?? [];
  const child: ChildProcess = spawn(process.execPath, [...extra, '--import', 'tsx', self, '--serve', subject], { stdio: ['pipe', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    // The first JSON line; anything else the child prints (e.g. --trace-gc) goes to our stderr.
    let got = false;
    createInterface({ input: child.stdout! }).on('line', (l) => {
      if (!got && l.startsWith('{')) {
        got = true;
        resolve(l);
      } else process.stderr.write(`[${subject} server] ${l}\n`);
    });
    child.once('exit', (c) => reject(new Error(`${subject} server exited (${c})`)));
  });
  return {
    info: JSON.parse(line) as ServerInfo,
    stop: async () => {
      const gone = new Promise((r) => child.once('exit', r));
      child.stdin!.end();
      await Promise.race([gone, new Promise((r) => setTimeout(r, 3000))]);
      if (child.exitCode === null) child.kill('SIGKILL');
    },
  };
}

function parseSize(s: string): number {
  const m = /^(\d+)([kKmM]?)$/.exec(s.trim());
  if (!m) throw new Error(`bad size ${s}`);
  return Number(m[1]) * (m[2]!.toLowerCase() === 'k' ? 1024 : m[2]!.toLowerCase() === 'm' ? 1 << 20 : 1);
}

export default async function main(args: string[]): Promise<void> {
  const json = args.includes('--json');
  const inproc = args.includes('--inproc');
  const opt = (name: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const durationMs = Number(opt('--duration') ?? 2500);
  const sizes = (opt('--sizes')?.split(',') ?? ['4k', '64k', '1m']).map(parseSize);
  let subjects = (opt('--subjects')?.split(',') ?? SUBJECTS) as SubjectName[];
  const ngWhy = Ngtcp2Transport.unavailableReason();
  if (ngWhy && subjects.includes('ngtcp2')) {
    process.stdout.write(`(ngtcp2 subject skipped: ${ngWhy})\n`);
    subjects = subjects.filter((x) => x !== 'ngtcp2');
  }
  const log = json ? () => {} : (l: string) => process.stdout.write(`${l}\n`);
  const rounds = Number(opt('--rounds') ?? 5);
  const o: MatrixOptions = {
    sizes,
    inflight: 16,
    durationMs,
    rounds,
    iterations: (b) => (b >= 1 << 20 ? 300 : b >= 65536 ? 1500 : 4000),
    log,
  };
  log(
    `transport bench: ${inproc ? 'in-process' : 'servers in child processes'}, loopback, ${rounds} interleaved rounds, ${durationMs} ms of throughput per subject and size, node ${process.version}; quicmap-quic is ${quicImplementation().implementation}`,
  );
  const identity = await generateIdentity();
  const servers: Array<{ stop: () => Promise<void> }> = [];
  const clients: RoundTripper[] = [];
  let rows: Row[];
  try {
    for (const subject of subjects) {
      const server = inproc ? await startServer(subject) : await spawnServer(subject);
      servers.push(server);
      clients.push(await connectClient(subject, server.info, identity));
    }
    rows = await measure(clients, o);
  } finally {
    for (const c of clients) await c.close().catch(() => {});
    for (const sv of servers) await sv.stop().catch(() => {});
  }
  const rs = [
    ...ratios(rows, 'quicmap-quic', 'raw-quic'),
    ...ratios(rows, 'quicmap-quic-lib', 'raw-quic'),
    ...ratios(rows, 'quicmap-quic', 'quicmap-quic-lib'),
    ...ratios(rows, 'quicmap-quic', 'ngtcp2'),
    ...ratios(rows, 'quicmap-tcp', 'node-tls'),
    ...ratios(rows, 'quicmap-tcp', 'plain-tcp'),
    ...ratios(rows, 'ngtcp2', 'raw-quic'),
    ...ratios(rows, 'quicmap-webtransport', 'plain-tcp'),
  ];
  if (json) {
    process.stdout.write(`${JSON.stringify({ node: process.version, durationMs, inflight: o.inflight, rows, ratios: rs }, null, 2)}\n`);
    return;
  }
  log('\nratios (throughput at 16 in flight: median of per-round ratios; p50 at 1 in flight):');
  for (const r of rs) log(`  ${r.what.padEnd(26)} ${sizeLabel(r.bytes).padStart(7)}  throughput ${r.throughput.toFixed(2)}x  p50 ${r.p50.toFixed(2)}x`);
}

// Server mode for spawnServer: serve until stdin closes.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href && process.argv[2] === '--serve') {
  const server = await startServer(process.argv[3] as SubjectName);
  process.stdout.write(`${JSON.stringify(server.info)}\n`);
  process.stdin.resume();
  process.stdin.on('end', () => void server.stop().finally(() => process.exit(0)));
}
