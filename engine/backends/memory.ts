/**
 * MemoryBackend: a sparse region held in this process's memory.
 *
 * The region is split into fixed chunks that are allocated on first write;
 * untouched chunks cost nothing and read back as zeros, so a 1 TiB region
 * that is mostly empty is cheap. Trim and writeZeroes drop whole chunks and
 * zero the partial ones at the edges. This is the store behind
 * `--backend memory` and the one the NBD server's throughput target
 * (≥ 0.9× `nbdkit memory`) is measured on, so it stays lean: reads copy
 * straight from the chunk into the caller's buffer (one memcpy, no
 * allocation), writes copy once into the chunk.
 *
 * Chunk size (default 256 KiB): any chunk size from 64 KiB to 4 MiB copies
 * at memory speed, far above what an NBD socket carries (bench/RESULTS.md,
 * "memory backend chunk size"). So the choice is about sparseness: 256 KiB
 * is fine-grained enough that scattered small writes and trims cost little
 * memory, matches
 * nbdcopy's default request size (a typical request touches one chunk), and
 * keeps the chunk map short (4 Ki entries per GiB written).
 */
import { ClosedError, ReadOnlyError } from '../../base/errors.ts';
import { pushExtent, type Extent, type ReadWriterAt, type StoreCaps, type WriteOptions, type ZeroOptions } from '../rwat.ts';
import { chunkPieces } from '../../base/chunk-pieces.ts';
import { EXTENTS, VECTORED, offer, type Capability } from '../capability.ts';

export const DEFAULT_MEMORY_CHUNK_SIZE = 256 * 1024;

export interface MemoryBackendOptions {
  /** Allocation unit in bytes (default 256 KiB). */
  chunkSize?: number;
  readOnly?: boolean;
}

export class MemoryBackend implements ReadWriterAt {
  readonly caps: StoreCaps;
  readonly chunkSize: number;
  private readonly regionSize: number;
  private readonly chunks = new Map<number, Uint8Array>();
  private allocated = 0;
  private closed = false;

  constructor(size: number, opts: MemoryBackendOptions = {}) {
    const chunkSize = opts.chunkSize ?? DEFAULT_MEMORY_CHUNK_SIZE;
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`memory backend: bad size ${size}`);
    if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) throw new RangeError(`memory backend: bad chunk size ${chunkSize}`);
    this.regionSize = size;
    this.chunkSize = chunkSize;
    this.caps = {
      readOnly: opts.readOnly ?? false,
      canTrim: true,
      fastZero: true,
      // One process, one copy of the bytes: every client sees every write.
      multiConn: true,
      preferredBlockSize: 4096,
    };
  }

  /** Bytes held by allocated chunks (for tests and stats). */
  allocatedBytes(): number {
    return this.allocated;
  }

  async size(): Promise<number> {
    if (this.closed) throw new ClosedError('memory backend');
    return this.regionSize;
  }

  async readAt(buf: Uint8Array, offset: number): Promise<void> {
    if (this.closed) throw new ClosedError('memory backend');
    for (const { index, within, at, length } of chunkPieces(offset, buf.length, this.chunkSize)) {
      const chunk = this.chunks.get(index);
      if (chunk === undefined) buf.fill(0, at, at + length);
      else buf.set(within === 0 && length === chunk.length ? chunk : chunk.subarray(within, within + length), at);
    }
  }

  async writeAt(data: Uint8Array, offset: number, _opts?: WriteOptions): Promise<void> {
    this.checkWritable();
    this.copyIn(data, offset);
  }

  /** Pieces go straight into the chunks: no gathering first. */
  async writev(parts: readonly Uint8Array[], offset: number, _opts?: WriteOptions): Promise<void> {
    this.checkWritable();
    let at = offset;
    for (const p of parts) {
      this.copyIn(p, at);
      at += p.length;
    }
  }

  private copyIn(data: Uint8Array, offset: number): void {
    for (const { index, within, at, length } of chunkPieces(offset, data.length, this.chunkSize)) {
      const chunk = this.chunks.get(index) ?? this.allocate(index);
      chunk.set(length === data.length ? data : data.subarray(at, at + length), within);
    }
  }

  /** Untouched (or trimmed) chunks are holes that read as zeros. */
  async extents(offset: number, length: number): Promise<Extent[]> {
    if (this.closed) throw new ClosedError('memory backend');
    const out: Extent[] = [];
    for (const { index, length: n } of chunkPieces(offset, length, this.chunkSize)) {
      const hole = !this.chunks.has(index);
      pushExtent(out, { length: n, hole, zero: hole });
    }
    return out;
  }

  /** Memory is as durable as it gets: nothing to do. */
  async flush(): Promise<void> {
    if (this.closed) throw new ClosedError('memory backend');
  }

  async trim(offset: number, length: number, _opts?: WriteOptions): Promise<void> {
    this.checkWritable();
    this.zeroRange(offset, length, false);
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.checkWritable();
    this.zeroRange(offset, length, opts?.noHole ?? false);
  }

  /** Block status and vectored writes are native here. */
  capability<T>(key: Capability<T>): T | undefined {
    return offer(key, this, EXTENTS, VECTORED);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.chunks.clear();
    this.allocated = 0;
  }

  private checkWritable(): void {
    if (this.closed) throw new ClosedError('memory backend');
    if (this.caps.readOnly) throw new ReadOnlyError('memory backend');
  }

  private allocate(idx: number): Uint8Array {
    const len = Math.min(this.chunkSize, this.regionSize - idx * this.chunkSize);
    const chunk = new Uint8Array(len);
    this.chunks.set(idx, chunk);
    this.allocated += len;
    return chunk;
  }

  /** Free chunks the range covers whole (unless `keep`), zero the rest in place. */
  private zeroRange(offset: number, length: number, keep: boolean): void {
    if (length === 0) return;
    const cs = this.chunkSize;
    const end = offset + length;
    const first = Math.floor(offset / cs);
    const last = Math.floor((end - 1) / cs);
    if (!keep && last - first > 2 * this.chunks.size) {
      // A large range over a sparse region (a whole-device discard): visit
      // only the chunks that exist instead of every index in the range.
      for (const idx of [...this.chunks.keys()]) if (idx >= first && idx <= last) this.zeroIn(idx, offset, end, false);
      return;
    }
    for (let idx = first; idx <= last; idx++) this.zeroIn(idx, offset, end, keep);
  }

  /** The part of [offset, end) inside chunk `idx`: free it if whole, else zero it. */
  private zeroIn(idx: number, offset: number, end: number, keep: boolean): void {
    const start = idx * this.chunkSize;
    const chunkEnd = Math.min(start + this.chunkSize, this.regionSize);
    const from = Math.max(offset, start);
    const stop = Math.min(chunkEnd, end);
    const chunk = this.chunks.get(idx);
    if (from === start && stop === chunkEnd && !keep) {
      if (chunk !== undefined) {
        this.chunks.delete(idx);
        this.allocated -= chunk.length;
      }
    } else if (chunk !== undefined) {
      chunk.fill(0, from - start, stop - start);
    } else if (keep) {
      this.allocate(idx); // fresh chunks are zero
    }
  }
}
