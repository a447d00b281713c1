/**
 * QUIC transport: a thin adapter from our Transport interface to the native
 * layer of @chainsafe/libp2p-quic (quinn + rustls). Each side presents a
 * libp2p-TLS certificate signed by its Ed25519 identity key, so both ends are
 * authenticated by the TLS handshake itself. The native layer has no verify
 * callback, so after connecting we read the proven key from the peer id and
 * abort with EACCES if it is not the one the caller expected.
 *
 * Flow control is quinn's: `write` resolves once quinn took the bytes, which
 * waits while the peer's stream/connection window is full, and we read from
 * quinn only when the application calls `read` (no read-ahead in JS), so a
 * slow reader bounds the writer at about `streamWindow` bytes.
 *
 * QUIC only tells the peer about a new stream when its first bytes arrive:
 * `acceptStream` on the other side returns once the opener has written.
 */
import { isIP } from 'node:net';
import { lookup } from 'node:dns/promises';
import { generateKeyPairFromSeed, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import type { ByteStream, Connection, Listener, Transport } from './transport.ts';
import type { Identity } from '../crypto/identity.ts';
import { ClosedError, QuicmapError } from '../base/errors.ts';
import { AsyncQueue } from '../base/async-queue.ts';
import { withDeadline } from '../base/deadline.ts';
import { AdmissionGate, sourceOfHostPort } from '../base/admission.ts';
import { loadNativeQuic, type NativeClient, type NativeConnection, type NativeServer, type NativeStream } from './quic-native.ts';
import { ed25519KeyFromPeerId } from './peer-id.ts';
import { equalBytes, formatHostPort, parseHostPort } from './util.ts';

export interface QuicTransportOptions {
  /** Drop a connection after this long without any packet from the peer. Default 15 000 ms. */
  idleTimeoutMs?: number;
  /** Send a keep-alive after this much quiet; keep below the peer's idle timeout. Default 4 000 ms. */
  keepAliveMs?: number;
  /** Limit on the TLS handshake (also bounded by idleTimeoutMs). Default 5 000 ms. */
  handshakeTimeoutMs?: number;
  /** Default deadline for dial() when the caller gives none. Default 10 000 ms. */
  dialTimeoutMs?: number;
  /** openStream() fails with ETIMEDOUT if the peer grants no stream credit within this. Default 10 000 ms. */
  streamOpenTimeoutMs?: number;
  /** Streams the peer may keep open at once towards us. Default 256. */
  maxStreams?: number;
  /** Bytes the peer may send on one stream before we read them (receive window). Default 8 MiB. */
  streamWindow?: number;
  /** Bytes the peer may send on all streams of a connection before we read them. Default 16 MiB. */
  connectionWindow?: number;
  /** Largest chunk one read() returns. Default 256 KiB. */
  readChunk?: number;
  /** UDP socket send/receive buffer sizes. Default 4 MiB. */
  udpBufferBytes?: number;
  /** How many handshakes the listener waits on at once, so one stalled handshake does not block the others. Default 4. */
  acceptConcurrency?: number;
  /** Connections a listener keeps, in total and per source address (aborted beyond). Defaults 1024 and 128. */
  maxConnections?: number;
  maxConnectionsPerSource?: number;
}

type Resolved = Required<QuicTransportOptions>;

/** The defaults, exported so benchmarks can configure a raw-QUIC baseline identically. */
export const QUIC_DEFAULTS: Readonly<Resolved> = {
  idleTimeoutMs: 15_000,
  keepAliveMs: 4_000,
  handshakeTimeoutMs: 5_000,
  dialTimeoutMs: 10_000,
  streamOpenTimeoutMs: 10_000,
  maxStreams: 256,
  streamWindow: 8 * 1024 * 1024,
  connectionWindow: 16 * 1024 * 1024,
  readChunk: 256 * 1024,
  udpBufferBytes: 4 * 1024 * 1024,
  acceptConcurrency: 4,
  maxConnections: 1024,
  maxConnectionsPerSource: 128,
};

/** Several buffers totalling at most this are gathered into one: a native call costs more than copying that little (bigger copies cost GC). */
const GATHER_LIMIT = 16 * 1024;

/**
 * The one place that reads the native layer's error messages. The
 * @chainsafe/libp2p-quic addon reports every failure with code "Unknown"
 * and the Display text of quinn's error as the message, so the message is
 * all there is to tell a timeout from a reset. The texts matched (quinn
 * 0.11, as found in the addon binary):
 *
 * | quinn text (ConnectionError / ReadError / WriteError)           | code      |
 * |-----------------------------------------------------------------|-----------|
 * | "timed out" (idle timeout, handshake timeout)                    | ETIMEDOUT |
 * | "stream reset by peer: error N", "reset by peer" (stateless)     | EIO       |
 * | "sending stopped by peer: error N" (STOP_SENDING)                | EIO       |
 * | "closed by peer: …", "closed", "connection lost"                 | ESHUTDOWN |
 * | anything else ("aborted by peer: <TLS/transport error>", …)      | EIO       |
 *
 * Order matters: "stream reset by peer" must not be read as "closed". If an
 * upgrade of the addon changes these texts, test/transport/quic-errors.test.ts
 * fails here rather than the mapping silently turning everything into EIO.
 */
export function mapNativeError(err: unknown, what: string): QuicmapError {
  if (err instanceof QuicmapError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  const m = msg.toLowerCase();
  if (m.includes('timed out') || m.includes('timeout')) return new QuicmapError('ETIMEDOUT', `${what}: ${msg}`, { cause: err });
  if (m.includes('reset')) return new QuicmapError('EIO', `${what}: stream reset by peer (${msg})`, { cause: err });
  if (m.includes('stopped')) return new QuicmapError('EIO', `${what}: peer stopped reading (${msg})`, { cause: err });
  if (m.includes('closed') || m.includes('lost')) return new QuicmapError('ESHUTDOWN', `${what}: connection closed (${msg})`, { cause: err });
  return new QuicmapError('EIO', `${what}: ${msg}`, { cause: err });
}

function ignore(p: unknown): void {
  if (p && typeof (p as Promise<unknown>).catch === 'function') (p as Promise<unknown>).catch(() => {});
}

function concat(list: readonly Uint8Array[], total: number): Uint8Array {
  const out = Buffer.allocUnsafe(total);
  let off = 0;
  for (const b of list) {
    out.set(b, off);
    off += b.length;
  }
  return out;
}

/**
 * `new Promise(capture)` leaves the promise's resolving functions here: one
 * shared executor instead of a closure per call (the executor runs
 * synchronously inside the constructor, so nothing can interleave).
 */
let capturedResolve: ((v?: any) => void) | undefined; // typed at each use
let capturedReject: ((e: unknown) => void) | undefined;
function capture(resolve: (v?: any) => void, reject: (e: unknown) => void): void {
  capturedResolve = resolve;
  capturedReject = reject;
}

interface WriteOp {
  /** Buffers to write; null marks the FIN (closeWrite). */
  bufs: readonly Uint8Array[] | null;
  resolve: () => void;
  reject: (e: unknown) => void;
  next: WriteOp | undefined;
}

/**
 * One QUIC stream. Hot paths allocate little: with small requests the
 * adapter's own cost (CPU, and the garbage collections its garbage causes,
 * which take CPU from quinn's threads) is what the benchmark against the raw
 * library measures. So: no closure per call (callbacks are bound once per
 * stream, with bind() rather than arrow-function fields, which tsx's
 * keepNames wraps in a defineProperty each), no async functions, and queued
 * writes form a linked list.
 */
class QuicByteStream implements ByteStream {
  private error: QuicmapError | undefined;
  private ended = false;
  private writeClosed = false;
  private readResolve: ((v: Uint8Array | null) => void) | undefined;
  private readReject: ((e: unknown) => void) | undefined;
  /** Native writes must not overlap: queued oldest first; `head` is the one being sent. */
  private head: WriteOp | undefined;
  private tail: WriteOp | undefined;
  /** Next native call of `head`: index into its bufs (a FIN op has one call). */
  private nextCall = 0;
  /** A native write/finishWrite is in flight. */
  private writing = false;
  private readonly onChunk: (chunk: Uint8Array | null) => void;
  private readonly onReadError: (e: unknown) => void;
  private readonly onWritten: () => void;
  private readonly onWriteError: (e: unknown) => void;

  constructor(
    private readonly native: NativeStream,
    private readonly readChunk: number,
    private readonly onDone: (s: QuicByteStream) => void,
  ) {
    this.onChunk = this.chunkArrived.bind(this);
    this.onReadError = this.readFailed.bind(this);
    this.onWritten = this.written.bind(this);
    this.onWriteError = this.writeFailed.bind(this);
  }

  private chunkArrived(chunk: Uint8Array | null): void {
    const r = this.readResolve;
    this.readResolve = this.readReject = undefined;
    if (!r) return; // the stream failed meanwhile and the reader was rejected
    if (chunk === null) {
      this.ended = true;
      this.maybeDone();
    }
    r(chunk);
  }

  private readFailed(e: unknown): void {
    const err = mapNativeError(e, 'read');
    const r = this.readReject;
    this.readResolve = this.readReject = undefined;
    this.fail(err);
    r?.(err);
  }

  read(): Promise<Uint8Array | null> {
    if (this.error) return Promise.reject(this.error);
    if (this.ended) return Promise.resolve(null);
    if (this.readResolve) return Promise.reject(new Error('read() called while another read() is pending'));
    const p = new Promise<Uint8Array | null>(capture);
    this.readResolve = capturedResolve;
    this.readReject = capturedReject;
    this.native.read(this.readChunk).then(this.onChunk, this.onReadError);
    return p;
  }

  write(data: Uint8Array | readonly Uint8Array[]): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    if (this.writeClosed) return Promise.reject(new QuicmapError('EINVAL', 'write after closeWrite'));
    let bufs: readonly Uint8Array[];
    if (data instanceof Uint8Array) bufs = [data];
    else {
      let total = 0;
      for (const b of data) total += b.length;
      bufs = data.length > 1 && total <= GATHER_LIMIT ? [concat(data, total)] : data;
    }
    return this.enqueue(bufs);
  }

  private enqueue(bufs: readonly Uint8Array[] | null): Promise<void> {
    const p = new Promise<void>(capture);
    const op: WriteOp = { bufs, resolve: capturedResolve!, reject: capturedReject!, next: undefined };
    if (this.tail) this.tail.next = op;
    else this.head = op;
    this.tail = op;
    if (!this.writing) this.pump();
    return p;
  }

  /**
   * Send queued writes in order: issue the next native call, or finish the
   * head op once its last call completed. A failure fails the stream (and so
   * every queued write).
   */
  private pump(): void {
    try {
      for (let op = this.head; op && !this.error; op = this.head) {
        const bufs = op.bufs;
        if (bufs === null ? this.nextCall === 0 : this.nextCall < bufs.length) {
          const i = this.nextCall++;
          if (bufs !== null && bufs[i]!.length === 0) continue;
          const r = bufs === null ? this.native.finishWrite() : this.native.write(bufs[i]!);
          if (r && typeof (r as Promise<void>).then === 'function') {
            this.writing = true;
            (r as Promise<void>).then(this.onWritten, this.onWriteError);
            return;
          }
          continue;
        }
        this.head = op.next;
        if (!this.head) this.tail = undefined;
        this.nextCall = 0;
        op.resolve();
        if (bufs === null) this.maybeDone();
      }
    } catch (e) {
      this.fail(mapNativeError(e, 'write'));
    }
  }

  private written(): void {
    this.writing = false;
    this.pump();
  }

  private writeFailed(e: unknown): void {
    this.writing = false;
    this.fail(mapNativeError(e, 'write'));
  }

  closeWrite(): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    if (this.writeClosed) return Promise.resolve();
    this.writeClosed = true;
    return this.enqueue(null);
  }

  reset(reason?: Error): void {
    if (this.error) return;
    this.fail(new QuicmapError('EIO', 'stream reset', { cause: reason }));
    try {
      ignore(this.native.resetWrite());
      ignore(this.native.stopRead());
    } catch {}
  }

  /** This end is dead: pending and later calls reject with `err`. */
  fail(err: QuicmapError): void {
    if (this.error) return;
    this.error = err;
    this.writeClosed = true;
    const r = this.readReject;
    this.readResolve = this.readReject = undefined;
    r?.(err);
    let op = this.head;
    this.head = this.tail = undefined;
    this.nextCall = 0;
    for (; op; op = op.next) op.reject(err);
    this.onDone(this);
  }

  private maybeDone(): void {
    if (this.ended && this.writeClosed && !this.head) this.onDone(this);
  }
}

