/**
 * QUIC transport on quicmap's own native data path: ngtcp2 0.12 + GnuTLS
 * (AES-GCM), the UDP loop on a native thread, datagrams sized to the route
 * MTU with GSO, and events crossing into JS in batches (see
 * native/src/quic.cc). A prototype next to QuicTransport (quic.ts), behind
 * the same interface; `Ngtcp2Transport.unavailableReason()` says why it
 * cannot run where the Debian packages are missing.
 *
 * Identity: each endpoint presents a libp2p-TLS certificate bound to its
 * Ed25519 key (native/src/quic_identity.cc). The decision is made here, by
 * crypto/peer-cert.ts (`identityFromCertificate` + `checkPeerKey`, the same
 * functions TCP and the library path end in), on the certificate (DER) the
 * native layer hands over with the handshake's "ready" event, before any
 * Connection exists. The native verify callback also checks it during the
 * TLS handshake, because a callback there is the only way to stop the
 * handshake early: a dialer that meets the wrong key aborts before sending
 * its own certificate (so an impostor never learns who dialed), and a
 * forged client certificate fails the handshake. Asking JS from inside the
 * callback would stall the native thread's every connection on the JS event
 * loop; test/transport/ngtcp2-identity.test.ts holds both checks to the same
 * verdicts.
 *
 * Flow control: received bytes are handed to JS at once and queued on their
 * stream; credit goes back to the peer only as `read()` takes them, so a
 * reader that does not read stalls the writer after `streamWindow` (and all
 * streams together after `connectionWindow`). A writer may have at most
 * `sendHighWater` bytes not yet acknowledged per stream in the native layer;
 * further writes wait in JS, in call order.
 */
import { isIP } from 'node:net';
import { lookup } from 'node:dns/promises';
import type { ByteStream, Connection, Listener, Transport } from './transport.ts';
import type { Identity } from '../crypto/identity.ts';
import { ClosedError, QuicmapError, type ErrorCode } from '../base/errors.ts';
import { AsyncQueue } from '../base/async-queue.ts';
import { AdmissionGate, sourceOfHostPort } from '../base/admission.ts';
import { checkPeerKey, identityFromCertificate } from '../crypto/peer-cert.ts';
import {
  EVENT_FIELDS,
  EV_ACKED,
  EV_CLOSED,
  EV_DATA,
  EV_FIN,
  EV_INCOMING,
  EV_OPENED,
  EV_READY,
  EV_RESET,
  EV_STREAM_CLOSED,
  EV_CREDIT,
  loadNgtcp2,
  ngtcp2UnavailableReason,
  type NativeQuicEndpoint,
  type QuicEndpointStats,
  type QuicEvents,
} from '../native/quic.ts';
import { formatHostPort, parseHostPort } from './util.ts';
import type { PunchSocket } from './udp-punch.ts';

export interface Ngtcp2TransportOptions {
  /** Drop a connection after this long without a packet from the peer. Default 15 000 ms. */
  idleTimeoutMs?: number;
  /** PING after this much quiet; below the idle timeout. Default 4 000 ms. */
  keepAliveMs?: number;
  /** Limit on the QUIC/TLS handshake. Default 5 000 ms. */
  handshakeTimeoutMs?: number;
  /** Default deadline of dial(). Default 10 000 ms. */
  dialTimeoutMs?: number;
  /** openStream() fails with ETIMEDOUT if the peer grants no stream within this. Default 10 000 ms. */
  streamOpenTimeoutMs?: number;
  /** Streams the peer may have open towards us at once. Default 256. */
  maxStreams?: number;
  /** Receive window per stream. Default 8 MiB. */
  streamWindow?: number;
  /** Receive window per connection. Default 16 MiB. */
  connectionWindow?: number;
  /** Bytes per stream sent but not yet acknowledged before write() waits. Default 4 MiB. */
  sendHighWater?: number;
  /** UDP socket buffers. Default 4 MiB. */
  udpBufferBytes?: number;
  /** Largest UDP payload sent; 0 = as large as the route MTU allows. Default 0. */
  maxUdpPayload?: number;
  /** Batch datagrams with UDP_SEGMENT (GSO). Default true. */
  gso?: boolean;
  /**
   * Congestion control (ngtcp2 0.12's ngtcp2_cc_algo): 'bbr' (default), 'cubic', 'reno', 'bbr2'.
   * BBR by measurement in the WAN lab (bench/RESULTS.md, wan: congestion control): as fast as
   * CUBIC on a clean 50 ms path, 20× CUBIC's bulk at 1 % random loss, where loss-based
   * controllers collapse; BBRv2 backs off on loss and kept less of the link.
   */
  cc?: 'cubic' | 'reno' | 'bbr' | 'bbr2';
  /** Handshakes a listener runs at once; a newcomer evicts the oldest of the source holding the most. Default 64. */
  maxPendingHandshakes?: number;
  /** Handshakes one source (IPv4 address, IPv6 /64) may run at once; its own oldest is evicted beyond. Default 8. */
  maxPendingPerSource?: number;
  /** Connections per endpoint. Default 1024. */
  maxConnections?: number;
  /** Accepted connections from one source address (aborted beyond; base/admission.ts). Default 128. */
  maxConnectionsPerSource?: number;
}

