/**
 * The transmission-phase request decoder, sans-IO. Feed socket chunks with
 * `push`; it calls `onRequest` for each complete request. A WRITE's payload is
 * handed over as a view into the incoming chunk when it arrives whole (no
 * copy), otherwise gathered into one buffer.
 *
 * Bounded: a READ or WRITE whose length exceeds `maxPayload` is reported with
 * `tooLarge` and, for a WRITE, its payload is skipped as it streams in — never
 * buffered. The consumer can pause decoding (return false from onRequest) to
 * bound requests in flight; `resume` continues with what is already queued.
 */
import { CMD_READ, CMD_WRITE, REQUEST_HEADER_SIZE, REQUEST_MAGIC } from './constants.ts';

export interface NbdRequest {
  flags: number;
  type: number;
  /** The client's 64-bit cookie, kept as two halves to avoid bigint on the hot path. */
  handleHi: number;
  handleLo: number;
  offset: number;
  length: number;
  /** WRITE data (exactly `length` bytes) unless tooLarge. */
  payload?: Uint8Array;
  /** The length is above the negotiated maximum; any payload was discarded. */
  tooLarge?: boolean;
  /** The pooled buffer `payload` was gathered into, to hand back once the write is done. */
  gathered?: Buffer;
  /** With `vectored` decoding: the payload as views into the received chunks, in order. */
  parts?: Buffer[];
}

/** Where gathered payloads come from (a BufferPool); plain allocation by default. */
export type Allocate = (n: number) => Buffer;

export type RequestSink = (req: NbdRequest) => boolean | void;

export class RequestDecoder {
  private chunks: Buffer[] = [];
  private head = 0; // read position in chunks[0]
  private available = 0;
  private paused = false;
  private pending: NbdRequest | undefined; // header parsed, payload not yet complete
  private skipping = 0;
  private failed: string | undefined;

  private readonly maxPayload: number;
  private readonly onRequest: RequestSink;
  private readonly allocate: Allocate;
  private readonly vectored: boolean;
  constructor(
    maxPayload: number,
    onRequest: RequestSink,
    allocate: Allocate = Buffer.allocUnsafe,
    /** Hand a payload that spans chunks over as `parts` (views) instead of gathering it. */
    vectored: boolean = false,
  ) {
    this.maxPayload = maxPayload;
    this.onRequest = onRequest;
    this.allocate = allocate;
    this.vectored = vectored;
  }

  /** Queue bytes and decode as far as possible. Throws on a protocol violation (bad magic). */
  push(chunk: Buffer): void {
    if (this.failed) throw new Error(this.failed);
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.available += chunk.length;
    this.drain();
  }

  /** Continue after onRequest returned false. */
  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.drain();
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** Bytes received but not yet decoded (bounded by one socket chunk while paused). */
  get buffered(): number {
    return this.available;
  }

  private drain(): void {
    while (!this.paused) {
      if (this.skipping > 0) {
        const n = Math.min(this.skipping, this.available);
        this.consume(n);
        this.skipping -= n;
        if (this.skipping > 0) return;
        continue;
      }
      if (this.pending) {
        const req = this.pending;
        if (this.available < req.length) return;
        const first = this.chunks[0]!;
        if (first.length - this.head >= req.length) req.payload = this.take(req.length);
        else if (this.vectored) req.parts = this.takeParts(req.length);
        else {
          req.gathered = this.allocate(req.length);
          req.payload = this.gatherInto(req.gathered, req.length);
        }
        this.pending = undefined;
        this.emit(req);
        continue;
      }
      if (this.available < REQUEST_HEADER_SIZE) return;
      const h = this.take(REQUEST_HEADER_SIZE);
      const dv = new DataView(h.buffer, h.byteOffset, REQUEST_HEADER_SIZE);
      const magic = dv.getUint32(0);
      if (magic !== REQUEST_MAGIC) {
        this.failed = `bad request magic 0x${magic.toString(16)}`;
        throw new Error(this.failed);
      }
      const req: NbdRequest = {
        flags: dv.getUint16(4),
        type: dv.getUint16(6),
        handleHi: dv.getUint32(8),
        handleLo: dv.getUint32(12),
        // Offsets above 2^53 lose precision but stay far beyond any export: still out of range.
        offset: dv.getUint32(16) * 0x100000000 + dv.getUint32(20),
        length: dv.getUint32(24),
      };
      // Only READ and WRITE move `length` bytes. TRIM, WRITE_ZEROES and CACHE
      // may exceed the maximum block size (proto.md: the server SHOULD NOT
      // fail them for that), and qemu sends discards of up to 2 GiB.
      if (req.length > this.maxPayload && (req.type === CMD_READ || req.type === CMD_WRITE)) {
        req.tooLarge = true;
        if (req.type === CMD_WRITE) this.skipping = req.length;
        this.emit(req);
        continue;
      }
      if (req.type === CMD_WRITE && req.length > 0) {
        this.pending = req;
        continue;
      }
      this.emit(req);
    }
  }

  private emit(req: NbdRequest): void {
    if (this.onRequest(req) === false) this.paused = true;
  }

  /** Drop n buffered bytes. */
  private consume(n: number): void {
    this.available -= n;
    while (n > 0) {
      const first = this.chunks[0]!;
      const left = first.length - this.head;
      if (n < left) {
        this.head += n;
        return;
      }
      n -= left;
      this.chunks.shift();
      this.head = 0;
    }
  }

  /** Take n buffered bytes: a view when they lie in one chunk, else one gathered copy. */
  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.consume(n);
      return out;
    }
    return this.gatherInto(Buffer.allocUnsafe(n), n);
  }

  /** The next n buffered bytes as views into the chunks they arrived in (no copy). */
  private takeParts(n: number): Buffer[] {
    const parts: Buffer[] = [];
    while (n > 0) {
      const c = this.chunks[0]!;
      const m = Math.min(n, c.length - this.head);
      parts.push(c.subarray(this.head, this.head + m));
      this.consume(m);
      n -= m;
    }
    return parts;
  }

  /** Copy the next n buffered bytes into the front of `out`; returns that view. */
  private gatherInto(out: Buffer, n: number): Buffer {
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const m = Math.min(n - filled, c.length - this.head);
      c.copy(out, filled, this.head, this.head + m);
      filled += m;
      this.consume(m);
    }
    return out.length === n ? out : out.subarray(0, n);
  }
}
