/**
 * Cache-by-reference bookkeeping, both ends, sans-IO (the clustering seed's
 * caching sub-protocol). Bulk data is sent as a cache ID (cache-id.ts)
 * instead of bytes; the holder fetches the bytes from the origin when, and
 * if, it needs them.
 *
 * Origin (`OriginCache`): keeps each referenced element and counts every
 * reference it hands out, per holder. A holder's de-refs bring the count
 * down; at zero the element is freed. Bounded by lines and bytes: when full,
 * `reference` answers undefined and the caller sends the data inline — the
 * protocol degrades, it never fails. To make room it can force a flush:
 * `forceFlush` names, per holder, the references the holder must give back;
 * a line being flushed gets no new references.
 *
 * Holder (`HeldRefs`): counts the references it holds, may keep a bounded
 * local copy of an element (and drop it at any time: it can fetch it again
 * until it has sent its de-ref), and batches de-refs (by count and delay).
 * On a forced flush, what it still needs it must first make its own
 * (`adopt`: fetch if no local copy, then keep the bytes) before de-ref'ing.
 *
 * References can be forwarded: the new holder claims them at the origin
 * (`transfer`), so the origin always knows who holds what, and a forced
 * flush reaches whoever holds the reference now.
 */
import { QuicmapError, ProtocolError } from '../../base/errors.ts';
import { MAX_LINE, makeCacheId, splitCacheId, type CacheId } from './cache-id.ts';

/** Who holds references: a peer's key in hex, or any stable name the adapter uses. */
export type HolderId = string;

export interface FlushRequest {
  holder: HolderId;
  refs: Array<{ id: CacheId; n: number }>;
}

interface Line<D> {
  data: D;
  bytes: number;
  holders: Map<HolderId, number>;
  total: number;
  flushing: boolean;
}

export class OriginCache<D> {
  private readonly lines = new Map<number, Line<D>>();
  private nextLine = 0;
  private bytes = 0;
  private readonly machine: number;
  private readonly slot: number;
  private readonly maxLines: number;
  private readonly maxBytes: number;

  constructor(opts: { machine: number; slot: number; maxLines: number; maxBytes: number }) {
    this.machine = opts.machine;
    this.slot = opts.slot;
    this.maxLines = Math.min(opts.maxLines, MAX_LINE + 1);
    this.maxBytes = opts.maxBytes;
  }

  get lineCount(): number {
    return this.lines.size;
  }
  get byteCount(): number {
    return this.bytes;
  }

  /** References held to `id` (all holders), 0 if none or not ours. */
  refCount(id: CacheId): number {
    return this.lineOf(id)?.total ?? 0;
  }

  /** References `holder` holds to `id`. */
  heldBy(holder: HolderId, id: CacheId): number {
    return this.lineOf(id)?.holders.get(holder) ?? 0;
  }

  /** Every reference outstanding, all lines and holders together (0 when all were given back). */
  get totalRefs(): number {
    let n = 0;
    for (const l of this.lines.values()) n += l.total;
    return n;
  }

  /** Holders that hold any reference. */
  holders(): HolderId[] {
    const out = new Set<HolderId>();
    for (const l of this.lines.values()) for (const h of l.holders.keys()) out.add(h);
    return [...out];
  }

  /**
   * What `holder` must give back now: its references to lines being flushed.
   * Asked again after a forwarded reference changed hands, so a flush reaches
   * whoever holds the reference at the time.
   */
  flushingHeldBy(holder: HolderId): Array<{ id: CacheId; n: number }> {
    const out: Array<{ id: CacheId; n: number }> = [];
    for (const [line, l] of this.lines) {
      const n = l.flushing ? l.holders.get(holder) : undefined;
      if (n) out.push({ id: makeCacheId(this.machine, this.slot, line), n });
    }
    return out;
  }

