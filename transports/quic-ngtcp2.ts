/**
 * The `quic` transport on quicmap's own QUIC data path (ngtcp2 + GnuTLS,
 * ngtcp2.ts), speaking exactly what QuicTransport (quic.ts, the
 * @chainsafe/libp2p-quic library) speaks on the wire: one long-lived QUIC
 * stream per connection, opened by the dialer, with our multiplexer (mux.ts)
 * over it. So a node on either implementation dials and accepts the other
 * (same ALPN, certificates and carrier), tickets and endpoint lists just say
 * `quic`, and the semantics above the interface (stream limits, windows,
 * keep-alive, open timeouts) are the mux's in both.
 *
 * Which implementation `quic` means is decided in quic-choice.ts.
 *
 * Memory per connection: the mux's `connectionWindow` of received data not
 * yet read (the carrier is read eagerly, its native credit returned as soon
 * as JS has the bytes), `sendHighWater` queued in JS, and what the native
 * layer holds until the peer acknowledges it (at most the carrier window).
 * Per listener: `maxConnections` of those, and `maxPendingHandshakes`
 * handshakes (fair per source, ngtcp2.ts / native/src/quic.cc).
 */
import type { ByteStream, Connection, Listener, Transport } from './transport.ts';
import type { Identity } from '../crypto/identity.ts';
import { ClosedError, QuicmapError } from '../base/errors.ts';
import { AsyncQueue } from '../base/async-queue.ts';
import { withDeadline } from '../base/deadline.ts';
import { FrameLink, type LinkIO, type LinkIOEvents } from './frame-link.ts';
import { MuxSession } from './mux.ts';
import { Ngtcp2Transport, type Ngtcp2Connection, type Ngtcp2Listener } from './ngtcp2.ts';
import type { QuicEndpointStats } from '../native/quic.ts';
import type { PunchListener, PunchSocket, PunchTransport } from './udp-punch.ts';

export interface QuicNgtcp2Options {
  /** Drop a connection after this long without a packet from the peer. Default 15 000 ms. */
  idleTimeoutMs?: number;
  /** Keep-alive after this much quiet; below the idle timeout. Default 4 000 ms. */
  keepAliveMs?: number;
  /** Limit on the handshake and on the peer opening its carrier stream. Default 5 000 ms. */
  handshakeTimeoutMs?: number;
  /** Default deadline of dial(). Default 10 000 ms. */
  dialTimeoutMs?: number;
  /** openStream() fails with ETIMEDOUT when the peer grants no mux stream within this. Default 10 000 ms. */
  streamOpenTimeoutMs?: number;
  /** Mux streams the peer may keep open towards us (>= 16). Default 256. */
  maxStreams?: number;
  /** Mux receive window per stream (>= 64 KiB). Default 8 MiB. */
  streamWindow?: number;
  /** Mux receive window per connection (>= 1 MiB). Default 16 MiB. */
  connectionWindow?: number;
  /** UDP socket buffers. Default 4 MiB. */
  udpBufferBytes?: number;
  /** Bytes queued in JS for the carrier before data writers wait. Default 2 MiB. */
  sendHighWater?: number;
  /** Handshakes a listener runs at once, and per source (its own oldest is evicted beyond). Defaults 64 and 8. */
  maxPendingHandshakes?: number;
  maxPendingPerSource?: number;
  /** Connections a listener keeps, in total and per source address. Defaults 1024 and 128. */
  maxConnections?: number;
  maxConnectionsPerSource?: number;
}

type Resolved = Required<QuicNgtcp2Options>;

export const QUIC_NGTCP2_DEFAULTS: Readonly<Resolved> = {
  idleTimeoutMs: 15_000,
  keepAliveMs: 4_000,
  handshakeTimeoutMs: 5_000,
  dialTimeoutMs: 10_000,
  streamOpenTimeoutMs: 10_000,
  maxStreams: 256,
  streamWindow: 8 * 1024 * 1024,
  connectionWindow: 16 * 1024 * 1024,
  udpBufferBytes: 4 * 1024 * 1024,
  sendHighWater: 2 * 1024 * 1024,
  maxPendingHandshakes: 64,
  maxPendingPerSource: 8,
  maxConnections: 1024,
  maxConnectionsPerSource: 128,
};

/** Native streams per connection: the carrier, and a spare so a racing extra never blocks it. */
const NATIVE_STREAMS = 2;

/** The carrier's native windows: the mux's whole connection window plus batches in flight (as quic.ts). */
function carrierWindow(o: Resolved): number {
  return o.connectionWindow + 4 * 1024 * 1024;
}