type Resolved = Required<Ngtcp2TransportOptions>;

export const NGTCP2_DEFAULTS: Readonly<Resolved> = {
  idleTimeoutMs: 15_000,
  keepAliveMs: 4_000,
  handshakeTimeoutMs: 5_000,
  dialTimeoutMs: 10_000,
  streamOpenTimeoutMs: 10_000,
  maxStreams: 256,
  streamWindow: 8 * 1024 * 1024,
  connectionWindow: 16 * 1024 * 1024,
  sendHighWater: 4 * 1024 * 1024,
  udpBufferBytes: 4 * 1024 * 1024,
  maxUdpPayload: 0,
  gso: true,
  cc: 'bbr',
  maxPendingHandshakes: 64,
  maxPendingPerSource: 8,
  maxConnectionsPerSource: 128,
  maxConnections: 1024,
};

const CC_NAMES: ReadonlyArray<Resolved['cc']> = ['bbr', 'cubic', 'reno', 'bbr2'];

/** Writes larger than this are handed to the native layer in slices of it, as credit allows. */
const SLICE = 256 * 1024;

const CODES = new Set<string>(['EINVAL', 'EPERM', 'EACCES', 'EIO', 'ENOSPC', 'EOVERFLOW', 'ENOTSUP', 'ESHUTDOWN', 'ETIMEDOUT', 'EBUSY', 'EPROTO']);

/** The native layer reports "CODE message". */
function nativeError(text: string | undefined, what: string): QuicmapError {
  const t = text ?? 'EIO connection failed';
  const sp = t.indexOf(' ');
  const code = sp > 0 ? t.slice(0, sp) : t;
  const msg = sp > 0 ? t.slice(sp + 1) : t;
  return new QuicmapError((CODES.has(code) ? code : 'EIO') as ErrorCode, `${what}: ${msg}`);
}

interface WriteOp {
  /** null: the FIN. */
  bufs: readonly Uint8Array[] | null;
  /** Index into bufs and offset into bufs[i] of the next byte to hand over. */
  i: number;
  off: number;
  resolve: () => void;
  reject: (e: unknown) => void;
}

class NgStream implements ByteStream {
  private readonly chunks: Uint8Array[] = [];
  private queued = 0;
  private ended = false;
  private error: QuicmapError | undefined;
  private writeClosed = false;
  private readResolve: ((v: Uint8Array | null) => void) | undefined;
  private readReject: ((e: unknown) => void) | undefined;
  private readonly ops: WriteOp[] = [];
  /** Bytes handed to the native layer and not yet acknowledged. */
  private inflight = 0;

  /**
   * The stream's id once known, else -1: a stream opened while the peer had
   * stream credit is usable at once and addressed by its open token until the
   * native layer reports its id.
   */
  id: number;

  private readonly conn: NgConnection;
  private readonly token: number;
  constructor(
    conn: NgConnection,
    id: number,
    token: number = 0,
  ) {
    this.conn = conn;
    this.token = token;
    this.id = id;
  }

  /** How the native layer knows this stream: its id, or -(token + 1) before that. */
  get ref(): number {
    return this.id >= 0 ? this.id : -(this.token + 1);
  }

  // ---- from the native layer

