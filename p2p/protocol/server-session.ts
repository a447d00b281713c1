/**
 * The serving side of one protocol session, sans-IO: bytes in, events out.
 * The I/O adapter (p2p/remote/server.ts) feeds it what the stream reads,
 * performs the store operations it asks for and writes the frames it returns.
 *
 * States: awaiting-hello → authorizing (the adapter checks the grant, which
 * needs async crypto) → serving → closed. Everything a request must satisfy
 * is enforced here, before the store sees it: the range lies inside the
 * region, the length is within the negotiated maximum, the grant allows
 * writing (EPERM otherwise — enforced by the sharer, not trusted to the
 * client), the id is not already in flight, in-flight stays bounded.
 */
import { ProtocolError, errorCode, type ErrorCode } from '../../base/errors.ts';
import { FrameDecoder, type DecodedItem } from './decoder.ts';
import { Flag, FrameType, frameTypeName, type Frame } from './frame.ts';
import {
  KNOWN_CAPS,
  MAX_CONTROL_BODY,
  MIN_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
  callBodyLimit,
  decodeCall,
  decodeHello,
  encodeError,
  encodeOk,
  encodeOkParts,
  encodeWelcome,
  type Capability,
  type HelloBody,
  type SessionGrant,
  type Limits,
} from './messages.ts';

export type ServerRequest =
  | { op: 'read'; id: number; offset: number; length: number }
  /** `gathered`: the buffer from the session's `gather` that `data` lies in (give it back once written). */
  | { op: 'write'; id: number; offset: number; data: Uint8Array; fua: boolean; gathered?: Uint8Array }
  | { op: 'flush'; id: number }
  | { op: 'call'; id: number; method: string; args: unknown; /** bytes of the CALL body (charged to the server's memory budget) */ bytes?: number }
  | { op: 'trim'; id: number; offset: number; length: number; fua: boolean }
  | { op: 'zero'; id: number; offset: number; length: number; fua: boolean; noHole: boolean };

export type ServerEvent =
  /** The client's HELLO: check its grant, then call accept() or refuse(). */
  | { kind: 'hello'; hello: HelloBody }
  /** A valid request for the store; answer with reply() or replyError(). */
  | { kind: 'request'; request: ServerRequest }
  /** Frames to send now (errors for refused requests, pongs): replies like any other. */
  | { kind: 'send'; frames: Uint8Array[] }
  /** Resumable session: the client has received every reply up to sequence `received`. */
  | { kind: 'ack'; received: number }
  /** Resumable session: a request the session already has (sent again after a resume); dropped, its reply comes from the log. */
  | { kind: 'duplicate'; id: number }
  /** The session is over: send `frames` (may be empty), then close the connection. */
  | { kind: 'close'; frames: Uint8Array[]; error: Error };

export interface ServerSessionOptions {
  /** This side's limits; the session uses the minimum of both sides'. */
  limits: Limits;
  /** Features the store behind this session offers. */
  caps: readonly Capability[];
  /** Where WRITE payloads that span received chunks are gathered (at least n bytes; default: a new array each). */
  gather?: (n: number) => Uint8Array;
}

export interface AcceptInfo {
  /** Region size in bytes: requests are checked against it. */
  size: number;
  /** The grant's rights: read-only sessions get EPERM on write, trim and zero. */
  readOnly: boolean;
  manifest: Uint8Array;
  manifestSig: Uint8Array;
  /** The session granted (resumable sessions only). */
  session?: SessionGrant;
}

/**
 * What a resumable session keeps across its links (one ServerSession per
 * stream): the requests in progress — shared, so the in-flight bound spans a
 * resume — and the highest request id received. Request ids of a session
 * increase (mod 2^32) in the order they are sent, so a request at or below
 * `seen` is one the session already has: a duplicate, dropped by id.
 */
export interface SessionTxn {
  inFlight: Set<number>;
  /** Highest request id received (0: none yet). */
  seen: number;
}

/** Serial-number order on u32 ids (RFC 1982): is `a` after `b`? */
export function idAfter(a: number, b: number): boolean {
  const d = (a - b) >>> 0;
  return d !== 0 && d < 0x8000_0000;
}

type State = 'awaiting-hello' | 'authorizing' | 'serving' | 'closed';

/** Until negotiated, only control frames can legitimately arrive; data payloads are refused. */
const PRE_HELLO_PAYLOAD = 0;

export class ServerSession {
  private state: State = 'awaiting-hello';
  private readonly decoder: FrameDecoder;
  private inFlight = new Set<number>();
  private txn: SessionTxn | undefined;
  private size = 0;
  private readOnly = true;
  private negotiated: Limits;
  private caps = new Set<string>();
  version = 0;

  private readonly opts: ServerSessionOptions;

  constructor(opts: ServerSessionOptions) {
    this.opts = opts;
    this.negotiated = { ...opts.limits };
    this.decoder = new FrameDecoder({ maxPayload: PRE_HELLO_PAYLOAD, maxControl: MAX_CONTROL_BODY });
    this.decoder.gather = opts.gather;
  }

