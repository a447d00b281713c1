/**
 * SyncedLayer: a managed mount's core. A local cache store (memory, file
 * or dir backend) in front of a ChunkSource (the region's owner), with
 * per-chunk state (engine/sync/chunk-states.ts): remote, fetching, local,
 * dirty. What it guarantees:
 *
 * - A read of a local chunk is a cache read: it never touches the network.
 * - A read of a remote chunk fetches it at top priority (NeedAt: `urgent`,
 *   not queued behind background pulls); readers of a chunk being fetched
 *   share that fetch; the puller skips it. While an urgent fetch is in
 *   flight the background may have only `backgroundWhileUrgent` pulls in
 *   flight (one chunk each), so on a congested link the bytes ahead of an
 *   urgent read are bounded, not a window full of background runs.
 * - A write covering a whole chunk needs no fetch (DontNeedAt): it goes to
 *   the cache and the chunk is local and dirty. (Partial writes arrive here
 *   as whole chunks: the ChunkedLayer above reads — and so fetches — the
 *   chunk first.) A fetch that was in flight is discarded when it lands.
 * - Dirty chunks are pushed in the background (PushSchedule: interval and
 *   dirty-bytes thresholds). A chunk written again while it is being pushed
 *   stays dirty and is pushed again.
 * - FLUSH returns only when every write acknowledged before it is durable at
 *   the owner: it pushes every chunk dirty at the time of the call (waiting
 *   for a push already in flight, then pushing the newer bytes) and then
 *   flushes the source. A failed push fails the flush (EIO) and the chunk
 *   stays dirty: nothing acknowledged is dropped. FUA writes do the same
 *   for their chunk.
 * - When the owner reports its own changes (ChunkSource.watch), clean
 *   cached chunks become remote again and are re-pulled; dirty chunks keep
 *   the local bytes (single writer per chunk range; see README).
 *
 * Expects whole-chunk reads and writes (put a ChunkedLayer of the same
 * chunk size above it: `managedStack`); trims and zeroes may span chunks.
 * Chunk state is kept in memory only: a restarted mount starts cold.
 */
import { ClosedError, QuicmapError } from '../../base/errors.ts';
import type { Capability, Lifecycle } from '../capability.ts';
import type { ReadWriterAt, StoreCaps, WriteOptions, ZeroOptions } from '../rwat.ts';
import { ChunkStates, type ChunkCounts } from '../sync/chunk-states.ts';
import { chunkCount, chunkLength, type ChunkSource } from '../sync/chunk-source.ts';
import { systemClock, type Clock } from '../sync/clock.ts';
import type { PlanContext, PullOrder } from '../sync/pull-order.ts';
import { sequentialOrder } from '../sync/pull-order.ts';
import { Puller, type PullTarget } from '../sync/puller.ts';
import { PushSchedule } from '../sync/push-schedule.ts';

export interface SyncedLayerOptions {
  /** Local cache; at least `source.size` bytes. Closed with the layer. */
  cache: ReadWriterAt;
  source: ChunkSource;
  /** Background pull workers (0: fetch on demand only). Default 8. */
  pullWorkers?: number;
  /** Adjacent chunks a worker pulls in one request when the source can (`fetchRange`). Default 16. */
  maxPullRun?: number;
  pullOrder?: PullOrder;
  /** Push dirty chunks this long after the first unpushed write (default 1000 ms; 0: at once). */
  pushIntervalMs?: number;
  /** Push at once when this many bytes are dirty (default 64 MiB). */
  maxDirtyBytes?: number;
  /**
   * Background pull requests allowed in flight while a reader waits for an
   * urgent (NeedAt) fetch (default 2): background pulls never fill the link
   * ahead of urgent reads. Further background pulls wait until no urgent
   * fetch is in flight, and a run is cut to one chunk meanwhile.
   */
  backgroundWhileUrgent?: number;
  /** Concurrent pushes of a round or a flush (default 8). */
  pushWorkers?: number;
  /** Send writes to the source (default: unless the source is read-only). Off: writes stay local (a migration target before handover, a scratch copy). */
  push?: boolean;
  clock?: Clock;
  /** The first read or write of each chunk by a client (not the puller): trace recording. */
  onFirstTouch?: (chunk: number) => void;
  onEvent?: (event: SyncEvent) => void;
}

