/**
 * PagedStore: a region whose chunks live in a PageStore (somewhere else:
 * sealed on storage peers, for encrypted remote RAM) with at most
 * `cacheBytes` of them held here, least recently used evicted first.
 *
 * Write-back: a write lands in the cached chunk and is acknowledged; the
 * chunk goes to the PageStore when it is evicted, on FLUSH (every dirty
 * chunk, then the PageStore's own flush), on FUA, and in the background
 * (`writeBackMs` after it was written). A dirty chunk is never dropped: if
 * saving it fails it stays cached and dirty, and the request that needed
 * the room (or the FLUSH) fails with the PageStore's error.
 *
 * The bound is strict: cached + loading chunks never exceed the capacity.
 * A request holds ("pins") a chunk only while it copies bytes in or out,
 * never while it waits for room, so requests cannot deadlock on the cache.
 *
 * Generic and local: nothing here knows what the PageStore does with the
 * bytes (p2p/ram seals them; tests use a map).
 */
import type { Capability } from '../capability.ts';
import { QuicmapError } from '../../base/errors.ts';
import type { ReadWriterAt, StoreCaps, WriteOptions, ZeroOptions } from '../rwat.ts';

export interface PageStore {
  /** The chunk's bytes (exactly chunkSize), or null for a chunk never saved or discarded (zeros). */
  load(index: number): Promise<Uint8Array | null>;
  /**
   * Optional: the chunk with only what is read of it made valid, as it is
   * read (a sealed chunk opens the 4 KiB segments a read needs, not all of
   * them). PagedStore uses it instead of `load` for reads; a write makes
   * the whole chunk valid first, so a chunk that cannot be made whole is
   * never written (or acknowledged) here.
   */
  loadPartial?(index: number): Promise<PartialChunk | null>;
  /** Keep these bytes as the chunk's contents (durable once the PageStore's flush resolves; the caller does not reuse `data`, unless copiesOnSave). */
  save(index: number, data: Uint8Array): Promise<void>;
  /** True when save() is done with `data` once it returns (it copies or seals it at once): PagedStore then hands over its cached bytes without a copy. */
  readonly copiesOnSave?: boolean;
  /** The chunk is all zeros from now on. */
  discard(index: number): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** A chunk loaded in part (PageStore.loadPartial): `data` is valid where `reveal` made it so. */
export interface PartialChunk {
  /** The chunk's bytes (chunkSize long), valid only in the ranges revealed. */
  readonly data: Uint8Array;
  /** Every byte is valid. */
  readonly complete: boolean;
  /**
   * Make data[at, at + len) valid: true when it is at once, else a promise
   * (it fetches another copy) that rejects when no good copy is left.
   */
  reveal(at: number, len: number): true | Promise<void>;
  /** The caller overwrote the whole chunk: count every byte as valid, and write nothing into `data` from now on. */
  settle(): void;
}

export interface PagedStoreOptions {
  size: number;
  chunkSize: number;
  /** Plaintext held here at most (rounded down to whole chunks, at least 4 chunks). */
  cacheBytes: number;
  pages: PageStore;
  /** A dirty chunk is saved in the background this long after its first unsaved write (0: only on evict/flush). Default 1000. */
  writeBackMs?: number;
  /** Chunks of one request loaded at once (default 8). */
  parallel?: number;
  /** Dirty chunks saved at once to make room (default 16, at most half the cache). */
  saveAhead?: number;
}

export interface PagedStats {
  hits: number;
  misses: number;
  evictions: number;
  saves: number;
  cachedChunks: number;
  dirtyChunks: number;
  capacityChunks: number;
}

interface Entry {
  index: number;
  data: Uint8Array;
  /** Set while the chunk is loaded in part (loadPartial): reveal a range before reading it, the whole chunk before writing it. */
  partial: PartialChunk | undefined;
  /** Bumped by each write; saved up to savedGen. */
  gen: number;
  savedGen: number;
  dirtySince: number;
  pins: number;
  saving: Promise<void> | undefined;
  /** The recency list: towards the least (prev) and the most (next) recently used. */
  prev: Entry | undefined;
  next: Entry | undefined;
}

export class PagedStore implements ReadWriterAt {
  readonly caps: StoreCaps = { readOnly: false, canTrim: true, fastZero: true, multiConn: true, preferredBlockSize: 4096 };
  readonly chunkSize: number;
  readonly capacity: number;
  readonly stats = { hits: 0, misses: 0, evictions: 0, saves: 0 };
  private readonly bytes: number;
  private readonly pages: PageStore;
  private readonly writeBackMs: number;
  private readonly parallel: number;
  /** The cached chunks by index; their recency is the list from `lru` (least recently used) to `mru`. */
  private readonly entries = new Map<number, Entry>();
  private lru: Entry | undefined;
  private mru: Entry | undefined;
  private readonly loading = new Map<number, Promise<Entry>>();
  private unpinWaiters: Array<() => void> = [];
  /** Saves started by eviction at once at most (and the room-makers' window). */
  private readonly saveAhead: number;
  private savesInFlight = 0;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private ended = false;

