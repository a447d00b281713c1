/** Helpers for the native tests: a worker that touches mappings, patterns, a tiny store. */
import { Worker } from 'node:worker_threads';
import { ClosedError } from '../../base/errors.ts';
import type { ReadWriterAt, StoreCaps } from '../../engine/rwat.ts';
import type { Capability } from '../../engine/capability.ts';
import { nativeAvailable, nativeUnavailableReason, loadNative } from '../../native/index.ts';

export const NATIVE_OK = nativeAvailable();
export const NATIVE_REASON = nativeUnavailableReason() ?? '';
export const UFFD = NATIVE_OK ? loadNative().uffdFeatures() : undefined;
export const UFFD_OK = !!UFFD?.available;
export const UFFD_REASON = !NATIVE_OK ? NATIVE_REASON : UFFD_OK ? '' : `userfaultfd unavailable: ${UFFD?.error ?? 'unknown'}`;
export const UFFD_WP_OK = UFFD_OK && !!UFFD?.writeProtect;

/** A distinct, recomputable byte for every offset: each chunk has its own pattern. */
export function patternByte(offset: number, chunk: number): number {
  const c = Math.floor(offset / chunk);
  return (c * 131 + (offset % chunk) * 7 + (c >>> 8)) & 0xff;
}

export function fillPattern(buf: Uint8Array, chunk: number, base = 0): void {
  for (let i = 0; i < buf.length; i++) buf[i] = patternByte(base + i, chunk);
}

export class RegionWorker {
  private readonly worker: Worker;
  private queue: Array<(m: { ok: boolean; error?: string; data?: Uint8Array; sum?: number }) => void> = [];
  private failed: Error | undefined;

  constructor() {
    this.worker = new Worker(new URL('./region-worker.mjs', import.meta.url));
    this.worker.on('message', (m) => this.queue.shift()?.(m));
    this.worker.on('error', (e) => {
      this.failed = e;
      for (const q of this.queue.splice(0)) q({ ok: false, error: String(e) });
    });
  }

  request<T extends { ok: boolean; error?: string; data?: Uint8Array; sum?: number }>(msg: Record<string, unknown>): Promise<T> {
    if (this.failed) return Promise.reject(this.failed);
    return new Promise<T>((resolve, reject) => {
      this.queue.push((m) => (m.ok ? resolve(m as T) : reject(new Error(m.error))));
      this.worker.postMessage(msg);
    });
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}

/** A minimal in-memory ReadWriterAt whose reads can be made to fail or hang. */
export class TestStore implements ReadWriterAt {
  readonly caps: StoreCaps = { readOnly: false, canTrim: false, fastZero: false, multiConn: true, preferredBlockSize: 4096 };
  readonly bytes: Uint8Array;
  reads = 0;
  failAt?: (offset: number) => 'throw' | 'hang' | 'slow' | undefined;
  private closed = false;
  constructor(size: number) {
    this.bytes = new Uint8Array(size);
  }
  async size(): Promise<number> {
    return this.bytes.length;
  }
  async readAt(buf: Uint8Array, offset: number): Promise<void> {
    if (this.closed) throw new ClosedError();
    this.reads++;
    const mode = this.failAt?.(offset);
    if (mode === 'throw') throw new Error(`injected read failure at ${offset}`);
    if (mode === 'hang') await new Promise(() => {});
    if (mode === 'slow') await new Promise((r) => setTimeout(r, 300));
    buf.set(this.bytes.subarray(offset, offset + buf.length));
  }
  async writeAt(data: Uint8Array, offset: number): Promise<void> {
    this.bytes.set(data, offset);
  }
  async flush(): Promise<void> {}
  async trim(): Promise<void> {}
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.bytes.fill(0, offset, offset + length);
  }
  /** No capabilities beyond the core. */
  capability<T>(_key: Capability<T>): T | undefined {
    return undefined;
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
