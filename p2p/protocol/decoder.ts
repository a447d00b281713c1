/**
 * The frame decoder: a pure state machine fed arbitrary chunks of a byte
 * stream (`push(bytes) → items[]`). No I/O, no timers, no promises.
 *
 * Bounded by construction: a header is judged before a single payload byte is
 * kept. A data payload above the limit is *skipped* as it streams past (the
 * item says so, and the caller answers EOVERFLOW for that request id while
 * the connection goes on); a control body above its limit, an unknown type or
 * an impossible header is fatal — the decoder throws a ProtocolError and stays
 * failed, so the caller drops the connection. Memory held at any time: one
 * header plus at most one payload of at most the limit.
 *
 * Zero copy: a payload that arrives inside one chunk is returned as a view of
 * that chunk. A `sink` may supply the destination for a payload (the client
 * points READ replies straight into the caller's buffer).
 */
import { ProtocolError, RequestTooLargeError } from '../../base/errors.ts';
import {
  CONTROL_TYPES,
  FrameType,
  HEADER_SIZE,
  KNOWN_FLAGS,
  NO_PAYLOAD_TYPES,
  frameTypeName,
  isFrameType,
  readHeader,
  type Frame,
  type FrameHeader,
} from './frame.ts';

export type DecodedItem =
  | { kind: 'frame'; frame: Frame }
  /** A frame whose payload exceeded the limit; its payload was discarded unread. */
  | { kind: 'oversize'; header: FrameHeader; limit: number };

export interface DecoderLimits {
  /** Largest payload of a data frame (WRITE, OK). */
  maxPayload: number;
  /** Largest msgpack body of a control frame (HELLO, WELCOME, ERROR; CALL unless maxCall is set). */
  maxControl: number;
  /**
   * Set once a session allows large CALL bodies (cap `large-call`): the
   * largest CALL body. A larger one is skipped as it streams past, like an
   * oversized data payload, and refused for its id (the session goes on).
   */
  maxCall?: number;
}

/** Returns the buffer to receive this frame's payload (exactly payloadLength bytes), or undefined for the default. */
export type PayloadSink = (header: FrameHeader) => Uint8Array | undefined;

const EMPTY = new Uint8Array(0);
/** The largest 53-bit offset has 0x1fffff in its high word. */
const MAX_OFFSET_HIGH = 0x1f_ffff;

export class FrameDecoder {
  private limits: DecoderLimits;
  private readonly headerBuf = new Uint8Array(HEADER_SIZE);
  private headerFill = 0;
  /** Set while a payload is being collected. */
  private current: FrameHeader | undefined;
  private payload: Uint8Array | undefined;
  private payloadFill = 0;
  /** Bytes of a refused payload still to discard. */
  private skipping = 0;
  private failed: Error | undefined;
  sink: PayloadSink | undefined;
  /**
   * Where a payload that spans chunks is gathered (a buffer pool's take: at
   * least n bytes); a fresh array otherwise. The frame names it `gathered`
   * so its consumer can give it back.
   */
  gather: ((n: number) => Uint8Array) | undefined;
  private gathered: Uint8Array | undefined;

  constructor(limits: DecoderLimits, sink?: PayloadSink) {
    this.limits = { ...limits };
    this.sink = sink;
  }

  /** Change the limits (after negotiation). Takes effect from the next header. */
  setLimits(limits: Partial<DecoderLimits>): void {
    this.limits = { ...this.limits, ...limits };
  }

  getLimits(): Readonly<DecoderLimits> {
    return this.limits;
  }

  /** True between frames: no partial header or payload is held. */
  get idle(): boolean {
    return this.headerFill === 0 && this.current === undefined && this.skipping === 0;
  }

  /** Bytes currently buffered for an incomplete frame (for tests and metrics). */
  get buffered(): number {
    return this.headerFill + (this.payload && this.payload !== EMPTY ? this.payloadFill : 0);
  }

  push(chunk: Uint8Array): DecodedItem[] {
    if (this.failed) throw this.failed;
    const out: DecodedItem[] = [];
    try {
      this.consume(chunk, out);
    } catch (e) {
      this.failed = e as Error;
      this.current = undefined;
      this.payload = undefined;
      throw e;
    }
    return out;
  }