interface OpenOp {
  resolve: (s: ByteStream) => void;
  reject: (e: unknown) => void;
  /** Date.now() after which the open fails with ETIMEDOUT. */
  deadline: number;
  /** Settled (timed out, connection closed). */
  done: boolean;
}

class QuicConnection implements Connection {
  readonly closed: Promise<void>;
  private readonly streams = new Set<QuicByteStream>();
  private isClosed = false;
  private closeError: QuicmapError = new ClosedError('connection');
  /**
   * openStream calls in call order, each with one native outboundStream call
   * in flight. Whichever native call settles serves the oldest open still
   * waiting (any stream does for any caller); settled (timed-out) entries are
   * dropped on the way, and a stream that finds nobody waiting is released.
   */
  private opens: OpenOp[] = [];
  private waitingOpens = 0;
  /** acceptStream callers, oldest first, each with one native inboundStream call in flight (same scheme). */
  private accepts: Array<(s: ByteStream | null) => void> = [];
  private readonly onStreamDone = (s: QuicByteStream): void => void this.streams.delete(s);
  // Bound once per connection: no closure per call on these hot paths.
  private readonly onOutbound = this.outbound.bind(this);
  private readonly onOutboundError = this.outboundFailed.bind(this);
  private readonly onInbound = this.inbound.bind(this);
  private readonly onInboundError = this.inboundFailed.bind(this);

