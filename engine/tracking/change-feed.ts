/**
 * ChangeFeed: a versioned record of which chunks of a region changed, and
 * by whom — the sharer's side of DirtyList. Every write, trim or zero that
 * reaches the region (through the sharer's own NBD export, or from a peer)
 * is recorded with its origin; a reader asks "what changed since version
 * V, not counting my own writes?" and may wait until something does
 * (a long poll: no unsolicited frames on the wire, and resuming after a
 * reconnect is just asking again with the last version seen).
 *
 * Per chunk it keeps only the version and origin of the latest change, so
 * memory is O(chunks) whatever the write rate. A reader whose own write was
 * the latest change to a chunk is not told about it (its copy is current).
 * A reader that names another feed (the sharer restarted) is told 'all'.
 *
 * The migration source uses the same feed: Track = remember the current
 * version; each dirty round = changedSince(last round's version).
 */
import type { TrackingStore } from '../capability.ts';
import { systemClock, type Clock } from '../../base/clock.ts';

/** Origin of writes made through the sharer's own export (not by a peer). */
export const LOCAL_ORIGIN = 0;

export interface FeedAnswer {
  feed: number;
  version: number;
  chunks: number[] | 'all';
}

export class ChangeFeed {
  /** Random per feed instance: a version from another instance means nothing here. */
  readonly id: number;
  readonly chunkSize: number;
  readonly chunks: number;
  private version = 0;
  private readonly lastVersion: Float64Array;
  private readonly lastOrigin: Int32Array;
  private readonly waiters = new Set<() => void>();
  private readonly clock: Clock;

  constructor(size: number, chunkSize: number, opts: { clock?: Clock; id?: number } = {}) {
    this.chunkSize = chunkSize;
    this.chunks = Math.ceil(size / chunkSize);
    this.lastVersion = new Float64Array(this.chunks);
    this.lastOrigin = new Int32Array(this.chunks);
    this.clock = opts.clock ?? systemClock;
    this.id = opts.id ?? 1 + Math.floor(Math.random() * 0xffff_fffe);
  }

  get current(): number {
    return this.version;
  }

  /** Bytes [offset, offset + length) changed, by `origin`. */
  record(offset: number, length: number, origin = LOCAL_ORIGIN): void {
    if (length <= 0) return;
    const first = Math.floor(offset / this.chunkSize);
    const last = Math.min(this.chunks - 1, Math.floor((offset + length - 1) / this.chunkSize));
    this.version++;
    for (let i = first; i <= last; i++) {
      this.lastVersion[i] = this.version;
      this.lastOrigin[i] = origin;
    }
    for (const w of [...this.waiters]) w();
  }

  /** Chunks whose latest change is newer than `since` and not by `exclude`, ascending. */
  changedSince(since: number, exclude?: number): number[] {
    const out: number[] = [];
    if (since >= this.version) return out;
    for (let i = 0; i < this.chunks; i++) {
      if (this.lastVersion[i]! > since && this.lastOrigin[i] !== exclude) out.push(i);
    }
    return out;
  }

  /** How many times each chunk changed is not kept; this is the latest version per chunk (volatility: recent = hot). */
  lastChanged(i: number): number {
    return this.lastVersion[i]!;
  }

  /**
   * The long poll: changes since `since` (of feed `feed`), waiting up to
   * `waitMs` for one if there is none yet. A first call (`feed` null) gets
   * the current version and no chunks, at once.
   */
  async next(q: { feed: number | null; since: number; waitMs: number; exclude?: number }): Promise<FeedAnswer> {
    if (q.feed === null) return { feed: this.id, version: this.version, chunks: [] };
    if (q.feed !== this.id || q.since > this.version) return { feed: this.id, version: this.version, chunks: 'all' };
    const answer = (): FeedAnswer => ({ feed: this.id, version: this.version, chunks: this.changedSince(q.since, q.exclude) });
    let a = answer();
    const deadline = this.clock.now() + Math.max(0, q.waitMs);
    while (a.chunks.length === 0 && this.clock.now() < deadline) {
      await new Promise<void>((resolve) => {
        const wake = () => {
          this.waiters.delete(wake);
          cancel();
          resolve();
        };
        const cancel = this.clock.schedule(deadline, wake);
        this.waiters.add(wake);
      });
      a = answer();
    }
    return a;
  }

  /**
   * The feed as a TrackingStore (engine/capability.ts): dirty = changed since
   * the last mark and not cleared since its latest change.
   */
  tracker(): TrackingStore {
    let base = this.version;
    const cleared = new Map<number, number>();
    return {
      trackChunkSize: this.chunkSize,
      mark: async () => {
        base = this.version;
        cleared.clear();
      },
      dirty: async () => this.changedSince(base).filter((c) => !((cleared.get(c) ?? -1) >= this.lastVersion[c]!)),
      clear: (chunks) => {
        for (const c of chunks) cleared.set(c, this.version);
      },
    };
  }

  /** Wake every waiting poll (shutdown). */
  wakeAll(): void {
    for (const w of [...this.waiters]) w();
  }
}