export type SyncEvent =
  | { type: 'pull-complete'; atMs: number }
  | { type: 'pull-error'; chunk: number; error: string }
  | { type: 'push-error'; chunk: number; error: string }
  | { type: 'invalidated'; chunks: number };

/** What `status`, a progress bar or `--json` events show. */
export interface SyncProgress extends ChunkCounts {
  chunkSize: number;
  size: number;
  pullOrder: string;
  pulledBytes: number;
  /** Chunks a reader was waiting for (NeedAt fetches). */
  demandFetches: number;
  pushedBytes: number;
  pushes: number;
  invalidations: number;
  pullFailures: number;
  /** Milliseconds with at least one pull in flight: pulledBytes / pullBusyMs is the copy rate while copying. */
  pullBusyMs: number;
  /** Background pulls in flight now, and how often one waited for urgent fetches (or had its run cut to one chunk). */
  backgroundInFlight: number;
  backgroundHeld: number;
  runsCut: number;
  /** Every chunk is local. */
  complete: boolean;
}

/** Anything that can report a managed mount's progress (the swarm's `status` reads this). */
export interface ProgressReporter {
  progress(): SyncProgress;
}

export class SyncedLayer implements ReadWriterAt, Lifecycle, ProgressReporter {
  readonly caps: StoreCaps;
  readonly chunkSize: number;
  readonly states: ChunkStates;
  private readonly cache: ReadWriterAt;
  private readonly source: ChunkSource;
  private readonly regionSize: number;
  private readonly clock: Clock;
  private readonly opts: SyncedLayerOptions;
  private readonly fetches = new Map<number, Promise<void>>();
  private readonly pushesInFlight = new Map<number, Promise<void>>();
  private readonly locks = new Map<number, Promise<void>>();
  private readonly touched: Uint8Array;
  private readonly puller: Puller;
  private readonly schedule: PushSchedule;
  private pushing: boolean;
  private pushTimer: (() => void) | undefined;
  private round: Promise<void> | undefined;
  private unwatch: (() => void) | undefined;
  private started = false;
  private readonly completeWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private closed = false;
  private readonly counters = { pulledBytes: 0, demandFetches: 0, pushedBytes: 0, pushes: 0, invalidations: 0 };
  /** Fetches in flight and the time with at least one in flight (the copy rate when busy, not diluted by idle time). */
  private fetchesRunning = 0;
  /** The request scheduler's priority: urgent fetches in flight, background pulls in flight, pulls waiting for a slot. */
  private urgentInFlight = 0;
  private backgroundInFlight = 0;
  private readonly slotWaiters: Array<() => void> = [];
  private readonly sched = { backgroundHeld: 0, runsCut: 0 };
  private busySince = 0;
  private busyTotal = 0;

  constructor(opts: SyncedLayerOptions) {
    const src = opts.source;
    if (!Number.isSafeInteger(src.chunkSize) || src.chunkSize <= 0) throw new RangeError(`bad chunk size ${src.chunkSize}`);
    this.opts = opts;
    this.cache = opts.cache;
    this.source = src;
    this.regionSize = src.size;
    this.chunkSize = src.chunkSize;
    this.clock = opts.clock ?? systemClock;
    this.states = new ChunkStates(chunkCount(src.size, src.chunkSize));
    this.touched = new Uint8Array(this.states.count);
    this.pushing = opts.push ?? !src.readOnly;
    this.caps = {
      readOnly: src.readOnly && opts.push !== false,
      canTrim: true,
      fastZero: opts.cache.caps.fastZero,
      // Every client of this process shares one cache and one flush barrier.
      multiConn: true,
      preferredBlockSize: this.chunkSize <= 2 ** 30 && (this.chunkSize & (this.chunkSize - 1)) === 0 ? this.chunkSize : opts.cache.caps.preferredBlockSize,
    };
    this.schedule = new PushSchedule({ intervalMs: opts.pushIntervalMs ?? 1000, maxDirtyBytes: opts.maxDirtyBytes ?? 64 * 1024 * 1024 });
    const target: PullTarget = {
      chunks: this.states.count,
      isRemote: (i) => this.states.isRemote(i),
      pullBackground: (i) => this.background(() => this.fetch(i, false)),
      ...(src.fetchRange ? { pullRun: (first: number, count: number) => this.background(() => this.fetchRun(first, this.cutRun(first, count))) } : {}),
      planContext: () => this.planContext(),
    };
    this.puller = new Puller(target, {
      workers: opts.pullWorkers ?? 8,
      order: opts.pullOrder ?? sequentialOrder,
      maxRun: opts.maxPullRun ?? 16,
      clock: this.clock,
      onError: (chunk, e) => this.emit({ type: 'pull-error', chunk, error: (e as Error).message }),
      onComplete: () => this.emit({ type: 'pull-complete', atMs: this.clock.now() }),
    });
  }