  constructor(opts: PagedStoreOptions) {
    if (!Number.isSafeInteger(opts.chunkSize) || opts.chunkSize < 4096 || (opts.chunkSize & (opts.chunkSize - 1)) !== 0) {
      throw new QuicmapError('EINVAL', `chunk size must be a power of two of at least 4096 bytes, not ${opts.chunkSize}`);
    }
    if (opts.size <= 0 || opts.size % opts.chunkSize !== 0) throw new QuicmapError('EINVAL', `size ${opts.size} is not a positive multiple of the chunk size ${opts.chunkSize}`);
    this.bytes = opts.size;
    this.chunkSize = opts.chunkSize;
    this.capacity = Math.floor(opts.cacheBytes / opts.chunkSize);
    if (this.capacity < 4) throw new QuicmapError('EINVAL', `a cache of ${opts.cacheBytes} bytes holds fewer than 4 chunks of ${opts.chunkSize} bytes`);
    this.pages = opts.pages;
    this.writeBackMs = opts.writeBackMs ?? 1000;
    this.parallel = Math.max(1, opts.parallel ?? 8);
    this.saveAhead = Math.max(1, Math.min(opts.saveAhead ?? 16, this.capacity >> 1));
  }

  get pagedStats(): PagedStats {
    let dirty = 0;
    for (let e = this.lru; e; e = e.next) if (e.gen !== e.savedGen) dirty++;
    return { ...this.stats, cachedChunks: this.entries.size, dirtyChunks: dirty, capacityChunks: this.capacity };
  }

