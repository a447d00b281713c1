/**
 * TCP transport: node:net + TLS 1.3 (node:tls, OpenSSL) + our multiplexer.
 *
 *   socket -> secureDuplex (secure-channel.ts: TLS 1.3, mutual, Ed25519
 *             identities bound into self-signed certificates, libp2p style)
 *          -> FrameLink (batches of mux frames) -> MuxSession (streams)
 *
 * A dial fails with EACCES when the listener proves another key than the one
 * dialed. The listener runs each handshake under a deadline and admits
 * sockets through an AdmissionGate (base/admission.ts): handshakes in
 * progress are capped in total and per source address, and when full a
 * newcomer evicts the oldest handshake of the fullest source, so junk,
 * silent or slow clients cost it little and never lock real peers out;
 * connections are capped per source too.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { Connection, Listener, Transport } from './transport.ts';
import type { Identity } from '../crypto/identity.ts';
import type { Duplex } from 'node:stream';
import { ClosedError, QuicmapError } from '../base/errors.ts';
import { AsyncQueue } from '../base/async-queue.ts';
import { AdmissionGate, sourceOf } from '../base/admission.ts';
import { FrameLink, duplexIO } from './frame-link.ts';
import { MuxSession, type MuxOptions } from './mux.ts';
import { secureDuplex, tlsError, type ChannelRole, type SecureChannel } from './secure-channel.ts';
import { formatHostPort, parseHostPort } from './util.ts';

export interface TcpTransportOptions extends MuxOptions {
  /** A handshake must complete within this. Default 5 000 ms. */
  handshakeTimeoutMs?: number;
  /** Default deadline for dial() (connect + handshake). Default 10 000 ms. */
  dialTimeoutMs?: number;
  /** Handshakes a listener runs at once (when full, a newcomer evicts the oldest of the fullest source). Default 64. */
  maxPendingHandshakes?: number;
  /** Handshakes in progress from one source address. Default 8. */
  maxPendingPerSource?: number;
  /** Connections a listener keeps, in total and per source address. Defaults 1024 and 128. */
  maxConnections?: number;
  maxConnectionsPerSource?: number;
  /** Bytes queued in a socket before data writers wait. Default 1 MiB. */
  sendHighWater?: number;
}

type Resolved = Required<Omit<TcpTransportOptions, keyof MuxOptions>> & { mux: MuxOptions; opts: TcpTransportOptions };

function resolve(opts: TcpTransportOptions): Resolved {
  const { handshakeTimeoutMs, dialTimeoutMs, maxPendingHandshakes, maxPendingPerSource, maxConnections, maxConnectionsPerSource, sendHighWater, ...mux } = opts;
  return {
    opts,
    handshakeTimeoutMs: handshakeTimeoutMs ?? 5_000,
    dialTimeoutMs: dialTimeoutMs ?? 10_000,
    maxPendingHandshakes: maxPendingHandshakes ?? 64,
    maxPendingPerSource: maxPendingPerSource ?? 8,
    maxConnections: maxConnections ?? 1024,
    maxConnectionsPerSource: maxConnectionsPerSource ?? 128,
    sendHighWater: sendHighWater ?? 1024 * 1024,
    mux,
  };
}

/**
 * The mux over a secured duplex: what both ends of a TCP connection (and any
 * relay running an end-to-end channel over another stream) build once the
 * TLS handshake and identity check are done.
 */
export function muxOverChannel(ch: SecureChannel, remoteAddress: string, isDialer: boolean, opts: TcpTransportOptions = {}): MuxSession {
  const o = resolve(opts);
  const link = new FrameLink(duplexIO(ch.socket, (e) => tlsError(e, 'link')), o.sendHighWater);
  return new MuxSession(link, ch.remotePublicKey, remoteAddress, isDialer, o.mux);
}

/**
 * `secureDuplex` + `muxOverChannel`: a Connection over any Duplex (e.g. a
 * relayed stream wrapped with `byteStreamDuplex`), authenticated end to end.
 */
export async function secureConnection(
  duplex: Duplex,
  identity: Identity,
  expected: Uint8Array | null,
  role: ChannelRole,
  remoteAddress: string,
  opts: TcpTransportOptions = {},
): Promise<Connection> {
  const ch = await secureDuplex(duplex, identity, expected, role, { timeoutMs: resolve(opts).handshakeTimeoutMs });
  return muxOverChannel(ch, remoteAddress, role === 'client', opts);
}

class TcpListener implements Listener {
  readonly queue = new AsyncQueue<MuxSession>((c) => void c.close());
  private readonly accepted = new Set<MuxSession>();
  private readonly handshaking = new Set<Socket>();
  private readonly gate: AdmissionGate;
  private closing: Promise<void> | undefined;
  address = '';
  /** Handshakes that failed (junk, timeouts, bad signatures); for tests and metrics. */
  failedHandshakes = 0;

  private readonly server: Server;

  private readonly me: Identity;

  private readonly o: Resolved;

  private readonly onClose: (l: TcpListener) => void;