  data(buf: Uint8Array): void {
    if (this.error) return this.conn.consume(this.ref, buf.length);
    const r = this.readResolve;
    if (r) {
      this.readResolve = this.readReject = undefined;
      this.conn.consume(this.ref, buf.length);
      r(buf);
      return;
    }
    this.chunks.push(buf);
    this.queued += buf.length;
  }

  fin(): void {
    this.ended = true;
    const r = this.readResolve;
    if (r && !this.chunks.length) {
      this.readResolve = this.readReject = undefined;
      r(null);
    }
  }

  acked(n: number): void {
    this.inflight -= n;
    if (this.ops.length) this.pump();
  }

  peerReset(): void {
    this.fail(new QuicmapError('EIO', 'stream reset by peer'));
  }

  // ---- ByteStream

  read(): Promise<Uint8Array | null> {
    if (this.chunks.length) {
      const c = this.chunks.shift()!;
      this.queued -= c.length;
      this.conn.consume(this.ref, c.length);
      return Promise.resolve(c);
    }
    if (this.error) return Promise.reject(this.error);
    if (this.ended) return Promise.resolve(null);
    if (this.readResolve) return Promise.reject(new Error('read() called while another read() is pending'));
    return new Promise((resolve, reject) => {
      this.readResolve = resolve;
      this.readReject = reject;
    });
  }

  write(data: Uint8Array | readonly Uint8Array[]): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    if (this.writeClosed) return Promise.reject(new QuicmapError('EINVAL', 'write after closeWrite'));
    return this.enqueue(data instanceof Uint8Array ? [data] : data);
  }

  closeWrite(): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    if (this.writeClosed) return Promise.resolve();
    this.writeClosed = true;
    return this.enqueue(null);
  }

  private enqueue(bufs: readonly Uint8Array[] | null): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.ops.push({ bufs, i: 0, off: 0, resolve, reject });
      if (this.ops.length === 1) this.pump();
    });
  }

  /** Hand queued writes to the native layer, in order, while under the high-water mark. */
  private pump(): void {
    const hw = this.conn.sendHighWater;
    while (this.ops.length && !this.error) {
      const op = this.ops[0]!;
      if (op.bufs === null) {
        if (!this.conn.write(this.ref, null, true)) return;
        this.ops.shift();
        op.resolve();
        continue;
      }
      while (op.i < op.bufs.length) {
        if (this.inflight >= hw) return;
        const b = op.bufs[op.i]!;
        const n = Math.min(b.length - op.off, SLICE);
        if (n > 0) {
          const piece = op.off === 0 && n === b.length ? b : b.subarray(op.off, op.off + n);
          if (!this.conn.write(this.ref, piece, false)) return;
          this.inflight += n;
          op.off += n;
        }
        if (op.off >= b.length) {
          op.i++;
          op.off = 0;
        }
      }
      this.ops.shift();
      op.resolve();
    }
  }

  reset(reason?: Error): void {
    if (this.error) return;
    this.fail(new QuicmapError('EIO', 'stream reset', { cause: reason }));
    this.conn.resetStream(this.ref);
  }

  /** This end is dead: pending and later calls reject; unread bytes give their credit back. */
  fail(err: QuicmapError): void {
    if (this.error) return;
    this.error = err;
    this.writeClosed = true;
    if (this.queued) this.conn.consume(this.ref, this.queued);
    this.chunks.length = 0;
    this.queued = 0;
    const r = this.readReject;
    this.readResolve = this.readReject = undefined;
    r?.(err);
    for (const op of this.ops.splice(0)) op.reject(err);
  }
}

interface OpenOp {
  resolve: (s: ByteStream) => void;
  reject: (e: unknown) => void;
  deadline: number;
}

export type { NgConnection as Ngtcp2Connection, NgListener as Ngtcp2Listener };

class NgConnection implements Connection {
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  readonly streams = new Map<number, NgStream>();
  private readonly incoming = new AsyncQueue<NgStream>((s) => s.reset());
  private readonly opens = new Map<number, OpenOp>();
  /** Streams handed out before their id was known, by open token. */
  private readonly early = new Map<number, NgStream>();
  private nextToken = 1;
  /** Streams the peer allows us in total (EV_CREDIT) and how many we asked for. */
  private streamLimit = 0;
  private opensIssued = 0;
  private sweepTimer: NodeJS.Timeout | undefined;
  isClosed = false;
  private closeError: QuicmapError = new ClosedError('connection');