  /**
   * A new element, referenced `n` times by `holder`. Undefined when the cache
   * has no room: send the data inline instead.
   */
  reference(holder: HolderId, data: D, bytes: number, n = 1): CacheId | undefined {
    if (!(n >= 1) || !Number.isInteger(n)) throw new RangeError(`reference count ${n}`);
    if (this.lines.size >= this.maxLines || this.bytes + bytes > this.maxBytes) return undefined;
    let line = this.nextLine;
    while (this.lines.has(line)) line = (line + 1) % (MAX_LINE + 1);
    this.nextLine = (line + 1) % (MAX_LINE + 1);
    this.lines.set(line, { data, bytes, holders: new Map([[holder, n]]), total: n, flushing: false });
    this.bytes += bytes;
    return makeCacheId(this.machine, this.slot, line);
  }

  /** Hand out `n` more references to an existing element; false if it is gone or being flushed. */
  addRef(holder: HolderId, id: CacheId, n = 1): boolean {
    const l = this.lineOf(id);
    if (!l || l.flushing) return false;
    l.holders.set(holder, (l.holders.get(holder) ?? 0) + n);
    l.total += n;
    return true;
  }

  /** `holder` gives back `n` references. More than it holds is a protocol error. */
  deref(holder: HolderId, id: CacheId, n: number): void {
    const l = this.lineOf(id);
    const held = l?.holders.get(holder) ?? 0;
    if (!l || n < 1 || n > held) throw new ProtocolError(`de-ref of ${n} on cache id ${id.toString(16)}, but ${held} held`);
    if (n === held) l.holders.delete(holder);
    else l.holders.set(holder, held - n);
    l.total -= n;
    if (l.total === 0) this.free(id);
  }

  /** A forwarded reference: `to` now holds `n` of `from`'s references. */
  transfer(from: HolderId, to: HolderId, id: CacheId, n: number): void {
    const l = this.lineOf(id);
    const held = l?.holders.get(from) ?? 0;
    if (!l || n < 1 || n > held) throw new QuicmapError('EACCES', `cache id ${id.toString(16)}: ${from} cannot pass on ${n} references (holds ${held})`);
    if (n === held) l.holders.delete(from);
    else l.holders.set(from, held - n);
    l.holders.set(to, (l.holders.get(to) ?? 0) + n);
  }

  /** The data behind `id`, for a holder that holds a reference to it; EACCES otherwise (forged, released). */
  fetch(holder: HolderId, id: CacheId): D {
    const l = this.lineOf(id);
    if (!l || !l.holders.has(holder)) throw new QuicmapError('EACCES', `cache id ${id.toString(16)} is not held by the requester`);
    return l.data;
  }

  /**
   * Ask holders to give references back until at least `bytes` would be
   * freed (oldest lines first). The lines get no new references meanwhile;
   * they are freed as the de-refs arrive.
   */
  forceFlush(bytes: number): FlushRequest[] {
    const byHolder = new Map<HolderId, Array<{ id: CacheId; n: number }>>();
    let freed = 0;
    for (const [line, l] of this.lines) {
      if (freed >= bytes) break;
      if (l.flushing) continue;
      l.flushing = true;
      freed += l.bytes;
      const id = makeCacheId(this.machine, this.slot, line);
      for (const [h, n] of l.holders) {
        let list = byHolder.get(h);
        if (!list) byHolder.set(h, (list = []));
        list.push({ id, n });
      }
    }
    return [...byHolder].map(([holder, refs]) => ({ holder, refs }));
  }

  /** A holder went away for good: its references are void. */
  dropHolder(holder: HolderId): void {
    for (const [line, l] of this.lines) {
      const n = l.holders.get(holder);
      if (!n) continue;
      l.holders.delete(holder);
      l.total -= n;
      if (l.total === 0) this.free(makeCacheId(this.machine, this.slot, line));
    }
  }

  private lineOf(id: CacheId): Line<D> | undefined {
    const { machine, slot, line } = splitCacheId(id);
    if (machine !== this.machine || slot !== this.slot) return undefined;
    return this.lines.get(line);
  }

  private free(id: CacheId): void {
    const { line } = splitCacheId(id);
    const l = this.lines.get(line);
    if (!l) return;
    this.bytes -= l.bytes;
    this.lines.delete(line);
  }
}

interface Held<D> {
  n: number;
  copy: { data: D; bytes: number } | undefined;
}

