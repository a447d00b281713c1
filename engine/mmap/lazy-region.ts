/**
 * LazyRegion: a memory mapping whose pages are pulled from any ReadWriterAt
 * on first touch (userfaultfd), with optional write tracking (userfaultfd
 * write-protect) — the thesis' pull-based strategy, extended to writes.
 *
 * How a fault is served: the thread that touches a missing page blocks in the
 * kernel; a native fault thread reads the event and hands a batch of granule
 * indices to this object's handler on the JS thread that created it, which
 * reads the granule from the source and places it with UFFDIO_COPY (waking
 * every thread waiting in that granule). The JS thread is never blocked by a
 * fault, but it must never touch the mapping itself either (it would wait for
 * itself): touch it from worker threads (`LazyRegion.attach(mappingId)`),
 * native code, or through `readAt`/`writeAt`, which copy on native threads.
 *
 * Failure semantics (documented contract):
 * - A source read that throws, or does not finish within `handlerTimeoutMs`,
 *   fails the granule: its missing pages are poisoned (UFFDIO_POISON), so the
 *   waiting access and every later access to those pages gets SIGBUS, like a
 *   mapped file truncated under the reader. A raw access from JS therefore
 *   kills the process (Node has no SIGBUS recovery); `readAt`/`writeAt`
 *   reject with an EIO QuicmapError instead. Nothing ever hangs.
 * - On kernels without UFFD_FEATURE_POISON the pages are made PROT_NONE
 *   (SIGSEGV instead of SIGBUS; readAt still rejects).
 * - `close()` with faults pending: pending granules are failed as above, the
 *   fault thread is stopped, the range becomes inaccessible (PROT_NONE,
 *   address space kept until the last view is collected, so a stale view
 *   traps instead of reading foreign memory), late source reads are dropped.
 *
 * Write tracking: pages are mapped write-protected; the first write to a
 * chunk (= granule) faults once, is recorded on the native fault thread and
 * the chunk is unprotected; `takeDirty()` re-protects and reports. A write
 * racing with `takeDirty()` is reported now or by the next call, never lost.
 * Writes stay local; `writeBack()` pushes the dirty chunks to the source.
 */
import { ClosedError, OutOfRangeError, QuicmapError } from '../../base/errors.ts';
import type { ReadWriterAt, StoreCaps, WriteOptions, ZeroOptions } from '../rwat.ts';
import { zeroFallback } from '../rwat.ts';
import { TRACKING, type Capability, type TrackingStore } from '../capability.ts';
import { trackChanges } from '../tracking/tracking-store.ts';
import { withDeadline } from '../../base/deadline.ts';
import { GRANULE_FAILED, GRANULE_PRESENT, PREFETCH_BIT, loadNative, type NativeBinding, type UffdRegion, type UffdRegionStats } from '../../native/index.ts';
import type { ChangeTracker } from '../tracking/tracker.ts';

export const DEFAULT_GRANULE = 64 * 1024;

export interface LazyRegionOptions {
  /** Bytes fetched per fault (a multiple of the page size; default 64 KiB). */
  granule?: number;
  /** Also fetch this many following granules after a demanded one (default 0). */
  prefetch?: number;
  /** Track writes with userfaultfd write-protect (default false). */
  trackWrites?: boolean;
  /** A source read slower than this fails the granule (default 30 s). */
  handlerTimeoutMs?: number;
  /** Most source reads in flight at once (default 32). */
  concurrency?: number;
  /** Region size (default: the source's size). */
  size?: number;
  /** Told about every failed granule (after it was failed). */
  onError?: (err: unknown, granule: number) => void;
}

export interface LazyRegionStats extends UffdRegionStats {
  fetches: number;
  fetchErrors: number;
  timeouts: number;
  inFlight: number;
}

export class LazyRegion implements ReadWriterAt, ChangeTracker {
  readonly caps: StoreCaps;
  /** Bytes the region holds (the source's size). */
  readonly length: number;
  /** Length of the mapping (length rounded up to the page size). */
  readonly mappedLength: number;
  readonly granule: number;
  readonly chunkSize: number;
  /** Process-wide id: pass it to a worker, which calls `LazyRegion.attach(id)`. */
  readonly mappingId: number;
  /** Last failure, if any (also passed to `onError`). */
  lastError: unknown;

  private readonly native: NativeBinding;
  private readonly region: UffdRegion;
  private readonly source: ReadWriterAt;
  private readonly timeoutMs: number;
  private readonly concurrency: number;
  private readonly onError?: (err: unknown, granule: number) => void;
  private readonly trackWrites: boolean;
  private readonly demand: number[] = [];
  private readonly speculative: number[] = [];
  private readonly inFlight = new Set<number>();
  private readonly waiters = new Map<number, Array<() => void>>();
  private readonly spare: Uint8Array[] = [];
  private closed = false;
  private pumpScheduled = false;
  private fetches = 0;
  private fetchErrors = 0;
  private timeouts = 0;
  private tracking: TrackingStore | undefined;