  private consume(chunk: Uint8Array, out: DecodedItem[]): void {
    let at = 0;
    const n = chunk.length;
    while (at < n) {
      if (this.skipping > 0) {
        const take = Math.min(this.skipping, n - at);
        this.skipping -= take;
        at += take;
        continue;
      }
      if (this.current === undefined) {
        // Collecting a header. Fast path: a whole header in the chunk, nothing partial.
        let hbytes: Uint8Array;
        if (this.headerFill === 0 && n - at >= HEADER_SIZE) {
          hbytes = chunk.subarray(at, at + HEADER_SIZE);
          at += HEADER_SIZE;
        } else {
          const take = Math.min(HEADER_SIZE - this.headerFill, n - at);
          this.headerBuf.set(chunk.subarray(at, at + take), this.headerFill);
          this.headerFill += take;
          at += take;
          if (this.headerFill < HEADER_SIZE) return;
          this.headerFill = 0;
          hbytes = this.headerBuf;
        }
        const header = this.judge(hbytes, out);
        if (header === undefined) continue; // oversize: now skipping
        if (header.payloadLength === 0) {
          out.push({ kind: 'frame', frame: { ...header, payload: EMPTY } });
          continue;
        }
        this.current = header;
        const target = this.sink?.(header);
        if (target !== undefined) {
          if (target.length !== header.payloadLength) throw new Error('payload sink returned a buffer of the wrong size');
          this.payload = target;
        } else if (n - at >= header.payloadLength) {
          // Whole payload in this chunk: hand out a view, no copy.
          const payload = chunk.subarray(at, at + header.payloadLength);
          at += header.payloadLength;
          this.current = undefined;
          out.push({ kind: 'frame', frame: { ...header, payload } });
          continue;
        } else {
          // Allocated only now, after the header passed the limit check.
          const g = this.gather?.(header.payloadLength);
          this.gathered = g;
          this.payload = g ? g.subarray(0, header.payloadLength) : new Uint8Array(header.payloadLength);
        }
        this.payloadFill = 0;
      }
      const cur = this.current;
      const buf = this.payload!;
      const take = Math.min(cur.payloadLength - this.payloadFill, n - at);
      buf.set(chunk.subarray(at, at + take), this.payloadFill);
      this.payloadFill += take;
      at += take;
      if (this.payloadFill === cur.payloadLength) {
        const gathered = this.gathered;
        this.current = undefined;
        this.payload = undefined;
        this.gathered = undefined;
        out.push({ kind: 'frame', frame: gathered ? { ...cur, payload: buf, gathered } : { ...cur, payload: buf } });
      }
    }
  }

  /** Check a header; returns it, or undefined if its payload is to be skipped (an 'oversize' item is queued). */
  private judge(bytes: Uint8Array, out: DecodedItem[]): FrameHeader | undefined {
    const h = readHeader(bytes);
    if (!isFrameType(h.type)) throw new ProtocolError(`unknown frame type ${h.type}`);
    if ((h.flags & ~KNOWN_FLAGS) !== 0) throw new ProtocolError(`unknown flags 0x${h.flags.toString(16)} on ${frameTypeName(h.type)}`);
    if (h.offsetHigh > MAX_OFFSET_HIGH) throw new ProtocolError(`offset beyond 2^53 on ${frameTypeName(h.type)}`);
    if (NO_PAYLOAD_TYPES.has(h.type) && h.payloadLength !== 0) {
      throw new ProtocolError(`${frameTypeName(h.type)} frame carries ${h.payloadLength} payload bytes`);
    }
    if (h.type === FrameType.WRITE && h.length !== h.payloadLength) {
      throw new ProtocolError(`WRITE frame declares ${h.length} bytes but carries ${h.payloadLength}`);
    }
    const header: FrameHeader = {
      type: h.type,
      flags: h.flags,
      status: h.status,
      id: h.id,
      offset: h.offset,
      length: h.length,
      payloadLength: h.payloadLength,
    };
    if (h.type === FrameType.CALL && this.limits.maxCall !== undefined) {
      if (h.payloadLength > this.limits.maxCall) {
        this.skipping = h.payloadLength;
        out.push({ kind: 'oversize', header, limit: this.limits.maxCall });
        return undefined;
      }
      return header;
    }
    if (CONTROL_TYPES.has(h.type)) {
      // A control body is small by nature; an oversized one is an attack or a bug: fatal.
      if (h.payloadLength > this.limits.maxControl) {
        const e = new RequestTooLargeError(h.payloadLength, this.limits.maxControl);
        throw new ProtocolError(`${frameTypeName(h.type)} body: ${e.message}`);
      }
      return header;
    }
    if (h.payloadLength > this.limits.maxPayload) {
      this.skipping = h.payloadLength;
      out.push({ kind: 'oversize', header, limit: this.limits.maxPayload });
      return undefined;
    }
    return header;
  }
}
