/**
 * ChunkedLayer: presents a byte-addressable region over a store that wants
 * whole chunks (a remote peer, sealed chunks, a content-addressed cache).
 *
 * What the inner store sees:
 * - every readAt / writeAt is exactly one chunk: offset = k·chunkSize and
 *   length = chunkSize (shorter only for the last chunk of the region);
 * - trim / writeZeroes cover whole chunks (chunk-aligned start, and an end
 *   that is chunk-aligned or the end of the region).
 *
 * How: whole chunks inside a request go straight through as views of the
 * caller's buffer (no copy); only the partial chunks at the edges are read
 * (reads) or read-modified-written (writes, writeZeroes). Partial trims are
 * dropped (trim is advisory). Chunks of one request are issued concurrently.
 *
 * Writes, zeroes and trims take a lock on the chunks they touch, so two
 * partial writes to one chunk cannot both read the old chunk and lose one
 * another's bytes, and a whole-chunk write cannot land in the middle of a
 * read-modify-write. Overlapping requests are served in arrival order;
 * disjoint ones run in parallel. Reads take no lock (as on a disk, a read
 * racing a write of the same bytes may see either).
 */
import { ClosedError } from '../../base/errors.ts';
import { chunkPieces } from '../../base/chunk-pieces.ts';
import { settleAll } from '../../base/split-range.ts';
import { VECTORED, type Capability } from '../capability.ts';
import type { ReadWriterAt, StoreCaps, WriteOptions, ZeroOptions } from '../rwat.ts';
import { PassThroughLayer } from './pass-through.ts';

interface Held {
  first: number;
  last: number;
  done: Promise<void>;
}

/** Scratch chunk buffers kept for reuse (RMW and partial reads). */
const POOL_MAX = 8;

export class ChunkedLayer extends PassThroughLayer {
  private readonly ownCaps: StoreCaps;
  readonly chunkSize: number;
  private sizeP: Promise<number> | undefined;
  private readonly held: Held[] = [];
  private readonly pool: Uint8Array[] = [];
  private closed = false;