  private constructor(source: ReadWriterAt, size: number, opts: LazyRegionOptions) {
    this.native = loadNative();
    const page = this.native.constants.PAGE_SIZE;
    const granule = opts.granule ?? DEFAULT_GRANULE;
    if (!Number.isSafeInteger(granule) || granule < page || granule % page !== 0)
      throw new QuicmapError('EINVAL', `granule must be a multiple of ${page} bytes, got ${granule}`);
    if (!Number.isSafeInteger(size) || size <= 0) throw new QuicmapError('EINVAL', `region size must be > 0, got ${size}`);
    this.source = source;
    this.length = size;
    this.granule = granule;
    this.chunkSize = granule;
    this.timeoutMs = opts.handlerTimeoutMs ?? 30_000;
    this.concurrency = Math.max(1, opts.concurrency ?? 32);
    this.onError = opts.onError;
    this.trackWrites = opts.trackWrites ?? false;
    this.region = new this.native.UffdRegion(size, granule, { trackWrites: this.trackWrites, prefetch: Math.max(0, opts.prefetch ?? 0) }, (batch) => this.onFaults(batch));
    this.mappedLength = this.region.stats().length;
    this.mappingId = this.region.mappingId();
    this.caps = {
      readOnly: false,
      canTrim: false,
      fastZero: false,
      multiConn: true,
      preferredBlockSize: granule,
    };
  }

  /** Create a region over `source` (nothing is read until a page is touched). */
  static async open(source: ReadWriterAt, opts: LazyRegionOptions = {}): Promise<LazyRegion> {
    const size = opts.size ?? (await source.size());
    return new LazyRegion(source, size, opts);
  }

  /**
   * The mapping as a Uint8Array in the calling thread — for worker threads
   * (and native code): never call it on the thread that serves the faults.
   */
  static attach(mappingId: number, length?: number): Uint8Array {
    const ab = loadNative().view(mappingId);
    return new Uint8Array(ab, 0, length ?? ab.byteLength);
  }

  /**
   * The mapping in this thread. Touching a missing page from the JS thread
   * that created the region deadlocks it; use this only for pages known to be
   * present (after `prefetch`), or hand `mappingId` to a worker.
   */
  unsafeBuffer(): Uint8Array {
    this.assertOpen();
    return new Uint8Array(this.region.buffer(), 0, this.length);
  }

  // ---- fault serving --------------------------------------------------------

  private onFaults(batch: Uint32Array): void {
    if (this.closed) return;
    for (const raw of batch) {
      const g = raw & ~PREFETCH_BIT;
      if ((raw & PREFETCH_BIT) !== 0) this.speculative.push(g >>> 0);
      else this.demand.push(g >>> 0);
    }
    this.pump();
  }

  private pump(): void {
    let startedDemand = false;
    while (this.inFlight.size < this.concurrency && !this.closed) {
      let g: number | undefined;
      if (this.demand.length) {
        g = this.demand.shift();
        startedDemand = true;
      } else if (this.speculative.length && startedDemand) {
        // Let the demanded granules be placed (and their waiters woken)
        // before spending this thread on speculative ones.
        if (!this.pumpScheduled) {
          this.pumpScheduled = true;
          setImmediate(() => {
            this.pumpScheduled = false;
            this.pump();
          });
        }
        return;
      } else {
        g = this.speculative.shift();
      }
      if (g === undefined) return;
      if (this.inFlight.has(g)) continue;
      // Already placed (e.g. by prefetch() before this fault batch arrived):
      // the fill woke every thread waiting in the granule.
      if (this.region.state(g) === GRANULE_PRESENT && !this.waiters.has(g)) continue;
      this.inFlight.add(g);
      void this.fetch(g);
    }
  }

  private takeBuffer(): Uint8Array {
    return this.spare.pop() ?? new Uint8Array(this.granule);
  }

  private async fetch(g: number): Promise<void> {
    const off = g * this.granule;
    const span = Math.min(this.granule, this.mappedLength - off);
    const dataLen = Math.max(0, Math.min(span, this.length - off));
    const buf = this.takeBuffer();
    let timedOut = false;
    try {
      if (dataLen < span) buf.fill(0, dataLen, span);
      this.fetches++;
      await withDeadline(this.source.readAt(buf.subarray(0, dataLen), off), this.timeoutMs, `source read of granule ${g}`, {
        error: () => new QuicmapError('ETIMEDOUT', `source read of granule ${g} (${dataLen} bytes at ${off}) took over ${this.timeoutMs} ms`),
        onTimeout: () => (timedOut = true),
      });
      if (!this.closed) this.region.fill(g, buf.subarray(0, span));
    } catch (err) {
      if (timedOut) this.timeouts++;
      else this.fetchErrors++;
      this.lastError = err;
      if (!this.closed) {
        try {
          this.region.fail(g);
        } catch {}
        try {
          this.onError?.(err, g);
        } catch {}
      }
    } finally {
      // A read that timed out may still write into buf later: do not reuse it.
      if (!timedOut && this.spare.length < 64) this.spare.push(buf);
      this.inFlight.delete(g);
      const ws = this.waiters.get(g);
      if (ws) {
        this.waiters.delete(g);
        for (const w of ws) w();
      }
      this.pump();
    }
  }

