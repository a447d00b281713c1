/**
 * The client side of one protocol session, sans-IO. It sends HELLO, checks
 * WELCOME (version, limits no larger than ours), and from then on matches
 * replies to request ids. READ replies are decoded straight into the buffer
 * registered for their id (`expectRead`), so a remote read costs no copy
 * beyond the one out of the transport.
 *
 * Request ids, deadlines and liveness live in p2p/remote/ (RequestTable,
 * LinkSupervisor; both sans-IO too);
 * this file only knows frames and states.
 */
import { ProtocolError, QuicmapError, type ErrorCode } from '../../base/errors.ts';
import { FrameDecoder } from './decoder.ts';
import { FrameType, frameTypeName, type FrameHeader } from './frame.ts';
import {
  MAX_CONTROL_BODY,
  MIN_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
  decodeError,
  decodeWelcome,
  encodeHello,
  type Limits,
  type ResumeRequest,
  type WelcomeBody,
} from './messages.ts';

/**
 * The client's count of a resumable session's replies: the highest reply
 * sequence received, kept by the owner across links (a new link of the same
 * session continues it), and the highest it has acknowledged.
 */
export interface ReplyCounter {
  received: number;
  acked: number;
}

export type ClientEvent =
  | { kind: 'welcome'; welcome: WelcomeBody }
  /** The sharer refused the session (bad grant, version): a clear, final answer. */
  | { kind: 'refused'; code: ErrorCode; message: string }
  /** Success reply to `id`; for reads the data is already in the registered buffer. */
  | { kind: 'ok'; id: number; payload: Uint8Array }
  | { kind: 'error'; id: number; code: ErrorCode; message: string };

type State = 'init' | 'hello-sent' | 'ready' | 'closed';

export class ClientSession {
  private state: State = 'init';
  private readonly decoder: FrameDecoder;
  private readonly readTargets = new Map<number, Uint8Array>();
  private negotiated: Limits;
  private counter: ReplyCounter | undefined;

  private readonly local: Limits;

  constructor(local: Limits) {
    this.local = local;
    this.negotiated = { ...local };
    // Until WELCOME nothing but control frames may arrive.
    this.decoder = new FrameDecoder({ maxPayload: 0, maxControl: MAX_CONTROL_BODY }, (h) => this.sinkFor(h));
  }

  get limits(): Readonly<Limits> {
    return this.negotiated;
  }

  get isReady(): boolean {
    return this.state === 'ready';
  }

  hello(grant: Uint8Array, caps: readonly string[], agent = 'quicmap', resume?: ResumeRequest): Uint8Array[] {
    if (this.state !== 'init') throw new Error(`hello() in state ${this.state}`);
    this.state = 'hello-sent';
    return encodeHello({ minVersion: MIN_PROTOCOL_VERSION, maxVersion: PROTOCOL_VERSION, limits: this.local, caps: [...caps], grant, agent, ...(resume ? { resume } : {}) });
  }

  /**
   * After a WELCOME that granted a resumable session: replies carry sequence
   * numbers, counted in `counter` (shared by every link of the session).
   */
  countReplies(counter: ReplyCounter): void {
    this.counter = counter;
  }

  /** Replies received so far in this session (0 when not resumable). */
  counterValue(): number {
    const c = this.counter;
    if (!c) return 0;
    c.acked = c.received;
    return c.received;
  }

  /** The cumulative ack to send now, if at least `atLeast` replies arrived since the last one. */
  takeAck(atLeast = 1): number | undefined {
    const c = this.counter;
    if (!c || c.received - c.acked < Math.max(1, atLeast)) return undefined;
    c.acked = c.received;
    return c.received;
  }

  /** The reply to READ `id` goes straight into `buf` (its length is the read length). */
  expectRead(id: number, buf: Uint8Array): void {
    this.readTargets.set(id, buf);
  }

  /** Forget a request (timed out or abandoned): a late reply will be discarded. */
  forget(id: number): void {
    this.readTargets.delete(id);
  }

