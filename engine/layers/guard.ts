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
 *
 * Capabilities that take ranges (extents, vectored writes) are answered
 * with checked wrappers, so nothing reaches the store below unchecked;
 * the rest (tracking) pass through.
 *
 * Where it sits: engine/stack.ts puts a guard on top of every stack it
 * builds. The wire frontends (NBD connection, quicmap server session) check
 * requests themselves at the trust boundary, to answer with their own wire
 * errors; the guard is the same check for in-process callers and the
 * assertion that holds for everything below it.
 */
import { ClosedError, OutOfRangeError, QuicmapError, ReadOnlyError, RequestTooLargeError } from '../../base/errors.ts';
import { EXTENTS, VECTORED, type Capability, type ExtentStore, type VectoredStore } from '../capability.ts';
import type { Extent, ReadWriterAt, StoreCaps, WriteOptions, ZeroOptions } from '../rwat.ts';
import { threadDescriptor, type SharedStoreDescriptor, type ThreadShareable } from '../shared-store.ts';
import { PassThroughLayer } from './pass-through.ts';

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

export class GuardLayer extends PassThroughLayer implements ThreadShareable {
  private readonly ownCaps: StoreCaps;
  private readonly regionSize: number;
  private readonly maxRequest: number;
  private closed = false;

  /** Wrap `inner`, reading its size once. */
  static async open(inner: ReadWriterAt, opts: GuardOptions): Promise<GuardLayer> {
    return new GuardLayer(inner, await inner.size(), opts);
  }

  /** With the size already known; prefer `GuardLayer.open`. */
  constructor(inner: ReadWriterAt, size: number, opts: GuardOptions) {
    super(inner);
    if (!Number.isSafeInteger(opts.maxRequest) || opts.maxRequest <= 0) {
      throw new RangeError(`maxRequest must be a positive integer, not ${opts.maxRequest}`);
    }
    this.regionSize = size;
    this.maxRequest = opts.maxRequest;
    this.ownCaps = { ...inner.caps, readOnly: inner.caps.readOnly || (opts.readOnly ?? false) };
  }

  override get caps(): StoreCaps {
    return this.ownCaps;
  }

  /** The guard keeps no state between requests: it is shareable when what it wraps is. */
  threadDescriptor(): SharedStoreDescriptor | undefined {
    const inner = threadDescriptor(this.inner);
    return inner && { kind: 'guard', maxRequest: this.maxRequest, readOnly: this.caps.readOnly, inner };
  }

  override async size(): Promise<number> {
    if (this.closed) throw new ClosedError();
    return this.regionSize;
  }

  override async readAt(buf: Uint8Array, offset: number): Promise<void> {
    this.check(offset, buf.length, false, true);
    if (buf.length > 0) await this.inner.readAt(buf, offset);
  }

  override async writeAt(data: Uint8Array, offset: number, opts?: WriteOptions): Promise<void> {
    this.check(offset, data.length, true, true);
    if (data.length > 0) await this.inner.writeAt(data, offset, opts);
    else if (opts?.fua) await this.inner.flush();
  }

  override async flush(): Promise<void> {
    if (this.closed) throw new ClosedError();
    await this.inner.flush();
  }

  override async trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    this.check(offset, length, true, false);
    if (length > 0) await this.inner.trim(offset, length, opts);
  }

  override async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.check(offset, length, true, false);
    if (length > 0) await this.inner.writeZeroes(offset, length, opts);
  }

  override capability<T>(key: Capability<T>): T | undefined {
    if (key === (EXTENTS as Capability<unknown>)) return ((this.checkedExtents ??= this.wrapExtents()) || undefined) as T | undefined;
    if (key === (VECTORED as Capability<unknown>)) return ((this.checkedWritev ??= this.wrapWritev()) || undefined) as T | undefined;
    return this.inner.capability(key);
  }

  // Wrappers are built once (writeParts asks on every NBD write); false: the store below has none.
  private checkedExtents: ExtentStore | false | undefined;
  private checkedWritev: VectoredStore | false | undefined;

  private wrapExtents(): ExtentStore | false {
    const e = this.inner.capability(EXTENTS);
    if (!e) return false;
    return {
      extents: async (offset: number, length: number): Promise<Extent[]> => {
        this.check(offset, length, false, false);
        return length > 0 ? e.extents(offset, length) : [];
      },
    };
  }

  private wrapWritev(): VectoredStore | false {
    const v = this.inner.capability(VECTORED);
    if (!v) return false;
    return {
      writev: async (parts: readonly Uint8Array[], offset: number, opts?: WriteOptions): Promise<void> => {
        let n = 0;
        for (const p of parts) n += p.length;
        this.check(offset, n, true, true);
        if (n > 0) await v.writev(parts, offset, opts);
        else if (opts?.fua) await this.inner.flush();
      },
    };
  }

  override async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.inner.close();
  }

  private check(offset: number, length: number, writes: boolean, payload: boolean): void {
    if (this.closed) throw new ClosedError();
    if (writes && this.ownCaps.readOnly) throw new ReadOnlyError();
    if (!Number.isSafeInteger(offset) || offset < 0) throw new InvalidRequestError('offset', offset);
    if (!Number.isSafeInteger(length) || length < 0) throw new InvalidRequestError('length', length);
    if (payload && length > this.maxRequest) throw new RequestTooLargeError(length, this.maxRequest);
    if (offset > this.regionSize || length > this.regionSize - offset) {
      throw new OutOfRangeError(offset, length, this.regionSize);
    }
  }
}
