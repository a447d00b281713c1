/**
 * TrackingLayer: dirty tracking for writes that go through the stack (NBD
 * clients, peers). Every write, trim and zero marks the chunks it touched
 * once it has completed (a pusher that reads a chunk after the mark reads
 * the new bytes); the layer answers the TRACKING capability. Writes that
 * bypass the stack (an mmap of a LazyRegion, another process's mapping) are
 * tracked by LazyRegion or HashTracker instead, behind the same interface.
 */
import { TRACKING, VECTORED, type Capability, type TrackingStore, type VectoredStore } from '../capability.ts';
import type { ReadWriterAt, WriteOptions, ZeroOptions } from '../rwat.ts';
import { PassThroughLayer } from './pass-through.ts';

export class TrackingLayer extends PassThroughLayer implements TrackingStore {
  readonly trackChunkSize: number;
  private readonly held = new Set<number>();
  private readonly vectored: VectoredStore | undefined;

  constructor(inner: ReadWriterAt, chunkSize: number) {
    super(inner);
    if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) throw new RangeError(`bad chunk size ${chunkSize}`);
    this.trackChunkSize = chunkSize;
    const v = inner.capability(VECTORED);
    this.vectored = v && {
      writev: (parts, offset, opts) => {
        let n = 0;
        for (const p of parts) n += p.length;
        return this.marking(offset, n, v.writev(parts, offset, opts));
      },
    };
  }

  override writeAt(data: Uint8Array, offset: number, opts?: WriteOptions): Promise<void> {
    return this.marking(offset, data.length, this.inner.writeAt(data, offset, opts));
  }

  override trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    return this.marking(offset, length, this.inner.trim(offset, length, opts));
  }

  override writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.marking(offset, length, this.inner.writeZeroes(offset, length, opts));
  }

  override capability<T>(key: Capability<T>): T | undefined {
    if (key === (TRACKING as Capability<unknown>)) return this as unknown as T;
    if (key === (VECTORED as Capability<unknown>)) return this.vectored as T | undefined;
    return this.inner.capability(key);
  }

  async mark(): Promise<void> {
    this.held.clear();
  }

  async dirty(): Promise<number[]> {
    return [...this.held].sort((a, b) => a - b);
  }

  clear(chunks: readonly number[]): void {
    for (const c of chunks) this.held.delete(c);
  }

  /** Mark [offset, offset+length) once `op` settles (a failed write may have changed some bytes too). */
  private async marking(offset: number, length: number, op: Promise<void>): Promise<void> {
    try {
      await op;
    } finally {
      if (length > 0) {
        const last = Math.floor((offset + length - 1) / this.trackChunkSize);
        for (let c = Math.floor(offset / this.trackChunkSize); c <= last; c++) this.held.add(c);
      }
    }
  }
}