  /**
   * Feed received bytes. Throws a ProtocolError when the sharer breaks the
   * protocol; the adapter then drops the connection.
   */
  receive(chunk: Uint8Array): ClientEvent[] {
    if (this.state === 'closed') return [];
    const out: ClientEvent[] = [];
    let items;
    try {
      items = this.decoder.push(chunk);
    } catch (e) {
      this.state = 'closed';
      throw e;
    }
    for (const item of items) {
      if (item.kind === 'oversize') {
        this.state = 'closed';
        throw new ProtocolError(`sharer sent a ${item.header.payloadLength}-byte payload above the negotiated ${item.limit}`);
      }
      const f = item.frame;
      if (this.state === 'hello-sent') {
        if (f.type === FrameType.ERROR) {
          this.state = 'closed';
          const e = decodeError(f);
          out.push({ kind: 'refused', code: e.code, message: e.message });
          return out;
        }
        if (f.type !== FrameType.WELCOME) throw this.broken(`expected WELCOME, got ${frameTypeName(f.type)}`);
        const w = decodeWelcome(f.payload);
        if (w.version < MIN_PROTOCOL_VERSION || w.version > PROTOCOL_VERSION) throw this.broken(`sharer chose protocol version ${w.version}, which this node does not speak`);
        if (w.limits.maxFrame > this.local.maxFrame || w.limits.maxInFlight > this.local.maxInFlight) {
          throw this.broken('sharer negotiated limits above the ones this node offered');
        }
        this.negotiated = { ...w.limits };
        this.decoder.setLimits({ maxPayload: w.limits.maxFrame });
        this.state = 'ready';
        out.push({ kind: 'welcome', welcome: w });
        continue;
      }
      if (this.state !== 'ready') throw this.broken(`${frameTypeName(f.type)} before HELLO`);
      if (this.counter && f.id !== 0 && (f.type === FrameType.OK || f.type === FrameType.ERROR)) {
        // A resumable session's replies arrive in sequence; one at or below
        // the count is a duplicate (already seen on an earlier link): dropped.
        const seq = f.offset;
        if (seq <= this.counter.received) continue;
        if (seq !== this.counter.received + 1) throw this.broken(`reply sequence ${seq} after ${this.counter.received}: replies were lost`);
        this.counter.received = seq;
      }
      if (f.type === FrameType.OK) {
        const target = this.readTargets.get(f.id);
        if (target) {
          this.readTargets.delete(f.id);
          if (f.payload !== target && f.payloadLength !== 0) throw this.broken(`read reply ${f.id} carries ${f.payloadLength} bytes, expected ${target.length}`);
          if (f.payloadLength === 0 && target.length !== 0) throw this.broken(`read reply ${f.id} carries no data`);
        }
        out.push({ kind: 'ok', id: f.id, payload: f.payload });
      } else if (f.type === FrameType.ERROR) {
        this.readTargets.delete(f.id);
        const e = decodeError(f);
        if (f.id === 0) {
          // A connection-level error after WELCOME: the sharer is going away.
          this.state = 'closed';
          throw new QuicmapError(e.code, `sharer closed the session: ${e.message}`);
        }
        out.push({ kind: 'error', id: f.id, code: e.code, message: e.message });
      } else {
        throw this.broken(`unexpected ${frameTypeName(f.type)} frame from the sharer`);
      }
    }
    return out;
  }

  close(): void {
    this.state = 'closed';
    this.readTargets.clear();
  }

  private sinkFor(h: FrameHeader): Uint8Array | undefined {
    if (h.type !== FrameType.OK) return undefined;
    const t = this.readTargets.get(h.id);
    // A wrong-sized reply is left to the checks in receive(), which reject it.
    return t && t.length === h.payloadLength ? t : undefined;
  }

  private broken(message: string): ProtocolError {
    this.state = 'closed';
    return new ProtocolError(message);
  }
}