  get limits(): Readonly<Limits> {
    return this.negotiated;
  }

  get inFlightCount(): number {
    return this.inFlight.size;
  }

  get isServing(): boolean {
    return this.state === 'serving';
  }

  /** Whether this stream serves a resumable session. */
  get resumable(): boolean {
    return this.txn !== undefined;
  }

  /** The common capabilities (after accept). */
  hasCap(cap: Capability): boolean {
    return this.caps.has(cap);
  }

  /** Feed received bytes. Never throws: a broken peer yields a 'close' event. */
  receive(chunk: Uint8Array): ServerEvent[] {
    if (this.state === 'closed') return [];
    const events: ServerEvent[] = [];
    let items: DecodedItem[];
    try {
      items = this.decoder.push(chunk);
    } catch (e) {
      return [this.fatal(e as Error)];
    }
    for (const item of items) {
      try {
        this.handle(item, events);
      } catch (e) {
        events.push(this.fatal(e as Error));
        break;
      }
      if ((this.state as State) === 'closed') break;
    }
    return events;
  }

  /** The capabilities both sides offered, before accept: whether the adapter should set up a resumable session. */
  commonCaps(hello: HelloBody): Set<string> {
    const mine = new Set<string>(this.opts.caps);
    return new Set(hello.caps.filter((c) => mine.has(c) && (KNOWN_CAPS as readonly string[]).includes(c)));
  }

  /**
   * Grant accepted: negotiate and return the WELCOME frame. With `txn` (both
   * sides offered `resume`; info.session says which session) requests are
   * checked against the session's shared state and duplicates dropped.
   */
  accept(hello: HelloBody, info: AcceptInfo, txn?: SessionTxn): Uint8Array[] {
    if (this.state !== 'authorizing') throw new Error(`accept() in state ${this.state}`);
    this.size = info.size;
    this.readOnly = info.readOnly;
    this.version = Math.min(hello.maxVersion, PROTOCOL_VERSION);
    this.negotiated = {
      maxFrame: Math.min(this.opts.limits.maxFrame, hello.limits.maxFrame),
      maxInFlight: Math.min(this.opts.limits.maxInFlight, hello.limits.maxInFlight),
    };
    this.caps = this.commonCaps(hello);
    if (txn && this.caps.has('resume') && info.session) {
      this.txn = txn;
      this.inFlight = txn.inFlight;
    } else this.caps.delete('resume');
    // With `large-call`, a CALL body may be as large as a data frame (and is charged like one: p2p/remote/server.ts).
    this.decoder.setLimits({ maxPayload: this.negotiated.maxFrame, ...(this.caps.has('large-call') ? { maxCall: callBodyLimit(this.negotiated, this.caps) } : {}) });
    this.state = 'serving';
    return encodeWelcome({
      version: this.version,
      limits: this.negotiated,
      caps: [...this.caps],
      manifest: info.manifest,
      manifestSig: info.manifestSig,
      ...(this.txn && info.session ? { session: info.session } : {}),
    });
  }

  /** Grant refused (EACCES) or version mismatch: the ERROR frame to send before closing. */
  refuse(code: ErrorCode, message: string): Uint8Array[] {
    this.state = 'closed';
    return encodeError(0, code, message);
  }

  /** Success answer to a request (data for reads). */
  reply(id: number, data?: Uint8Array): Uint8Array[] {
    if (!this.inFlight.delete(id)) return [];
    return encodeOk(id, data);
  }

  /** Success answer whose payload is several buffers (a CALL's answer: packReplyParts). */
  replyParts(id: number, parts: Uint8Array[]): Uint8Array[] {
    if (!this.inFlight.delete(id)) return [];
    return encodeOkParts(id, parts);
  }

  /** Failure answer to a request, from whatever the store threw. */
  replyError(id: number, err: unknown): Uint8Array[] {
    if (!this.inFlight.delete(id)) return [];
    return encodeError(id, errorCode(err), (err as Error)?.message ?? String(err));
  }

  close(): void {
    this.state = 'closed';
    // A resumable session's requests in progress outlive this stream.
    if (!this.txn) this.inFlight.clear();
  }

  private fatal(e: Error): ServerEvent {
    const wasOpen = this.state !== 'closed';
    this.state = 'closed';
    const err = e instanceof ProtocolError ? e : new ProtocolError(e.message);
    return { kind: 'close', frames: wasOpen ? encodeError(0, 'EPROTO', err.message) : [], error: err };
  }

