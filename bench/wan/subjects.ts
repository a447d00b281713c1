/**
 * The subjects the WAN lab compares, each as a server (run in the server
 * namespace) and a client (run in the client namespace):
 *   quicmap-quic  the project's QUIC transport (p2p openTransport('quic'));
 *                 its implementation's class is recorded (ServerInfo.impl)
 *   quicmap-ngtcp2  Ngtcp2Transport (native ngtcp2 data path, one QUIC
 *                 stream per ByteStream) with its default congestion
 *                 controller; -cubic/-reno/-bbr/-bbr2 are the same with
 *                 that controller (opt-in subjects)
 *   quicmap-tcp   the project's TCP transport (TCP + its secure channel + mux)
 *   raw-quic      the QUIC library the project uses, with a trivial server
 *   tls-tcp       node:tls (TLS 1.3) over TCP, one connection
 *   plain-tcp     node:net, one connection, no crypto
 *   hyperswarm    the Hyperswarm anchor (hyperswarm.ts): HyperDHT on a
 *                 private DHT beside the server, one encrypted UDX
 *                 stream; opt-in (--subjects), not in the default set
 *
 * One tiny protocol for all. On stream subjects (the QUIC ones and
 * quicmap-tcp's mux) each stream starts with an op byte: 'E' = read to the
 * end, send it all back, close; 'B' = send data until the peer goes away.
 * On the single-connection subjects the connection starts with the op byte;
 * after 'E' it carries length-prefixed echoes, one after the other.
 */
import { createServer, connect, type Socket, type Server as NetServer } from 'node:net';
import * as tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPairFromSeed, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import type { ByteStream, Connection, Transport } from '../../transports/transport.ts';
import type { Identity } from '../../crypto/identity.ts';
import { loadNativeQuic, type NativeConnection, type NativeStream } from '../../transports/quic-native.ts';
import { openTransport } from '../../p2p/transports.ts';
import { ByteAccumulator } from '../../transports/byte-accumulator.ts';
import { NGTCP2_DEFAULTS, Ngtcp2Transport, type Ngtcp2TransportOptions } from '../../transports/ngtcp2.ts';
import { hyperswarmUnavailable, makeHyperswarmDialer, startHyperswarmServer } from './hyperswarm.ts';

export type Ngtcp2Subject = 'quicmap-ngtcp2' | 'quicmap-ngtcp2-cubic' | 'quicmap-ngtcp2-reno' | 'quicmap-ngtcp2-bbr' | 'quicmap-ngtcp2-bbr2';
export type SubjectName = 'quicmap-quic' | Ngtcp2Subject | 'quicmap-tcp' | 'raw-quic' | 'tls-tcp' | 'plain-tcp' | 'hyperswarm';
/** The subjects a run has unless --subjects says otherwise. */
export const SUBJECTS: SubjectName[] = ['quicmap-quic', 'quicmap-ngtcp2', 'quicmap-tcp', 'raw-quic', 'tls-tcp', 'plain-tcp'];
/** Every subject --subjects may name (the congestion-control variants of ngtcp2 are opt-in). */
export const ALL_SUBJECTS: SubjectName[] = [...SUBJECTS, 'quicmap-ngtcp2-cubic', 'quicmap-ngtcp2-reno', 'quicmap-ngtcp2-bbr', 'quicmap-ngtcp2-bbr2', 'hyperswarm'];
/** Subjects with many streams on one connection (the head-of-line test needs them). */
export const STREAM_SUBJECTS: SubjectName[] = ['quicmap-quic', 'quicmap-ngtcp2', 'quicmap-ngtcp2-cubic', 'quicmap-ngtcp2-reno', 'quicmap-ngtcp2-bbr', 'quicmap-ngtcp2-bbr2', 'quicmap-tcp', 'raw-quic'];

/** The controller each ngtcp2 subject asks for (undefined: the transport's default). */
const NGTCP2_CC: Record<Ngtcp2Subject, Ngtcp2TransportOptions['cc']> = {
  'quicmap-ngtcp2': undefined,
  'quicmap-ngtcp2-cubic': 'cubic',
  'quicmap-ngtcp2-reno': 'reno',
  'quicmap-ngtcp2-bbr': 'bbr',
  'quicmap-ngtcp2-bbr2': 'bbr2',
};

function isNgtcp2(s: SubjectName): s is Ngtcp2Subject {
  return s in NGTCP2_CC;
}

/** Why `subject` cannot run on this machine (the ngtcp2 addon missing), or undefined. */
export function subjectUnavailable(subject: SubjectName): string | undefined {
  if (subject === 'hyperswarm') return hyperswarmUnavailable();
  return isNgtcp2(subject) ? Ngtcp2Transport.unavailableReason() : undefined;
}

