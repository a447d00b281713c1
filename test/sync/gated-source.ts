/**
 * A deterministic ChunkSource for the sync tests: an owner held in a plain
 * Uint8Array, with a log of every call and gates that hold fetches, pushes
 * or flushes until the test releases them (so "a write while a fetch is in
 * flight" is a fact of the test, not a timing accident).
 */
import type { ChunkSource } from '../../engine/sync/chunk-source.ts';

type Gate = { wait: Promise<void>; open: () => void };
function gate(): Gate {
  let open!: () => void;
  const wait = new Promise<void>((r) => (open = r));
  return { wait, open };
}

export class GatedSource implements ChunkSource {
  readonly size: number;
  readonly chunkSize: number;
  readOnly = false;
  readonly owner: Uint8Array;
  /** Bytes made durable by flush (a flush copies `owner` here). */
  durableCopy: Uint8Array;
  readonly calls: string[] = [];
  readonly fetchOrder: number[] = [];
  fetchUrgent: boolean[] = [];
  holdFetches = false;
  holdPushes = false;
  failPushes = false;
  failFetches = false;
  private readonly held: Array<Gate & { urgent?: boolean }> = [];
  private listeners = new Set<(c: readonly number[] | 'all') => void>();

  constructor(size: number, chunkSize: number, fill?: (i: number) => number) {
    this.size = size;
    this.chunkSize = chunkSize;
    this.owner = new Uint8Array(size);
    if (fill) for (let i = 0; i < size; i++) this.owner[i] = fill(i);
    this.durableCopy = this.owner.slice();
  }

  /** Release everything held so far. */
  release(): void {
    for (const g of this.held.splice(0)) g.open();
  }

  get heldCount(): number {
    return this.held.length;
  }

  /** Release only the held background (not urgent) fetches. */
  releaseBackground(): number {
    const bg = this.held.filter((g) => g.urgent === false);
    for (const g of bg) {
      this.held.splice(this.held.indexOf(g), 1);
      g.open();
    }
    return bg.length;
  }

  private async maybeHold(on: boolean, urgent?: boolean): Promise<void> {
    if (!on) return;
    const g: Gate & { urgent?: boolean } = gate();
    if (urgent !== undefined) g.urgent = urgent;
    this.held.push(g);
    await g.wait;
  }

  async fetch(i: number, buf: Uint8Array, urgent: boolean): Promise<void> {
    this.calls.push(`fetch ${i}${urgent ? ' urgent' : ''}`);
    this.fetchOrder.push(i);
    this.fetchUrgent.push(urgent);
    // The bytes are taken when the fetch is answered, as a real owner would send them.
    await this.maybeHold(this.holdFetches, urgent);
    if (this.failFetches) throw Object.assign(new Error('owner unreachable'), { code: 'EIO' });
    buf.set(this.owner.subarray(i * this.chunkSize, i * this.chunkSize + buf.length));
  }

  /** Serve fetchRange (runs of chunks in one request); off unless a test turns it on. */
  set ranges(on: boolean) {
    (this as { fetchRange?: GatedSource['rangeFetch'] }).fetchRange = on ? this.rangeFetch : undefined;
  }

  private readonly rangeFetch = async (first: number, count: number, buf: Uint8Array): Promise<void> => {
    this.calls.push(`range ${first} ${count}`);
    for (let k = 0; k < count; k++) this.fetchOrder.push(first + k);
    await this.maybeHold(this.holdFetches, false);
    if (this.failFetches) throw Object.assign(new Error('owner unreachable'), { code: 'EIO' });
    buf.set(this.owner.subarray(first * this.chunkSize, first * this.chunkSize + buf.length));
  };

  async push(i: number, data: Uint8Array): Promise<void> {
    this.calls.push(`push ${i}`);
    const copy = data.slice();
    await this.maybeHold(this.holdPushes);
    if (this.failPushes) throw Object.assign(new Error('owner unreachable'), { code: 'EIO' });
    this.owner.set(copy, i * this.chunkSize);
  }

  async zero(i: number): Promise<void> {
    this.calls.push(`zero ${i}`);
    await this.maybeHold(this.holdPushes);
    if (this.failPushes) throw Object.assign(new Error('owner unreachable'), { code: 'EIO' });
    this.owner.fill(0, i * this.chunkSize, Math.min(this.size, (i + 1) * this.chunkSize));
  }

  async flush(): Promise<void> {
    this.calls.push('flush');
    this.durableCopy = this.owner.slice();
  }

  watch(on: (c: readonly number[] | 'all') => void): () => void {
    this.listeners.add(on);
    return () => this.listeners.delete(on);
  }

  /** The owner writes itself and tells its watchers. */
  ownerWrite(offset: number, data: Uint8Array): void {
    this.owner.set(data, offset);
    const first = Math.floor(offset / this.chunkSize);
    const last = Math.floor((offset + data.length - 1) / this.chunkSize);
    const chunks: number[] = [];
    for (let i = first; i <= last; i++) chunks.push(i);
    for (const l of this.listeners) l(chunks);
  }

  count(prefix: string): number {
    return this.calls.filter((c) => c.startsWith(prefix)).length;
  }
}
