/**
 * WebTransport transport: @fails-components/webtransport in its HTTP/2 mode
 * (pure JavaScript: WebTransport sessions as extended-CONNECT streams of an
 * HTTP/2 connection over node:tls), for peers reachable only over HTTPS/TCP.
 *
 *   TLS (self-signed certificate, not checked)
 *     -> HTTP/2 -> WebTransport session (CONNECT /quicmap/v1)
 *       -> stream 1: identity handshake (crypto/handshake.ts) + channel binding
 *       -> streams 2..: the Connection's streams, one WebTransport
 *          bidirectional stream each
 *
 * Identity: HTTP/2 needs a real certificate and its client cannot pin a
 * hash it does not know yet, so the certificate proves nothing. The peers
 * prove their Ed25519 identities inside the session with the SIGMA-I
 * handshake of crypto/handshake.ts (the dialer checks the listener's key
 * before revealing its own; a wrong key is EACCES), then each side sends
 * HMAC(its handshake key, sessionHash ‖ TLS exporter) and checks the
 * other's: a man in the middle terminating TLS on both sides has two
 * different exporters and cannot forge either MAC, so the TLS session that
 * carries the data is the one the authenticated peer holds. Data is then
 * protected by TLS alone (no second record layer).
 *
 * Library bugs worked around (1.6.8, see transports/README.md; two more in
 * webtransport-lib.ts: unbounded receive buffering, stream credit never
 * returned). The 16 KiB stall: the server
 * advertises `initialSessionFlowControlWindow` (default 16 KiB) but, without
 * a request callback, builds its session with a receive offset of
 * `sessionFlowControlWindowSizeLimit` (15 MiB), so it never grants more and
 * every session stalls after 16 KiB. We pass both equal.
 *
 * HTTP/3 (browsers as peers) would use the library's Http3Server/HttpServer
 * with this same certificate (ECDSA P-256, ≤ 14 days: browsers can pin its
 * hash) once its native part installs; the handshake stream and stream
 * mapping stay as they are, so nothing above this file changes.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Http2Session, ServerHttp2Session } from 'node:http2';
import type { TLSSocket } from 'node:tls';
import type { ByteStream, Connection, Listener, Transport } from './transport.ts';
import type { Identity } from '../crypto/identity.ts';
import { createTlsCertificate } from '../crypto/tls-certificate.ts';
import {
  FINISH_BYTES,
  HELLO_BYTES,
  HandshakeInitiator,
  HandshakeResponder,
  RESPONSE_BYTES,
  handshakeReady,
  type SessionKeys,
} from '../crypto/handshake.ts';
import { ClosedError, QuicmapError } from '../base/errors.ts';
import { AsyncQueue } from '../base/async-queue.ts';
import { ByteAccumulator } from './byte-accumulator.ts';
import { formatHostPort, parseHostPort } from './util.ts';
import { http2ServerOf, http2SessionOf, loadWebTransport, patchLibraryStreams, type WtBidiStream, type WtLibrary, type WtReader, type WtServer, type WtSession, type WtWriter } from './webtransport-lib.ts';

export interface WebTransportOptions {
  /** Identity handshake (and, when dialing, TLS + HTTP/2 + CONNECT) must finish within this. Default 5 000 ms. */
  handshakeTimeoutMs?: number;
  /** Default deadline for dial(). Default 10 000 ms. */
  dialTimeoutMs?: number;
  /** Sessions a listener authenticates at once; more are refused. Default 64. */
  maxPendingHandshakes?: number;
  /** openStream() fails with ETIMEDOUT after waiting this long for a stream slot. Default 10 000 ms. */
  streamOpenTimeoutMs?: number;
  /** Streams the peer may open (initial WebTransport MAX_STREAMS). Default 256. */
  maxStreams?: number;
  /** Receive window per stream, bytes. Default 4 MiB. */
  streamWindow?: number;
  /** Receive window per session, bytes (advertised in full from the start: see the header). Default 16 MiB. */
  sessionWindow?: number;
  /** Bytes a stream's writer may have queued in the library before write() waits. Default 256 KiB. */
  sendHighWater?: number;
  /** HTTP/2 PING after this much time. Default 4 000 ms. */
  keepAliveMs?: number;
  /** Drop the connection when no PING was answered for this long. Default 15 000 ms. */
  idleTimeoutMs?: number;
}

type Resolved = Required<WebTransportOptions>;

