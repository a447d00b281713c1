/**
 * SharedMemoryBackend: a sparse region in shared memory that every thread
 * of this process can reach — the memory store the NBD server's worker
 * threads serve in parallel (engine/nbd/workers.ts).
 *
 * The bytes live in a memfd (tmpfs) mapped MAP_SHARED in slabs of 1 GiB (a
 * typed array cannot span more); a worker thread maps the very same pages
 * by mapping id (`attach`), so a write on any thread is seen by every other
 * at once, with no copy between threads. Reads and writes are one memcpy,
 * as in MemoryBackend.
 *
 * Sparse like MemoryBackend: a map of written chunks (64 KiB, one byte
 * each, in a SharedArrayBuffer every thread sees) says which parts hold
 * data. Reads of unwritten chunks return zeros without touching the mapping
 * — a read fault on a shmem hole would allocate the page — so an untouched
 * region costs nothing however much it is read; trim and zeroing of whole
 * chunks clear them in the map and punch the pages out of the memfd, giving
 * the memory back; block status reports the map. Two threads racing on one
 * chunk see either the old or the new bytes, as with any two NBD clients
 * writing and reading the same range at once.
 *
 * Needs the native addon (mmap, memfd, fallocate, lseek): `available()`
 * says whether it loads, and openBackend falls back to MemoryBackend.
 */
import { ClosedError, ReadOnlyError } from '../../base/errors.ts';
import { chunkPieces } from '../../base/chunk-pieces.ts';
import { loadNative, nativeAvailable, type NativeBinding } from '../../native/index.ts';
import { EXTENTS, VECTORED, offer, type Capability } from '../capability.ts';
import { pushExtent, type Extent, type ReadWriterAt, type StoreCaps, type WriteOptions, type ZeroOptions } from '../rwat.ts';
import { probeHolePunching, type SparseFile } from './file.ts';
import type { SharedStoreDescriptor, ThreadShareable } from '../shared-store.ts';

/** Each mapping of the memfd (a typed array cannot span more). */
export const SHARED_SLAB = 1 << 30;
const SLAB = SHARED_SLAB;
const PAGE = 4096;
/** Granule of the written map: small enough that a partial chunk wastes little, large enough that the map stays tiny (16 KiB per GiB). */
export const SHARED_CHUNK = 64 * 1024;

export interface SharedMemoryDescriptor {
  kind: 'shm';
  size: number;
  readOnly: boolean;
  /** The memfd, open in this process (fds are process-wide, so any thread may use it). */
  fd: number;
  /** Mapping ids of the slabs, in order. */
  slabs: number[];
  /** One byte per SHARED_CHUNK: 1 once written. */
  written: SharedArrayBuffer;
}

export class SharedMemoryBackend implements ReadWriterAt, ThreadShareable {
  readonly caps: StoreCaps;
  private readonly regionSize: number;
  private readonly fd: number;
  private readonly slabs: Uint8Array[];
  private readonly slabIds: number[];
  private readonly sparse: SparseFile | undefined;
  private readonly written: Uint8Array;
  private readonly writtenBuffer: SharedArrayBuffer;
  /** The creator owns the memfd and the mappings; attached views in other threads do not. */
  private readonly owner: { native: NativeBinding; buffers: ArrayBuffer[] } | undefined;
  private closed = false;

  static available(): boolean {
    return nativeAvailable();
  }

