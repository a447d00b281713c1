/**
 * A layer that runs every write-side operation (write, vectored write,
 * trim, write-zeroes) through an admission function and passes reads and
 * flushes straight through: what the migration WriteGate (refuse or drain
 * writes at handover) and the WriteThrottle (delay writes during
 * auto-converge) each put on a store.
 */
import { VECTORED, type Capability, type VectoredStore } from '../capability.ts';
import type { ReadWriterAt, WriteOptions, ZeroOptions } from '../rwat.ts';
import { PassThroughLayer } from './pass-through.ts';

/** Runs `fn` once the write may go ahead (or rejects instead). */
export type AdmitWrite = <T>(fn: () => Promise<T>) => Promise<T>;

export class WriteAdmissionLayer extends PassThroughLayer {
  private readonly admit: AdmitWrite;
  private readonly vectored: VectoredStore | undefined;

  constructor(inner: ReadWriterAt, admit: AdmitWrite) {
    super(inner);
    this.admit = admit;
    const v = inner.capability(VECTORED);
    this.vectored = v && { writev: (parts, offset, opts) => admit(() => v.writev(parts, offset, opts)) };
  }
  override writeAt(data: Uint8Array, offset: number, opts?: WriteOptions): Promise<void> {
    return this.admit(() => this.inner.writeAt(data, offset, opts));
  }
  override trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    return this.admit(() => this.inner.trim(offset, length, opts));
  }
  override writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.admit(() => this.inner.writeZeroes(offset, length, opts));
  }
  override capability<T>(key: Capability<T>): T | undefined {
    if (key === (VECTORED as Capability<unknown>)) return this.vectored as T | undefined;
    return this.inner.capability(key);
  }
}