  private readonly ep: Endpoint;
  readonly id: number;
  readonly remotePublicKey: Uint8Array;
  readonly remoteAddress: string;
  private readonly opts: Resolved;
  private readonly onClose: (c: NgConnection) => void;
  constructor(
    ep: Endpoint,
    id: number,
    remotePublicKey: Uint8Array,
    remoteAddress: string,
    opts: Resolved,
    onClose: (c: NgConnection) => void,
  ) {
    this.ep = ep;
    this.id = id;
    this.remotePublicKey = remotePublicKey;
    this.remoteAddress = remoteAddress;
    this.opts = opts;
    this.onClose = onClose;
    this.closed = new Promise((r) => (this.resolveClosed = r));
  }

  get sendHighWater(): number {
    return this.opts.sendHighWater;
  }

  /** The certificate (DER) the peer proved its key with. */
  peerCertificate: Uint8Array = new Uint8Array(0);

  /** Why the connection ended (after `closed`). */
  get closeReason(): QuicmapError {
    return this.closeError;
  }

  /** The native layer does not report its RTT estimate (yet); the mux measures its own. */
  get rttMs(): number | undefined {
    return undefined;
  }

  write(stream: number, data: Uint8Array | null, fin: boolean): boolean {
    return this.ep.call((n) => n.write(this.id, stream, data, fin));
  }

  consume(stream: number, n: number): void {
    if (!this.isClosed) this.ep.call((x) => x.consume(this.id, stream, n));
  }

  resetStream(stream: number): void {
    if (!this.isClosed) this.ep.call((n) => n.resetStream(this.id, stream, 0));
  }

  // ---- events

  credit(limit: number): void {
    if (limit > this.streamLimit) this.streamLimit = limit;
  }

  opened(token: number, sid: number): void {
    const e = this.early.get(token);
    if (e) {
      this.early.delete(token);
      e.id = sid;
      this.streams.set(sid, e);
      return;
    }
    const op = this.opens.get(token);
    this.opens.delete(token);
    const s = new NgStream(this, sid);
    this.streams.set(sid, s);
    if (!op) return s.reset(); // the open timed out meanwhile: give the slot back
    op.resolve(s);
  }

  incomingStream(sid: number): void {
    const s = new NgStream(this, sid);
    this.streams.set(sid, s);
    this.incoming.push(s);
  }

  // ---- Connection

  openStream(): Promise<ByteStream> {
    if (this.isClosed) return Promise.reject(this.closeError);
    const token = this.nextToken++;
    const fast = this.opensIssued < this.streamLimit;
    this.opensIssued++;
    if (fast) {
      // The peer has a slot for it: usable now, no round trip to the native thread.
      const s = new NgStream(this, -1, token);
      this.early.set(token, s);
      this.ep.call((n) => n.open(this.id, token));
      return Promise.resolve(s);
    }
    return new Promise<ByteStream>((resolve, reject) => {
      this.opens.set(token, { resolve, reject, deadline: Date.now() + this.opts.streamOpenTimeoutMs });
      this.sweepTimer ??= setInterval(this.sweep, Math.max(10, Math.min(250, this.opts.streamOpenTimeoutMs >> 2)));
      if (!this.ep.call((n) => n.open(this.id, token))) {
        this.opens.delete(token);
        reject(this.closeError);
      }
    });
  }

  private readonly sweep = (): void => {
    const now = Date.now();
    for (const [token, op] of this.opens) {
      if (now < op.deadline) continue;
      this.opens.delete(token);
      op.reject(new QuicmapError('ETIMEDOUT', `peer granted no stream within ${this.opts.streamOpenTimeoutMs} ms`));
    }
    if (!this.opens.size) {
      clearInterval(this.sweepTimer);
      this.sweepTimer = undefined;
    }
  };

  acceptStream(): Promise<ByteStream | null> {
    return this.incoming.shift();
  }

  async close(reason?: Error): Promise<void> {
    if (this.isClosed) return;
    this.ep.call((n) => n.closeConnection(this.id));
    this.shutdown(reason instanceof QuicmapError ? reason : new ClosedError('connection'));
  }

