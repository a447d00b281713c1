/**
 * The change feed on the wire (DirtyList): the sharer answers the
 * `changes` call from its ChangeFeed; a mounter long-polls it and turns
 * the answers into invalidations of its cached chunks.
 *
 *   call:  changes {feed: u32 | null, since: number, waitMs: number}
 *   reply: {feed: u32, version: number, chunks: bin (u32 LE indices) | null}
 *          chunks null = "everything may have changed" (the feed restarted,
 *          or the list would not fit in one reply)
 *
 * A first call (feed null) returns at once with the current version; the
 * mounter makes it before its first fetch, so no change after its first
 * read can be missed. The poll rides on the request table like any request
 * (id, deadline, in-flight bound), so resumable streams extend it for free.
 */
import { QuicmapError, errorCode } from '../../base/errors.ts';
import type { ChangeFeed } from '../../engine/tracking/change-feed.ts';
import type { RegionServer } from '../remote/server.ts';

export const CHANGES_CALL = 'changes';
/** Longest a poll is held open at the sharer (well under the request deadline). */
export const MAX_POLL_MS = 10_000;

export interface ChangesReply {
  feed: number;
  version: number;
  chunks: number[] | 'all';
}

export function packChunks(chunks: readonly number[]): Uint8Array {
  const out = new Uint8Array(chunks.length * 4);
  const v = new DataView(out.buffer);
  chunks.forEach((c, k) => v.setUint32(k * 4, c, true));
  return out;
}

function unpackChunks(b: Uint8Array): number[] {
  if (b.length % 4 !== 0) throw new QuicmapError('EPROTO', 'changes: chunk list is not a whole number of u32s');
  const v = new DataView(b.buffer, b.byteOffset, b.length);
  const out = new Array<number>(b.length / 4);
  for (let k = 0; k < out.length; k++) out[k] = v.getUint32(k * 4, true);
  return out;
}

/** Serve `feed` as the `changes` call on `server`. */
export function serveChanges(server: RegionServer, feed: ChangeFeed): void {
  server.handle(CHANGES_CALL, async (args, ctx) => {
    const a = (args ?? {}) as Record<string, unknown>;
    const f = a.feed === null || a.feed === undefined ? null : Number(a.feed);
    const since = Number(a.since ?? 0);
    const waitMs = Math.min(MAX_POLL_MS, Math.max(0, Number(a.waitMs ?? 0)));
    if ((f !== null && !Number.isInteger(f)) || !Number.isSafeInteger(since) || since < 0 || !Number.isFinite(waitMs)) {
      throw new QuicmapError('EINVAL', 'changes: bad arguments');
    }
    const ans = await feed.next({ feed: f, since, waitMs, exclude: ctx.session });
    const fits = ans.chunks !== 'all' && ans.chunks.length * 4 + 64 <= ctx.maxReply;
    return { feed: ans.feed, version: ans.version, chunks: fits ? packChunks(ans.chunks as number[]) : null };
  });
}

/** What the poller needs of a remote region. */
export interface Caller {
  call(method: string, args: unknown): Promise<unknown>;
}

export function decodeChanges(v: unknown): ChangesReply {
  const o = v as Record<string, unknown> | null;
  if (!o || typeof o !== 'object' || !Number.isInteger(o.feed) || !Number.isSafeInteger(o.version)) {
    throw new QuicmapError('EPROTO', 'changes: malformed reply');
  }
  const chunks = o.chunks === null ? 'all' : o.chunks instanceof Uint8Array ? unpackChunks(o.chunks) : undefined;
  if (chunks === undefined) throw new QuicmapError('EPROTO', 'changes: malformed chunk list');
  return { feed: o.feed as number, version: o.version as number, chunks };
}

/**
 * Long-polls the sharer's feed and reports changes. `start` makes the first
 * call (the base version) and resolves once it is answered; a sharer
 * without a feed (ENOTSUP) resolves `start` with false.
 */
export class ChangePoller {
  private feed: number | null = null;
  private since = 0;
  private running = false;
  private loop: Promise<void> | undefined;
  private readonly region: Caller;
  private readonly onChanged: (chunks: readonly number[] | 'all') => void;
  private readonly log: (m: string) => void;
  polls = 0;

  constructor(region: Caller, onChanged: (chunks: readonly number[] | 'all') => void, log: (m: string) => void = () => {}) {
    this.region = region;
    this.onChanged = onChanged;
    this.log = log;
  }

  get version(): number {
    return this.since;
  }

  /** The feed being followed (null before the first answer). */
  get feedId(): number | null {
    return this.feed;
  }

  private async poll(waitMs: number): Promise<void> {
    this.apply(decodeChanges(await this.region.call(CHANGES_CALL, { feed: this.feed, since: this.since, waitMs })));
    this.polls++;
  }

  /**
   * Apply an answer of the feed (a poll's, or one that came another way:
   * the final dirty list of a migration's suspend). Returns how many chunks
   * it reported changed (-1: everything).
   */
  apply(r: ChangesReply): number {
    const known = this.feed !== null;
    let n = 0;
    if (known && (r.chunks === 'all' || r.feed !== this.feed)) {
      this.onChanged('all');
      n = -1;
    } else if (known && r.version <= this.since) {
      // Polls overlap (pollNow during the long poll, the suspend's list): an answer whose version is not
      // newer than what was applied already reports only changes an applied answer covered.
    } else if (r.chunks !== 'all' && r.chunks.length > 0) {
      this.onChanged(r.chunks);
      n = r.chunks.length;
    }
    // Versions only move forward within a feed.
    this.since = known && r.feed === this.feed ? Math.max(this.since, r.version) : r.version;
    this.feed = r.feed;
    return n;
  }

  async start(): Promise<boolean> {
    try {
      await this.poll(0);
    } catch (e) {
      if (errorCode(e) === 'ENOTSUP') {
        this.log('the sharer keeps no change feed: cached chunks are not invalidated when it changes them');
        return false;
      }
      throw e;
    }
    this.running = true;
    this.loop = this.run();
    return true;
  }

  /** Ask once more now, without waiting (a migration's dirty round). */
  async pollNow(): Promise<void> {
    await this.poll(0);
  }

  private async run(): Promise<void> {
    let backoff = 200;
    while (this.running) {
      try {
        await this.poll(MAX_POLL_MS);
        backoff = 200;
      } catch (e) {
        if (!this.running) return;
        if (errorCode(e) === 'ESHUTDOWN') return;
        await new Promise((r) => setTimeout(r, backoff).unref());
        backoff = Math.min(5_000, backoff * 2);
      }
    }
  }

  stop(): void {
    this.running = false;
  }
}
