/**
 * QUIC transport over the native layer of @chainsafe/libp2p-quic (quinn +
 * rustls), shaped after what that library does best here (FACTS.md,
 * "measured ceiling"): every connection carries ONE long-lived bidirectional
 * QUIC stream, and our multiplexer (mux.ts, the same as TCP's) runs over it,
 * so a stream per request costs a 9-byte OPEN frame instead of a QUIC stream
 * (which cost the library 3-5x at small sizes). The carrier stream:
 *
 * - writes are combined in JS into chunks of up to 64 KiB and issued one at
 *   a time, in order (concurrent native writes on one stream reorder data);
 * - reads ask for 256 KiB at a time and run eagerly (the mux's windows bound
 *   what is buffered);
 * - is never reset: ending or dropping a connection aborts the QUIC
 *   connection (`resetWrite()` hangs while a write waits for flow control);
 * - is opened and accepted under deadlines (`outboundStream()` waits forever
 *   at the stream limit; a stream is invisible to the peer until written, so
 *   the dialer writes its SETTINGS at once);
 * - window options are checked below 2^32 (quinn wraps them: 2^32 becomes 0).
 *
 * Identity: each side presents a libp2p-TLS certificate for its Ed25519 key;
 * rustls checks the binding and the native layer reports the proven key as a
 * peer id, which goes through the same `checkPeerKey` as TCP's certificates.
 * The listener's UDP socket gets `udpBufferBytes` (the library sets buffers
 * on client sockets only): see udp-buffer.ts.
 */