  shutdown(err: QuicmapError): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closeError = err;
    for (const s of this.streams.values()) s.fail(err);
    this.streams.clear();
    for (const s of this.early.values()) s.fail(err);
    this.early.clear();
    for (const op of this.opens.values()) op.reject(err);
    this.opens.clear();
    clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    this.incoming.closeAndDrain();
    this.onClose(this);
    this.resolveClosed();
  }
}

interface PendingDial {
  resolve: (c: NgConnection) => void;
  reject: (e: unknown) => void;
  address: string;
  expected: Uint8Array;
}

/** One native endpoint (UDP socket + thread) and the connections on it. */
class Endpoint {
  private native: NativeQuicEndpoint | undefined;
  readonly conns = new Map<number, NgConnection>();
  private readonly dials = new Map<number, PendingDial>();
  /** Connections accepted by a listening endpoint. */
  onAccept: ((c: NgConnection) => void) | undefined;
  /** Handshakes that completed but whose certificate crypto/peer-cert.ts refused. */
  refusedIdentities = 0;

  private readonly opts: Resolved;
  readonly family: 4 | 6;
  constructor(
    identity: Identity,
    host: string,
    port: number,
    server: boolean,
    opts: Resolved,
  ) {
    this.opts = opts;
    this.family = isIP(host) === 6 ? 6 : 4;
    const q = loadNgtcp2();
    if (!q) throw new QuicmapError('ENOTSUP', ngtcp2UnavailableReason() ?? 'ngtcp2 unavailable');
    try {
      this.native = new q.QuicEndpoint(
        {
          host,
          port,
          server,
          seed: identity.seed,
          publicKey: identity.publicKey,
          idleTimeoutMs: opts.idleTimeoutMs,
          handshakeTimeoutMs: opts.handshakeTimeoutMs,
          keepAliveMs: opts.keepAliveMs,
          maxStreams: opts.maxStreams,
          streamWindow: opts.streamWindow,
          connectionWindow: opts.connectionWindow,
          maxUdpPayload: opts.maxUdpPayload,
          gso: opts.gso,
          udpBufferBytes: opts.udpBufferBytes,
          maxPendingHandshakes: opts.maxPendingHandshakes,
          maxPendingPerSource: opts.maxPendingPerSource,
          maxConnections: opts.maxConnections,
          cc: opts.cc,
        },
        this.onEvents,
      );
    } catch (e) {
      throw new QuicmapError('EIO', `cannot open a QUIC endpoint on ${formatHostPort(host, port)}: ${(e as Error).message}`, { cause: e });
    }
  }

  get port(): number {
    return this.native?.port() ?? 0;
  }

  get isClosed(): boolean {
    return !this.native;
  }

  stats(): QuicEndpointStats | undefined {
    return this.native?.stats();
  }

  /** This endpoint's UDP socket for hole punching (udp-punch.ts): punch datagrams only, rate limited natively. */
  punchSocket(): PunchSocket {
    const family: 4 | 6 = this.family;
    return {
      localPort: this.port,
      family,
      send: (ip, port, datagram) => {
        const n = this.native;
        if (!n || (isIP(ip) === 6 ? 6 : 4) !== family) return false;
        return n.sendDatagram(ip, port, datagram);
      },
    };
  }

  /** Run a native call unless the endpoint is closed; false if it was. */
  call(fn: (n: NativeQuicEndpoint) => void): boolean {
    if (!this.native) return false;
    fn(this.native);
    return true;
  }