  constructor(
    server: Server,
    me: Identity,
    o: Resolved,
    onClose: (l: TcpListener) => void,) {
    this.server = server;

    this.me = me;

    this.o = o;

    this.onClose = onClose;
    this.gate = new AdmissionGate({
      maxPending: o.maxPendingHandshakes,
      maxPendingPerSource: Math.min(o.maxPendingPerSource, o.maxPendingHandshakes),
      maxActive: o.maxConnections,
      maxActivePerSource: Math.min(o.maxConnectionsPerSource, o.maxConnections),
    });
    server.on('connection', (s) => void this.onSocket(s));
    // A listening server only errors on accept failures (e.g. EMFILE); it keeps listening.
    server.on('error', () => {});
  }

  private async onSocket(socket: Socket): Promise<void> {
    if (this.queue.isEnded) {
      socket.destroy();
      return;
    }
    // Admission happens here, on the accepted socket, whatever handshake follows.
    const ticket = this.gate.admit(sourceOf(socket.remoteAddress), () => socket.destroy());
    if (!ticket) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    // Errors surface through 'close' (handshake reader, link); this listener
    // only keeps an error emitted between those two from crashing the process.
    socket.on('error', () => {});
    this.handshaking.add(socket);
    try {
      const ch = await secureDuplex(socket, this.me, null, 'server', { timeoutMs: this.o.handshakeTimeoutMs });
      if (this.queue.isEnded) throw new ClosedError('listener');
      if (!ticket.promote()) throw new QuicmapError('EBUSY', 'too many connections from this address');
      const conn = muxOverChannel(ch, formatHostPort(socket.remoteAddress ?? '?', socket.remotePort ?? 0), false, this.o.opts);
      this.accepted.add(conn);
      void conn.closed.then(() => {
        this.accepted.delete(conn);
        ticket.release();
      });
      this.queue.push(conn);
    } catch {
      this.failedHandshakes++;
      ticket.release();
      socket.destroy();
    } finally {
      this.handshaking.delete(socket);
    }
  }

  accept(): Promise<Connection | null> {
    return this.queue.shift();
  }

  /** Stops accepting and closes the connections accepted here. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.queue.closeAndDrain();
      for (const s of this.handshaking) s.destroy();
      const closed = new Promise<void>((r) => this.server.close(() => r()));
      await Promise.all([...this.accepted].map((c) => c.close()));
      await Promise.race([closed, new Promise((r) => setTimeout(r, 2000).unref())]);
      this.onClose(this);
    })();
    return this.closing;
  }
}

export class TcpTransport implements Transport {
  readonly name = 'tcp' as const;
  private readonly o: Resolved;
  private readonly listeners = new Set<TcpListener>();
  private readonly connections = new Set<MuxSession>();
  private isClosed = false;

  private readonly identity: Identity;

  constructor(
    identity: Identity,
    opts: TcpTransportOptions = {}) {
    this.identity = identity;
    this.o = resolve(opts);
  }

  async listen(address: string): Promise<Listener> {
    if (this.isClosed) throw new ClosedError('transport');
    const { host, port } = parseHostPort(address);
    const server = createServer({ noDelay: true, pauseOnConnect: false });
    await new Promise<void>((resolve, reject) => {
      const onError = (e: Error) => reject(new QuicmapError('EIO', `cannot listen on ${address}: ${e.message}`, { cause: e }));
      server.once('error', onError);
      server.listen({ host, port }, () => {
        server.off('error', onError);
        resolve();
      });
    });
    const l = new TcpListener(server, this.identity, this.o, (x) => this.listeners.delete(x));
    const a = server.address();
    l.address = a && typeof a === 'object' ? formatHostPort(a.address, a.port) : address;
    this.listeners.add(l);
    return l;
  }

  async dial(address: string, expectedPublicKey: Uint8Array, opts: { timeoutMs?: number } = {}): Promise<Connection> {
    if (this.isClosed) throw new ClosedError('transport');
    const { host, port } = parseHostPort(address);
    const socket = connect({ host, port, noDelay: true });
    socket.on('error', () => {}); // see onSocket: errors surface through 'close'
    const ms = opts.timeoutMs ?? this.o.dialTimeoutMs;
    const t0 = Date.now();
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new QuicmapError('ETIMEDOUT', `dial ${address}: no connection within ${ms} ms`)), ms);
        socket.once('connect', () => {
          clearTimeout(timer);
          socket.setNoDelay(true);
          resolve();
        });
        socket.once('error', (e) => {
          clearTimeout(timer);
          reject(new QuicmapError('EIO', `dial ${address}: ${e.message}`, { cause: e }));
        });
      });
      const ch = await secureDuplex(socket, this.identity, expectedPublicKey, 'client', {
        timeoutMs: Math.max(1, Math.min(this.o.handshakeTimeoutMs, ms - (Date.now() - t0))),
      });
      if (this.isClosed) {
        ch.socket.destroy();
        throw new ClosedError('transport');
      }
      const conn = muxOverChannel(ch, formatHostPort(socket.remoteAddress ?? host, socket.remotePort ?? port), true, this.o.opts);
      this.connections.add(conn);
      void conn.closed.then(() => this.connections.delete(conn));
      return conn;
    } catch (e) {
      socket.destroy();
      if (e instanceof QuicmapError) throw e.code === 'EACCES' ? new QuicmapError('EACCES', `dial ${address}: ${e.message}`, { cause: e }) : e;
      throw new QuicmapError('EIO', `dial ${address}: ${(e as Error).message}`, { cause: e });
    }
  }

  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    await Promise.all([...this.listeners].map((l) => l.close()));
    await Promise.all([...this.connections].map((c) => c.close()));
  }
}