export class HeldRefs<D> {
  private readonly held = new Map<CacheId, Held<D>>();
  private readonly pending = new Map<CacheId, number>();
  private pendingCount = 0;
  private dueAt: number | undefined;
  private copyBytes = 0;
  private readonly maxCopyBytes: number;
  private readonly batch: number;
  private readonly delayMs: number;

  constructor(opts: { maxCopyBytes: number; derefBatch: number; derefDelayMs: number }) {
    this.maxCopyBytes = opts.maxCopyBytes;
    this.batch = opts.derefBatch;
    this.delayMs = opts.derefDelayMs;
  }

  /** References this node holds to `id`. */
  count(id: CacheId): number {
    return this.held.get(id)?.n ?? 0;
  }
  get copyByteCount(): number {
    return this.copyBytes;
  }

  /** `n` references to `id` arrived. */
  receive(id: CacheId, n = 1): void {
    splitCacheId(id);
    const h = this.held.get(id);
    if (h) h.n += n;
    else this.held.set(id, { n, copy: undefined });
  }

  /** Keep a local copy of what `id` names, if there is room; false when there is not (fetch again later). */
  keep(id: CacheId, data: D, bytes: number): boolean {
    const h = this.held.get(id);
    if (!h) throw new QuicmapError('EINVAL', `no reference held to cache id ${id.toString(16)}`);
    if (h.copy) return true;
    if (this.copyBytes + bytes > this.maxCopyBytes) return false;
    h.copy = { data, bytes };
    this.copyBytes += bytes;
    return true;
  }

  /** The local copy, if kept. */
  local(id: CacheId): D | undefined {
    return this.held.get(id)?.copy?.data;
  }

  /** Drop the local copy (the reference stays: the data can be fetched again). */
  drop(id: CacheId): void {
    const h = this.held.get(id);
    if (!h?.copy) return;
    this.copyBytes -= h.copy.bytes;
    h.copy = undefined;
  }

  /** Done with `n` references: they join the next de-ref batch. */
  release(id: CacheId, n: number, now: number): void {
    const h = this.held.get(id);
    if (!h || n < 1 || n > h.n) throw new QuicmapError('EINVAL', `release of ${n} on cache id ${id.toString(16)}, ${h?.n ?? 0} held`);
    h.n -= n;
    if (h.n === 0) {
      this.drop(id);
      this.held.delete(id);
    }
    this.pending.set(id, (this.pending.get(id) ?? 0) + n);
    this.pendingCount += n;
    this.dueAt ??= now + this.delayMs;
  }

  /** The de-refs to send now (a batch is due by count or delay), or undefined. */
  pollDerefs(now: number): Array<{ id: CacheId; n: number }> | undefined {
    if (this.pendingCount === 0) return undefined;
    if (this.pendingCount < this.batch && (this.dueAt === undefined || now < this.dueAt)) return undefined;
    const out = [...this.pending].map(([id, n]) => ({ id, n }));
    this.pending.clear();
    this.pendingCount = 0;
    this.dueAt = undefined;
    return out;
  }

  nextTimeout(): number | undefined {
    return this.pendingCount > 0 ? this.dueAt : undefined;
  }

  /**
   * The origin forces a flush of these references. Returns the ids this node
   * still holds but has no local copy of: fetch each, then `adopt` it. Ids
   * with a local copy can be adopted at once.
   */
  flushNeeds(refs: ReadonlyArray<{ id: CacheId; n: number }>): CacheId[] {
    return refs.filter(({ id }) => this.held.has(id) && !this.held.get(id)!.copy).map(({ id }) => id);
  }

  /**
   * Make the element our own: returns its bytes (the caller now owns and
   * stores them outside this table) and queues de-refs for every reference
   * held, so the origin can free it.
   */
  adopt(id: CacheId, now: number, fetched?: D): D {
    const h = this.held.get(id);
    if (!h) throw new QuicmapError('EINVAL', `no reference held to cache id ${id.toString(16)}`);
    const data = h.copy?.data ?? fetched;
    if (data === undefined) throw new QuicmapError('EINVAL', `cache id ${id.toString(16)}: no local copy to adopt; fetch it first`);
    this.release(id, h.n, now);
    // A forced flush wants its answer soon: do not wait for a full batch.
    this.dueAt = now;
    return data;
  }
}