import { isIP } from 'node:net';
import { lookup } from 'node:dns/promises';
import { generateKeyPairFromSeed, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import type { Connection, Listener, Transport } from './transport.ts';
import { checkPeerKey } from '../crypto/peer-cert.ts';
import { FrameLink, type LinkIO, type LinkIOEvents } from './frame-link.ts';
import { MuxSession } from './mux.ts';
import type { Identity } from '../crypto/identity.ts';
import { ClosedError, QuicmapError } from '../base/errors.ts';
import { AsyncQueue } from '../base/async-queue.ts';
import { withDeadline } from '../base/deadline.ts';
import { loadNativeQuic, type NativeClient, type NativeConnection, type NativeServer, type NativeStream } from './quic-native.ts';
import { ed25519KeyFromPeerId } from './peer-id.ts';
import { equalBytes, formatHostPort, parseHostPort } from './util.ts';
import { setUdpBuffers } from './udp-buffer.ts';
import { AdmissionGate, sourceOfHostPort } from '../base/admission.ts';

export interface QuicTransportOptions {
  /** Drop a connection after this long without any packet from the peer. Default 15 000 ms. */
  idleTimeoutMs?: number;
  /** Send a keep-alive after this much quiet; keep below the peer's idle timeout. Default 4 000 ms. */
  keepAliveMs?: number;
  /** Limit on the handshake and on the peer opening its carrier stream. Default 5 000 ms. */
  handshakeTimeoutMs?: number;
  /** Default deadline for dial() when the caller gives none. Default 10 000 ms. */
  dialTimeoutMs?: number;
  /** openStream() fails with ETIMEDOUT if the peer grants no stream slot within this. Default 10 000 ms. */
  streamOpenTimeoutMs?: number;
  /** Streams the peer may keep open at once towards us (mux streams, >= 16). Default 256. */
  maxStreams?: number;
  /** Bytes the peer may send on one stream before we read them (receive window, >= 64 KiB). Default 8 MiB. */
  streamWindow?: number;
  /** Bytes the peer may send on all streams of a connection before we read them (>= 1 MiB). Default 16 MiB. */
  connectionWindow?: number;
  /** Bytes asked of the native layer per read of the carrier stream. Default 256 KiB. */
  readChunk?: number;
  /** UDP socket send/receive buffer sizes, listener sockets included. Default 4 MiB. */
  udpBufferBytes?: number;
  /** How many handshakes the listener waits on at once, so one stalled handshake does not block the others. Default 4. */
  acceptConcurrency?: number;
  /** Bytes queued in JS for the carrier stream before data writers wait. Default 2 MiB. */
  sendHighWater?: number;
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
  sendHighWater: 2 * 1024 * 1024,
  maxConnections: 1024,
  maxConnectionsPerSource: 128,
};

/** Small writes to the carrier stream are combined into chunks of this size (the library's sweet spot). */
export const WRITE_CHUNK = 64 * 1024;
/** A piece at least this large is written as it is (copying megabytes costs more than a native call). */
const DIRECT_WRITE = 2 * WRITE_CHUNK;
/** quinn's window parameters wrap at 2^32. */
const WINDOW_LIMIT = 2 ** 32 - 1;
/** Streams the native layer lets the peer open: one carrier (a spare so a racing extra never blocks it). */
const NATIVE_STREAMS = 2;

/**
 * Native windows of the carrier: room for the mux's whole connection window
 * plus batches in flight, so quinn's flow control never binds before ours.
 */
export function carrierWindows(o: Pick<Resolved, 'connectionWindow'>): { maxStreamData: number; maxConnectionData: number } {
  const stream = o.connectionWindow + 4 * 1024 * 1024;
  return { maxStreamData: stream, maxConnectionData: stream + 1024 * 1024 };
}

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


function asBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/**
 * The carrier stream as a LinkIO: one native write at a time, in order,
 * small pieces combined into WRITE_CHUNK buffers; eager reads of readChunk.
 * Ending finishes the stream; destroying aborts the whole QUIC connection
 * (never resetWrite: it can hang).
 */
class CarrierIO implements LinkIO {
  private queue: Uint8Array[] = [];
  private queueHead = 0;
  queuedBytes = 0;
  private writing = false;
  private ending = false;
  private gone = false;
  private ev: LinkIOEvents | undefined;
  private readonly onWritten: () => void;
  private readonly onWriteError: (e: unknown) => void;
  private readonly onChunk: (c: Uint8Array | null) => void;
  private readonly onReadError: (e: unknown) => void;
  private inFlight = 0;

  private readonly conn: NativeConnection;

  private readonly stream: NativeStream;

  private readonly readChunk: number;

  constructor(
    conn: NativeConnection,
    stream: NativeStream,
    readChunk: number) {
    this.conn = conn;

    this.stream = stream;

    this.readChunk = readChunk;
    this.onWritten = this.written.bind(this);
    this.onWriteError = this.failed.bind(this);
    this.onChunk = this.chunk.bind(this);
    this.onReadError = this.failed.bind(this);
  }

  start(ev: LinkIOEvents): void {
    this.ev = ev;
    this.stream.read(this.readChunk).then(this.onChunk, this.onReadError);
  }

  private chunk(c: Uint8Array | null): void {
    if (this.gone) return;
    if (c === null) {
      this.ev!.onEnd();
      return;
    }
    this.stream.read(this.readChunk).then(this.onChunk, this.onReadError);
    this.ev!.onBytes(asBuffer(c));
  }

  private failed(e: unknown): void {
    if (this.gone) return;
    this.ev?.onError(mapNativeError(e, 'quic carrier'));
  }

  write(bufs: readonly Uint8Array[]): void {
    if (this.gone || this.ending) return;
    for (const b of bufs) {
      if (b.length === 0) continue;
      this.queue.push(b);
      this.queuedBytes += b.length;
    }
    if (!this.writing) this.pump();
  }

  /** Next native write: a large piece as it is, else up to WRITE_CHUNK bytes of pieces copied together. */
  private pump(): void {
    if (this.gone) return;
    const q = this.queue;
    if (this.queueHead >= q.length) {
      this.queue = [];
      this.queueHead = 0;
      if (this.ending) this.finish();
      return;
    }
    let out: Uint8Array;
    const first = q[this.queueHead]!;
    if (first.length >= DIRECT_WRITE || (first.length >= WRITE_CHUNK && this.queueHead + 1 === q.length)) {
      out = first;
      this.queueHead++;
    } else {
      let n = 0;
      let i = this.queueHead;
      for (; i < q.length && n < WRITE_CHUNK; i++) n += q[i]!.length;
      const size = Math.min(n, WRITE_CHUNK);
      if (i === this.queueHead + 1 && first.length <= WRITE_CHUNK) {
        out = first;
        this.queueHead++;
      } else {
        const chunk = Buffer.allocUnsafe(size);
        let off = 0;
        while (off < size) {
          const b = q[this.queueHead]!;
          const take = Math.min(b.length, size - off);
          chunk.set(take === b.length ? b : b.subarray(0, take), off);
          off += take;
          if (take === b.length) this.queueHead++;
          else q[this.queueHead] = b.subarray(take);
        }
        out = chunk;
      }
    }
    this.writing = true;
    this.inFlight = out.length;
    try {
      this.stream.write(out).then(this.onWritten, this.onWriteError);
    } catch (e) {
      this.failed(e);
    }
  }

  private written(): void {
    this.writing = false;
    this.queuedBytes -= this.inFlight;
    this.inFlight = 0;
    this.pump();
    this.ev?.onDrain();
  }

  private finish(): void {
    try {
      const r = this.stream.finishWrite();
      if (r && typeof (r as Promise<void>).catch === 'function') (r as Promise<void>).catch(() => {});
    } catch {}
  }

  end(): void {
    if (this.ending || this.gone) return;
    this.ending = true;
    if (!this.writing) this.pump();
  }

  destroy(): void {
    if (this.gone) return;
    this.gone = true;
    this.queue = [];
    try {
      this.conn.abort();
    } catch {}
  }
}

/** The mux session over a connection's carrier stream, torn down with the QUIC connection. */
function carrierSession(native: NativeConnection, stream: NativeStream, key: Uint8Array, address: string, isDialer: boolean, o: Resolved): MuxSession {
  const io = new CarrierIO(native, stream, o.readChunk);
  const session = new MuxSession(new FrameLink(io, o.sendHighWater), key, address, isDialer, {
    maxStreams: o.maxStreams,
    streamWindow: o.streamWindow,
    connectionWindow: o.connectionWindow,
    streamOpenTimeoutMs: o.streamOpenTimeoutMs,
    keepAliveMs: o.keepAliveMs,
    idleTimeoutMs: o.idleTimeoutMs,
  });
  // Status reads the QUIC stack's smoothed RTT, not the mux's PING round trip.
  session.rttSource = () => {
    try {
      const r = native.rtt();
      return Number.isFinite(r) ? r : undefined;
    } catch {
      return undefined;
    }
  };
  native.closed().then(
    () => session.link.kill(new QuicmapError('ESHUTDOWN', 'connection closed')),
    (e) => session.link.kill(mapNativeError(e, 'connection')),
  );
  return session;
}

/**
 * The key rustls verified (reported as the peer id in the remote multiaddr),
 * through the identity check shared with TCP.
 */
function provenKey(native: NativeConnection, expected: Uint8Array | null, where: string): Uint8Array {
  const ma = native.remoteMultiaddr();
  const at = ma.lastIndexOf('/p2p/');
  return checkPeerKey(at >= 0 ? ed25519KeyFromPeerId(ma.slice(at + 5)) : undefined, expected, where);
}

function addressOf(native: NativeConnection): string {
  // "/ip4/127.0.0.1/udp/4433/quic-v1/p2p/..." -> "127.0.0.1:4433"
  const parts = native.remoteMultiaddr().split('/');
  return parts.length > 4 ? formatHostPort(parts[2]!, Number(parts[4])) : 'unknown';
}

class QuicListener implements Listener {
  readonly queue = new AsyncQueue<MuxSession>((c) => void c.close());
  private readonly accepted = new Set<MuxSession>();
  private closing: Promise<void> | undefined;
  /** Connections whose carrier stream has not arrived yet. */
  private readonly pending = new Set<NativeConnection>();
  /** Connections dropped before being handed out (no identity, no carrier in time); for tests and metrics. */
  failedHandshakes = 0;
  /** quinn runs the handshakes (and bounds them); connections past it are capped per source address here. */
  private readonly gate: AdmissionGate;

  private readonly server: NativeServer;

  readonly address: string;

  private readonly opts: Resolved;

  private readonly onClose: (l: QuicListener) => void;

  constructor(
    server: NativeServer,
    address: string,
    opts: Resolved,
    onClose: (l: QuicListener) => void,) {
    this.server = server;

    this.address = address;

    this.opts = opts;

    this.onClose = onClose;
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
      void this.admit(native);
    }
  }

  /** Check the identity, wait (bounded) for the carrier stream, hand out the session. */
  private async admit(native: NativeConnection): Promise<void> {
    this.pending.add(native);
    let ticket: ReturnType<AdmissionGate['admit']> | undefined;
    try {
      const key = provenKey(native, null, 'accept');
      ticket = this.gate.admit(sourceOfHostPort(addressOf(native)), () => {});
      if (!ticket || !ticket.promote()) throw new QuicmapError('EBUSY', 'too many connections from this address');
      const stream = await withDeadline(native.inboundStream(), this.opts.handshakeTimeoutMs, 'accept', {
        error: () => new QuicmapError('ETIMEDOUT', `peer opened no stream within ${this.opts.handshakeTimeoutMs} ms`),
      });
      if (this.queue.isEnded) throw new ClosedError('listener');
      const conn = carrierSession(native, stream, key, addressOf(native), false, this.opts);
      this.accepted.add(conn);
      const admitted = ticket;
      void conn.closed.then(() => {
        this.accepted.delete(conn);
        admitted.release();
      });
      ticket = undefined;
      this.queue.push(conn);
      // A second stream is never used: drain and drop any (the native layer needs them accepted to free slots).
      void this.refuseExtraStreams(native);
    } catch {
      this.failedHandshakes++;
      ticket?.release();
      try {
        native.abort();
      } catch {}
    } finally {
      this.pending.delete(native);
    }
  }

  private async refuseExtraStreams(native: NativeConnection): Promise<void> {
    for (;;) {
      const extra = await native.inboundStream().catch(() => null);
      if (!extra) return;
      try {
        void Promise.resolve(extra.stopRead()).catch(() => {});
      } catch {}
    }
  }

  accept(): Promise<Connection | null> {
    return this.queue.shift();
  }

  /** Stops accepting and closes every connection accepted here (they share its UDP socket). */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.queue.closeAndDrain();
      for (const n of this.pending) {
        try {
          n.abort();
        } catch {}
      }
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
  private readonly connections = new Set<MuxSession>();
  private isClosed = false;
  /** Whether the last listener's UDP socket got `udpBufferBytes` (see udp-buffer.ts); for tests and diagnostics. */
  serverBuffersSet = false;

  private readonly identity: Identity;

  constructor(
    identity: Identity,
    opts: QuicTransportOptions = {}) {
    this.identity = identity;
    this.opts = { ...QUIC_DEFAULTS, ...opts };
    if (this.opts.keepAliveMs >= this.opts.idleTimeoutMs) {
      throw new QuicmapError('EINVAL', 'keepAliveMs must be below idleTimeoutMs, or idle connections drop');
    }
    const w = carrierWindows(this.opts);
    if (this.opts.streamWindow > WINDOW_LIMIT || w.maxConnectionData > WINDOW_LIMIT) {
      // quinn takes these as u32-wrapped values: 2^32 would become 0 and stall every stream.
      throw new QuicmapError('EINVAL', `streamWindow and connectionWindow must stay well below 4 GiB (quinn wraps its windows at 2^32)`);
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
        maxConcurrentStreamLimit: NATIVE_STREAMS,
        ...carrierWindows(o),
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
    // The library sizes client sockets only; give the listener's socket the same buffers.
    this.serverBuffersSet = setUdpBuffers(server.port(), isIP(ip) === 6 ? 6 : 4, this.opts.udpBufferBytes);
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
    try {
      const key = provenKey(conn, expectedPublicKey, `dial ${address}`);
      // The stream limit is 2 and this is the first stream, so this cannot wait on the limit; the deadline is a guard.
      const stream = await withDeadline(conn.outboundStream(), this.opts.handshakeTimeoutMs, `dial ${address}`, {
        error: () => new QuicmapError('ETIMEDOUT', `dial ${address}: no stream within ${this.opts.handshakeTimeoutMs} ms`),
      });
      if (this.isClosed) throw new ClosedError('transport');
      // The mux writes its SETTINGS at once, which makes the stream visible to the listener.
      const c = carrierSession(conn, stream, key, formatHostPort(ip, port), true, this.opts);
      this.connections.add(c);
      void c.closed.then(() => this.connections.delete(c));
      return c;
    } catch (e) {
      conn.abort();
      throw e;
    }
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
