/**
 * Many logical streams over one secure link (TCP over TLS, one long-lived
 * QUIC stream, relayed channels). Frames, all with a 9-byte header:
 *
 *   u8 type | u32 stream id | u32 value | payload (DATA, SETTINGS, CLOSE only)
 *
 *   DATA     value = payload length (<= MAX_DATA_FRAME)
 *   OPEN     a new stream; ids: dialer odd, listener even, strictly increasing
 *   FIN      the sender will write no more on this stream (half-close)
 *   RESET    the stream is dead in both directions
 *   WINDOW   value = bytes of receive credit returned to the sender
 *            (stream 0: connection-level credit)
 *   SETTINGS stream 0, payload = u32 max streams | u32 stream window | u32 connection window
 *   PING/PONG stream 0, value = token (keep-alive and liveness)
 *   CLOSE    stream 0, payload = UTF-8 reason; the connection is going away
 *
 * Flow control is per stream: a sender may have at most `window` unread
 * bytes outstanding and gets credit back as the reader consumes, so a slow
 * stream cannot bloat memory or stall its neighbours. A connection window on
 * top (as QUIC's MAX_DATA) bounds what all streams together may buffer at the
 * receiver, whatever the number of streams. Until the peer's
 * SETTINGS arrive, conservative defaults apply (as in HTTP/2); any increase
 * is credited to streams already open.
 *
 * Stream slots: a stream holds a slot from OPEN until each side has both sent
 * and received an end (FIN or RESET), or either reset. Because the link is
 * ordered, the receiver always frees a slot before the opener can reuse it,
 * so an OPEN beyond the advertised limit is a protocol violation.
 */
import type { ByteStream, Connection } from './transport.ts';
import { ClosedError, ProtocolError, QuicmapError } from '../base/errors.ts';
import { AsyncQueue } from '../base/async-queue.ts';
import { Wakeup, wallClock } from '../base/clock.ts';
import { KeepAlive } from './keepalive.ts';
import { InboundBuffer } from './inbound.ts';
import type { Link } from './frame-link.ts';

// A plain object, not an enum: only erasable TypeScript (Node's type stripping).
const Frame = {
  DATA: 0,
  OPEN: 1,
  FIN: 2,
  RESET: 3,
  WINDOW: 4,
  SETTINGS: 5,
  PING: 6,
  PONG: 7,
  CLOSE: 8,
} as const;
type Frame = (typeof Frame)[keyof typeof Frame];

export const FRAME_HEADER = 9;
export const MAX_DATA_FRAME = 256 * 1024;
/** Writes up to this size are copied (cheaper than an extra record for the FIN that usually follows). */
const COPY_LIMIT = 64 * 1024;
const DEFAULT_PEER_WINDOW = 64 * 1024;
const DEFAULT_PEER_STREAMS = 16;
const DEFAULT_PEER_CONN_WINDOW = 1024 * 1024;
const SETTINGS_BYTES = 12;
const MAX_CLOSE_REASON = 256;

export interface MuxOptions {
  /** Receive window per stream, bytes (>= 64 KiB). Default 1 MiB. */
  streamWindow?: number;
  /** Streams the peer may have open towards us (>= 16). Default 256. */
  maxStreams?: number;
  /** Receive window for all streams of the connection together, bytes (>= 1 MiB). Default 16 MiB. */
  connectionWindow?: number;
  /** openStream() fails with ETIMEDOUT after waiting this long for a slot. Default 10 000 ms. */
  streamOpenTimeoutMs?: number;
  /** Send a PING after this much quiet. Default 4 000 ms. */
  keepAliveMs?: number;
  /** Drop the connection after hearing nothing for this long. Default 15 000 ms. */
  idleTimeoutMs?: number;
}

function header(type: Frame, id: number, value: number): Buffer {
  const h = Buffer.allocUnsafe(FRAME_HEADER);
  h[0] = type;
  h.writeUInt32BE(id, 1);
  h.writeUInt32BE(value, 5);
  return h;
}

/** Reads frames out of a record that was decrypted in several pieces. */
class PieceCursor {
  private i = 0;
  private off = 0;
  remaining: number;