  constructor(
    private readonly native: NativeConnection,
    readonly remotePublicKey: Uint8Array,
    readonly remoteAddress: string,
    private readonly opts: Resolved,
    private readonly onClose: (c: QuicConnection) => void,
  ) {
    this.closed = native.closed().then(
      () => this.shutdown(new QuicmapError('ESHUTDOWN', 'connection closed')),
      (e) => this.shutdown(mapNativeError(e, 'connection')),
    );
  }

  /** The QUIC stack's smoothed round-trip time, ms (for status). */
  get rttMs(): number | undefined {
    try {
      const r = this.native.rtt();
      return Number.isFinite(r) ? r : undefined;
    } catch {
      return undefined;
    }
  }

  private wrap(s: NativeStream): QuicByteStream {
    const st = new QuicByteStream(s, this.opts.readChunk, this.onStreamDone);
    this.streams.add(st);
    return st;
  }

  /**
   * One sweep timer per connection (running only while opens are pending)
   * instead of a timer per openStream: opening streams is a hot path.
   */
  private sweepTimer: NodeJS.Timeout | undefined;

  private readonly sweepOpens = (): void => {
    const now = Date.now();
    for (const op of this.opens) {
      if (op.done || now < op.deadline) continue;
      op.done = true;
      this.waitingOpens--;
      op.reject(new QuicmapError('ETIMEDOUT', `peer granted no stream within ${this.opts.streamOpenTimeoutMs} ms`));
    }
    if (this.waitingOpens === 0) {
      clearInterval(this.sweepTimer);
      this.sweepTimer = undefined;
    }
  };

