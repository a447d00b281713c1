/**
 * ClientLink: one live protocol session with a sharer — one connection, one
 * stream, many requests multiplexed on it by request id. The I/O adapter
 * around ClientSession: it pumps the stream into the session and reports
 * replies, received bytes and its death to its owner. It keeps no request
 * state and no timers: request ids, deadlines and the callers' promises live
 * in the RequestTable, which outlives a link; liveness and reconnect in the
 * LinkSupervisor (both sans-IO, p2p/remote/).
 *
 * One stream per connection, not a stream per request or a pool: opening a
 * stream costs more than a small request on loopback, and one ordered stream
 * with request ids gives the same pipelining (many requests in flight,
 * replies in any order) at 24 bytes per request; measured in
 * bench/RESULTS.md ("one stream vs a pool"). What a pool would buy is
 * freedom from head-of-line blocking under packet loss (QUIC only); several
 * ClientLinks on one Connection already work (the server runs one session
 * per stream), so a pool can be added above this class if measurements
 * under loss call for it.
 */
import type { ByteStream, Connection } from '../../transports/transport.ts';
import { QuicmapError, type ErrorCode } from '../../base/errors.ts';
import { withDeadline } from '../../base/deadline.ts';
import { ClientSession, type ReplyCounter } from '../protocol/client-session.ts';
import { FrameWriter } from './frame-writer.ts';
import { verifyManifest, type Manifest } from '../protocol/manifest.ts';
import { callFrame, encodeAck, encodeFlush, encodePing, encodeRead, encodeTrim, encodeWrite, encodeZero, type Limits, type SessionGrant } from '../protocol/messages.ts';

export interface LinkOptions {
  grant: Uint8Array;
  /** The sharer's key: the manifest must be signed by it. */
  sharer: Uint8Array;
  regionId: Uint8Array;
  limits: Limits;
  caps: readonly string[];
  agent?: string;
  /** Deadline for the HELLO/WELCOME exchange. */
  helloTimeoutMs?: number;
  /**
   * Resumable sessions (offer the `resume` cap): the session's reply count,
   * kept by the owner across links, and the credentials of the session to
   * resume, if any. A WELCOME that grants a new session resets the count.
   */
  txn?: { counter: ReplyCounter; resume?: { session: Uint8Array; token: Uint8Array } };
}

/** What a link tells its owner. */
export interface LinkHandlers {
  /** The reply to request `id`: success, or the sharer's error. */
  reply(id: number, err?: QuicmapError): void;
  /** Bytes arrived (the liveness signal). */
  received(): void;
  /** The link died; called once. */
  dead(reason: QuicmapError): void;
}

/** One operation, as sent on the wire (each is one frame: the caller splits by limits.maxFrame). */
export type LinkOp =
  | { op: 'read'; buf: Uint8Array; offset: number }
  | { op: 'write'; data: Uint8Array; offset: number; fua: boolean }
  | { op: 'flush' }
  | { op: 'trim'; offset: number; length: number; fua: boolean }
  | { op: 'zero'; offset: number; length: number; fua: boolean; noHole: boolean }
  | { op: 'ping' }
  /** A named control call, its body packed (packCallParts: buffers sent as they are); the reply's body is put in `reply.body` before the request settles. */
  | { op: 'call'; method: string; body: Uint8Array[]; reply: { body?: Uint8Array } };

export class ClientLink {
  /** Reply boxes of CALLs in flight on this link. */
  private readonly callReplies = new Map<number, { body?: Uint8Array }>();
  readonly manifest: Manifest;
  readonly limits: Limits;
  readonly caps: ReadonlySet<string>;
  /** The session the sharer granted (resumable sessions only): credentials, whether resumed, its received mark. */
  readonly granted: SessionGrant | undefined;
  private readonly conn: Connection;
  private readonly stream: ByteStream;
  private readonly session: ClientSession;
  private readonly writer: FrameWriter;
  private handlers: LinkHandlers | undefined;
  private deathReason: QuicmapError | undefined;
  /** Unacknowledged replies at which an ACK goes alone / in front of a request (resumable sessions). */
  private readonly ackAlone: number;
  private readonly ackWithRequest: number;