  /** Start the background write-back. */
  async start(): Promise<void> {
    if (this.writeBackMs > 0 && !this.timer) {
      this.timer = setInterval(() => void this.writeBack().catch(() => {}), Math.max(50, this.writeBackMs / 2));
      this.timer.unref();
    }
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  async size(): Promise<number> {
    return this.bytes;
  }

  readAt(buf: Uint8Array, offset: number): Promise<void> {
    if (this.closed) return Promise.reject(this.closedError());
    // Fast path: a read inside one cached chunk is a copy (no split, no pin: nothing can evict it during a synchronous copy).
    const index = Math.floor(offset / this.chunkSize);
    const at = offset - index * this.chunkSize;
    if (at + buf.length <= this.chunkSize) {
      const e = this.touch(index);
      if (e && (e.partial === undefined || this.revealNow(e, at, buf.length))) {
        buf.set(e.data.subarray(at, at + buf.length));
        return Promise.resolve();
      }
    }
    return this.eachPiece(buf.length, offset, async (index, at, from, len) => {
      const e = await this.pin(index, false);
      try {
        const r = this.reveal(e, at, len);
        if (r !== true) await r;
        buf.set(e.data.subarray(at, at + len), from);
      } finally {
        this.unpin(e);
      }
    });
  }

  async writeAt(data: Uint8Array, offset: number, opts?: WriteOptions): Promise<void> {
    this.check();
    if (!opts?.fua) {
      // Fast path: a write inside one cached chunk.
      const index = Math.floor(offset / this.chunkSize);
      const at = offset - index * this.chunkSize;
      if (at + data.length <= this.chunkSize) {
        const e = this.touch(index);
        if (e && (e.partial === undefined || this.revealNow(e, 0, this.chunkSize))) {
          e.data.set(data, at);
          this.dirty(e);
          return;
        }
      }
    }
    await this.eachPiece(data.length, offset, async (index, at, from, len) => {
      const e = await this.pin(index, len === this.chunkSize);
      try {
        await this.whole(e, len === this.chunkSize);
        e.data.set(data.subarray(from, from + len), at);
        this.dirty(e);
      } finally {
        this.unpin(e);
      }
      if (opts?.fua) await this.save(e);
    });
    if (opts?.fua) await this.pages.flush();
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.check();
    await this.eachPiece(length, offset, async (index, at, _from, len) => {
      if (len === this.chunkSize && !opts?.noHole) return this.discardChunk(index);
      const e = await this.pin(index, false);
      try {
        await this.whole(e, len === this.chunkSize);
        e.data.fill(0, at, at + len);
        this.dirty(e);
      } finally {
        this.unpin(e);
      }
      if (opts?.fua) await this.save(e);
    });
    if (opts?.fua) await this.pages.flush();
  }

  trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    // Trimmed bytes read back as zeros here: a trim is a zeroing that frees the chunk.
    return this.writeZeroes(offset, length, opts);
  }

  async flush(): Promise<void> {
    this.check();
    const dirty = this.list().filter((e) => e.gen !== e.savedGen || e.saving);
    await runLimited(dirty, 16, (e) => this.save(e));
    await this.pages.flush();
  }

  capability<T>(_key: Capability<T>): T | undefined {
    return undefined;
  }

  async close(): Promise<void> {
    if (this.closed) return; // (also after end(): the owner closes the PageStore)
    await this.stop();
    try {
      await this.flush();
    } finally {
      this.closed = true;
      await this.pages.close();
    }
  }

  /**
   * End the region without saving anything: for contents that are not
   * wanted past this point (encrypted RAM at SIGTERM: no one could read them
   * again). The cached plaintext is wiped and dropped; requests after it,
   * and those waiting for a chunk, fail with ESHUTDOWN; nothing more is
   * handed to the PageStore (saves already under way finish or fail there).
   * Returns how many chunks were cached and how many of them dirty.
   */
  end(): { cachedChunks: number; dirtyChunks: number } {
    const { cachedChunks, dirtyChunks } = this.pagedStats;
    this.ended = true;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    for (let e = this.lru; e; e = e.next) e.data.fill(0);
    this.entries.clear();
    this.lru = this.mru = undefined;
    this.unpinWaiters.splice(0).forEach((f) => f());
    return { cachedChunks, dirtyChunks };
  }

  /** Save dirty chunks whose first unsaved write is older than writeBackMs. */
  async writeBack(now = Date.now()): Promise<void> {
    const due = this.list().filter((e) => e.gen !== e.savedGen && !e.saving && now - e.dirtySince >= this.writeBackMs);
    await runLimited(due, 8, (e) => this.save(e));
  }

  private check(): void {
    if (this.closed) throw this.closedError();
  }

  private closedError(): QuicmapError {
    return new QuicmapError('ESHUTDOWN', this.ended ? 'the region has ended: its contents were dropped' : 'the paged store is closed');
  }

  /** The cached entry of chunk `index`, made the most recently used (a hit), or undefined. */
  private touch(index: number): Entry | undefined {
    const e = this.entries.get(index);
    if (!e) return undefined;
    this.toMru(e);
    this.stats.hits++;
    return e;
  }

  /** The cached entries, least recently used first. */
  private list(): Entry[] {
    const out: Entry[] = [];
    for (let e = this.lru; e; e = e.next) out.push(e);
    return out;
  }