  private readonly pieces: Buffer[];

  constructor(pieces: Buffer[]) {
    this.pieces = pieces;
    this.remaining = pieces.reduce((n, p) => n + p.length, 0);
  }

  /** n contiguous bytes (copied only when they straddle pieces). */
  take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const p = this.pieces[this.i]!;
    if (p.length - this.off >= n) {
      const out = p.subarray(this.off, this.off + n);
      this.advance(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let got = 0;
    this.takePieces(n, (x) => {
      out.set(x, got);
      got += x.length;
    });
    return out;
  }

  /** n bytes as views into the pieces, without copying. */
  takePieces(n: number, sink: (piece: Buffer) => void): void {
    while (n > 0) {
      const p = this.pieces[this.i]!;
      const k = Math.min(n, p.length - this.off);
      sink(p.subarray(this.off, this.off + k));
      this.advance(k);
      n -= k;
    }
  }

  skip(n: number): void {
    this.takePieces(n, () => {});
  }

  private advance(n: number): void {
    this.off += n;
    this.remaining -= n;
    while (this.i < this.pieces.length && this.off >= this.pieces[this.i]!.length) {
      this.off -= this.pieces[this.i]!.length;
      this.i++;
    }
  }
}

class MuxStream implements ByteStream {
  readonly inbound: InboundBuffer;
  sendCredit: number;
  /** Bytes the peer may still send before we return credit. */
  recvAllowance: number;
  private unreturned = 0;
  private creditWaiter: (() => void) | undefined;
  writeClosed = false;
  localEnd = false;
  remoteEnd = false;
  error: QuicmapError | undefined;

  readonly id: number;

  private readonly session: MuxSession;

  private readonly window: number;

  constructor(
    id: number,
    session: MuxSession,
    sendCredit: number,
    window: number) {
    this.id = id;

    this.session = session;

    this.window = window;
    this.sendCredit = sendCredit;
    this.recvAllowance = window;
    this.inbound = new InboundBuffer(0, (n) => this.consumed(n));
  }

  private consumed(n: number): void {
    this.session.returnConnCredit(n);
    if (this.remoteEnd || this.error) return;
    this.unreturned += n;
    // Return credit in batches: one WINDOW frame per quarter window read.
    if (this.unreturned >= this.window >> 2) {
      this.recvAllowance += this.unreturned;
      this.session.send(header(Frame.WINDOW, this.id, this.unreturned));
      this.unreturned = 0;
    }
  }

  addCredit(n: number): void {
    this.sendCredit += n;
    this.wake();
  }

  private wake(): void {
    const w = this.creditWaiter;
    this.creditWaiter = undefined;
    w?.();
  }

  read(): Promise<Uint8Array | null> {
    return this.inbound.read();
  }

  /**
   * Writes leave in call order even when they overlap: a write that has to
   * wait (for credit or a congested link) holds back the ones after it, so a
   * small write can never overtake a large one and only one writer ever waits
   * for credit. With nothing queued, a small write still goes out at once.
   */
  private writeTail: Promise<void> | undefined;
  private queuedWrites = 0;

  write(data: Uint8Array | readonly Uint8Array[]): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    if (this.writeClosed) return Promise.reject(new QuicmapError('EINVAL', 'write after closeWrite'));
    return this.inOrder(() => this.writeNow(data));
  }

  private inOrder(op: () => Promise<void>): Promise<void> {
    const run = this.queuedWrites === 0 ? op() : this.writeTail!.then(op);
    this.queuedWrites++;
    const settled = run.then(
      () => void this.queuedWrites--,
      () => void this.queuedWrites--,
    );
    this.writeTail = settled;
    return run;
  }