  private constructor(conn: Connection, stream: ByteStream, session: ClientSession, manifest: Manifest, caps: string[], granted: SessionGrant | undefined) {
    this.granted = granted;
    this.ackAlone = Math.max(1, Math.floor((granted?.window ?? 4) / 4));
    this.ackWithRequest = Math.max(1, Math.floor((granted?.window ?? 16) / 16));
    this.conn = conn;
    this.stream = stream;
    this.session = session;
    this.manifest = manifest;
    this.limits = { ...session.limits };
    this.caps = new Set(caps);
    this.writer = new FrameWriter(stream);
  }

  /**
   * Open a stream on `conn`, say HELLO with the grant and wait for WELCOME.
   * A refusal becomes a QuicmapError with the sharer's code (EACCES, EPERM,
   * EPROTO) and message; the connection is closed on any failure.
   */
  static async open(conn: Connection, opts: LinkOptions): Promise<ClientLink> {
    const session = new ClientSession(opts.limits);
    let stream: ByteStream | undefined;
    const helloMs = opts.helloTimeoutMs ?? 5_000;
    try {
      stream = await conn.openStream();
      const s = stream;
      const handshake = (async () => {
        const resume = opts.txn?.resume ? { ...opts.txn.resume, received: opts.txn.counter.received } : undefined;
        const caps = opts.txn ? [...new Set([...opts.caps, 'resume'])] : opts.caps.filter((c) => c !== 'resume');
        await s.write(session.hello(opts.grant, caps, opts.agent, resume));
        for (;;) {
          const chunk = await s.read();
          if (chunk === null) throw new QuicmapError('EIO', 'sharer closed the connection during the handshake');
          for (const ev of session.receive(chunk)) {
            if (ev.kind === 'refused') throw new QuicmapError(ev.code, `sharer refused: ${ev.message}`);
            if (ev.kind === 'welcome') {
              const m = await verifyManifest(ev.welcome.manifest, ev.welcome.manifestSig, opts.sharer);
              if (Buffer.compare(m.regionId, opts.regionId) !== 0) throw new QuicmapError('EPROTO', 'sharer answered with a manifest for another region');
              const granted = opts.txn && ev.welcome.caps.includes('resume') ? ev.welcome.session : undefined;
              if (granted && opts.txn) {
                if (!granted.resumed) {
                  opts.txn.counter.received = 0;
                  opts.txn.counter.acked = 0;
                }
                session.countReplies(opts.txn.counter);
              }
              // The sharer sends nothing unasked after WELCOME — on a resumed
              // session it replays its log only once this side's first ACK
              // says it is ready (`ready`) — so no bytes are left over for pump().
              return { manifest: m, caps: ev.welcome.caps, granted };
            }
          }
        }
      })();
      handshake.catch(() => {}); // a late failure after the deadline is moot
      const welcome = await withDeadline(handshake, helloMs, 'HELLO', {
        error: () => new QuicmapError('ETIMEDOUT', `sharer did not answer HELLO within ${helloMs} ms`),
      });
      return new ClientLink(conn, s, session, welcome.manifest, welcome.caps, welcome.granted);
    } catch (e) {
      stream?.reset();
      await conn.close().catch(() => {});
      if (e instanceof QuicmapError) throw e;
      throw new QuicmapError('EIO', `handshake with the sharer failed: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Start pumping replies to `handlers`. Call once. */
  start(handlers: LinkHandlers): void {
    this.handlers = handlers;
    void this.pump();
    void this.conn.closed.then(() => this.kill(new QuicmapError('EIO', 'connection to the sharer closed')));
  }

  get isDead(): boolean {
    return this.deathReason !== undefined;
  }

  private async pump(): Promise<void> {
    try {
      for (;;) {
        const chunk = await this.stream.read();
        if (chunk === null) throw new QuicmapError('EIO', 'sharer closed the stream');
        if (this.deathReason) return;
        this.handlers!.received();
        this.deliver(this.session.receive(chunk));
        // Acks are batched: one alone once a quarter of the sharer's window
        // is unacknowledged; smaller ones ride in front of the next request
        // (same write) or the next ping.
        const ack = this.session.takeAck(this.ackAlone);
        if (ack !== undefined) this.writer.write(encodeAck(ack)).catch(() => {});
      }
    } catch (e) {
      const err = e instanceof QuicmapError && e.code !== 'EPROTO' && e.code !== 'ESHUTDOWN' ? e : new QuicmapError('EIO', `connection to the sharer lost: ${(e as Error).message}`, { cause: e });
      this.kill(err);
    }
  }

  /** Hand replies to the owner. */
  private deliver(events: ReturnType<ClientSession['receive']>): void {
    for (const ev of events) {
      if (ev.kind === 'ok') {
        const box = this.callReplies.get(ev.id);
        if (box) {
          this.callReplies.delete(ev.id);
          // Copied: the received chunk may be reused once this loop moves on.
          box.body = ev.payload.slice();
        }
        this.handlers!.reply(ev.id);
      } else if (ev.kind === 'error') {
        this.callReplies.delete(ev.id);
        this.handlers!.reply(ev.id, new QuicmapError(ev.code, `sharer: ${ev.message}`));
      }
    }
  }

  /** Kill the link: the owner hears `dead(reason)` once; late replies are dropped. */
  kill(reason: Error): void {
    if (this.deathReason) return;
    const err = reason instanceof QuicmapError ? reason : new QuicmapError('EIO', reason.message, { cause: reason });
    this.deathReason = err;
    this.session.close();
    this.stream.reset(reason);
    void this.conn.close(reason).catch(() => {});
    this.handlers?.dead(err);
  }

  /**
   * Send request `id` (the caller allocated it); a READ reply lands in
   * `op.buf`. `onWire` false: the sharer already has this request (a resumed
   * session received it on an earlier link); only expect its reply here.
   */
  send(id: number, op: LinkOp, onWire = true): void {
    if (this.deathReason) return;
    if (!onWire) {
      if (op.op === 'read') this.session.expectRead(id, op.buf);
      else if (op.op === 'call') this.callReplies.set(id, op.reply);
      return;
    }
    let frames: Uint8Array[];
    switch (op.op) {
      case 'read':
        this.session.expectRead(id, op.buf);
        frames = encodeRead(id, op.offset, op.buf.length);
        break;
      case 'write':
        frames = encodeWrite(id, op.offset, op.data, op.fua);
        break;
      case 'flush':
        frames = encodeFlush(id);
        break;
      case 'trim':
        frames = encodeTrim(id, op.offset, op.length, op.fua);
        break;
      case 'zero':
        frames = encodeZero(id, op.offset, op.length, { fua: op.fua, noHole: op.noHole });
        break;
      case 'ping':
        frames = encodePing(id);
        break;
      case 'call':
        this.callReplies.set(id, op.reply);
        frames = callFrame(id, op.body);
        break;
    }
    const ack = this.session.takeAck(op.op === 'ping' ? 1 : this.ackWithRequest);
    if (ack !== undefined) frames = [...encodeAck(ack), ...frames];
    this.writer.write(frames).catch((e: Error) => this.kill(new QuicmapError('EIO', `sending to the sharer failed: ${e.message}`, { cause: e })));
  }

  /**
   * Resumable sessions: the requests of the session are registered on this
   * link (`send`), so the sharer may replay its log now. Sends the ACK that
   * says so, with the count of replies received.
   */
  ready(): void {
    if (this.deathReason || !this.granted) return;
    const c = this.session.counterValue();
    this.writer.write(encodeAck(c)).catch(() => {});
  }

  /** Give up on a request (timed out): a late reply is dropped, never written into its buffer. */
  forget(id: number): void {
    this.session.forget(id);
    this.callReplies.delete(id);
  }

  async close(): Promise<void> {
    this.kill(new QuicmapError('ESHUTDOWN', 'link closed'));
  }
}

export function isRefusal(code: ErrorCode): boolean {
  return code === 'EACCES' || code === 'EPERM' || code === 'EPROTO';
}