  private emit(e: SyncEvent): void {
    this.opts.onEvent?.(e);
  }

  private planContext(): PlanContext {
    return { chunks: this.states.count, chunkSize: this.chunkSize, changes: (i) => this.states.changes(i) };
  }

  /** Start the background puller and pusher and the owner's change feed. Idempotent. */
  async start(): Promise<void> {
    if (this.started || this.closed) return;
    this.started = true;
    this.unwatch = this.source.watch?.((chunks) => this.ownerChanged(chunks));
    this.puller.start();
    this.armPushTimer();
  }

  /** Stop background work (foreground reads and writes keep working). */
  async stop(): Promise<void> {
    if (!this.started) return;
    this.started = false;
    this.unwatch?.();
    this.unwatch = undefined;
    this.pushTimer?.();
    this.pushTimer = undefined;
    await this.puller.stop();
    await this.round;
  }

  /** The owner changed these chunks: drop clean cached copies. */
  ownerChanged(chunks: readonly number[] | 'all'): void {
    let n = 0;
    const one = (i: number) => {
      if (i < 0 || i >= this.states.count) return;
      n++;
      if (this.states.invalidate(i)) this.puller.requeue(i);
    };
    if (chunks === 'all') for (let i = 0; i < this.states.count; i++) one(i);
    else for (const i of chunks) one(i);
    this.counters.invalidations += n;
    if (n) this.emit({ type: 'invalidated', chunks: n });
  }

  progress(): SyncProgress {
    const c = this.states.counts();
    return {
      ...c,
      chunkSize: this.chunkSize,
      size: this.regionSize,
      pullOrder: this.opts.pullOrder?.name ?? sequentialOrder.name,
      ...this.counters,
      pullFailures: this.puller.failures,
      pullBusyMs: this.busyTotal + (this.fetchesRunning > 0 ? this.clock.now() - this.busySince : 0),
      backgroundInFlight: this.backgroundInFlight,
      backgroundHeld: this.sched.backgroundHeld,
      runsCut: this.sched.runsCut,
      complete: c.local === c.chunks,
    };
  }

  /** Resolves when every chunk is local (now, or once the puller, readers or writers got them all). */
  whenComplete(): Promise<void> {
    if (this.closed) return Promise.reject(new ClosedError('synced layer'));
    if (this.states.counts().local === this.states.count) return Promise.resolve();
    return new Promise((resolve, reject) => this.completeWaiters.push({ resolve, reject }));
  }

  private checkComplete(): void {
    if (this.completeWaiters.length === 0 || this.states.counts().local !== this.states.count) return;
    for (const w of this.completeWaiters.splice(0)) w.resolve();
  }

  // ---- per-chunk locks (cache mutations of one chunk are serialized) ----