  private handle(item: DecodedItem, events: ServerEvent[]): void {
    if (item.kind === 'oversize') {
      const h = item.header;
      if (this.state !== 'serving') throw new ProtocolError(`${frameTypeName(h.type)} before the session was set up`);
      // The payload was skipped unbuffered; refuse this request, keep the session.
      events.push({ kind: 'send', frames: encodeError(h.id, 'EOVERFLOW', `request of ${h.payloadLength} bytes exceeds the negotiated maximum of ${item.limit}`) });
      return;
    }
    const f = item.frame;
    if (this.state === 'awaiting-hello') {
      if (f.type !== FrameType.HELLO) throw new ProtocolError(`expected HELLO, got ${frameTypeName(f.type)}`);
      const hello = decodeHello(f.payload);
      if (hello.maxVersion < MIN_PROTOCOL_VERSION || hello.minVersion > PROTOCOL_VERSION) {
        this.state = 'closed';
        const msg = `no common protocol version: peer speaks ${hello.minVersion}..${hello.maxVersion}, this node ${MIN_PROTOCOL_VERSION}..${PROTOCOL_VERSION}`;
        events.push({ kind: 'close', frames: encodeError(0, 'EPROTO', msg), error: new ProtocolError(msg) });
        return;
      }
      this.state = 'authorizing';
      events.push({ kind: 'hello', hello });
      return;
    }
    if (this.state === 'authorizing') throw new ProtocolError(`${frameTypeName(f.type)} sent before WELCOME`);
    this.request(f, events);
  }

  private request(f: Frame, events: ServerEvent[]): void {
    if (f.type === FrameType.ACK) {
      if (!this.txn) throw new ProtocolError('ACK on a session that is not resumable');
      events.push({ kind: 'ack', received: f.offset });
      return;
    }
    if (this.txn && f.type !== FrameType.PING) {
      if (f.id === 0) throw new ProtocolError('request id 0 is reserved');
      if (this.txn.seen !== 0 && !idAfter(f.id, this.txn.seen)) {
        events.push({ kind: 'duplicate', id: f.id });
        return;
      }
      this.txn.seen = f.id;
    }
    switch (f.type) {
      case FrameType.PING:
        events.push({ kind: 'send', frames: encodeOk(f.id) });
        return;
      case FrameType.READ:
      case FrameType.WRITE:
      case FrameType.FLUSH:
      case FrameType.TRIM:
      case FrameType.ZERO:
      case FrameType.CALL:
        break;
      default:
        throw new ProtocolError(`unexpected ${frameTypeName(f.type)} frame from a client`);
    }
    if (f.id === 0) throw new ProtocolError('request id 0 is reserved');
    if (this.inFlight.has(f.id)) throw new ProtocolError(`request id ${f.id} is already in flight`);
    const refuse = (code: ErrorCode, message: string) => events.push({ kind: 'send', frames: encodeError(f.id, code, message) });
    if (this.inFlight.size >= this.negotiated.maxInFlight) {
      return void refuse('EOVERFLOW', `more than the negotiated ${this.negotiated.maxInFlight} requests in flight`);
    }
    const fua = (f.flags & Flag.FUA) !== 0;
    if (f.type === FrameType.CALL) {
      if (!this.caps.has('call')) return void refuse('ENOTSUP', 'calls were not negotiated');
      const call = decodeCall(f.payload);
      this.inFlight.add(f.id);
      events.push({ kind: 'request', request: { op: 'call', id: f.id, method: call.method, args: call.args, bytes: f.payload.length } });
      return;
    }
    if (f.type !== FrameType.FLUSH) {
      if (f.type === FrameType.READ && f.length > this.negotiated.maxFrame) {
        return void refuse('EOVERFLOW', `read of ${f.length} bytes exceeds the negotiated maximum of ${this.negotiated.maxFrame}`);
      }
      if (f.offset + f.length > this.size) {
        return void refuse('EINVAL', `request [${f.offset}, +${f.length}) is outside the region of ${this.size} bytes`);
      }
      if (f.type !== FrameType.READ && this.readOnly) {
        return void refuse('EPERM', `${f.type === FrameType.WRITE ? 'write' : f.type === FrameType.TRIM ? 'trim' : 'write-zeroes'} refused: this grant is read-only`);
      }
      if (f.type === FrameType.TRIM && !this.caps.has('trim')) return void refuse('ENOTSUP', 'trim is not supported by this region');
    }
    this.inFlight.add(f.id);
    let request: ServerRequest;
    switch (f.type) {
      case FrameType.READ:
        request = { op: 'read', id: f.id, offset: f.offset, length: f.length };
        break;
      case FrameType.WRITE:
        request = { op: 'write', id: f.id, offset: f.offset, data: f.payload, fua, ...(f.gathered ? { gathered: f.gathered } : {}) };
        break;
      case FrameType.FLUSH:
        request = { op: 'flush', id: f.id };
        break;
      case FrameType.TRIM:
        request = { op: 'trim', id: f.id, offset: f.offset, length: f.length, fua };
        break;
      default:
        request = { op: 'zero', id: f.id, offset: f.offset, length: f.length, fua, noHole: (f.flags & Flag.NO_HOLE) !== 0 };
    }
    events.push({ kind: 'request', request });
  }
}
