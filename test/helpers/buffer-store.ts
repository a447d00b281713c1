/**
 * Test stores for the NBD layer.
 *
 * `BufferStore` is the simplest possible ReadWriterAt: one flat Buffer. It is
 * the reference model the other stores are checked against — no sparseness,
 * no chunking, nothing clever — and it records what reached it (FUA writes,
 * flushes, trims, zeroes) so that tests can see what a client really sent.
 *
 * `RecordingStore` wraps any ReadWriterAt and records the same events, for
 * tests that want a real backend underneath.
 */
import { ClosedError, ReadOnlyError } from '../../base/errors.ts';
import type { ReadWriterAt, StoreCaps, WriteOptions, ZeroOptions } from '../../engine/rwat.ts';
import type { Capability } from '../../engine/capability.ts';

export type StoreEvent =
  | { op: 'write'; offset: number; length: number; fua: boolean }
  | { op: 'flush' }
  | { op: 'trim'; offset: number; length: number; fua: boolean }
  | { op: 'zero'; offset: number; length: number; fua: boolean; noHole: boolean };

export interface BufferStoreOptions extends Partial<StoreCaps> {
  /** Initial contents (copied); otherwise zeros. */
  fill?: Uint8Array;
  /** Delay each operation by this many ms (to keep requests in flight). */
  delayMs?: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class BufferStore implements ReadWriterAt {
  readonly caps: StoreCaps;
  readonly bytes: Buffer;
  readonly events: StoreEvent[] = [];
  delayMs: number;
  private closed = false;

  constructor(size: number, opts: BufferStoreOptions = {}) {
    this.bytes = Buffer.alloc(size);
    if (opts.fill) this.bytes.set(opts.fill.subarray(0, size));
    this.delayMs = opts.delayMs ?? 0;
    this.caps = {
      readOnly: opts.readOnly ?? false,
      canTrim: opts.canTrim ?? true,
      fastZero: opts.fastZero ?? false,
      multiConn: opts.multiConn ?? true,
      preferredBlockSize: opts.preferredBlockSize ?? 4096,
    };
  }

  private async enter(write: boolean): Promise<void> {
    if (this.delayMs) await sleep(this.delayMs);
    if (this.closed) throw new ClosedError('buffer store');
    if (write && this.caps.readOnly) throw new ReadOnlyError('buffer store');
  }

  private check(offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > this.bytes.length) {
      throw new RangeError(`buffer store: [${offset}, +${length}) outside ${this.bytes.length}`);
    }
  }

  async size(): Promise<number> {
    return this.bytes.length;
  }

  async readAt(buf: Uint8Array, offset: number): Promise<void> {
    await this.enter(false);
    this.check(offset, buf.length);
    buf.set(this.bytes.subarray(offset, offset + buf.length));
  }

  async writeAt(data: Uint8Array, offset: number, opts?: WriteOptions): Promise<void> {
    await this.enter(true);
    this.check(offset, data.length);
    this.bytes.set(data, offset);
    this.events.push({ op: 'write', offset, length: data.length, fua: opts?.fua === true });
  }

  async flush(): Promise<void> {
    await this.enter(false);
    this.events.push({ op: 'flush' });
  }

  async trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    await this.enter(true);
    this.check(offset, length);
    // The model of "contents unspecified": we zero, like a sparse store would.
    this.bytes.fill(0, offset, offset + length);
    this.events.push({ op: 'trim', offset, length, fua: opts?.fua === true });
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    await this.enter(true);
    this.check(offset, length);
    this.bytes.fill(0, offset, offset + length);
    this.events.push({ op: 'zero', offset, length, fua: opts?.fua === true, noHole: opts?.noHole === true });
  }

  /** No capabilities beyond the core. */
  capability<T>(_key: Capability<T>): T | undefined {
    return undefined;
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

/** Wraps a store and records every mutating call and flush that reaches it. */
export class RecordingStore implements ReadWriterAt {
  readonly events: StoreEvent[] = [];
  readonly inner: ReadWriterAt;
  constructor(inner: ReadWriterAt) {
    this.inner = inner;
  }
  get caps(): StoreCaps {
    return this.inner.caps;
  }
  size(): Promise<number> {
    return this.inner.size();
  }
  readAt(buf: Uint8Array, offset: number): Promise<void> {
    return this.inner.readAt(buf, offset);
  }
  async writeAt(data: Uint8Array, offset: number, opts?: WriteOptions): Promise<void> {
    await this.inner.writeAt(data, offset, opts);
    this.events.push({ op: 'write', offset, length: data.length, fua: opts?.fua === true });
  }
  async flush(): Promise<void> {
    await this.inner.flush();
    this.events.push({ op: 'flush' });
  }
  async trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    await this.inner.trim(offset, length, opts);
    this.events.push({ op: 'trim', offset, length, fua: opts?.fua === true });
  }
  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    await this.inner.writeZeroes(offset, length, opts);
    this.events.push({ op: 'zero', offset, length, fua: opts?.fua === true, noHole: opts?.noHole === true });
  }
  /** No capabilities beyond the core. */
  capability<T>(_key: Capability<T>): T | undefined {
    return undefined;
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Read `length` bytes at `offset` straight from a store (bypassing NBD). */
export async function readStore(store: ReadWriterAt, offset: number, length: number): Promise<Buffer> {
  const b = Buffer.alloc(length);
  await store.readAt(b, offset);
  return b;
}

/** A deterministic byte pattern that differs at every offset (catches misplaced bytes). */
export function pattern(length: number, seed = 1): Buffer {
  const b = Buffer.allocUnsafe(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}
