/**
 * ChunkStates: the per-chunk state of a synced layer, sans-IO. Pure
 * bookkeeping the SyncedLayer, the puller and the pusher share; every
 * transition is a method here, so the rules are tested without any store.
 *
 * Presence (one of):
 *   remote   — not in the local cache; the owner has it
 *   fetching — a fetch is in flight (urgent or background)
 *   local    — the cache holds it
 * and, for local chunks, dirtiness as two counters:
 *   written  — bumped by every local write of the chunk
 *   acked    — the `written` value the owner last acknowledged
 *   dirty ⇔ written > acked; `pushing` marks a push in flight.
 * A chunk written again while it is being pushed has written > the pushed
 * value when the push is acknowledged, so it stays dirty and is pushed again.
 *
 * `epoch` is bumped when the owner says a chunk changed (invalidation): a
 * fetch that started in an older epoch brings stale bytes and is discarded.
 * `changes` counts writes plus invalidations: the volatility that the
 * least-written-first pull order reads.
 */
export const Presence = { REMOTE: 0, FETCHING: 1, LOCAL: 2 } as const;
export type Presence = (typeof Presence)[keyof typeof Presence];

export interface ChunkCounts {
  chunks: number;
  local: number;
  fetching: number;
  remote: number;
  dirty: number;
}

export class ChunkStates {
  readonly count: number;
  private readonly presence: Uint8Array;
  private readonly written: Uint32Array;
  private readonly acked: Uint32Array;
  private readonly pushing: Uint8Array;
  private readonly epochs: Uint32Array;
  private readonly changeCounts: Uint32Array;
  private localCount = 0;
  private fetchingCount = 0;
  private dirtyCount = 0;

  constructor(count: number) {
    this.count = count;
    this.presence = new Uint8Array(count);
    this.written = new Uint32Array(count);
    this.acked = new Uint32Array(count);
    this.pushing = new Uint8Array(count);
    this.epochs = new Uint32Array(count);
    this.changeCounts = new Uint32Array(count);
  }

  presenceOf(i: number): Presence {
    return this.presence[i] as Presence;
  }
  isLocal(i: number): boolean {
    return this.presence[i] === Presence.LOCAL;
  }
  isRemote(i: number): boolean {
    return this.presence[i] === Presence.REMOTE;
  }
  /**
   * The first chunk at or after `from` that is not local (remote or being
   * fetched), or -1. Native searches of the presence bytes: a stop-and-copy
   * finds a few pending chunks of a large region without a JS loop over all
   * of them (it runs once, cold).
   */
  nextPending(from: number): number {
    const r = this.presence.indexOf(Presence.REMOTE, from);
    const f = this.fetchingCount > 0 ? this.presence.indexOf(Presence.FETCHING, from) : -1;
    return r < 0 ? f : f < 0 ? r : Math.min(r, f);
  }
  isDirty(i: number): boolean {
    return this.written[i]! !== this.acked[i]!;
  }
  isPushing(i: number): boolean {
    return this.pushing[i] === 1;
  }
  epoch(i: number): number {
    return this.epochs[i]!;
  }
  generation(i: number): number {
    return this.written[i]!;
  }
  changes(i: number): number {
    return this.changeCounts[i]!;
  }

  counts(): ChunkCounts {
    return {
      chunks: this.count,
      local: this.localCount,
      fetching: this.fetchingCount,
      remote: this.count - this.localCount - this.fetchingCount,
      dirty: this.dirtyCount,
    };
  }

  private setPresence(i: number, p: Presence): void {
    const old = this.presence[i]!;
    if (old === p) return;
    if (old === Presence.LOCAL) this.localCount--;
    else if (old === Presence.FETCHING) this.fetchingCount--;
    if (p === Presence.LOCAL) this.localCount++;
    else if (p === Presence.FETCHING) this.fetchingCount++;
    this.presence[i] = p;
  }

  /** remote → fetching. Returns the epoch the fetch belongs to, or -1 if the chunk is not remote. */
  beginFetch(i: number): number {
    if (this.presence[i] !== Presence.REMOTE) return -1;
    this.setPresence(i, Presence.FETCHING);
    return this.epochs[i]!;
  }