function resolve(o: WebTransportOptions): Resolved {
  const r: Resolved = {
    handshakeTimeoutMs: o.handshakeTimeoutMs ?? 5_000,
    dialTimeoutMs: o.dialTimeoutMs ?? 10_000,
    maxPendingHandshakes: o.maxPendingHandshakes ?? 64,
    streamOpenTimeoutMs: o.streamOpenTimeoutMs ?? 10_000,
    maxStreams: o.maxStreams ?? 256,
    streamWindow: o.streamWindow ?? 4 * 1024 * 1024,
    sessionWindow: o.sessionWindow ?? 16 * 1024 * 1024,
    sendHighWater: o.sendHighWater ?? 256 * 1024,
    keepAliveMs: o.keepAliveMs ?? 4_000,
    idleTimeoutMs: o.idleTimeoutMs ?? 15_000,
  };
  if (r.keepAliveMs >= r.idleTimeoutMs) throw new QuicmapError('EINVAL', 'keepAliveMs must be below idleTimeoutMs');
  return r;
}

/** The path every quicmap session is opened on (a version in the URL, like ALPN). */
export const SESSION_PATH = '/quicmap/v1';
const EXPORTER_LABEL = 'EXPORTER-quicmap-webtransport-v1';
const BINDING_LABEL = Buffer.from('quicmap webtransport channel binding v1\0', 'latin1');
const MAC_BYTES = 32;

/**
 * The library's client accepts a certificate only through
 * `serverCertificateHashes`, calling `.some(matches)` on it; this matcher
 * accepts any certificate, since identity is proven inside the session.
 */
const ANY_CERTIFICATE = { some: (): boolean => true };

function libraryWindows(o: Resolved) {
  return {
    initialStreamFlowControlWindow: o.streamWindow,
    streamFlowControlWindowSizeLimit: o.streamWindow,
    // Equal on purpose: the 16 KiB stall (see the header).
    initialSessionFlowControlWindow: o.sessionWindow,
    sessionFlowControlWindowSizeLimit: o.sessionWindow,
  };
}

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** One WebTransport bidirectional stream as a ByteStream. */
class WtByteStream implements ByteStream {
  private readonly reader: WtReader<Uint8Array>;
  private readonly writer: WtWriter;
  private error: QuicmapError | undefined;
  private ended = false;
  private writeClosed = false;
  private pendingRead: ((e: QuicmapError) => void) | undefined;
  private queued = 0;
  private lastWrite: Promise<void> = Promise.resolve();
  private readonly conn: WtConnection;

  constructor(s: WtBidiStream, conn: WtConnection) {
    this.conn = conn;
    this.reader = s.readable.getReader();
    this.writer = s.writable.getWriter();
    // A failed write (reset, session gone) shows on the next call.
    this.writer.ready.catch(() => {});
  }

  read(): Promise<Uint8Array | null> {
    if (this.error) return Promise.reject(this.error);
    if (this.ended) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      this.pendingRead = reject;
      this.reader.read().then(
        (r) => {
          this.pendingRead = undefined;
          if (this.error) return reject(this.error);
          if (r.done) {
            this.ended = true;
            this.conn.untrack(this);
            return resolve(null);
          }
          resolve(r.value);
        },
        (e: unknown) => {
          this.pendingRead = undefined;
          reject(this.fail(this.conn.streamError(e)));
        },
      );
    });
  }

  async write(data: Uint8Array | readonly Uint8Array[]): Promise<void> {
    if (this.error) throw this.error;
    if (this.writeClosed) throw new QuicmapError('EINVAL', 'write after closeWrite');
    const list = data instanceof Uint8Array ? [data] : data;
    for (const b of list) {
      if (b.length === 0) continue;
      this.queued += b.length;
      const n = b.length;
      // The library queues writes in call order and resolves each once its
      // bytes fit the peer's flow-control windows.
      this.lastWrite = this.writer.write(b).then(
        () => void (this.queued -= n),
        (e: unknown) => {
          this.queued -= n;
          throw this.fail(this.conn.streamError(e));
        },
      );
      this.lastWrite.catch(() => {});
    }
    if (this.queued > this.conn.o.sendHighWater) await this.lastWrite;
    if (this.error) throw this.error;
  }

  async closeWrite(): Promise<void> {
    if (this.error) throw this.error;
    if (this.writeClosed) return;
    this.writeClosed = true;
    this.writer.close().catch(() => {});
  }

  reset(reason?: Error): void {
    if (this.error) return;
    this.fail(new QuicmapError('EIO', `stream reset${reason ? `: ${reason.message}` : ''}`, { cause: reason }));
    this.writer.abort().catch(() => {});
    this.reader.cancel().catch(() => {});
  }

  /** Mark the stream dead: pending and later calls reject with `e` (the first error wins). */
  fail(e: QuicmapError): QuicmapError {
    if (!this.error) {
      this.error = e;
      this.conn.untrack(this);
      const r = this.pendingRead;
      this.pendingRead = undefined;
      r?.(e);
    }
    return this.error;
  }
}