  /** A new zero-filled region of `size` bytes. */
  static async create(size: number, opts: { readOnly?: boolean } = {}): Promise<SharedMemoryBackend> {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`shared memory backend: bad size ${size}`);
    const n = loadNative();
    const c = n.constants;
    const fd = n.memfdCreate('quicmap-region', size);
    const buffers: ArrayBuffer[] = [];
    try {
      for (let at = 0; at < size; at += SLAB) {
        buffers.push(n.mmap(fd, Math.min(SLAB, size - at), c.PROT_READ | c.PROT_WRITE, c.MAP_SHARED | c.MAP_NORESERVE, at));
      }
    } catch (e) {
      for (const b of buffers) n.munmap(b);
      n.closeFd(fd);
      throw e;
    }
    const sparse = await probeHolePunching(fd, size);
    const ids = buffers.map((b) => n.mappingId(b));
    const written = new SharedArrayBuffer(Math.ceil(size / SHARED_CHUNK));
    return new SharedMemoryBackend(size, opts.readOnly ?? false, fd, buffers.map((b) => new Uint8Array(b)), ids, written, sparse, { native: n, buffers });
  }

  /** The same region in another thread of this process. */
  static async attach(d: SharedMemoryDescriptor): Promise<SharedMemoryBackend> {
    const n = loadNative();
    const slabs = d.slabs.map((id) => new Uint8Array(n.view(id)));
    return new SharedMemoryBackend(d.size, d.readOnly, d.fd, slabs, d.slabs, d.written, await probeHolePunching(d.fd, d.size), undefined);
  }

  private constructor(
    size: number,
    readOnly: boolean,
    fd: number,
    slabs: Uint8Array[],
    slabIds: number[],
    written: SharedArrayBuffer,
    sparse: SparseFile | undefined,
    owner: SharedMemoryBackend['owner'],
  ) {
    this.regionSize = size;
    this.fd = fd;
    this.slabs = slabs;
    this.slabIds = slabIds;
    this.writtenBuffer = written;
    this.written = new Uint8Array(written);
    this.sparse = sparse;
    this.owner = owner;
    this.caps = {
      readOnly,
      canTrim: true,
      fastZero: true,
      // One set of pages for every thread and client: a flush covers all.
      multiConn: true,
      preferredBlockSize: PAGE,
    };
  }

  capability<T>(key: Capability<T>): T | undefined {
    return offer(key, this, EXTENTS, VECTORED);
  }

  threadDescriptor(): SharedStoreDescriptor {
    return { kind: 'shm', size: this.regionSize, readOnly: this.caps.readOnly, fd: this.fd, slabs: [...this.slabIds], written: this.writtenBuffer };
  }

  async size(): Promise<number> {
    if (this.closed) throw new ClosedError('shared memory backend');
    return this.regionSize;
  }

  async readAt(buf: Uint8Array, offset: number): Promise<void> {
    if (this.closed) throw new ClosedError('shared memory backend');
    const w = this.written;
    for (const { index, at, length } of chunkPieces(offset, buf.length, SHARED_CHUNK)) {
      if (w[index] === 0) buf.fill(0, at, at + length);
      else this.copyOut(buf.subarray(at, at + length), offset + at);
    }
  }

  /** Bytes allocated for data: written chunks (for tests and stats). */
  allocatedBytes(): number {
    let n = 0;
    for (const b of this.written) n += b;
    return n * SHARED_CHUNK;
  }

  async writeAt(data: Uint8Array, offset: number, _opts?: WriteOptions): Promise<void> {
    this.checkWritable();
    this.copyIn(data, offset);
  }

  /** Pieces go straight into the shared pages: no gathering first. */
  async writev(parts: readonly Uint8Array[], offset: number, _opts?: WriteOptions): Promise<void> {
    this.checkWritable();
    let at = offset;
    for (const p of parts) {
      this.copyIn(p, at);
      at += p.length;
    }
  }

  /** Unwritten (or trimmed) chunks are holes that read as zeros. */
  async extents(offset: number, length: number): Promise<Extent[]> {
    if (this.closed) throw new ClosedError('shared memory backend');
    const out: Extent[] = [];
    for (const { index, length: n } of chunkPieces(offset, length, SHARED_CHUNK)) {
      const hole = this.written[index] === 0;
      pushExtent(out, { length: n, hole, zero: hole });
    }
    return out;
  }

  /** Memory is as durable as it gets: nothing to do. */
  async flush(): Promise<void> {
    if (this.closed) throw new ClosedError('shared memory backend');
  }

  async trim(offset: number, length: number, _opts?: WriteOptions): Promise<void> {
    this.checkWritable();
    await this.zero(offset, length, false);
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.checkWritable();
    await this.zero(offset, length, opts?.noHole ?? false);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (!this.owner) return;
    for (const b of this.owner.buffers) this.owner.native.munmap(b);
    this.owner.native.closeFd(this.fd);
  }

  private checkWritable(): void {
    if (this.closed) throw new ClosedError('shared memory backend');
    if (this.caps.readOnly) throw new ReadOnlyError('shared memory backend');
  }

  private copyOut(buf: Uint8Array, offset: number): void {
    for (const { index, within, at, length } of chunkPieces(offset, buf.length, SLAB)) {
      buf.set(this.slabs[index]!.subarray(within, within + length), at);
    }
  }

  private copyIn(data: Uint8Array, offset: number): void {
    // Marked before the copy: a reader racing with this write sees old or new bytes, never a hole's zeros afterwards.
    const w = this.written;
    const last = Math.floor((offset + data.length - 1) / SHARED_CHUNK);
    for (let c = Math.floor(offset / SHARED_CHUNK); c <= last; c++) if (w[c] === 0) w[c] = 1;
    for (const { index, within, at, length } of chunkPieces(offset, data.length, SLAB)) {
      this.slabs[index]!.set(length === data.length ? data : data.subarray(at, at + length), within);
    }
  }

  /** Zero bytes that may hold data (chunks not written already read as zeros). */
  private fill(offset: number, length: number): void {
    for (const { index, at, length: n } of chunkPieces(offset, length, SHARED_CHUNK)) {
      if (this.written[index] === 0) continue;
      for (const p of chunkPieces(offset + at, n, SLAB)) this.slabs[p.index]!.fill(0, p.within, p.within + p.length);
    }
  }

  /** Chunks the range covers whole become holes again (unless `keep`); the edges are zeroed in place. */
  private async zero(offset: number, length: number, keep: boolean): Promise<void> {
    if (length === 0) return;
    const end = offset + length;
    const first = Math.ceil(offset / SHARED_CHUNK);
    // The last chunk may be short: the region's end counts as its end.
    const last = end === this.regionSize ? Math.ceil(end / SHARED_CHUNK) : Math.floor(end / SHARED_CHUNK);
    if (keep || last <= first) {
      this.fill(offset, length);
      if (keep) this.markWritten(offset, length);
      return;
    }
    const from = first * SHARED_CHUNK;
    const to = Math.min(last * SHARED_CHUNK, this.regionSize);
    if (from > offset) this.fill(offset, from - offset);
    this.written.fill(0, first, last);
    // Give the pages back (whole pages only; what is left reads as zeros through the map anyway).
    if (this.sparse) await this.sparse.punch(this.fd, from, Math.ceil((to - from) / PAGE) * PAGE);
    if (end > to) this.fill(to, end - to);
  }

  /** Zeroing with NO_HOLE: the range is allocated, as asked. */
  private markWritten(offset: number, length: number): void {
    const last = Math.floor((offset + length - 1) / SHARED_CHUNK);
    for (let c = Math.floor(offset / SHARED_CHUNK); c <= last; c++) this.written[c] = 1;
  }
}