/** A transport of the project's for a quicmap-* subject (the same options on both sides). */
async function quicmapTransport(subject: 'quicmap-quic' | 'quicmap-tcp' | Ngtcp2Subject, identity: Identity): Promise<Transport> {
  if (isNgtcp2(subject)) {
    const cc = NGTCP2_CC[subject];
    return new Ngtcp2Transport(identity, { idleTimeoutMs: 15_000, keepAliveMs: 4_000, ...(cc ? { cc } : {}) });
  }
  return openTransport(subject === 'quicmap-quic' ? 'quic' : 'tcp', identity);
}

export interface ServerInfo {
  address: string;
  /** hex Ed25519 key (quicmap subjects; the server's HyperDHT key for hyperswarm, whose address is its DHT's bootstrap node) */
  publicKey?: string;
  /** PEM certificate to pin (tls-tcp) */
  cert?: string;
  /** The class behind a quicmap subject (which QUIC implementation quicmap-quic was). */
  impl?: string;
  /** Congestion controller of the QUIC subjects where it is chosen (ngtcp2). */
  cc?: string;
}

const OP_ECHO = 0x45; // 'E'
const OP_BULK = 0x42; // 'B'
const BULK_CHUNK = 256 * 1024;
const RAW_READ = 256 * 1024;

/** The raw library's knobs, as QuicTransport sets them by default (windows sized for long fat pipes). */
async function rawQuicConfig(): Promise<object> {
  const native = await loadNativeQuic();
  const key = await generateKeyPairFromSeed('Ed25519', randomBytes(32));
  return new native.QuinnConfig({
    privateKeyProto: privateKeyToProtobuf(key),
    handshakeTimeout: 10_000,
    maxIdleTimeout: 15_000,
    keepAliveInterval: 4_000,
    maxConcurrentStreamLimit: 256,
    maxStreamData: 8 * 1024 * 1024,
    maxConnectionData: 16 * 1024 * 1024,
    receiveBufferSize: 4 * 1024 * 1024,
    sendBufferSize: 4 * 1024 * 1024,
  });
}

// ---------------------------------------------------------------- streams

/** The least a stream needs here; adapters for the Transport interface and the raw library. */
export interface Duplex {
  write(data: Uint8Array): Promise<void>;
  end(): Promise<void>;
  read(): Promise<Uint8Array | null>;
  reset(): void;
}

/** A connection that opens streams (every subject's client side, for the stream workloads). */
export interface StreamConn {
  open(): Promise<Duplex>;
  close(): Promise<void>;
}

function byteStreamDuplex(s: ByteStream): Duplex {
  return { write: (d) => s.write(d), end: () => s.closeWrite(), read: () => s.read(), reset: () => s.reset() };
}

function nativeDuplex(s: NativeStream): Duplex {
  return {
    write: (d) => s.write(d),
    end: async () => void (await s.finishWrite()),
    read: () => s.read(RAW_READ),
    reset: () => void Promise.resolve(s.stopRead()).catch(() => {}),
  };
}

/** Serve one stream of the tiny protocol. */
async function serveStream(s: Duplex): Promise<void> {
  const first = await s.read();
  if (!first || first.length === 0) return;
  if (first[0] === OP_BULK) {
    const chunk = randomBytes(BULK_CHUNK);
    for (;;) await s.write(chunk); // ends when the client goes away
  }
  const parts: Uint8Array[] = [first.subarray(1)];
  for (;;) {
    const x = await s.read();
    if (x === null) break;
    parts.push(x);
  }
  for (const p of parts) if (p.length) await s.write(p);
  await s.end();
}

// ---------------------------------------------------------------- servers

export interface RunningServer {
  info: ServerInfo;
  stop(): Promise<void>;
}

/** What the single-connection subjects need of their connection: a TCP or TLS socket, or a HyperDHT stream. */
interface ConnSocket {
  write(data: Uint8Array): boolean;
  destroy(): void;
  readonly destroyed: boolean;
  on(event: 'data', fn: (d: Buffer) => void): unknown;
  on(event: 'drain' | 'error', fn: () => void): unknown;
  once(event: 'close', fn: () => void): unknown;
  setNoDelay?(on: boolean): unknown;
  cork?(): void;
  uncork?(): void;
}