/** Reads exact byte counts from a stream (the handshake's fixed-size messages). */
class ExactReader {
  private readonly acc = new ByteAccumulator();
  private readonly s: ByteStream;
  constructor(s: ByteStream) {
    this.s = s;
  }
  async read(n: number): Promise<Buffer> {
    while (this.acc.length < n) {
      const c = await this.s.read();
      if (c === null) throw new QuicmapError('EPROTO', 'peer closed the handshake stream early');
      this.acc.push(Buffer.from(c.buffer, c.byteOffset, c.length));
    }
    return this.acc.take(n);
  }
}

function exporterOf(h2: Http2Session | undefined): Buffer {
  const socket = h2?.socket as TLSSocket | undefined;
  if (!socket || typeof socket.exportKeyingMaterial !== 'function') {
    throw new QuicmapError('EPROTO', 'webtransport: cannot reach the TLS session to bind the identity (library internals changed?)');
  }
  return socket.exportKeyingMaterial(32, EXPORTER_LABEL, Buffer.alloc(0));
}

function bindingMac(key: Uint8Array, keys: SessionKeys, exporter: Uint8Array): Buffer {
  return createHmac('sha256', key).update(BINDING_LABEL).update(keys.sessionHash).update(exporter).digest();
}

function checkBinding(got: Uint8Array, keys: SessionKeys, exporter: Uint8Array): void {
  const want = bindingMac(keys.recvKey, keys, exporter);
  if (got.length !== want.length || !timingSafeEqual(got, want)) {
    throw new QuicmapError('EACCES', 'webtransport: channel binding failed (the TLS session is not the peer\'s own: a proxy or man in the middle?)');
  }
}

class WtConnection implements Connection {
  remotePublicKey: Uint8Array = new Uint8Array(0);
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  private readonly streams = new Set<WtByteStream>();
  private readonly incoming: WtReader<WtBidiStream>;
  private closeError: QuicmapError | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lastPong = Date.now();
  readonly h2: Http2Session | undefined;
  readonly session: WtSession;
  readonly remoteAddress: string;
  readonly o: Resolved;

  constructor(session: WtSession, remoteAddress: string, o: Resolved) {
    this.session = session;
    this.remoteAddress = remoteAddress;
    this.o = o;
    this.closed = new Promise((r) => (this.resolveClosed = r));
    this.incoming = session.incomingBidirectionalStreams.getReader();
    this.h2 = http2SessionOf(session);
    session.closed.then(
      (info) => this.gone(new QuicmapError('ESHUTDOWN', `connection closed by peer${info?.reason ? `: ${info.reason}` : ''}`)),
      (e: unknown) => this.gone(new QuicmapError('EIO', `connection lost: ${describe(e)}`)),
    );
    this.h2?.once('close', () => this.gone(new QuicmapError('EIO', 'connection lost (TLS connection closed)')));
    this.timer = setInterval(() => this.keepAlive(), o.keepAliveMs);
    this.timer.unref();
  }

  get isClosed(): boolean {
    return this.closeError !== undefined;
  }

  private keepAlive(): void {
    if (Date.now() - this.lastPong > this.o.idleTimeoutMs) {
      void this.close(new QuicmapError('ETIMEDOUT', `peer silent for ${this.o.idleTimeoutMs} ms`));
      return;
    }
    try {
      this.h2?.ping((err) => {
        if (!err) this.lastPong = Date.now();
      });
    } catch {
      // Too many unanswered pings, or the session is closing: the idle check decides.
    }
  }

  /** The typed error for a stream failure reported by the library. */
  streamError(e: unknown): QuicmapError {
    if (this.closeError) return this.closeError;
    if (e instanceof QuicmapError) return e;
    return new QuicmapError('EIO', `stream reset by peer (${describe(e)})`, { cause: e });
  }

  wrap(s: WtBidiStream): WtByteStream {
    patchLibraryStreams(this.session);
    const b = new WtByteStream(s, this);
    if (this.closeError) b.fail(this.closeError);
    else this.streams.add(b);
    return b;
  }