  /** Fetch granules covering [offset, offset+length) now, before anyone touches them. */
  async prefetch(offset = 0, length = this.length - offset): Promise<void> {
    this.assertOpen();
    this.checkRange(offset, length);
    const first = Math.floor(offset / this.granule);
    const last = Math.floor((offset + Math.max(length, 1) - 1) / this.granule);
    const waits: Promise<void>[] = [];
    for (let g = first; g <= last; g++) {
      const st = this.region.state(g);
      if (st === GRANULE_PRESENT || st === GRANULE_FAILED) continue;
      waits.push(
        new Promise<void>((resolve) => {
          const list = this.waiters.get(g) ?? [];
          list.push(resolve);
          this.waiters.set(g, list);
        }),
      );
      if (!this.inFlight.has(g)) this.speculative.push(g);
    }
    this.pump();
    await Promise.all(waits);
  }

  // ---- ReadWriterAt -------------------------------------------------------

  async size(): Promise<number> {
    return this.length;
  }

  /** Copy out on a native thread (faults are served meanwhile); EIO for failed granules. */
  async readAt(buf: Uint8Array, offset: number): Promise<void> {
    this.assertOpen();
    this.checkRange(offset, buf.length);
    if (buf.length === 0) return;
    await this.copy(offset, buf, false);
  }

  /** Copy in on a native thread; tracked like any other write. Stays local (see writeBack). */
  async writeAt(data: Uint8Array, offset: number, _opts?: WriteOptions): Promise<void> {
    this.assertOpen();
    this.checkRange(offset, data.length);
    if (data.length === 0) return;
    await this.copy(offset, data, true);
  }

  private async copy(offset: number, buf: Uint8Array, toMapping: boolean): Promise<void> {
    try {
      await this.native.copy(this.mappingId, offset, buf, toMapping);
    } catch (err) {
      if (this.closed) throw new ClosedError('lazy region');
      const code = (err as NodeJS.ErrnoException).code;
      throw new QuicmapError(code === 'ESHUTDOWN' ? 'ESHUTDOWN' : 'EIO', `lazy region ${toMapping ? 'write' : 'read'} of ${buf.length} bytes at ${offset} failed: ${(err as Error).message}`, { cause: this.lastError ?? err });
    }
  }

  async flush(): Promise<void> {
    this.assertOpen();
  }

  async trim(_offset: number, _length: number): Promise<void> {
    this.assertOpen();
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    await zeroFallback(this, offset, length, opts);
  }

  // ---- write tracking -----------------------------------------------------

  /** Chunk (granule) indices written since the last call, ascending. */
  takeDirty(): number[] {
    this.assertOpen();
    if (!this.trackWrites) throw new QuicmapError('ENOTSUP', 'lazy region was opened without trackWrites');
    return Array.from(this.region.takeDirty());
  }

  async changedChunks(): Promise<number[]> {
    return this.takeDirty();
  }

  /** Push every chunk written since the last takeDirty/writeBack to the source; returns the chunks. */
  async writeBack(target: ReadWriterAt = this.source): Promise<number[]> {
    const dirty = this.takeDirty();
    const buf = new Uint8Array(this.granule);
    for (const c of dirty) {
      const off = c * this.granule;
      const n = Math.min(this.granule, this.length - off);
      if (n <= 0) continue;
      const part = buf.subarray(0, n);
      await this.readAt(part, off);
      await target.writeAt(part, off);
    }
    if (dirty.length) await target.flush();
    return dirty;
  }

  // ---- lifecycle ----------------------------------------------------------

  stats(): LazyRegionStats {
    const s = this.closed ? ({} as UffdRegionStats) : this.region.stats();
    return { ...s, fetches: this.fetches, fetchErrors: this.fetchErrors, timeouts: this.timeouts, inFlight: this.inFlight.size };
  }

  /** An open region keeps the process alive (like a server); unref() lets it exit. */
  unref(): this {
    if (!this.closed) this.region.unref();
    return this;
  }

  ref(): this {
    if (!this.closed) this.region.ref();
    return this;
  }

  /** Safe with faults pending (see the file comment). Does not close the source. */
  /** TRACKING when opened with trackWrites: writes through the mapping, by write-protect faults. */
  capability<T>(key: Capability<T>): T | undefined {
    if (key !== (TRACKING as Capability<unknown>) || !this.trackWrites) return undefined;
    return (this.tracking ??= trackChanges(this)) as T;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.demand.length = 0;
    this.speculative.length = 0;
    this.region.close();
    for (const [, ws] of this.waiters) for (const w of ws) w();
    this.waiters.clear();
  }

  private assertOpen(): void {
    if (this.closed) throw new ClosedError('lazy region');
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.length)
      throw new OutOfRangeError(offset, length, this.length);
  }
}
