/**
 * CopyPlan: the orchestrator's account of a copy, sans-IO. The source range
 * is cut into batches; a batch is handed out (`next`), may turn out to cover
 * less than asked (`covered`: the origin answered part of it, the rest goes
 * back to the front of the queue), and ends acknowledged (`ack`: the
 * destination wrote it) or failed (`fail`: it is handed out again, up to
 * `maxAttempts`). The copy is done when the acknowledged ranges tile the
 * whole source range; an acknowledgement of bytes already acknowledged is
 * counted and ignored, so each range is completed exactly once whatever the
 * links did (writes are idempotent by range, so a range fetched again is
 * harmless).
 */
import { QuicmapError } from '../../base/errors.ts';

export interface Batch {
  /** Offset in the source region and the matching offset in the destination. */
  src: number;
  dst: number;
  length: number;
  /** 1 for the first try. */
  attempt: number;
}

export interface CopyPlanOptions {
  srcOffset: number;
  dstOffset: number;
  length: number;
  batchBytes: number;
  maxAttempts?: number;
}

export class CopyPlan {
  private readonly o: Required<CopyPlanOptions>;
  /** Ranges still to hand out, in source order (retried ranges go first). */
  private readonly pending: Array<{ src: number; length: number; attempt: number }> = [];
  private readonly out = new Set<Batch>();
  /** Acknowledged [start, end) source ranges, disjoint, sorted. */
  private readonly acked: Array<[number, number]> = [];
  ackedBytes = 0;
  retried = 0;
  duplicateAcks = 0;

  constructor(o: CopyPlanOptions) {
    if (!(o.length >= 0) || !(o.batchBytes > 0)) throw new RangeError('copy plan: bad length or batch size');
    this.o = { maxAttempts: 5, ...o };
    for (let at = 0; at < o.length; at += o.batchBytes) this.pending.push({ src: o.srcOffset + at, length: Math.min(o.batchBytes, o.length - at), attempt: 1 });
  }

  get done(): boolean {
    return this.ackedBytes === this.o.length;
  }

  get inFlight(): number {
    return this.out.size;
  }

  /** The next batch to work on, or undefined when none is waiting (some may still be out). */
  next(): Batch | undefined {
    const p = this.pending.shift();
    if (!p) return undefined;
    const b: Batch = { src: p.src, dst: p.src - this.o.srcOffset + this.o.dstOffset, length: p.length, attempt: p.attempt };
    this.out.add(b);
    return b;
  }

  /** The origin answered only the first `length` bytes of `b`: the rest is handed out again. */
  covered(b: Batch, length: number): void {
    if (!this.out.has(b) || !(length > 0) || length > b.length) throw new RangeError(`copy plan: cover of ${length} on a batch of ${b.length}`);
    if (length === b.length) return;
    this.pending.unshift({ src: b.src + length, length: b.length - length, attempt: b.attempt });
    b.length = length;
  }

  /** `b` was written at the destination. False when its bytes had all been acknowledged already. */
  ack(b: Batch): boolean {
    this.out.delete(b);
    const added = this.addAcked(b.src, b.src + b.length);
    if (added < b.length) this.duplicateAcks++;
    this.ackedBytes += added;
    return added > 0;
  }

  /** `b` failed: hand it out again, or throw once it has had its attempts. */
  fail(b: Batch, err: unknown): void {
    this.out.delete(b);
    if (b.attempt >= this.o.maxAttempts) {
      const why = err instanceof Error ? err.message : String(err);
      throw new QuicmapError(err instanceof QuicmapError ? err.code : 'EIO', `copy of [${b.src}, +${b.length}) failed ${b.attempt} times; last: ${why}`);
    }
    this.retried++;
    this.pending.unshift({ src: b.src, length: b.length, attempt: b.attempt + 1 });
  }

  /** The acknowledged source ranges (for checks). */
  ackedRanges(): Array<[number, number]> {
    return this.acked.map(([a, b]) => [a, b]);
  }

  /** Merge [a, b) into the acknowledged set; returns how many bytes were new. */
  private addAcked(a: number, b: number): number {
    let fresh = b - a;
    let lo = a;
    let hi = b;
    const keep: Array<[number, number]> = [];
    for (const [s, e] of this.acked) {
      if (e < lo || s > hi) {
        keep.push([s, e]);
        continue;
      }
      fresh -= Math.max(0, Math.min(e, b) - Math.max(s, a));
      lo = Math.min(lo, s);
      hi = Math.max(hi, e);
    }
    keep.push([lo, hi]);
    keep.sort((x, y) => x[0] - y[0]);
    this.acked.splice(0, this.acked.length, ...keep);
    return fresh;
  }
}
