/**
 * The one storage abstraction of quicmap: everything that stores bytes — a
 * backend, a remote peer's region, a cache — is a ReadWriterAt, and every
 * feature is a layer that wraps one and is one too (nbdkit filters, r3map's
 * rwat pipeline). A mount reads top to bottom as a stack of these.
 *
 * Contract:
 * - `readAt` fills `buf` completely from `offset` (it never returns short
 *   inside the region); reading into a caller-owned buffer lets the NBD server
 *   read straight into its reply without a copy.
 * - `writeAt` writes all of `data`. With `fua` the bytes are durable when the
 *   promise resolves. The store must not keep a reference to `data` after
 *   the promise settles: callers recycle the buffer (the NBD server pools
 *   them). Likewise `readAt` owns `buf` only until it settles.
 * - `flush` makes every write acknowledged before it durable.
 * - `trim` is advisory: the range's contents become unspecified (stores that
 *   can free space do; the ones that cannot may ignore it).
 * - `writeZeroes` makes the range read back as zeros; stores that can do it
 *   cheaply (sparse memory, hole punching) implement it, otherwise
 *   `zeroFallback` writes zero buffers.
 * - Offsets and lengths are plain numbers (exact up to 2^53 bytes).
 * - Implementations validate nothing they do not need to: the `GuardLayer`
 *   checks ranges and sizes once at the top of a stack (engine/stack.ts puts
 *   one on every stack), and the wire frontends check each request once at
 *   the trust boundary before it reaches the stack.
 * - Anything beyond this core (extents, vectored writes, dirty tracking) is
 *   a capability queried with `capability(KEY)`.
 */
import { VECTORED, type Capability } from './capability.ts';

export interface WriteOptions {
  /** Force unit access: durable before the promise resolves. */
  fua?: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** The caller wants the range allocated (no hole punched). */
  noHole?: boolean;
}

export interface ReadWriterAt {
  /** Size in bytes; fixed for the life of the store. */
  size(): Promise<number>;
  readAt(buf: Uint8Array, offset: number): Promise<void>;
  writeAt(data: Uint8Array, offset: number, opts?: WriteOptions): Promise<void>;
  flush(): Promise<void>;
  trim(offset: number, length: number, opts?: WriteOptions): Promise<void>;
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void>;
  /**
   * The store's answer to a capability query (block status, vectored
   * writes, dirty tracking: engine/capability.ts), or undefined when it has
   * none. Layers pass queries they do not change down to the store below.
   */
  capability<T>(key: Capability<T>): T | undefined;
  /** Release resources. Further calls fail with ClosedError. Idempotent. */
  close(): Promise<void>;
  /** Static facts a frontend advertises (NBD flags, block sizes). */
  readonly caps: StoreCaps;
}

export interface Extent {
  length: number;
  /** Not allocated (reads as zeros and costs no space). */
  hole: boolean;
  /** Known to read as zeros. */
  zero: boolean;
}

/** Append an extent, merging it into the last one when their kind matches. */
export function pushExtent(list: Extent[], e: Extent): void {
  const last = list[list.length - 1];
  if (last && last.hole === e.hole && last.zero === e.zero) last.length += e.length;
  else list.push({ ...e });
}

export interface StoreCaps {
  readOnly: boolean;
  /** Trim frees space (otherwise trim is a no-op and need not be advertised). */
  canTrim: boolean;
  /** writeZeroes is cheaper than writing a zero buffer. */
  fastZero: boolean;
  /** Safe for several clients at once: a flush on one covers writes on all. */
  multiConn: boolean;
  /** Preferred I/O granularity in bytes (a power of two). */
  preferredBlockSize: number;
}

/** A zeroed buffer reused by writers that must send zeros; never written to. */
const ZERO_BLOCK = new Uint8Array(1 << 20);

/** writeZeroes for stores with no cheaper way: write shared zero blocks. */
export async function zeroFallback(
  store: Pick<ReadWriterAt, 'writeAt'>,
  offset: number,
  length: number,
  opts?: WriteOptions,
): Promise<void> {
  let at = offset;
  const end = offset + length;
  while (at < end) {
    const n = Math.min(ZERO_BLOCK.length, end - at);
    const last = at + n >= end;
    await store.writeAt(ZERO_BLOCK.subarray(0, n), at, last ? opts : undefined);
    at += n;
  }
  // A FUA on the last piece alone does not cover the earlier ones on every
  // store; callers that need the whole range durable get it from the store's
  // flush, which the FUA path of every backend performs.
}

/** Write scattered pieces as one write: the store's VectoredStore if it has one, else one gathered buffer. */
export function writeParts(store: ReadWriterAt, parts: readonly Uint8Array[], offset: number, opts?: WriteOptions): Promise<void> {
  if (parts.length === 1) return store.writeAt(parts[0]!, offset, opts);
  const v = store.capability(VECTORED);
  if (v) return v.writev(parts, offset, opts);
  return store.writeAt(Buffer.concat(parts), offset, opts);
}