  /** Move (or add) `e` to the most recently used end. A linked list, not Map re-insertion: no rehash pauses on the hit path. */
  private toMru(e: Entry): void {
    if (this.mru === e) return;
    this.unlink(e);
    e.prev = this.mru;
    e.next = undefined;
    if (this.mru) this.mru.next = e;
    else this.lru = e;
    this.mru = e;
  }

  private unlink(e: Entry): void {
    if (e.prev) e.prev.next = e.next;
    else if (this.lru === e) this.lru = e.next;
    if (e.next) e.next.prev = e.prev;
    else if (this.mru === e) this.mru = e.prev;
    e.prev = e.next = undefined;
  }

  private drop(e: Entry): void {
    this.unlink(e);
    this.entries.delete(e.index);
  }

  private async eachPiece(length: number, offset: number, fn: (index: number, at: number, from: number, len: number) => Promise<void>): Promise<void> {
    const pieces: Array<[number, number, number, number]> = [];
    for (let from = 0; from < length; ) {
      const pos = offset + from;
      const index = Math.floor(pos / this.chunkSize);
      const at = pos - index * this.chunkSize;
      const len = Math.min(this.chunkSize - at, length - from);
      pieces.push([index, at, from, len]);
      from += len;
    }
    await runLimited(pieces, this.parallel, (p) => fn(...p));
  }

  private dirty(e: Entry): void {
    if (e.gen === e.savedGen) e.dirtySince = Date.now();
    e.gen++;
  }

  private async discardChunk(index: number): Promise<void> {
    // Wait out a load in progress so it cannot insert the old bytes afterwards.
    while (this.loading.has(index)) await this.loading.get(index)!.catch(() => {});
    const e = this.entries.get(index);
    if (e) {
      e.partial?.settle();
      e.partial = undefined;
      e.data.fill(0);
      this.dirty(e);
      return; // saved (as zeros) like any write
    }
    await this.pages.discard(index);
  }

  /** The chunk's entry, loaded if need be, with room made for it; the caller unpins it. */
  private async pin(index: number, whole: boolean): Promise<Entry> {
    for (;;) {
      this.check();
      const e = this.entries.get(index);
      if (e) {
        this.toMru(e);
        e.pins++;
        this.stats.hits++;
        return e;
      }
      const pending = this.loading.get(index);
      if (pending) {
        await pending.catch(() => {});
        continue;
      }
      if (this.entries.size + this.loading.size >= this.capacity) {
        await this.evictOne();
        continue;
      }
      this.stats.misses++;
      const p = this.fill(index, whole);
      this.loading.set(index, p);
      try {
        return await p; // pinned already: nothing may evict it before the caller runs
      } finally {
        this.loading.delete(index);
      }
    }
  }

  private async fill(index: number, whole: boolean): Promise<Entry> {
    let partial: PartialChunk | undefined;
    let data: Uint8Array;
    if (whole) data = new Uint8Array(this.chunkSize);
    else if (this.pages.loadPartial) {
      partial = (await this.pages.loadPartial(index)) ?? undefined;
      data = partial?.data ?? new Uint8Array(this.chunkSize);
    } else data = (await this.pages.load(index)) ?? new Uint8Array(this.chunkSize);
    if (data.length !== this.chunkSize) throw new QuicmapError('EIO', `chunk ${index} came back with ${data.length} bytes, not ${this.chunkSize}`);
    this.check(); // ended while it loaded: not cached again
    const e: Entry = { index, data, partial, gen: 0, savedGen: 0, dirtySince: 0, pins: 1, saving: undefined, prev: undefined, next: undefined };
    this.entries.set(index, e);
    this.toMru(e);
    return e;
  }