  private async writeNow(data: Uint8Array | readonly Uint8Array[]): Promise<void> {
    if (this.error) throw this.error;
    const link = this.session.link;
    const list = data instanceof Uint8Array ? [data] : data;
    let total = 0;
    for (const b of list) total += b.length;
    const session = this.session;
    if (total <= COPY_LIMIT && total <= this.sendCredit && total <= session.connCredit && !link.congested) {
      // Small write: copy it into the frame and return at once, so a
      // closeWrite that follows joins the same record. (Large writes are
      // sent without copying and wait until sealed.)
      if (total === 0) return;
      const frame = Buffer.allocUnsafe(FRAME_HEADER + total);
      frame[0] = Frame.DATA;
      frame.writeUInt32BE(this.id, 1);
      frame.writeUInt32BE(total, 5);
      let off = FRAME_HEADER;
      for (const b of list) {
        frame.set(b, off);
        off += b.length;
      }
      this.sendCredit -= total;
      session.connCredit -= total;
      session.sendRaw(frame);
      return;
    }
    for (const b of list) {
      let off = 0;
      while (off < b.length) {
        while (this.sendCredit === 0 || session.connCredit === 0 || link.congested) {
          if (this.sendCredit === 0) await new Promise<void>((r) => (this.creditWaiter = r));
          else if (session.connCredit === 0) await session.connCreditAvailable();
          else await link.writable();
          if (this.error) throw this.error;
        }
        const n = Math.min(this.sendCredit, session.connCredit, b.length - off, MAX_DATA_FRAME);
        this.sendCredit -= n;
        session.connCredit -= n;
        this.session.send(header(Frame.DATA, this.id, n), b.subarray(off, off + n));
        off += n;
      }
    }
    // The link references our caller's buffers until they are sealed.
    await link.flushed();
    if (this.error) throw this.error;
  }

  async closeWrite(): Promise<void> {
    if (this.error) throw this.error;
    if (this.writeClosed) return;
    this.writeClosed = true;
    // FIN goes after every write already asked for.
    await this.inOrder(async () => {
      if (this.error) throw this.error;
      this.localEnd = true;
      this.session.send(header(Frame.FIN, this.id, 0));
      this.session.maybeFree(this);
    });
  }

  reset(reason?: Error): void {
    if (this.error) return;
    this.fail(new QuicmapError('EIO', 'stream reset', { cause: reason }));
    this.session.send(header(Frame.RESET, this.id, 0));
    this.session.free(this);
  }

  /** Peer finished writing. */
  remoteFin(): void {
    this.remoteEnd = true;
    this.inbound.end();
    this.session.maybeFree(this);
  }

  fail(err: QuicmapError): void {
    if (this.error) return;
    this.error = err;
    this.writeClosed = true;
    // Unread bytes are dropped: give their connection credit back.
    this.session.returnConnCredit(this.inbound.bufferedBytes);
    this.inbound.fail(err);
    this.wake();
  }
}

export class MuxSession implements Connection {
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  private readonly streams = new Map<number, MuxStream>();
  private readonly incoming = new AsyncQueue<MuxStream>((s) => s.reset());
  private nextLocalId: number;
  private lastRemoteId = 0;
  private localOpen = 0;
  private remoteOpen = 0;
  private peerMaxStreams = DEFAULT_PEER_STREAMS;
  private peerWindow = DEFAULT_PEER_WINDOW;
  private peerConnWindow = DEFAULT_PEER_CONN_WINDOW;
  /** Bytes we may still send on all streams together. */
  connCredit = DEFAULT_PEER_CONN_WINDOW;
  private connWaiters: Array<() => void> = [];
  /** Bytes the peer may still send us on all streams together. */
  private connAllowance: number;
  private connUnreturned = 0;
  private slotWaiters: Array<() => void> = [];
  private isClosed = false;
  private gotSettings = false;
  /** Round trip of the last keep-alive PING, ms; undefined until one came back. */
  private pingRttMs: number | undefined;
  /** A better round-trip source than our PINGs (the QUIC stack's smoothed RTT under a carrier stream). */
  rttSource: (() => number | undefined) | undefined;
  private closeError: QuicmapError = new ClosedError('connection');
  private readonly keepAlive: KeepAlive;
  private pingedAt = 0;
  private readonly wakeup: Wakeup;
  private readonly o: Required<MuxOptions>;

  readonly link: Link;

  readonly remotePublicKey: Uint8Array;