function serveSocket(sock: ConnSocket): void {
  sock.setNoDelay?.(true);
  sock.on('error', () => {});
  let mode = 0;
  const acc = new ByteAccumulator();
  sock.on('data', (d: Buffer) => {
    if (mode === 0) {
      mode = d[0]!;
      d = d.subarray(1);
      if (mode === OP_BULK) {
        const chunk = randomBytes(BULK_CHUNK);
        const pump = () => {
          while (!sock.destroyed && sock.write(chunk));
        };
        sock.on('drain', pump);
        pump();
        return;
      }
    }
    if (mode !== OP_ECHO) return;
    acc.push(d);
    while (acc.length >= 4) {
      const n = acc.peekU32();
      if (acc.length < 4 + n) break;
      sock.write(acc.take(4 + n));
    }
  });
}

function listenNet(server: NetServer, host: string): Promise<string> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve(`${host}:${(server.address() as { port: number }).port}`));
  });
}

function makeCert(): { key: string; cert: string } {
  const dir = mkdtempSync(join(tmpdir(), 'qm-wan-tls-'));
  try {
    const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', join(dir, 'k'), '-out', join(dir, 'c'), '-subj', '/CN=quicmap-wan', '-days', '2'], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`openssl req failed: ${r.stderr}`);
    return { key: readFileSync(join(dir, 'k'), 'utf8'), cert: readFileSync(join(dir, 'c'), 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function startServer(subject: SubjectName, host: string, identity: Identity): Promise<RunningServer> {
  switch (subject) {
    case 'plain-tcp': {
      const server = createServer(serveSocket);
      const address = await listenNet(server, host);
      return { info: { address }, stop: () => new Promise((r) => server.close(() => r())) };
    }
    case 'tls-tcp': {
      const { key, cert } = makeCert();
      const server = tls.createServer({ key, cert, minVersion: 'TLSv1.3' }, serveSocket);
      const address = await listenNet(server, host);
      return { info: { address, cert }, stop: () => new Promise((r) => server.close(() => r())) };
    }
    case 'raw-quic': {
      const native = await loadNativeQuic();
      const server = new native.Server(await rawQuicConfig(), host, 0);
      let open = true;
      const serveConn = async (c: NativeConnection) => {
        for (;;) {
          const s = await c.inboundStream().catch(() => null);
          if (!s) return;
          void serveStream(nativeDuplex(s)).catch(() => {});
        }
      };
      void (async () => {
        while (open) {
          const c = await server.inboundConnection().catch(() => null);
          if (c) void serveConn(c);
        }
      })();
      return {
        info: { address: `${host}:${server.port()}` },
        stop: async () => {
          open = false;
          await server.abort();
        },
      };
    }
    case 'hyperswarm': {
      const h = await startHyperswarmServer(host, serveSocket);
      return { info: { address: h.bootstrap, publicKey: h.publicKey, impl: h.impl }, stop: () => h.stop() };
    }
    default: {
      const t = await quicmapTransport(subject, identity);
      const l = await t.listen(`${host}:0`);
      void (async () => {
        for (;;) {
          const c = await l.accept().catch(() => null);
          if (!c) return;
          void (async () => {
            for (;;) {
              const st = await c.acceptStream().catch(() => null);
              if (!st) return;
              void serveStream(byteStreamDuplex(st)).catch(() => st.reset());
            }
          })();
        }
      })();
      const cc = isNgtcp2(subject) ? (NGTCP2_CC[subject] ?? NGTCP2_DEFAULTS.cc) : undefined;
      return { info: { address: l.address, publicKey: Buffer.from(identity.publicKey).toString('hex'), impl: t.constructor.name, ...(cc ? { cc } : {}) }, stop: () => t.close() };
    }
  }
}

// ---------------------------------------------------------------- clients

function hostPort(address: string): [string, number] {
  const i = address.lastIndexOf(':');
  return [address.slice(0, i), Number(address.slice(i + 1))];
}

/** A fresh client endpoint (the cold part: socket, transport) that dials once. */
export interface Dialer {
  /** Connect and authenticate; the connection is ready for streams or echoes. */
  dial(): Promise<ClientConn>;
  close(): Promise<void>;
}

export interface ClientConn {
  /** One echo of `payload` (a new stream per request on stream subjects). */
  echo(payload: Uint8Array): Promise<void>;
  /** Ask the server to send without end; counts bytes into `onBytes` until stop() (which closes the connection). */
  bulk(onBytes: (n: number) => void): { stop: () => Promise<void>; done: Promise<void> };
  /** Streams on this connection (undefined for single-connection subjects). */
  streams?: StreamConn;
  close(): Promise<void>;
}

async function readAll(s: Duplex, want: number): Promise<void> {
  let n = 0;
  for (;;) {
    const c = await s.read();
    if (c === null) break;
    n += c.length;
  }
  if (n !== want) throw new Error(`echo returned ${n} bytes, expected ${want}`);
}

function streamClient(streams: StreamConn): ClientConn {
  return {
    streams,
    async echo(payload) {
      const s = await streams.open();
      await s.write(Buffer.concat([Buffer.of(OP_ECHO), payload]));
      await s.end();
      await readAll(s, payload.length);
    },
    bulk(onBytes) {
      let stopped = false;
      const done = (async () => {
        const s = await streams.open();
        await s.write(Buffer.of(OP_BULK));
        while (!stopped) {
          const c = await s.read().catch(() => null);
          if (c === null) break;
          onBytes(c.length);
        }
      })();
      return {
        done,
        stop: async () => {
          stopped = true;
          await streams.close();
          await done.catch(() => {});
        },
      };
    },
    close: () => streams.close(),
  };
}

function socketClient(sock: ConnSocket): ClientConn {
  let mode = 0;
  const waiting: Array<{ n: number; resolve: () => void; reject: (e: Error) => void }> = [];
  const acc = new ByteAccumulator();
  let onBulk: ((n: number) => void) | undefined;
  sock.on('data', (d: Buffer) => {
    if (onBulk) return onBulk(d.length);
    acc.push(d);
    while (acc.length >= 4 && waiting.length) {
      const n = acc.peekU32();
      if (acc.length < 4 + n) break;
      acc.take(4 + n);
      const w = waiting.shift()!;
      if (n !== w.n) w.reject(new Error(`echo returned ${n} bytes, expected ${w.n}`));
      else w.resolve();
    }
  });
  const gone = new Promise<void>((r) => sock.once('close', () => r()));
  sock.once('close', () => {
    for (const w of waiting.splice(0)) w.reject(new Error('connection closed'));
  });
  return {
    echo(payload) {
      return new Promise<void>((resolve, reject) => {
        waiting.push({ n: payload.length, resolve, reject });
        const h = Buffer.allocUnsafe(mode === 0 ? 5 : 4);
        if (mode === 0) {
          h[0] = OP_ECHO;
          mode = OP_ECHO;
        }
        h.writeUInt32BE(payload.length, h.length - 4);
        sock.cork?.();
        sock.write(h);
        sock.write(payload);
        sock.uncork?.();
      });
    },
    bulk(onBytes) {
      if (mode !== 0) throw new Error('bulk needs a fresh connection');
      mode = OP_BULK;
      onBulk = onBytes;
      sock.write(Buffer.of(OP_BULK));
      return {
        done: gone,
        stop: async () => {
          sock.destroy();
          await gone;
        },
      };
    },
    async close() {
      sock.destroy();
      await gone;
    },
  };
}

function waitConnect(sock: Socket, event: 'connect' | 'secureConnect'): Promise<void> {
  return new Promise((resolve, reject) => {
    sock.once(event, () => resolve());
    sock.once('error', reject);
  });
}

/** A cold client endpoint for `subject` (creating it is not part of the setup time; dialing is). */
export async function makeDialer(subject: SubjectName, info: ServerInfo, identity: Identity): Promise<Dialer> {
  const [host, port] = hostPort(info.address);
  switch (subject) {
    case 'plain-tcp':
      return {
        async dial() {
          const sock = connect({ host, port, noDelay: true });
          await waitConnect(sock, 'connect');
          sock.on('error', () => {});
          return socketClient(sock);
        },
        close: async () => {},
      };
    case 'tls-tcp':
      return {
        async dial() {
          // Pin the server's certificate; the name is not what we check.
          const sock = tls.connect({ host, port, ca: info.cert, servername: 'quicmap-wan', checkServerIdentity: () => undefined, minVersion: 'TLSv1.3' });
          await waitConnect(sock, 'secureConnect');
          sock.setNoDelay(true);
          sock.on('error', () => {});
          return socketClient(sock);
        },
        close: async () => {},
      };
    case 'raw-quic': {
      const native = await loadNativeQuic();
      const client = new native.Client(await rawQuicConfig(), 0);
      return {
        async dial() {
          const conn = await client.outboundConnection(host, port);
          return streamClient({
            open: async () => nativeDuplex(await conn.outboundStream()),
            close: async () => conn.abort(),
          });
        },
        close: async () => client.abort(),
      };
    }
    case 'hyperswarm': {
      const d = await makeHyperswarmDialer(info.address, info.publicKey!);
      return { dial: async () => socketClient(await d.dial()), close: () => d.close() };
    }
    default: {
      const t: Transport = await quicmapTransport(subject, identity);
      const key = Uint8Array.from(Buffer.from(info.publicKey!, 'hex'));
      return {
        async dial() {
          const conn: Connection = await t.dial(info.address, key, { timeoutMs: 30_000 });
          return streamClient({
            open: async () => byteStreamDuplex(await conn.openStream()),
            close: () => conn.close(),
          });
        },
        close: () => t.close(),
      };
    }
  }
}