  openStream(): Promise<ByteStream> {
    if (this.isClosed) return Promise.reject(this.closeError);
    const p = new Promise<ByteStream>(capture);
    this.opens.push({ resolve: capturedResolve!, reject: capturedReject!, deadline: Date.now() + this.opts.streamOpenTimeoutMs, done: false });
    this.waitingOpens++;
    this.sweepTimer ??= setInterval(this.sweepOpens, Math.max(10, Math.min(250, this.opts.streamOpenTimeoutMs >> 2)));
    this.native.outboundStream().then(this.onOutbound, this.onOutboundError);
    return p;
  }

  /** The oldest open still waiting, now settled; undefined if none. */
  private takeOpen(): OpenOp | undefined {
    for (let op = this.opens.shift(); op; op = this.opens.shift()) {
      if (op.done) continue;
      op.done = true;
      this.waitingOpens--;
      return op;
    }
    return undefined;
  }

  private outbound(s: NativeStream): void {
    const op = this.takeOpen();
    if (!op) return release(s);
    op.resolve(this.wrap(s));
  }

  private outboundFailed(e: unknown): void {
    this.takeOpen()?.reject(this.isClosed ? this.closeError : mapNativeError(e, 'openStream'));
  }

  acceptStream(): Promise<ByteStream | null> {
    if (this.isClosed) return Promise.resolve(null);
    const p = new Promise<ByteStream | null>(capture);
    this.accepts.push(capturedResolve!);
    this.native.inboundStream().then(this.onInbound, this.onInboundError);
    return p;
  }