  /** Make e.data[at, at + len) valid (a chunk loaded in part): true at once, or when the promise resolves. */
  private reveal(e: Entry, at: number, len: number): true | Promise<void> {
    const p = e.partial;
    if (!p) return true;
    const r = p.reveal(at, len);
    if (r === true) {
      if (p.complete) e.partial = undefined;
      return true;
    }
    return r.then(() => {
      if (e.partial === p && p.complete) e.partial = undefined;
    });
  }

  /** reveal() for a fast path: false when it cannot be at once (the slow path then waits for it, and sees its error). */
  private revealNow(e: Entry, at: number, len: number): boolean {
    const r = this.reveal(e, at, len);
    if (r === true) return true;
    r.catch(() => {});
    return false;
  }

  /** Before a write: the whole chunk valid, or (`overwritten`: the write covers it all) counted as such. */
  private async whole(e: Entry, overwritten: boolean): Promise<void> {
    if (!e.partial) return;
    if (overwritten) {
      e.partial.settle();
      e.partial = undefined;
      return;
    }
    const r = this.reveal(e, 0, this.chunkSize);
    if (r !== true) await r;
  }

  private unpin(e: Entry): void {
    e.pins--;
    if (e.pins === 0 && this.unpinWaiters.length) this.unpinWaiters.splice(0).forEach((f) => f());
  }

  /**
   * Make room for one chunk: drop the least recently used clean chunk nobody
   * holds. When the oldest are dirty, start saving up to `saveAhead` of them
   * at once (so evictions stream to the PageStore instead of going one round
   * trip at a time) and wait for the first to finish; the caller looks
   * again. A save this call started that fails fails the caller.
   */
  private async evictOne(): Promise<void> {
    const mine: Array<Promise<void>> = [];
    const others: Array<Promise<void>> = [];
    for (let e = this.lru; e; e = e.next) {
      if (e.pins > 0) continue;
      if (e.gen === e.savedGen && !e.saving) {
        this.drop(e);
        this.stats.evictions++;
        return;
      }
      if (e.saving) {
        if (others.length < this.saveAhead) others.push(e.saving);
      } else if (this.savesInFlight < this.saveAhead) {
        const p = this.save(e);
        p.catch(() => {}); // awaited below (or by the race); never an unhandled rejection
        mine.push(p);
      }
      if (mine.length + others.length >= this.saveAhead) break;
    }
    if (mine.length + others.length === 0) {
      // Every chunk is pinned, or the save window is full: wait for an unpin or a save to finish.
      await new Promise<void>((r) => this.unpinWaiters.push(r));
      return;
    }
    await Promise.race([...mine, ...others.map((p) => p.catch(() => {}))]);
  }

  /** Save the entry's current bytes (waits for a save in progress first). */
  private async save(e: Entry): Promise<void> {
    while (e.saving) await e.saving.catch(() => {});
    if (e.gen === e.savedGen) return;
    // A written chunk was made whole before its first write (whole()).
    if (e.partial) throw new QuicmapError('EIO', `chunk ${e.index}: dirty while only partly loaded (a bug)`);
    const gen = e.gen;
    const copy = this.pages.copiesOnSave ? e.data : e.data.slice();
    this.savesInFlight++;
    const p = this.pages.save(e.index, copy).then(
      () => {
        this.savesInFlight--;
        if (gen > e.savedGen) e.savedGen = gen;
        this.stats.saves++;
      },
      (err: unknown) => {
        this.savesInFlight--;
        throw err;
      },
    );
    e.saving = p;
    try {
      await p;
    } finally {
      e.saving = undefined;
      // A room-maker that found every candidate busy waits for an unpin or for this.
      if (this.unpinWaiters.length) this.unpinWaiters.splice(0).forEach((f) => f());
    }
  }
}

/** Run fn over items, at most `limit` at once; the first error is thrown after all settle. */
async function runLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  if (items.length === 1) return fn(items[0]!);
  let next = 0;
  let failure: { e: unknown } | undefined;
  const worker = async () => {
    while (next < items.length) {
      const item = items[next++]!;
      try {
        await fn(item);
      } catch (e) {
        failure ??= { e };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure) throw failure.e;
}