  untrack(s: WtByteStream): void {
    this.streams.delete(s);
  }

  /** Open a library stream (the handshake uses this before the connection is handed out). */
  async rawOpen(): Promise<WtByteStream> {
    if (this.closeError) throw this.closeError;
    let timer: NodeJS.Timeout | undefined;
    const opened = this.session.createBidirectionalStream({ waitUntilAvailable: true });
    try {
      const s = await Promise.race([
        opened,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new QuicmapError('ETIMEDOUT', `no stream granted within ${this.o.streamOpenTimeoutMs} ms`)), this.o.streamOpenTimeoutMs);
        }),
      ]);
      return this.wrap(s);
    } catch (e) {
      // A late grant is reset at once.
      opened.then((s) => this.wrap(s).reset(), () => {});
      if (e instanceof QuicmapError) throw this.closeError ?? e;
      throw this.closeError ?? new QuicmapError('ESHUTDOWN', `cannot open a stream: ${describe(e)}`, { cause: e });
    } finally {
      clearTimeout(timer);
    }
  }

  openStream(): Promise<ByteStream> {
    return this.rawOpen();
  }

  async acceptStream(): Promise<ByteStream | null> {
    if (this.closeError) return null;
    try {
      // Never cancel `incoming`: the library closes its controller when the
      // session ends and throws (uncaught, from an event handler) if it was
      // cancelled. Race the end of the connection instead.
      const r = await Promise.race([this.incoming.read(), this.closed.then(() => ({ done: true as const }))]);
      if (r.done || this.closeError) {
        if (!r.done) r.value.readable.getReader().cancel().catch(() => {});
        return null;
      }
      return this.wrap(r.value);
    } catch {
      return null;
    }
  }

  close(reason?: Error): Promise<void> {
    if (!this.closeError) {
      const e = new QuicmapError('ESHUTDOWN', `connection closed${reason ? `: ${reason.message}` : ''}`, { cause: reason });
      try {
        this.session.close({ closeCode: 0, reason: (reason?.message ?? '').slice(0, 200) });
      } catch {
        // already closing
      }
      this.gone(e);
      // The session's CLOSE capsule goes out first; then the TLS connection.
      setTimeout(() => this.h2?.destroy(), 1000).unref();
    }
    return this.closed;
  }

  private gone(e: QuicmapError): void {
    if (this.closeError) return;
    this.closeError = e;
    clearInterval(this.timer);
    for (const s of [...this.streams]) s.fail(e);
    this.streams.clear();
    if (!this.h2?.destroyed) setTimeout(() => this.h2?.destroy(), 1000).unref();
    this.resolveClosed();
  }
}