  dial(ip: string, port: number, key: Uint8Array, address: string, timeoutMs: number): Promise<NgConnection> {
    if (!this.native) return Promise.reject(new ClosedError('transport'));
    const id = this.native.connect(ip, port, key);
    return new Promise<NgConnection>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (!this.dials.delete(id)) return;
        this.call((n) => n.closeConnection(id));
        reject(new QuicmapError('ETIMEDOUT', `dial ${address}: no handshake within ${timeoutMs} ms`));
      }, timeoutMs);
      this.dials.set(id, {
        resolve: (c) => (clearTimeout(timer), resolve(c)),
        reject: (e) => (clearTimeout(timer), reject(e)),
        address,
        expected: Uint8Array.from(key),
      });
    });
  }

  private readonly onEvents = (ev: QuicEvents): void => {
    for (let i = 0; i < ev.length; i += EVENT_FIELDS) {
      const type = ev[i] as number;
      const cid = ev[i + 1] as number;
      const sid = ev[i + 2] as number;
      const n = ev[i + 3] as number;
      const conn = this.conns.get(cid);
      switch (type) {
        case EV_DATA: {
          const buf = ev[i + 5] as Uint8Array;
          const s = conn?.streams.get(sid);
          if (s) s.data(buf);
          else if (conn) conn.consume(sid, buf.length); // a stream we gave up: keep the credit flowing
          break;
        }
        case EV_ACKED:
          conn?.streams.get(sid)?.acked(n);
          break;
        case EV_FIN:
          conn?.streams.get(sid)?.fin();
          break;
        case EV_RESET:
          conn?.streams.get(sid)?.peerReset();
          break;
        case EV_STREAM_CLOSED:
          conn?.streams.delete(sid);
          break;
        case EV_OPENED:
          conn?.opened(n, sid);
          break;
        case EV_INCOMING:
          conn?.incomingStream(sid);
          break;
        case EV_CREDIT:
          conn?.credit(n);
          break;
        case EV_READY:
          this.ready(cid, ev[i + 4] as string, ev[i + 5] as Uint8Array);
          break;
        case EV_CLOSED: {
          const d = this.dials.get(cid);
          if (d) {
            this.dials.delete(cid);
            d.reject(nativeError(ev[i + 4] as string | undefined, `dial ${d.address}`));
          } else conn?.shutdown(nativeError(ev[i + 4] as string | undefined, 'connection'));
          break;
        }
      }
    }
  };

  /** The handshake is done: `cert` is the native check's key (32 bytes), then the peer's certificate (DER), which decides. */
  private ready(id: number, address: string, cert: Uint8Array): void {
    const d = this.dials.get(id);
    let key: Uint8Array;
    try {
      key = checkPeerKey(identityFromCertificate(cert.subarray(32)), d?.expected ?? null, d ? `dial ${d.address}` : `accept from ${address}`);
    } catch (e) {
      this.refusedIdentities++;
      this.call((n) => n.closeConnection(id));
      if (d) {
        this.dials.delete(id);
        d.reject(e);
      }
      return;
    }
    const c = new NgConnection(this, id, key, address, this.opts, (x) => this.conns.delete(x.id));
    c.peerCertificate = Uint8Array.from(cert.subarray(32));
    if (d) {
      this.dials.delete(id);
      this.conns.set(id, c);
      d.resolve(c);
      return;
    }
    if (!this.onAccept) return void this.call((n) => n.closeConnection(id));
    this.conns.set(id, c);
    this.onAccept(c);
  }

  close(): void {
    const n = this.native;
    if (!n) return;
    const err = new QuicmapError('ESHUTDOWN', 'endpoint closed');
    for (const c of [...this.conns.values()]) c.shutdown(err);
    for (const d of this.dials.values()) d.reject(err);
    this.dials.clear();
    this.native = undefined;
    n.close();
  }
}

class NgListener implements Listener {
  private readonly queue = new AsyncQueue<NgConnection>((c) => void c.close());
  private closing: Promise<void> | undefined;
  /** Connections past the handshake, per source address (the handshakes themselves are bounded natively). */
  private readonly gate: AdmissionGate;

  private readonly ep: Endpoint;
  readonly address: string;
  private readonly onClose: (l: NgListener) => void;
  constructor(
    ep: Endpoint,
    address: string,
    onClose: (l: NgListener) => void,
    maxConnections: number,
    maxConnectionsPerSource: number,
  ) {
    this.ep = ep;
    this.address = address;
    this.onClose = onClose;
    this.gate = new AdmissionGate({ maxPending: maxConnections, maxPendingPerSource: maxConnections, maxActive: maxConnections, maxActivePerSource: Math.min(maxConnectionsPerSource, maxConnections) });
    ep.onAccept = (c) => {
      const ticket = this.gate.admit(sourceOfHostPort(c.remoteAddress), () => {});
      if (!ticket || !ticket.promote()) {
        this.overCap++;
        void c.close();
        return;
      }
      void c.closed.then(() => ticket.release(), () => ticket.release());
      this.queue.push(c);
    };
  }

  accept(): Promise<Connection | null> {
    return this.queue.shift();
  }

  /** The listening socket for hole punching (the NAT mapping peers reach us at). */
  punchSocket(): PunchSocket | undefined {
    return this.ep.isClosed ? undefined : this.ep.punchSocket();
  }