  readonly remoteAddress: string;

  private readonly isDialer: boolean;

  constructor(
    link: Link,
    remotePublicKey: Uint8Array,
    remoteAddress: string,
    isDialer: boolean,
    opts: MuxOptions = {}) {
    this.link = link;

    this.remotePublicKey = remotePublicKey;

    this.remoteAddress = remoteAddress;

    this.isDialer = isDialer;
    this.o = {
      streamWindow: Math.max(DEFAULT_PEER_WINDOW, opts.streamWindow ?? 1024 * 1024),
      maxStreams: Math.max(DEFAULT_PEER_STREAMS, opts.maxStreams ?? 256),
      connectionWindow: Math.max(DEFAULT_PEER_CONN_WINDOW, opts.connectionWindow ?? 16 * 1024 * 1024),
      streamOpenTimeoutMs: opts.streamOpenTimeoutMs ?? 10_000,
      keepAliveMs: opts.keepAliveMs ?? 4_000,
      idleTimeoutMs: opts.idleTimeoutMs ?? 15_000,
    };
    this.nextLocalId = isDialer ? 1 : 2;
    this.closed = new Promise((r) => (this.resolveClosed = r));
    this.connAllowance = this.o.connectionWindow;
    const settings = Buffer.allocUnsafe(SETTINGS_BYTES);
    settings.writeUInt32BE(this.o.maxStreams, 0);
    settings.writeUInt32BE(this.o.streamWindow, 4);
    settings.writeUInt32BE(this.o.connectionWindow, 8);
    this.send(header(Frame.SETTINGS, 0, SETTINGS_BYTES), settings);
    this.keepAlive = new KeepAlive({ keepAliveMs: this.o.keepAliveMs, idleTimeoutMs: this.o.idleTimeoutMs });
    this.wakeup = new Wakeup(wallClock, (now) => this.checkLiveness(now));
    this.wakeup.arm(this.keepAlive.nextTimeout(this.link.lastSendAt, this.link.lastReceiveAt));
    // Last: bytes that came with the handshake may already end the session.
    link.start({
      onRecord: (r) => this.onRecord(r),
      onClose: (err) => this.shutdown(err ?? new QuicmapError('ESHUTDOWN', 'connection closed by peer')),
    });
  }

  /** Bytes a reader consumed (or that were dropped): return them to the peer in batches. */
  returnConnCredit(n: number): void {
    if (n <= 0 || this.isClosed) return;
    this.connUnreturned += n;
    if (this.connUnreturned >= this.o.connectionWindow >> 2) {
      this.connAllowance += this.connUnreturned;
      this.send(header(Frame.WINDOW, 0, this.connUnreturned));
      this.connUnreturned = 0;
    }
  }

  /** Resolves when there is connection credit again (or the connection closed). */
  connCreditAvailable(): Promise<void> {
    if (this.connCredit > 0 || this.isClosed) return Promise.resolve();
    return new Promise((r) => this.connWaiters.push(r));
  }

  private addConnCredit(n: number): void {
    this.connCredit += n;
    const ws = this.connWaiters;
    this.connWaiters = [];
    for (const w of ws) w();
  }

  /** Queue one already encoded frame. */
  sendRaw(frame: Buffer): void {
    if (this.isClosed) return;
    this.link.enqueue([frame], frame.length);
  }

  /** Queue one frame on the link. */
  send(h: Buffer, payload?: Uint8Array): void {
    if (this.isClosed && h[0] !== Frame.CLOSE) return;
    if (payload) this.link.enqueue([h, payload], FRAME_HEADER + payload.length);
    else this.link.enqueue([h], FRAME_HEADER);
  }

  /** The KeepAlive machine's wake-up: act, then sleep until its next deadline (activity only moves deadlines later). */
  private checkLiveness(now: number): void {
    if (this.isClosed) return;
    const action = this.keepAlive.handleTimeout(now, this.lastSend(), this.link.lastReceiveAt);
    if (action?.kind === 'dead') {
      this.link.kill(new QuicmapError('ETIMEDOUT', `peer silent for ${this.o.idleTimeoutMs} ms`));
      return;
    }
    if (action?.kind === 'ping') {
      this.pingedAt = now;
      this.send(header(Frame.PING, 0, now >>> 0));
    }
    this.wakeup.arm(this.keepAlive.nextTimeout(this.lastSend(), this.link.lastReceiveAt));
  }