/** Run `work` under a deadline; on timeout `onTimeout` runs and the promise rejects. */
async function underDeadline<T>(ms: number, what: string, work: Promise<T>, onTimeout: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  work.catch(() => {});
  try {
    return await Promise.race([
      work,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          onTimeout();
          reject(new QuicmapError('ETIMEDOUT', `${what}: not done within ${ms} ms`));
        }, ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

class WtListener implements Listener {
  readonly queue = new AsyncQueue<WtConnection>((c) => void c.close());
  private readonly accepted = new Set<WtConnection>();
  private readonly handshaking = new Set<WtConnection>();
  private closing: Promise<void> | undefined;
  /** Sessions whose handshake failed (junk, timeouts, bad signatures); for tests and metrics. */
  failedHandshakes = 0;
  readonly address: string;
  private readonly server: WtServer;
  private readonly me: Identity;
  private readonly o: Resolved;
  private readonly onClose: (l: WtListener) => void;

  constructor(server: WtServer, address: string, me: Identity, o: Resolved, onClose: (l: WtListener) => void) {
    this.server = server;
    this.address = address;
    this.me = me;
    this.o = o;
    this.onClose = onClose;
    void this.acceptLoop(server.sessionStream(SESSION_PATH).getReader());
    this.guardTls();
  }

  private async acceptLoop(sessions: WtReader<WtSession>): Promise<void> {
    for (;;) {
      let r;
      try {
        r = await sessions.read();
      } catch {
        return;
      }
      if (r.done) return;
      const session = r.value;
      if (this.queue.isEnded || this.handshaking.size >= this.o.maxPendingHandshakes) {
        this.failedHandshakes++;
        try {
          session.close({ closeCode: 1, reason: 'busy' });
        } catch {
          // already gone
        }
        continue;
      }
      void this.admit(session);
    }
  }

  /** Connections (HTTP/2 sessions, or TLS sockets of other protocols) not yet authenticated: each gets handshakeTimeoutMs to open a session and pass the handshake. */
  private readonly unauthenticated = new Set<object>();

  /**
   * The library owns the HTTP/2 server and never times out a client that
   * connects and then sends no CONNECT; bound those here (count and
   * deadline). An HTTP/2 connection must be destroyed through its session
   * (which took over the socket); anything else through its TLS socket.
   */
  private guardTls(): void {
    const h2server = http2ServerOf(this.server);
    if (!h2server) return;
    const track = (conn: { destroy(): void; once(e: 'close', f: () => void): unknown }) => {
      if (this.queue.isEnded || this.unauthenticated.size >= this.o.maxPendingHandshakes) {
        this.failedHandshakes++;
        conn.destroy();
        return;
      }
      this.unauthenticated.add(conn);
      const timer = setTimeout(() => {
        if (!this.unauthenticated.delete(conn)) return;
        this.failedHandshakes++;
        conn.destroy();
      }, this.o.handshakeTimeoutMs);
      timer.unref();
      conn.once('close', () => {
        clearTimeout(timer);
        this.unauthenticated.delete(conn);
      });
    };
    h2server.on('session', (session: ServerHttp2Session) => track(session));
    h2server.on('secureConnection', (sock: TLSSocket) => {
      if (sock.alpnProtocol !== 'h2') track(sock);
    });
  }

  private async admit(session: WtSession): Promise<void> {
    const h2 = http2SessionOf(session);
    const sock = h2?.socket;
    const conn = new WtConnection(session, sock ? formatHostPort(sock.remoteAddress ?? '?', sock.remotePort ?? 0) : '?', this.o);
    this.handshaking.add(conn);
    try {
      const keys = await underDeadline(this.o.handshakeTimeoutMs, 'accept', this.respond(conn), () => void conn.close());
      if (this.queue.isEnded) throw new ClosedError('listener');
      conn.remotePublicKey = keys.remotePublicKey;
      if (conn.h2) this.unauthenticated.delete(conn.h2);
      this.accepted.add(conn);
      void conn.closed.then(() => this.accepted.delete(conn));
      this.queue.push(conn);
    } catch {
      this.failedHandshakes++;
      void conn.close();
    } finally {
      this.handshaking.delete(conn);
    }
  }

  private async respond(conn: WtConnection): Promise<SessionKeys> {
    await conn.session.ready;
    const exporter = exporterOf(conn.h2);
    const st = await conn.acceptStream();
    if (!st) throw new QuicmapError('EPROTO', 'session closed before the handshake');
    const rd = new ExactReader(st);
    const hs = new HandshakeResponder(this.me);
    await st.write(hs.respond(await rd.read(HELLO_BYTES)));
    const keys = hs.finish(await rd.read(FINISH_BYTES));
    checkBinding(await rd.read(MAC_BYTES), keys, exporter);
    await st.write(bindingMac(keys.sendKey, keys, exporter));
    await st.closeWrite();
    return keys;
  }

  accept(): Promise<Connection | null> {
    return this.queue.shift();
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      this.queue.closeAndDrain();
      await Promise.all([...this.handshaking, ...this.accepted].map((c) => c.close()));
      try {
        this.server.stopServer();
      } catch {
        // not started
      }
      await Promise.race([this.server.closed, new Promise((r) => setTimeout(r, 2000).unref())]);
      this.onClose(this);
    })();
    return this.closing;
  }
}

export class WebTransportTransport implements Transport {
  readonly name = 'webtransport' as const;
  private readonly o: Resolved;
  private readonly listeners = new Set<WtListener>();
  private readonly connections = new Set<WtConnection>();
  private isClosed = false;
  private readonly identity: Identity;

  constructor(identity: Identity, opts: WebTransportOptions = {}) {
    this.identity = identity;
    this.o = resolve(opts);
  }

  async listen(address: string): Promise<Listener> {
    if (this.isClosed) throw new ClosedError('transport');
    const { host, port } = parseHostPort(address);
    const [lib] = await Promise.all([loadWebTransport(), handshakeReady()]);
    const cert = createTlsCertificate();
    const server = new lib.Http2Server({
      port,
      host,
      secret: randomBytes(16).toString('hex'),
      cert: cert.certPem,
      privKey: cert.keyPem,
      initialBidirectionalStreams: this.o.maxStreams,
      initialUnidirectionalStreams: 1,
      ...libraryWindows(this.o),
    });
    server.sessionStream(SESSION_PATH);
    server.startServer();
    guardRttPings(server);
    try {
      // The library logs and swallows errors thrown while it builds its
      // server (a certificate OpenSSL refuses, for one), and then `ready`
      // never settles: bound the wait so listen() fails instead of hanging.
      await underDeadline(LISTEN_DEADLINE_MS, `listen ${address}`, server.ready, () => closeServerQuietly(server));
    } catch (e) {
      throw new QuicmapError('EIO', `cannot listen on ${address}: ${describe(e)}`, { cause: e });
    }
    const a = server.address();
    const l = new WtListener(server, a ? formatHostPort(a.host, a.port) : address, this.identity, this.o, (x) => this.listeners.delete(x));
    this.listeners.add(l);
    return l;
  }

  async dial(address: string, expectedPublicKey: Uint8Array, opts: { timeoutMs?: number } = {}): Promise<Connection> {
    if (this.isClosed) throw new ClosedError('transport');
    const { host, port } = parseHostPort(address);
    const [lib] = await Promise.all([loadWebTransport(), handshakeReady()]);
    const ms = opts.timeoutMs ?? this.o.dialTimeoutMs;
    let conn: WtConnection | undefined;
    let session: WtSession | undefined;
    const work = (async () => {
      session = this.open(lib, host, port);
      try {
        await session.ready;
      } catch (e) {
        throw new QuicmapError('EIO', `dial ${address}: no WebTransport session (${describe(e)})`, { cause: e });
      }
      conn = new WtConnection(session, formatHostPort(host, port), this.o);
      const exporter = exporterOf(conn.h2);
      const st = await conn.rawOpen();
      const rd = new ExactReader(st);
      const hs = new HandshakeInitiator(this.identity, expectedPublicKey);
      await st.write(hs.start());
      const { message, keys } = hs.finish(await rd.read(RESPONSE_BYTES));
      await st.write([message, bindingMac(keys.sendKey, keys, exporter)]);
      await st.closeWrite();
      checkBinding(await rd.read(MAC_BYTES), keys, exporter);
      conn.remotePublicKey = keys.remotePublicKey;
      return conn;
    })();
    try {
      const c = await underDeadline(ms, `dial ${address}`, work, () => {
        if (conn) void conn.close();
        else closeQuietly(session);
      });
      if (this.isClosed) throw new ClosedError('transport');
      this.connections.add(c);
      void c.closed.then(() => this.connections.delete(c));
      return c;
    } catch (e) {
      if (conn) void conn.close();
      else closeQuietly(session);
      if (e instanceof QuicmapError) throw e;
      throw new QuicmapError('EIO', `dial ${address}: ${describe(e)}`, { cause: e });
    }
  }

  private open(lib: WtLibrary, host: string, port: number): WtSession {
    return new lib.WebTransport(`https://${formatHostPort(host, port)}${SESSION_PATH}`, {
      forceReliable: true,
      serverCertificateHashes: ANY_CERTIFICATE,
      initialBidirectionalSendStreams: this.o.maxStreams,
      ...libraryWindows(this.o),
    });
  }

  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    await Promise.all([...this.listeners].map((l) => l.close()));
    await Promise.all([...this.connections].map((c) => c.close()));
  }
}