  /** Handshakes that got no connection: refused identity, or past the per-source cap. */
  get failedHandshakes(): number {
    return this.ep.refusedIdentities + this.overCap;
  }
  private overCap = 0;

  stats(): QuicEndpointStats | undefined {
    return this.ep.stats();
  }

  /** Stops accepting and closes every connection accepted here (they share its UDP socket). */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.queue.closeAndDrain();
      this.ep.close();
      this.onClose(this);
    })();
    return this.closing;
  }
}

export class Ngtcp2Transport implements Transport {
  readonly name = 'quic' as const;
  private readonly opts: Resolved;
  private readonly clients = new Map<4 | 6, Endpoint>();
  private readonly listeners = new Set<NgListener>();
  private isClosed = false;

  /** Why this transport cannot run here (missing Debian packages, ...), or undefined. */
  static unavailableReason(): string | undefined {
    return ngtcp2UnavailableReason();
  }

  private readonly identity: Identity;
  constructor(
    identity: Identity,
    opts: Ngtcp2TransportOptions = {},
  ) {
    this.identity = identity;
    const why = ngtcp2UnavailableReason();
    if (why) throw new QuicmapError('ENOTSUP', why);
    this.opts = { ...NGTCP2_DEFAULTS, ...opts };
    if (!CC_NAMES.includes(this.opts.cc)) throw new QuicmapError('EINVAL', `unknown congestion control "${String(this.opts.cc)}" (use ${CC_NAMES.join(', ')})`);
    if (this.opts.keepAliveMs >= this.opts.idleTimeoutMs) {
      throw new QuicmapError('EINVAL', 'keepAliveMs must be below idleTimeoutMs, or idle connections drop');
    }
  }

  async listen(address: string): Promise<Listener> {
    if (this.isClosed) throw new ClosedError('transport');
    const { host, port } = parseHostPort(address);
    const ip = await resolveHost(host);
    const ep = new Endpoint(this.identity, ip, port, true, this.opts);
    const l = new NgListener(ep, formatHostPort(ip, ep.port), (x) => this.listeners.delete(x), this.opts.maxConnections, this.opts.maxConnectionsPerSource);
    this.listeners.add(l);
    return l;
  }

  async dial(address: string, expectedPublicKey: Uint8Array, opts: { timeoutMs?: number } = {}): Promise<Connection> {
    if (this.isClosed) throw new ClosedError('transport');
    if (expectedPublicKey.length !== 32) throw new QuicmapError('EINVAL', 'expected key must be a 32-byte Ed25519 public key');
    const { host, port } = parseHostPort(address);
    const ip = await resolveHost(host);
    const ep = this.client(isIP(ip) === 6 ? 6 : 4);
    return ep.dial(ip, port, expectedPublicKey, address, opts.timeoutMs ?? this.opts.dialTimeoutMs);
  }

  /** The dialing endpoint of a family (one UDP socket for every dial), opened on first use. */
  private client(family: 4 | 6): Endpoint {
    let ep = this.clients.get(family);
    if (!ep) {
      ep = new Endpoint(this.identity, family === 6 ? '::' : '0.0.0.0', 0, false, this.opts);
      this.clients.set(family, ep);
    }
    return ep;
  }

  /**
   * The socket `dial` sends from, for hole punching: a punch from it, then a
   * dial, use one NAT mapping (the one a relay observed).
   */
  dialerPunchSocket(family: 4 | 6): PunchSocket | undefined {
    if (this.isClosed) return undefined;
    return this.client(family).punchSocket();
  }

  /** Counters of the dialing endpoints (datagrams, sizes, sendmsg calls), for benchmarks. */
  stats(): Record<string, QuicEndpointStats | undefined> {
    return Object.fromEntries([...this.clients].map(([f, ep]) => [`ipv${f}`, ep.stats()]));
  }

  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    await Promise.all([...this.listeners].map((l) => l.close()));
    for (const ep of this.clients.values()) ep.close();
    this.clients.clear();
  }
}

async function resolveHost(host: string): Promise<string> {
  if (isIP(host)) return host;
  try {
    return (await lookup(host)).address;
  } catch (e) {
    throw new QuicmapError('EINVAL', `cannot resolve ${host}`, { cause: e });
  }
}
