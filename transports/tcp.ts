/**
 * TCP transport: node:net + our own security and multiplexing, for LANs and
 * as the baseline QUIC is compared against.
 *
 *   socket -> handshake (crypto/handshake.ts: SIGMA-I, Ed25519 + X25519)
 *          -> SecureLink (AES-256-GCM records, implicit counter nonces)
 *          -> MuxSession (streams with per-stream flow control)
 *
 * The dialer checks the key the listener proves before revealing its own
 * identity; a mismatch fails the dial with EACCES. The listener runs each
 * handshake under a deadline and admits sockets through an AdmissionGate
 * (base/admission.ts): handshakes in progress are capped in total and per
 * source address, and when full a newcomer evicts the oldest handshake of
 * the fullest source, so junk, silent or slow clients cost it little and
 * never lock real peers out; connections are capped per source too.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { Connection, Listener, Transport } from './transport.ts';
import type { Identity } from '../crypto/identity.ts';
import { ClosedError, QuicmapError } from '../base/errors.ts';
import {
  FINISH_BYTES,
  HELLO_BYTES,
  HandshakeInitiator,
  HandshakeResponder,
  RESPONSE_BYTES,
  handshakeReady,
  type SessionKeys,
} from '../crypto/handshake.ts';
import { AsyncQueue } from '../base/async-queue.ts';
import { AdmissionGate, sourceOf } from '../base/admission.ts';
import { ByteAccumulator } from './byte-accumulator.ts';
import { MuxSession, type MuxOptions } from './mux.ts';
import { SecureLink } from './secure-link.ts';
import { formatHostPort, parseHostPort } from './util.ts';

export interface TcpTransportOptions extends MuxOptions {
  /** A handshake must complete within this. Default 5 000 ms. */
  handshakeTimeoutMs?: number;
  /** Default deadline for dial() (connect + handshake). Default 10 000 ms. */
  dialTimeoutMs?: number;
  /** Handshakes a listener runs at once (a newcomer evicts the oldest of the fullest source). Default 64. */
  maxPendingHandshakes?: number;
  /** Handshakes at once from one source address. Default 8. */
  maxPendingPerSource?: number;
  /** Authenticated connections a listener keeps, in total and per source address (refused beyond). Defaults 1024 and 128. */
  maxConnections?: number;
  maxConnectionsPerSource?: number;
  /** Bytes queued in a socket before data writers wait. Default 1 MiB. */
  sendHighWater?: number;
}

type Resolved = Required<Omit<TcpTransportOptions, keyof MuxOptions>> & { mux: MuxOptions };

function resolve(opts: TcpTransportOptions): Resolved {
  const { handshakeTimeoutMs, dialTimeoutMs, maxPendingHandshakes, maxPendingPerSource, maxConnections, maxConnectionsPerSource, sendHighWater, ...mux } = opts;
  return {
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
 * Reads fixed-size handshake messages from a socket until the link takes
 * over; then hands over whatever arrived after the last message.
 */
class HandshakeReader {
  private readonly acc = new ByteAccumulator();
  private want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private error: Error | undefined;
  private readonly onData = (b: Buffer) => {
    this.acc.push(b);
    this.check();
  };
  private readonly onEnd = () => this.fail(new QuicmapError('EPROTO', 'peer closed the connection during the handshake'));
  private readonly onError = (e: Error) => this.fail(new QuicmapError('EIO', `socket error during handshake: ${e.message}`, { cause: e }));

  constructor(private readonly socket: Socket) {
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onError);
  }

  read(n: number): Promise<Buffer> {
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      this.want = { n, resolve, reject };
      this.check();
    });
  }

  private check(): void {
    const w = this.want;
    if (w && this.acc.length >= w.n) {
      this.want = undefined;
      w.resolve(Buffer.from(this.acc.take(w.n)));
    }
  }

  fail(e: Error): void {
    if (this.error) return;
    this.error = e;
    const w = this.want;
    this.want = undefined;
    w?.reject(e);
  }

  /** Stop listening and return the bytes that came after the handshake. */
  detach(): Buffer[] {
    // Paused first: with no 'data' listener a flowing socket would drop bytes.
    this.socket.pause();
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    this.socket.off('error', this.onError);
    return this.acc.drain();
  }
}