/** How long a listener may take to start (it binds a local port: milliseconds, unless something is broken). */
const LISTEN_DEADLINE_MS = 10_000;

function closeServerQuietly(server: WtServer): void {
  try {
    server.stopServer();
  } catch {
    // never started
  }
}

function closeQuietly(s: WtSession | undefined): void {
  if (!s) return;
  s.ready.then(
    () => s.close({ closeCode: 0, reason: 'dial abandoned' }),
    () => {},
  );
  s.closed.catch(() => {});
  const h2 = http2SessionOf(s);
  if (h2) setTimeout(() => h2.destroy(), 1000).unref();
}

/**
 * Library bug (1.6.8, lib/http2/node/server.js): each session's RTT ping
 * timer checks `session.closed` but not `destroyed`, and `ping()` on a
 * destroyed session throws from the timer — an uncaught exception that
 * ends the process (seen in CI when a peer vanished). Make ping a no-op
 * once the session is destroyed. Registered before any session arrives.
 */
function guardRttPings(server: WtServer): void {
  const h2 = http2ServerOf(server);
  h2?.prependListener('session', (session: Http2Session) => {
    const ping = session.ping.bind(session);
    session.ping = ((...args: Parameters<Http2Session['ping']>) => (session.destroyed ? false : ping(...args))) as Http2Session['ping'];
  });
}