  /**
   * The fetch of epoch `epoch` may install its bytes: true when the chunk is
   * still fetching in that epoch (no local write and no invalidation came
   * in between). The caller writes the cache, then calls `fetched`.
   */
  fetchStillValid(i: number, epoch: number): boolean {
    return this.presence[i] === Presence.FETCHING && this.epochs[i] === epoch;
  }

  /** fetching → local (bytes installed in the cache). */
  fetched(i: number): void {
    if (this.presence[i] === Presence.FETCHING) this.setPresence(i, Presence.LOCAL);
  }

  /** A fetch failed or was discarded: back to remote unless a write made it local meanwhile. */
  fetchAbandoned(i: number): void {
    if (this.presence[i] === Presence.FETCHING) this.setPresence(i, Presence.REMOTE);
  }

  /** A local write covered the chunk (the cache now holds its bytes): local and dirty. */
  wrote(i: number): void {
    const wasDirty = this.isDirty(i);
    this.setPresence(i, Presence.LOCAL);
    this.written[i] = (this.written[i]! + 1) >>> 0;
    // Wrapping to equal `acked` would read as clean: skip that value.
    if (this.written[i] === this.acked[i]) this.written[i] = (this.written[i]! + 1) >>> 0;
    this.changeCounts[i] = Math.min(0xffff_ffff, this.changeCounts[i]! + 1);
    if (!wasDirty) this.dirtyCount++;
  }

  /** Start pushing: returns the generation being pushed, or -1 if the chunk is clean or already pushing. */
  beginPush(i: number): number {
    if (!this.isDirty(i) || this.pushing[i] === 1) return -1;
    this.pushing[i] = 1;
    return this.written[i]!;
  }

  /** The owner acknowledged generation `gen` of chunk i. */
  pushed(i: number, gen: number): void {
    this.pushing[i] = 0;
    const wasDirty = this.isDirty(i);
    this.acked[i] = gen;
    if (wasDirty && !this.isDirty(i)) this.dirtyCount--;
  }

  /** The push failed: the chunk stays dirty. */
  pushFailed(i: number): void {
    this.pushing[i] = 0;
  }

  /** Mark every dirty chunk clean without pushing (the layer became the owner: nothing to push to). */
  forgetDirty(): void {
    for (let i = 0; i < this.count; i++) this.acked[i] = this.written[i]!;
    this.dirtyCount = 0;
  }

  /**
   * The owner changed chunk i. A clean local chunk becomes remote; a fetch
   * in flight is made stale; a dirty or pushing chunk keeps the local bytes
   * (single writer per chunk: the local write will overwrite the owner's).
   * Returns true when the chunk became remote (the puller should fetch it again).
   */
  invalidate(i: number): boolean {
    this.changeCounts[i] = Math.min(0xffff_ffff, this.changeCounts[i]! + 1);
    if (this.isDirty(i) || this.pushing[i] === 1) return false;
    this.epochs[i] = (this.epochs[i]! + 1) >>> 0;
    if (this.presence[i] === Presence.LOCAL) {
      this.setPresence(i, Presence.REMOTE);
      return true;
    }
    return false;
  }

  /** Dirty chunks not being pushed, ascending. */
  dirtyChunks(limit = Infinity): number[] {
    const out: number[] = [];
    if (this.dirtyCount === 0) return out;
    for (let i = 0; i < this.count && out.length < limit; i++) if (this.written[i] !== this.acked[i] && this.pushing[i] === 0) out.push(i);
    return out;
  }

  /** Every dirty chunk with its current generation (a flush barrier's targets). */
  dirtyGenerations(): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    if (this.dirtyCount === 0) return out;
    for (let i = 0; i < this.count; i++) if (this.written[i] !== this.acked[i]) out.push([i, this.written[i]!]);
    return out;
  }

  /** Generation `gen` of chunk i (or a later one) has been acknowledged. */
  ackedAtLeast(i: number, gen: number): boolean {
    // Generations grow by one per write (mod 2^32): compare as a signed distance.
    return ((this.acked[i]! - gen) | 0) >= 0;
  }
}