/** Run `work` with a deadline; `work` registers what to fail when it passes (the caller then destroys the socket). */
async function underDeadline<T>(ms: number, what: string, work: (onTimeout: (f: (e: Error) => void) => void) => Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let failer: (e: Error) => void = () => {};
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const e = new QuicmapError('ETIMEDOUT', `${what}: no handshake within ${ms} ms`);
      failer(e);
      reject(e);
    }, ms);
  });
  try {
    return await Promise.race([work((f) => (failer = f)), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function respond(socket: Socket, me: Identity, onTimeout: (f: (e: Error) => void) => void): Promise<{ keys: SessionKeys; leftover: Buffer[] }> {
  const reader = new HandshakeReader(socket);
  onTimeout((e) => reader.fail(e));
  try {
    const hs = new HandshakeResponder(me);
    socket.write(hs.respond(await reader.read(HELLO_BYTES)));
    const keys = hs.finish(await reader.read(FINISH_BYTES));
    return { keys, leftover: reader.detach() };
  } catch (e) {
    reader.detach();
    throw e;
  }
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

  constructor(
    private readonly server: Server,
    private readonly me: Identity,
    private readonly o: Resolved,
    private readonly onClose: (l: TcpListener) => void,
  ) {
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
      const { keys, leftover } = await underDeadline(this.o.handshakeTimeoutMs, 'accept', (onTimeout) => respond(socket, this.me, onTimeout));
      if (this.queue.isEnded) throw new ClosedError('listener');
      if (!ticket.promote()) throw new QuicmapError('EBUSY', 'too many connections from this address');
      const link = new SecureLink(socket, keys, leftover, this.o.sendHighWater);
      const conn = new MuxSession(link, keys.remotePublicKey, formatHostPort(socket.remoteAddress ?? '?', socket.remotePort ?? 0), false, this.o.mux);
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

  constructor(
    private readonly identity: Identity,
    opts: TcpTransportOptions = {},
  ) {
    this.o = resolve(opts);
  }

  async listen(address: string): Promise<Listener> {
    if (this.isClosed) throw new ClosedError('transport');
    await handshakeReady();
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
    await handshakeReady();
    const { host, port } = parseHostPort(address);
    const socket = connect({ host, port, noDelay: true });
    socket.on('error', () => {}); // see onSocket: errors surface through 'close'
    const ms = opts.timeoutMs ?? this.o.dialTimeoutMs;
    try {
      const { keys, leftover } = await underDeadline(ms, `dial ${address}`, async (setFail) => {
        await new Promise<void>((resolve, reject) => {
          setFail(reject);
          socket.once('connect', () => {
            socket.setNoDelay(true);
            resolve();
          });
          socket.once('error', (e) => reject(new QuicmapError('EIO', `dial ${address}: ${e.message}`, { cause: e })));
        });
        const reader = new HandshakeReader(socket);
        setFail((e) => reader.fail(e));
        try {
          const hs = new HandshakeInitiator(this.identity, expectedPublicKey);
          socket.write(hs.start());
          const { message, keys } = hs.finish(await reader.read(RESPONSE_BYTES));
          socket.write(message);
          return { keys, leftover: reader.detach() };
        } catch (e) {
          reader.detach();
          throw e;
        }
      });
      if (this.isClosed) throw new ClosedError('transport');
      const link = new SecureLink(socket, keys, leftover, this.o.sendHighWater);
      const conn = new MuxSession(link, keys.remotePublicKey, formatHostPort(socket.remoteAddress ?? host, socket.remotePort ?? port), true, this.o.mux);
      this.connections.add(conn);
      void conn.closed.then(() => this.connections.delete(conn));
      return conn;
    } catch (e) {
      socket.destroy();
      if (e instanceof QuicmapError) throw e;
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
