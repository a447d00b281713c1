/**
 * GuardLayer: the top of every stack the NBD server (or any frontend) serves.
 * It checks each request once, so the layers and backends below can trust
 * their arguments: offsets and lengths are non-negative safe integers, the
 * range lies inside the region (size read once at open), reads and writes
 * are no larger than `maxRequest`, and nothing writes, trims or zeroes a
 * read-only region. Violations are typed errors with an errno-style code
 * (EINVAL, EOVERFLOW, EPERM) the server maps to an NBD error reply.
 *
 * `maxRequest` bounds read/write payloads only: trim and writeZeroes carry
 * no payload, and NBD clients send them over large ranges.
 */
import { ClosedError, OutOfRangeError, QuicmapError, ReadOnlyError, RequestTooLargeError } from '../../base/errors.ts';
import type { ReadWriterAt, StoreCaps, WriteOptions, ZeroOptions } from '../rwat.ts';

/** An offset or length that is not a non-negative safe integer. */
export class InvalidRequestError extends QuicmapError {
  constructor(what: string, value: number) {
    super('EINVAL', `${what} must be a non-negative integer, not ${value}`);
  }
}

export interface GuardOptions {
  /** Largest read or write accepted, in bytes. */
  maxRequest: number;
  /** Refuse writes, trims and zeroes even if the store below could take them. */
  readOnly?: boolean;
}

export class GuardLayer implements ReadWriterAt {
  readonly caps: StoreCaps;
  private readonly inner: ReadWriterAt;
  private readonly regionSize: number;
  private readonly maxRequest: number;
  private closed = false;

  /** Wrap `inner`, reading its size once. */
  static async open(inner: ReadWriterAt, opts: GuardOptions): Promise<GuardLayer> {
    return new GuardLayer(inner, await inner.size(), opts);
  }

  /** With the size already known; prefer `GuardLayer.open`. */
  constructor(inner: ReadWriterAt, size: number, opts: GuardOptions) {
    if (!Number.isSafeInteger(opts.maxRequest) || opts.maxRequest <= 0) {
      throw new RangeError(`maxRequest must be a positive integer, not ${opts.maxRequest}`);
    }
    this.inner = inner;
    this.regionSize = size;
    this.maxRequest = opts.maxRequest;
    this.caps = { ...inner.caps, readOnly: inner.caps.readOnly || (opts.readOnly ?? false) };
  }

  async size(): Promise<number> {
    if (this.closed) throw new ClosedError();
    return this.regionSize;
  }

  async readAt(buf: Uint8Array, offset: number): Promise<void> {
    this.check(offset, buf.length, false, true);
    if (buf.length > 0) await this.inner.readAt(buf, offset);
  }

  async writeAt(data: Uint8Array, offset: number, opts?: WriteOptions): Promise<void> {
    this.check(offset, data.length, true, true);
    if (data.length > 0) await this.inner.writeAt(data, offset, opts);
    else if (opts?.fua) await this.inner.flush();
  }

  async flush(): Promise<void> {
    if (this.closed) throw new ClosedError();
    await this.inner.flush();
  }

  async trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    this.check(offset, length, true, false);
    if (length > 0) await this.inner.trim(offset, length, opts);
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.check(offset, length, true, false);
    if (length > 0) await this.inner.writeZeroes(offset, length, opts);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.inner.close();
  }

  private check(offset: number, length: number, writes: boolean, payload: boolean): void {
    if (this.closed) throw new ClosedError();
    if (writes && this.caps.readOnly) throw new ReadOnlyError();
    if (!Number.isSafeInteger(offset) || offset < 0) throw new InvalidRequestError('offset', offset);
    if (!Number.isSafeInteger(length) || length < 0) throw new InvalidRequestError('length', length);
    if (payload && length > this.maxRequest) throw new RequestTooLargeError(length, this.maxRequest);
    if (offset > this.regionSize || length > this.regionSize - offset) {
      throw new OutOfRangeError(offset, length, this.regionSize);
    }
  }
}