  constructor(inner: ReadWriterAt, chunkSize: number) {
    super(inner);
    if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) throw new RangeError(`bad chunk size ${chunkSize}`);
    this.chunkSize = chunkSize;
    const pow2 = (chunkSize & (chunkSize - 1)) === 0 && chunkSize <= 2 ** 30;
    this.ownCaps = {
      ...inner.caps,
      // Requests aligned to whole chunks avoid read-modify-write.
      preferredBlockSize: pow2 ? Math.max(chunkSize, inner.caps.preferredBlockSize) : inner.caps.preferredBlockSize,
    };
  }

  override get caps(): StoreCaps {
    return this.ownCaps;
  }

  /** Extents and tracking keep their offsets through this layer; vectored writes would skip the chunking. */
  override capability<T>(key: Capability<T>): T | undefined {
    return key === (VECTORED as Capability<unknown>) ? undefined : this.inner.capability(key);
  }

  override size(): Promise<number> {
    if (this.closed) return Promise.reject(new ClosedError('chunked layer'));
    return (this.sizeP ??= this.inner.size());
  }

  override async readAt(buf: Uint8Array, offset: number): Promise<void> {
    const size = await this.size();
    const n = buf.length;
    if (n === 0) return;
    const cs = this.chunkSize;
    const jobs: Promise<void>[] = [];
    for (const { index, within, at, length } of chunkPieces(offset, n, cs)) {
      const cStart = index * cs;
      const cLen = Math.min(cs, size - cStart); // the last chunk may be short
      const piece = length === n ? buf : buf.subarray(at, at + length);
      if (within === 0 && length === cLen) jobs.push(this.inner.readAt(piece, cStart));
      else jobs.push(this.readPartial(piece, cStart, cLen, within));
    }
    await settleAll(jobs); // never leave a job running behind a released lock
  }

  override async writeAt(data: Uint8Array, offset: number, opts?: WriteOptions): Promise<void> {
    const size = await this.size();
    const n = data.length;
    if (n === 0) return;
    const cs = this.chunkSize;
    const end = offset + n;
    const unlock = await this.lock(Math.floor(offset / cs), Math.floor((end - 1) / cs));
    try {
      const jobs: Promise<void>[] = [];
      for (const { index, within, at, length } of chunkPieces(offset, n, cs)) {
        const cStart = index * cs;
        const cLen = Math.min(cs, size - cStart);
        const piece = length === n ? data : data.subarray(at, at + length);
        if (within === 0 && length === cLen) jobs.push(this.inner.writeAt(piece, cStart, opts));
        else jobs.push(this.modify(cStart, cLen, (chunk) => chunk.set(piece, within), opts));
      }
      await settleAll(jobs); // never leave a job running behind a released lock
    } finally {
      unlock();
    }
  }

  override async flush(): Promise<void> {
    if (this.closed) throw new ClosedError('chunked layer');
    await this.inner.flush();
  }

  override async trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    const size = await this.size();
    const [a, b] = this.wholeChunks(offset, offset + length, size);
    if (b <= a) return; // only partial chunks: trim is advisory, drop it
    const unlock = await this.lock(a / this.chunkSize, Math.ceil(b / this.chunkSize) - 1);
    try {
      await this.inner.trim(a, b - a, opts);
    } finally {
      unlock();
    }
  }

  override async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    const size = await this.size();
    if (length === 0) return;
    const cs = this.chunkSize;
    const end = offset + length;
    const [a, b] = this.wholeChunks(offset, end, size);
    const unlock = await this.lock(Math.floor(offset / cs), Math.floor((end - 1) / cs));
    try {
      const jobs: Promise<void>[] = [];
      const edge = (s: number, e: number) => {
        const cStart = Math.floor(s / cs) * cs;
        const cLen = Math.min(cs, size - cStart);
        jobs.push(this.modify(cStart, cLen, (chunk) => chunk.fill(0, s - cStart, e - cStart), opts));
      };
      if (b > a) {
        if (offset < a) edge(offset, a);
        jobs.push(this.inner.writeZeroes(a, b - a, opts));
        if (b < end) edge(b, end);
      } else {
        // No whole chunk: one or two partial chunks.
        const mid = Math.min(end, (Math.floor(offset / cs) + 1) * cs);
        edge(offset, mid);
        if (mid < end) edge(mid, end);
      }
      await settleAll(jobs); // never leave a job running behind a released lock
    } finally {
      unlock();
    }
  }

  override async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.pool.length = 0;
    await this.inner.close();
  }

  // ---- internals ----

  /** The chunk-aligned part [a, b) of [start, end); the region's end counts as aligned. */
  private wholeChunks(start: number, end: number, size: number): [number, number] {
    const cs = this.chunkSize;
    const a = Math.ceil(start / cs) * cs;
    const b = end === size ? end : Math.floor(end / cs) * cs;
    return [a, Math.max(a, b)];
  }

  private async readPartial(out: Uint8Array, cStart: number, cLen: number, within: number): Promise<void> {
    const scratch = this.take(cLen);
    try {
      await this.inner.readAt(scratch, cStart);
      out.set(scratch.subarray(within, within + out.length));
    } finally {
      this.give(scratch);
    }
  }

  /** Read-modify-write one chunk (the caller holds its lock). */
  private async modify(cStart: number, cLen: number, edit: (chunk: Uint8Array) => void, opts?: WriteOptions): Promise<void> {
    const scratch = this.take(cLen);
    try {
      await this.inner.readAt(scratch, cStart);
      edit(scratch);
      await this.inner.writeAt(scratch, cStart, opts?.fua ? { fua: true } : undefined);
    } finally {
      this.give(scratch);
    }
  }

  private take(len: number): Uint8Array {
    const buf = this.pool.pop() ?? new Uint8Array(this.chunkSize);
    return len === buf.length ? buf : buf.subarray(0, len);
  }

  private give(buf: Uint8Array): void {
    if (this.pool.length < POOL_MAX && !this.closed) this.pool.push(new Uint8Array(buf.buffer, buf.byteOffset, this.chunkSize));
  }

  /**
   * Lock chunks first..last: wait for every earlier holder of an overlapping
   * range, then hold until the returned function is called. Registration is
   * synchronous, so later arrivals queue behind this one (FIFO per chunk, no
   * deadlock: each waits only on earlier holders).
   */
  private async lock(first: number, last: number): Promise<() => void> {
    if (this.closed) throw new ClosedError('chunked layer');
    let waits: Promise<void>[] | undefined;
    for (const h of this.held) {
      if (h.first <= last && first <= h.last) (waits ??= []).push(h.done);
    }
    let release!: () => void;
    const entry: Held = { first, last, done: new Promise<void>((r) => (release = r)) };
    this.held.push(entry);
    if (waits) await Promise.all(waits);
    return () => {
      const i = this.held.indexOf(entry);
      if (i >= 0) this.held.splice(i, 1);
      release();
    };
  }
}