/** Pieces below this are copied together, so a batch of small frames costs one native write, not one per frame. */
const SMALL = 16 * 1024;

function coalesce(bufs: readonly Uint8Array[]): readonly Uint8Array[] {
  if (bufs.length < 2) return bufs;
  const out: Uint8Array[] = [];
  let run: Uint8Array[] = [];
  const flush = () => {
    if (run.length) out.push(run.length === 1 ? run[0]! : Buffer.concat(run));
    run = [];
  };
  for (const b of bufs) {
    if (b.length < SMALL) run.push(b);
    else {
      flush();
      out.push(b);
    }
  }
  flush();
  return out;
}

/**
 * A carrier stream as a LinkIO: read eagerly (each read returns native
 * credit), writes handed over in order through the stream's own queue;
 * `queuedBytes` is what the native layer has not taken yet.
 */
class CarrierIO implements LinkIO {
  queuedBytes = 0;
  private ev: LinkIOEvents | undefined;
  private gone = false;
  private readonly conn: Ngtcp2Connection;
  private readonly stream: ByteStream;
  constructor(conn: Ngtcp2Connection, stream: ByteStream) {
    this.conn = conn;
    this.stream = stream;
  }

  start(ev: LinkIOEvents): void {
    this.ev = ev;
    void this.readLoop();
    void this.conn.closed.then(() => {
      if (!this.gone) ev.onError(this.conn.closeReason);
    });
  }

  private async readLoop(): Promise<void> {
    try {
      for (;;) {
        const c = await this.stream.read();
        if (this.gone) return;
        if (c === null) return this.ev!.onEnd();
        this.ev!.onBytes(Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength));
      }
    } catch (e) {
      if (!this.gone) this.ev!.onError(e instanceof QuicmapError ? e : new QuicmapError('EIO', `quic carrier: ${(e as Error).message}`, { cause: e }));
    }
  }

  write(bufs: readonly Uint8Array[]): void {
    if (this.gone) return;
    let n = 0;
    for (const b of bufs) n += b.length;
    if (!n) return;
    this.queuedBytes += n;
    this.stream.write(coalesce(bufs)).then(
      () => {
        this.queuedBytes -= n;
        this.ev?.onDrain();
      },
      () => {}, // the connection's end reports the error
    );
  }

  end(): void {
    if (!this.gone) this.stream.closeWrite().catch(() => {});
  }

  destroy(): void {
    if (this.gone) return;
    this.gone = true;
    void this.conn.close();
  }
}

function carrierSession(conn: Ngtcp2Connection, stream: ByteStream, isDialer: boolean, o: Resolved): MuxSession {
  const session = new MuxSession(new FrameLink(new CarrierIO(conn, stream), o.sendHighWater), conn.remotePublicKey, conn.remoteAddress, isDialer, {
    maxStreams: o.maxStreams,
    streamWindow: o.streamWindow,
    connectionWindow: o.connectionWindow,
    streamOpenTimeoutMs: o.streamOpenTimeoutMs,
    keepAliveMs: o.keepAliveMs,
    idleTimeoutMs: o.idleTimeoutMs,
  });
  session.rttSource = () => conn.rttMs;
  return session;
}

class CarrierListener implements Listener, PunchListener {
  private readonly queue = new AsyncQueue<MuxSession>((c) => void c.close());
  private closing: Promise<void> | undefined;
  /** Connections dropped before being handed out (no carrier in time, refused identity, admission); for tests and metrics. */
  get failedHandshakes(): number {
    return this.inner.failedHandshakes + this.noCarrier;
  }
  private noCarrier = 0;

  private readonly inner: Ngtcp2Listener;
  private readonly opts: Resolved;
  private readonly onClose: (l: CarrierListener) => void;
  constructor(inner: Ngtcp2Listener, opts: Resolved, onClose: (l: CarrierListener) => void) {
    this.inner = inner;
    this.opts = opts;
    this.onClose = onClose;
    void this.acceptLoop();
  }

  get address(): string {
    return this.inner.address;
  }

  private async acceptLoop(): Promise<void> {
    for (let c; (c = (await this.inner.accept()) as Ngtcp2Connection | null); ) void this.admit(c);
    this.queue.closeAndDrain();
  }