  /** A queued PING counts as sent even before the link writes it out. */
  private lastSend(): number {
    return Math.max(this.link.lastSendAt, this.pingedAt);
  }

  private ownsId(id: number): boolean {
    return (id & 1) === (this.isDialer ? 1 : 0);
  }

  private onRecord(pieces: Buffer[]): void {
    const rec = new PieceCursor(pieces);
    while (rec.remaining > 0) {
      if (rec.remaining < FRAME_HEADER) throw new ProtocolError('truncated frame header');
      const h = rec.take(FRAME_HEADER);
      const type = h[0]!;
      const id = h.readUInt32BE(1);
      const value = h.readUInt32BE(5);
      switch (type) {
        case Frame.DATA: {
          if (value > MAX_DATA_FRAME || value > rec.remaining) throw new ProtocolError('data frame too long');
          this.connAllowance -= value;
          if (this.connAllowance < 0) throw new ProtocolError('peer overran the connection window');
          const s = this.lookup(id);
          if (!s) {
            // Data for a stream we already dropped: discard, but return the credit.
            rec.skip(value);
            this.returnConnCredit(value);
            break;
          }
          if (s.remoteEnd) throw new ProtocolError(`data after FIN on stream ${id}`);
          s.recvAllowance -= value;
          if (s.recvAllowance < 0) throw new ProtocolError(`peer overran the window of stream ${id}`);
          rec.takePieces(value, (p) => s.inbound.push(p));
          break;
        }
        case Frame.OPEN:
          this.onOpen(id);
          break;
        case Frame.FIN: {
          const s = this.lookup(id);
          if (s && !s.remoteEnd) s.remoteFin();
          break;
        }
        case Frame.RESET: {
          const s = this.lookup(id);
          if (s) {
            s.fail(new QuicmapError('EIO', `stream ${id} reset by peer`));
            this.free(s);
          }
          break;
        }
        case Frame.WINDOW: {
          if (id === 0) {
            this.addConnCredit(value);
            break;
          }
          const s = this.lookup(id);
          s?.addCredit(value);
          break;
        }
        case Frame.SETTINGS: {
          if (value !== SETTINGS_BYTES || rec.remaining < SETTINGS_BYTES) throw new ProtocolError('bad settings frame');
          if (this.gotSettings) throw new ProtocolError('settings sent twice');
          this.gotSettings = true;
          const p = rec.take(SETTINGS_BYTES);
          const maxStreams = p.readUInt32BE(0);
          const window = p.readUInt32BE(4);
          const connWindow = p.readUInt32BE(8);
          if (maxStreams < DEFAULT_PEER_STREAMS || window < DEFAULT_PEER_WINDOW || connWindow < DEFAULT_PEER_CONN_WINDOW) {
            throw new ProtocolError('settings below the protocol minimum');
          }
          this.addConnCredit(connWindow - this.peerConnWindow);
          this.peerConnWindow = connWindow;
          const delta = window - this.peerWindow;
          this.peerWindow = window;
          this.peerMaxStreams = maxStreams;
          for (const s of this.streams.values()) s.addCredit(delta);
          this.wakeSlotWaiters();
          break;
        }
        case Frame.PING:
          this.send(header(Frame.PONG, 0, value));
          break;
        case Frame.PONG:
          // The PING's value is our clock (ms, 32 bits) when it left.
          this.pingRttMs = ((Date.now() >>> 0) - value) >>> 0;
          break;
        case Frame.CLOSE: {
          if (value > MAX_CLOSE_REASON || value > rec.remaining) throw new ProtocolError('bad close frame');
          const reason = rec.take(value).toString('utf8');
          this.shutdown(new QuicmapError('ESHUTDOWN', `connection closed by peer${reason ? `: ${reason}` : ''}`), true);
          return;
        }
        default:
          throw new ProtocolError(`unknown frame type ${type}`);
      }
    }
  }