  private inbound(s: NativeStream): void {
    const settle = this.accepts.shift();
    if (!settle || this.isClosed) return release(s);
    settle(this.wrap(s));
  }

  private inboundFailed(): void {
    this.accepts.shift()?.(null);
  }

  async close(reason?: Error): Promise<void> {
    if (this.isClosed) return;
    this.shutdown(reason instanceof QuicmapError ? reason : new ClosedError('connection'));
    try {
      this.native.abort();
    } catch {}
  }

  private shutdown(err: QuicmapError): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closeError = err;
    for (const s of [...this.streams]) s.fail(err);
    const opens = this.opens;
    this.opens = [];
    this.waitingOpens = 0;
    for (const op of opens) {
      if (op.done) continue;
      op.done = true;
      op.reject(err);
    }
    clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    const accepts = this.accepts;
    this.accepts = [];
    for (const settle of accepts) settle(null);
    this.onClose(this);
  }
}

function release(s: NativeStream): void {
  try {
    ignore(s.resetWrite());
    ignore(s.stopRead());
  } catch {}
}

/** Check the peer id the native layer reports against what we expect; returns the proven key. */
function provenKey(native: NativeConnection): Uint8Array {
  const ma = native.remoteMultiaddr();
  const at = ma.lastIndexOf('/p2p/');
  const key = at >= 0 ? ed25519KeyFromPeerId(ma.slice(at + 5)) : undefined;
  if (!key) throw new QuicmapError('EACCES', `peer presented no Ed25519 identity (${ma})`);
  return key;
}

function addressOf(native: NativeConnection): string {
  // "/ip4/127.0.0.1/udp/4433/quic-v1/p2p/..." -> "127.0.0.1:4433"
  const parts = native.remoteMultiaddr().split('/');
  return parts.length > 4 ? formatHostPort(parts[2]!, Number(parts[4])) : 'unknown';
}

class QuicListener implements Listener {
  readonly queue = new AsyncQueue<QuicConnection>((c) => void c.close());
  private readonly accepted = new Set<QuicConnection>();
  private closing: Promise<void> | undefined;
  /** quinn runs the handshakes (and bounds them); connections past it are capped per source address here. */
  private readonly gate: AdmissionGate;

  constructor(
    private readonly server: NativeServer,
    readonly address: string,
    private readonly opts: Resolved,
    private readonly onClose: (l: QuicListener) => void,
  ) {
    const maxActive = opts.maxConnections;
    this.gate = new AdmissionGate({ maxPending: maxActive, maxPendingPerSource: maxActive, maxActive, maxActivePerSource: Math.min(opts.maxConnectionsPerSource, maxActive) });
    for (let i = 0; i < opts.acceptConcurrency; i++) void this.acceptLoop();
  }

  private async acceptLoop(): Promise<void> {
    while (!this.queue.isEnded) {
      let native: NativeConnection;
      try {
        native = await this.server.inboundConnection();
      } catch {
        // A failed handshake is the client's problem; a closed server ends the loop.
        if (this.queue.isEnded) return;
        continue;
      }
      let key: Uint8Array;
      try {
        key = provenKey(native);
      } catch {
        native.abort();
        continue;
      }
      const remote = addressOf(native);
      const ticket = this.gate.admit(sourceOfHostPort(remote), () => {});
      if (!ticket || !ticket.promote()) {
        native.abort();
        continue;
      }
      const conn = new QuicConnection(native, key, remote, this.opts, (c) => {
        this.accepted.delete(c);
        ticket.release();
      });
      this.accepted.add(conn);
      this.queue.push(conn);
    }
  }

  accept(): Promise<Connection | null> {
    return this.queue.shift();
  }

  /** Stops accepting and closes every connection accepted here (they share its UDP socket). */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.queue.closeAndDrain();
      for (const c of [...this.accepted]) await c.close();
      await withDeadline(this.server.abort(), 2_000, 'server abort').catch(() => {});
      this.onClose(this);
    })();
    return this.closing;
  }
}

export class QuicTransport implements Transport {
  readonly name = 'quic' as const;
  private readonly opts: Resolved;
  private config: Promise<object> | undefined;
  private readonly clients = new Map<4 | 6, NativeClient>();
  private readonly listeners = new Set<QuicListener>();
  private readonly connections = new Set<QuicConnection>();
  private isClosed = false;