  private async withLock<T>(i: number, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(i);
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = prev ? prev.then(() => mine) : mine;
    this.locks.set(i, tail);
    if (prev) await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.locks.get(i) === tail) this.locks.delete(i);
    }
  }

  // ---- pulling ----

  /**
   * Run a background pull in a scheduler slot: while urgent fetches are in
   * flight, at most `backgroundWhileUrgent` background pulls are; the rest
   * wait (before claiming their chunks, so a reader may still take them).
   */
  private async background(pull: () => Promise<void>): Promise<void> {
    const cap = Math.max(0, this.opts.backgroundWhileUrgent ?? 2);
    if (this.urgentInFlight > 0 && this.backgroundInFlight >= cap) {
      this.sched.backgroundHeld++;
      while (this.urgentInFlight > 0 && this.backgroundInFlight >= cap) await new Promise<void>((r) => this.slotWaiters.push(r));
    }
    if (this.closed) return;
    this.backgroundInFlight++;
    try {
      await pull();
    } finally {
      this.backgroundInFlight--;
      this.wakeSlots();
    }
  }

  private wakeSlots(): void {
    for (const w of this.slotWaiters.splice(0)) w();
  }

  /** While urgent fetches are in flight a background run is one chunk (the rest go back to the puller): less ahead of them on the link. */
  private cutRun(first: number, count: number): number {
    if (this.urgentInFlight === 0 || count <= 1) return count;
    this.sched.runsCut++;
    for (let k = first + 1; k < first + count; k++) if (this.states.isRemote(k)) this.puller.requeue(k);
    return 1;
  }

  private fetchStarted(): void {
    if (this.fetchesRunning++ === 0) this.busySince = this.clock.now();
  }

  private fetchEnded(): void {
    if (--this.fetchesRunning === 0) this.busyTotal += this.clock.now() - this.busySince;
  }

  /**
   * Fetch every chunk that is remote now, `concurrency` requests at a time,
   * adjacent chunks as one run (a migration's stop-and-copy: one pass over
   * the final dirty list, no waiting for the background workers). Chunks
   * already being fetched are joined. A failed fetch goes back to the
   * background puller (which retries with a backoff); this resolves once
   * every request it made or joined has settled.
   */
  async pullRemote(concurrency = 32): Promise<void> {
    // A run cut short (a chunk of it was taken meanwhile) leaves the rest remote: a few passes pick those up.
    for (let pass = 0; pass < 3 && !this.closed; pass++) {
      if (!(await this.pullRemotePass(concurrency))) return;
    }
  }

  /** One pass of pullRemote; false when there was nothing to fetch or join. */
  private async pullRemotePass(concurrency: number): Promise<boolean> {
    const maxRun = this.source.fetchRange ? Math.max(1, this.opts.maxPullRun ?? 16) : 1;
    const jobs: Array<() => Promise<void>> = [];
    const joined: Promise<void>[] = [];
    for (let i = this.states.nextPending(0); i >= 0; i = this.states.nextPending(i + 1)) {
      const inflight = this.fetches.get(i);
      if (inflight) {
        joined.push(inflight.catch(() => {}));
        continue;
      }
      if (!this.states.isRemote(i)) continue;
      let n = 1;
      while (n < maxRun && i + n < this.states.count && this.states.isRemote(i + n) && !this.fetches.has(i + n)) n++;
      const first = i;
      const count = n;
      jobs.push(() =>
        (count > 1 ? this.fetchRun(first, count) : this.fetch(first, false)).catch(() => {
          for (let k = first; k < first + count; k++) if (this.states.isRemote(k)) this.puller.requeue(k);
        }),
      );
      i += n - 1;
    }
    if (jobs.length === 0 && joined.length === 0) return false;
    let next = 0;
    const worker = async () => {
      while (next < jobs.length) await jobs[next++]!();
    };
    await Promise.all([...Array.from({ length: Math.min(Math.max(1, concurrency), jobs.length) }, worker), ...joined]);
    return true;
  }

  /** Make chunk i local (fetch it unless local or already being fetched). */
  private fetch(i: number, urgent: boolean): Promise<void> {
    const inflight = this.fetches.get(i);
    if (inflight) return inflight;
    const epoch = this.states.beginFetch(i);
    if (epoch < 0) return Promise.resolve();
    if (urgent) {
      this.counters.demandFetches++;
      this.urgentInFlight++;
    }
    const len = chunkLength(i, this.regionSize, this.chunkSize);
    let stale = false;
    this.fetchStarted();
    const p = (async () => {
      const buf = new Uint8Array(len);
      try {
        await this.source.fetch(i, buf, urgent);
        await this.withLock(i, async () => {
          if (!this.states.fetchStillValid(i, epoch)) {
            this.states.fetchAbandoned(i);
            stale = true;
            return;
          }
          await this.cache.writeAt(buf, i * this.chunkSize);
          this.states.fetched(i);
          this.counters.pulledBytes += len;
          this.checkComplete();
        });
      } catch (e) {
        this.states.fetchAbandoned(i);
        throw e;
      } finally {
        this.fetchEnded();
        if (urgent && --this.urgentInFlight === 0) this.wakeSlots();
        this.fetches.delete(i);
        // Stale (the owner changed it meanwhile): remote again, and the puller must fetch it anew
        // (after the entry above is gone, or the puller would just join this finished fetch).
        if (stale && this.states.isRemote(i)) this.puller.requeue(i);
      }
    })();
    this.fetches.set(i, p);
    return p;
  }

  /** A background pull of adjacent chunks in one request; chunks not remote any more end the run early. */
  private fetchRun(first: number, count: number): Promise<void> {
    const claimed: Array<{ i: number; epoch: number }> = [];
    for (let i = first; i < first + count; i++) {
      if (this.fetches.has(i)) break;
      const epoch = this.states.beginFetch(i);
      if (epoch < 0) break;
      claimed.push({ i, epoch });
    }
    if (claimed.length === 0) return this.fetch(first, false);
    const cs = this.chunkSize;
    const start = claimed[0]!.i;
    const last = claimed[claimed.length - 1]!.i;
    const len = (last - start) * cs + chunkLength(last, this.regionSize, cs);
    const stale: number[] = [];
    this.fetchStarted();
    const p = (async () => {
      const buf = new Uint8Array(len);
      try {
        await this.source.fetchRange!(start, claimed.length, buf);
      } catch (e) {
        for (const c of claimed) this.states.fetchAbandoned(c.i);
        throw e;
      }
      for (const { i, epoch } of claimed) {
        const view = buf.subarray((i - start) * cs, (i - start) * cs + chunkLength(i, this.regionSize, cs));
        await this.withLock(i, async () => {
          if (!this.states.fetchStillValid(i, epoch)) {
            this.states.fetchAbandoned(i);
            stale.push(i);
            return;
          }
          await this.cache.writeAt(view, i * cs);
          this.states.fetched(i);
          this.counters.pulledBytes += view.length;
        });
      }
      this.checkComplete();
    })().finally(() => {
      this.fetchEnded();
      for (const c of claimed) if (this.fetches.get(c.i) === p) this.fetches.delete(c.i);
      for (const i of stale) if (this.states.isRemote(i)) this.puller.requeue(i);
    });
    for (const c of claimed) this.fetches.set(c.i, p);
    return p;
  }

  private touch(i: number): void {
    if (this.touched[i]) return;
    this.touched[i] = 1;
    this.opts.onFirstTouch?.(i);
  }

  private chunkOf(offset: number, length: number, what: string): number {
    const i = Math.floor(offset / this.chunkSize);
    if (offset % this.chunkSize !== 0 || length !== chunkLength(i, this.regionSize, this.chunkSize)) {
      throw new QuicmapError('EINVAL', `synced layer: ${what} [${offset}, +${length}) is not one whole chunk (put a ChunkedLayer above it)`);
    }
    return i;
  }

  // ---- ReadWriterAt ----

  /**
   * No capability passes through: the cache's extents and tracking describe
   * the cache, not the region (a remote chunk is a hole in the cache), and
   * writes must go through this layer's state machine.
   */
  capability<T>(_key: Capability<T>): T | undefined {
    return undefined;
  }

  async size(): Promise<number> {
    if (this.closed) throw new ClosedError('synced layer');
    return this.regionSize;
  }

  async readAt(buf: Uint8Array, offset: number): Promise<void> {
    if (this.closed) throw new ClosedError('synced layer');
    if (buf.length === 0) return;
    const i = this.chunkOf(offset, buf.length, 'read');
    this.touch(i);
    // A chunk may be invalidated again between the fetch and the read: loop until it is local.
    for (let tries = 0; ; tries++) {
      if (this.states.isLocal(i)) return this.cache.readAt(buf, offset);
      await this.fetch(i, true);
      if (tries > 100) throw new QuicmapError('EIO', `chunk ${i} keeps changing at the owner; giving up this read`);
    }
  }

  /** Whether chunk `i` is in the cache (a seeder says what it holds). */
  isLocal(i: number): boolean {
    return i >= 0 && i < this.states.count && this.states.isLocal(i);
  }

  /**
   * The cached read path: when every chunk under [offset, offset + length)
   * is local, one read of the cache for the whole range (no per-chunk
   * split, no extra promise per layer); undefined otherwise (the caller
   * goes through the chunked path, which fetches what is missing). Reads
   * take no lock here either: a read racing a write may see either.
   */
  readIfLocal(buf: Uint8Array, offset: number): Promise<void> | undefined {
    if (this.closed || buf.length === 0) return undefined;
    const end = offset + buf.length;
    if (offset < 0 || end > this.regionSize) return undefined;
    const cs = this.chunkSize;
    const first = Math.floor(offset / cs);
    const last = Math.floor((end - 1) / cs);
    for (let i = first; i <= last; i++) if (!this.states.isLocal(i)) return undefined;
    for (let i = first; i <= last; i++) if (!this.touched[i]) this.touch(i);
    return this.cache.readAt(buf, offset);
  }

  async writeAt(data: Uint8Array, offset: number, opts?: WriteOptions): Promise<void> {
    if (this.closed) throw new ClosedError('synced layer');
    if (data.length === 0) return;
    this.checkWritable();
    const i = this.chunkOf(offset, data.length, 'write');
    this.touch(i);
    await this.withLock(i, async () => {
      await this.cache.writeAt(data, offset);
      this.states.wrote(i);
    });
    this.checkComplete();
    this.dirtied();
    if (opts?.fua) await this.durable([i]);
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    await this.zeroChunks(offset, length, opts);
  }

  /** Trim is advisory; here it zeroes (the cache and the owner must agree on what the range reads as). */
  async trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    await this.zeroChunks(offset, length, opts);
  }

  private async zeroChunks(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    if (this.closed) throw new ClosedError('synced layer');
    if (length === 0) return;
    this.checkWritable();
    const cs = this.chunkSize;
    const end = offset + length;
    if (offset % cs !== 0 || (end % cs !== 0 && end !== this.regionSize)) {
      throw new QuicmapError('EINVAL', `synced layer: zero [${offset}, +${length}) is not whole chunks (put a ChunkedLayer above it)`);
    }
    const touched: number[] = [];
    for (let i = offset / cs; i * cs < end; i++) {
      this.touch(i);
      touched.push(i);
      await this.withLock(i, async () => {
        await this.cache.writeZeroes(i * cs, chunkLength(i, this.regionSize, cs));
        this.states.wrote(i);
      });
    }
    this.checkComplete();
    this.dirtied();
    if (opts?.fua) await this.durable(touched);
  }

  async flush(): Promise<void> {
    if (this.closed) throw new ClosedError('synced layer');
    await this.durable(undefined);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.stop();
    // Push what is dirty: the owner should have every acknowledged write even without a last FLUSH.
    let err: unknown;
    if (this.pushing && this.states.counts().dirty > 0) await this.durable(undefined).catch((e) => (err = e));
    this.closed = true;
    for (const w of this.completeWaiters.splice(0)) w.reject(new ClosedError('synced layer'));
    await this.cache.close();
    if (err) throw new QuicmapError('EIO', `closing with unpushed writes: ${(err as Error).message}`, { cause: err });
  }

  private checkWritable(): void {
    if (this.caps.readOnly) throw new QuicmapError('EPERM', 'region is read-only (the owner refuses writes)');
  }

  // ---- pushing ----

  private dirtyBytes(): number {
    return this.states.counts().dirty * this.chunkSize;
  }

  private dirtied(): void {
    if (!this.pushing) return;
    this.schedule.dirtied(this.clock.now());
    if (this.schedule.due(this.clock.now(), this.dirtyBytes())) this.startRound();
    else this.armPushTimer();
  }

  private armPushTimer(): void {
    if (!this.started || !this.pushing || this.pushTimer) return;
    const at = this.schedule.nextTimeout();
    if (at === undefined) return;
    this.pushTimer = this.clock.schedule(at, () => {
      this.pushTimer = undefined;
      if (this.schedule.due(this.clock.now(), this.dirtyBytes())) this.startRound();
      else this.armPushTimer();
    });
  }

  /** One background round: push everything dirty now. */
  private startRound(): void {
    if (this.round || !this.started) return;
    this.schedule.roundStarted();
    this.round = (async () => {
      const failed = await this.pushAll(this.states.dirtyChunks());
      if (failed) this.schedule.dirtied(this.clock.now()); // retry after the interval
    })().finally(() => {
      this.round = undefined;
      if (this.schedule.due(this.clock.now(), this.dirtyBytes())) this.startRound();
      else this.armPushTimer();
    });
  }

  /** Push chunks with bounded concurrency; returns how many failed (errors are reported, not thrown). */
  private async pushAll(chunks: number[]): Promise<number> {
    let next = 0;
    let failed = 0;
    const worker = async () => {
      while (next < chunks.length) {
        const i = chunks[next++]!;
        try {
          await this.pushChunk(i);
        } catch (e) {
          failed++;
          this.emit({ type: 'push-error', chunk: i, error: (e as Error).message });
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.opts.pushWorkers ?? 8, chunks.length) }, worker));
    return failed;
  }

  /** Push chunk i's current bytes (or join the push in flight). */
  private pushChunk(i: number): Promise<void> {
    const inflight = this.pushesInFlight.get(i);
    if (inflight) return inflight;
    const p = (async () => {
      let gen = -1;
      let buf: Uint8Array | undefined;
      await this.withLock(i, async () => {
        gen = this.states.beginPush(i);
        if (gen < 0) return;
        buf = new Uint8Array(chunkLength(i, this.regionSize, this.chunkSize));
        try {
          await this.cache.readAt(buf, i * this.chunkSize);
        } catch (e) {
          this.states.pushFailed(i);
          throw e;
        }
      });
      if (gen < 0 || !buf) return;
      try {
        // A zeroed chunk (trim, write-zeroes, a zero-filled write) goes as a zero request, not 64 KiB of zeros.
        if (this.source.zero && isZero(buf)) await this.source.zero(i);
        else await this.source.push(i, buf);
      } catch (e) {
        this.states.pushFailed(i);
        throw e;
      }
      this.states.pushed(i, gen);
      this.counters.pushes++;
      this.counters.pushedBytes += buf.length;
    })().finally(() => this.pushesInFlight.delete(i));
    this.pushesInFlight.set(i, p);
    return p;
  }

  /**
   * The flush barrier: every write to `chunks` (all dirty chunks when
   * undefined) acknowledged before this call is at the owner, durably.
   */
  private async durable(chunks: number[] | undefined): Promise<void> {
    if (!this.pushing) {
      await this.cache.flush();
      return;
    }
    const targets = chunks ? chunks.filter((i) => this.states.isDirty(i)).map((i) => [i, this.states.generation(i)] as [number, number]) : this.states.dirtyGenerations();
    let next = 0;
    let firstError: unknown;
    const worker = async () => {
      while (next < targets.length) {
        const [i, gen] = targets[next++]!;
        try {
          // A push already in flight may carry older bytes: wait for it, then push again if needed.
          while (!this.states.ackedAtLeast(i, gen)) await this.pushChunk(i);
        } catch (e) {
          firstError ??= e;
          this.emit({ type: 'push-error', chunk: i, error: (e as Error).message });
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.opts.pushWorkers ?? 8, targets.length) }, worker));
    if (firstError) throw new QuicmapError('EIO', `flush: could not push to the owner: ${(firstError as Error).message}`, { cause: firstError });
    await this.source.flush();
  }

  /**
   * Become the owner (migration handover): nothing is pushed any more; the
   * cache is the region. Stops the pusher; pulls go on until complete.
   */
  becomeOwner(): void {
    this.pushing = false;
    this.pushTimer?.();
    this.pushTimer = undefined;
    this.states.forgetDirty();
  }
}

const ZEROS = new Uint8Array(64 * 1024);

function isZero(buf: Uint8Array): boolean {
  for (let at = 0; at < buf.length; at += ZEROS.length) {
    const n = Math.min(ZEROS.length, buf.length - at);
    if (Buffer.compare(buf.subarray(at, at + n), ZEROS.subarray(0, n)) !== 0) return false;
  }
  return true;
}