  /** The live stream with this id; undefined for one that already ended; EPROTO for one never opened. */
  private lookup(id: number): MuxStream | undefined {
    const s = this.streams.get(id);
    if (s) return s;
    const old = this.ownsId(id) ? id < this.nextLocalId : id <= this.lastRemoteId;
    if (id === 0 || !old) throw new ProtocolError(`frame for unknown stream ${id}`);
    return undefined;
  }

  private onOpen(id: number): void {
    if (id === 0 || this.ownsId(id) || id <= this.lastRemoteId) throw new ProtocolError(`bad stream id ${id} in OPEN`);
    if (this.remoteOpen >= this.o.maxStreams) throw new ProtocolError('peer opened more streams than allowed');
    this.lastRemoteId = id;
    const s = new MuxStream(id, this, this.peerWindow, this.o.streamWindow);
    this.streams.set(id, s);
    this.remoteOpen++;
    this.incoming.push(s);
  }

  maybeFree(s: MuxStream): void {
    if (s.localEnd && s.remoteEnd) this.free(s);
  }

  free(s: MuxStream): void {
    if (this.streams.get(s.id) !== s) return;
    this.streams.delete(s.id);
    if (this.ownsId(s.id)) this.localOpen--;
    else this.remoteOpen--;
    s.localEnd = s.remoteEnd = true;
    this.wakeSlotWaiters();
  }

  private wakeSlotWaiters(): void {
    const ws = this.slotWaiters;
    this.slotWaiters = [];
    for (const w of ws) w();
  }

  async openStream(): Promise<ByteStream> {
    if (this.isClosed) throw this.closeError;
    if (this.localOpen >= this.peerMaxStreams) {
      const deadline = Date.now() + this.o.streamOpenTimeoutMs;
      while (this.localOpen >= this.peerMaxStreams) {
        const left = deadline - Date.now();
        if (left <= 0) throw new QuicmapError('ETIMEDOUT', `peer granted no stream within ${this.o.streamOpenTimeoutMs} ms`);
        let timer: NodeJS.Timeout | undefined;
        await new Promise<void>((r) => {
          this.slotWaiters.push(r);
          timer = setTimeout(r, left);
        });
        clearTimeout(timer);
        if (this.isClosed) throw this.closeError;
      }
    }
    const id = this.nextLocalId;
    if (id > 0xfffffffd) throw new QuicmapError('EOVERFLOW', 'stream ids exhausted on this connection');
    this.nextLocalId += 2;
    const s = new MuxStream(id, this, this.peerWindow, this.o.streamWindow);
    this.streams.set(id, s);
    this.localOpen++;
    this.send(header(Frame.OPEN, id, 0));
    return s;
  }

  /** The connection's round-trip time, ms (for status): the link's own measure if it has one, else the last PING's. */
  get rttMs(): number | undefined {
    return this.rttSource?.() ?? this.pingRttMs;
  }

  acceptStream(): Promise<ByteStream | null> {
    return this.incoming.shift();
  }

  async close(reason?: Error): Promise<void> {
    if (this.isClosed) return;
    const text = Buffer.from((reason?.message ?? '').slice(0, MAX_CLOSE_REASON), 'utf8').subarray(0, MAX_CLOSE_REASON);
    this.send(header(Frame.CLOSE, 0, text.length), text);
    this.shutdown(reason instanceof QuicmapError ? reason : new ClosedError('connection'), true);
  }

  /** Fail everything with `err`; graceful: flush what is queued (the CLOSE frame) and end the socket. */
  private shutdown(err: QuicmapError, graceful = false): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closeError = err;
    this.wakeup.stop();
    for (const s of this.streams.values()) s.fail(err);
    this.streams.clear();
    this.incoming.closeAndDrain();
    this.wakeSlotWaiters();
    this.addConnCredit(0);
    if (graceful) this.link.end();
    else if (!this.link.isDead) this.link.kill(err);
    this.resolveClosed();
  }
}