  constructor(
    private readonly identity: Identity,
    opts: QuicTransportOptions = {},
  ) {
    this.opts = { ...QUIC_DEFAULTS, ...opts };
    if (this.opts.keepAliveMs >= this.opts.idleTimeoutMs) {
      throw new QuicmapError('EINVAL', 'keepAliveMs must be below idleTimeoutMs, or idle connections drop');
    }
  }

  /** The native config, built once: it carries our libp2p key derived from the identity seed. */
  private nativeConfig(): Promise<object> {
    this.config ??= (async () => {
      const native = await loadNativeQuic();
      const key = await generateKeyPairFromSeed('Ed25519', this.identity.seed);
      if (!equalBytes(key.publicKey.raw, this.identity.publicKey)) {
        throw new Error('libp2p and libsodium derived different Ed25519 keys from the same seed');
      }
      const o = this.opts;
      return new native.QuinnConfig({
        privateKeyProto: privateKeyToProtobuf(key),
        handshakeTimeout: o.handshakeTimeoutMs,
        maxIdleTimeout: o.idleTimeoutMs,
        keepAliveInterval: o.keepAliveMs,
        maxConcurrentStreamLimit: o.maxStreams,
        maxStreamData: o.streamWindow,
        maxConnectionData: o.connectionWindow,
        receiveBufferSize: o.udpBufferBytes,
        sendBufferSize: o.udpBufferBytes,
      });
    })();
    return this.config;
  }

  async listen(address: string): Promise<Listener> {
    if (this.isClosed) throw new ClosedError('transport');
    const { host, port } = parseHostPort(address);
    const ip = await resolveHost(host);
    const native = await loadNativeQuic();
    const config = await this.nativeConfig();
    let server: NativeServer;
    try {
      server = new native.Server(config, ip, port);
    } catch (e) {
      throw new QuicmapError('EIO', `cannot listen on ${address}: ${(e as Error).message}`, { cause: e });
    }
    const l = new QuicListener(server, formatHostPort(ip, server.port()), this.opts, (x) => this.listeners.delete(x));
    this.listeners.add(l);
    return l;
  }

  async dial(address: string, expectedPublicKey: Uint8Array, opts: { timeoutMs?: number } = {}): Promise<Connection> {
    if (this.isClosed) throw new ClosedError('transport');
    const { host, port } = parseHostPort(address);
    const ip = await resolveHost(host);
    const family = isIP(ip) === 6 ? 6 : 4;
    const native = await loadNativeQuic();
    const config = await this.nativeConfig();
    let client = this.clients.get(family);
    if (!client) {
      client = new native.Client(config, family === 6 ? 1 : 0);
      this.clients.set(family, client);
    }
    const timeoutMs = opts.timeoutMs ?? this.opts.dialTimeoutMs;
    let conn: NativeConnection;
    try {
      conn = await withDeadline(client.outboundConnection(ip, port), timeoutMs, `dial ${address}`, {
        error: () => new QuicmapError('ETIMEDOUT', `dial ${address}: no handshake within ${timeoutMs} ms`),
        late: (late) => late.abort(),
      });
    } catch (e) {
      throw mapNativeError(e, `dial ${address}`);
    }
    let key: Uint8Array;
    try {
      key = provenKey(conn);
    } catch (e) {
      conn.abort();
      throw e;
    }
    if (!equalBytes(key, expectedPublicKey)) {
      conn.abort();
      throw new QuicmapError('EACCES', `peer at ${address} proved a different identity than expected`);
    }
    const c = new QuicConnection(conn, key, formatHostPort(ip, port), this.opts, (x) => this.connections.delete(x));
    this.connections.add(c);
    if (this.isClosed) {
      await c.close();
      throw new ClosedError('transport');
    }
    return c;
  }

  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    await Promise.all([...this.listeners].map((l) => l.close()));
    await Promise.all([...this.connections].map((c) => c.close()));
    for (const c of this.clients.values()) {
      try {
        c.abort();
      } catch {}
    }
    this.clients.clear();
  }
}

/** The native layer takes IP literals only. */
async function resolveHost(host: string): Promise<string> {
  if (isIP(host)) return host;
  try {
    return (await lookup(host)).address;
  } catch (e) {
    throw new QuicmapError('EINVAL', `cannot resolve ${host}`, { cause: e });
  }
}