  /** Wait (bounded) for the dialer's carrier stream, then hand out the mux over it. */
  private async admit(c: Ngtcp2Connection): Promise<void> {
    try {
      const stream = await withDeadline(c.acceptStream(), this.opts.handshakeTimeoutMs, 'accept', {
        error: () => new QuicmapError('ETIMEDOUT', `peer opened no stream within ${this.opts.handshakeTimeoutMs} ms`),
      });
      if (!stream || this.queue.isEnded) throw new ClosedError('listener');
      const session = carrierSession(c, stream, false, this.opts);
      this.queue.push(session);
      // A second native stream is never used: refuse any.
      void (async () => {
        for (let extra; (extra = await c.acceptStream()); ) extra.reset();
      })();
    } catch {
      this.noCarrier++;
      void c.close();
    }
  }

  accept(): Promise<Connection | null> {
    return this.queue.shift();
  }

  stats(): QuicEndpointStats | undefined {
    return this.inner.stats();
  }

  /** The listening UDP socket, for hole punching through a relay (udp-punch.ts). */
  punchSocket(): PunchSocket | undefined {
    return this.inner.punchSocket();
  }

  /** Stops accepting and closes every connection accepted here (they share its UDP socket). */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.queue.closeAndDrain();
      await this.inner.close();
      this.onClose(this);
    })();
    return this.closing;
  }
}

export class QuicNgtcp2Transport implements Transport, PunchTransport {
  readonly name = 'quic' as const;
  /** Which implementation this is (quic-choice.ts). */
  readonly implementation = 'ngtcp2' as const;
  private readonly opts: Resolved;
  private readonly native: Ngtcp2Transport;
  private readonly listeners = new Set<CarrierListener>();
  private readonly sessions = new Set<MuxSession>();
  private isClosed = false;

  /** Why this transport cannot run here (the addon's QUIC part is missing, ...), or undefined. */
  static unavailableReason(): string | undefined {
    return Ngtcp2Transport.unavailableReason();
  }

  constructor(identity: Identity, opts: QuicNgtcp2Options = {}) {
    this.opts = { ...QUIC_NGTCP2_DEFAULTS, ...opts };
    const w = carrierWindow(this.opts);
    this.native = new Ngtcp2Transport(identity, {
      idleTimeoutMs: this.opts.idleTimeoutMs,
      keepAliveMs: this.opts.keepAliveMs,
      handshakeTimeoutMs: this.opts.handshakeTimeoutMs,
      dialTimeoutMs: this.opts.dialTimeoutMs,
      maxStreams: NATIVE_STREAMS,
      streamWindow: w,
      connectionWindow: w + 1024 * 1024,
      // The carrier may fill the peer's whole window before waiting for acknowledgements.
      sendHighWater: w,
      udpBufferBytes: this.opts.udpBufferBytes,
      maxPendingHandshakes: this.opts.maxPendingHandshakes,
      maxPendingPerSource: this.opts.maxPendingPerSource,
      maxConnections: this.opts.maxConnections,
      maxConnectionsPerSource: this.opts.maxConnectionsPerSource,
    });
  }

  async listen(address: string): Promise<Listener> {
    if (this.isClosed) throw new ClosedError('transport');
    const inner = (await this.native.listen(address)) as Ngtcp2Listener;
    const l = new CarrierListener(inner, this.opts, (x) => this.listeners.delete(x));
    this.listeners.add(l);
    return l;
  }

  async dial(address: string, expectedPublicKey: Uint8Array, opts: { timeoutMs?: number } = {}): Promise<Connection> {
    if (this.isClosed) throw new ClosedError('transport');
    const c = (await this.native.dial(address, expectedPublicKey, opts)) as Ngtcp2Connection;
    try {
      // The first stream of the connection (stream credit is there from the handshake): no wait.
      const stream = await c.openStream();
      if (this.isClosed) throw new ClosedError('transport');
      // The mux writes its SETTINGS at once, which shows the stream to the listener.
      const s = carrierSession(c, stream, true, this.opts);
      this.sessions.add(s);
      void s.closed.then(() => this.sessions.delete(s));
      return s;
    } catch (e) {
      void c.close();
      throw e;
    }
  }

  /** Counters of the dialing endpoints, for benchmarks. */
  stats(): Record<string, QuicEndpointStats | undefined> {
    return this.native.stats();
  }

  /** The socket dial() sends from, for hole punching (udp-punch.ts). */
  dialerPunchSocket(family: 4 | 6): PunchSocket | undefined {
    return this.isClosed ? undefined : this.native.dialerPunchSocket(family);
  }

  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    await Promise.all([...this.listeners].map((l) => l.close()));
    await Promise.all([...this.sessions].map((s) => s.close()));
    await this.native.close();
  }
}
