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
 *   checks ranges and sizes once at the top of a stack.
 */
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
  /**
   * Optional vectored write: `parts` laid end to end from `offset`, as one
   * write (same semantics and FUA as writeAt). Stores that can take pieces
   * without joining them (a memory copy per piece, pwritev) implement it so
   * callers holding scattered buffers — socket chunks — skip a gather copy.
   */
  writev?(parts: readonly Uint8Array[], offset: number, opts?: WriteOptions): Promise<void>;
  flush(): Promise<void>;
  trim(offset: number, length: number, opts?: WriteOptions): Promise<void>;
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void>;
  /**
   * Optional: how [offset, offset + length) is allocated, as consecutive
   * extents covering it in order. Lets NBD clients skip holes (block status);
   * stores that cannot tell leave it out and everything reads as data.
   */
  extents?(offset: number, length: number): Promise<Extent[]>;
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

/** Write scattered pieces as one write: the store's writev if it has one, else one gathered buffer. */
export function writeParts(store: ReadWriterAt, parts: readonly Uint8Array[], offset: number, opts?: WriteOptions): Promise<void> {
  if (parts.length === 1) return store.writeAt(parts[0]!, offset, opts);
  if (store.writev) return store.writev(parts, offset, opts);
  return store.writeAt(Buffer.concat(parts), offset, opts);
}
