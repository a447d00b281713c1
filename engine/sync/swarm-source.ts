/**
 * SwarmSource: a ChunkSource that fetches from every node holding a copy —
 * the owner and any number of seeders — and trusts a seeder's bytes only
 * when they match the owner's signed chunk-hash list (`ChunkVerifier`), so
 * a lying seeder cannot poison a mount. Pushes, flushes and the change
 * feed always go to the owner.
 *
 * Runs of adjacent chunks (`fetchRange`) go to the owner in one request
 * while no seeder can take any, else chunk by chunk.
 *
 * Scheduling: each peer has a window (requests in flight it may have)
 * sized from its measured delivery rate and round trip (`PeerWindow`, fed
 * by the clock), so a fast seeder gets a deep pipeline and a slow one only
 * what it delivers in time; a fetch goes to the peer with room that would
 * finish it soonest. Seeders come before the owner: while a seeder could
 * serve the chunk, background pulls go to the owner only when no seeder has
 * room, and then use at most `ownerWindow` requests of the owner's
 * (spreading load off it; urgent reads are not capped). Seeders found later
 * (the DHT) join with `addSeeder`. A seeder that says which chunks it
 * holds (`Seeder.holds`: its HaveMap, kept fresh by p2p/sync/have-calls.ts)
 * is asked only for those: a partial seeder would fetch the rest from the
 * owner first. A failed or too-slow fetch is
 * rescheduled on another peer; a chunk that fails verification is fetched
 * elsewhere and the peer gets a strike (three: it is dropped for good,
 * logged). A chunk whose hash is not known for its current version (the
 * owner changed it since the list was taken) comes from the owner only.
 */
import { QuicmapError } from '../../base/errors.ts';
import { systemClock, type Clock } from '../../base/clock.ts';
import type { ChunkSource } from './chunk-source.ts';
import { PeerWindow } from './peer-window.ts';

export type Verdict = 'ok' | 'bad' | 'unknown';

export interface ChunkVerifier {
  /** Is `data` chunk `index` as the owner signed it? 'unknown': no valid hash for its current version. */
  check(index: number, data: Uint8Array): Verdict;
  /** Whether a seeder may be asked for chunk `index` at all (its hash is known). */
  known(index: number): boolean;
  /** The owner changed these chunks: their hashes are stale until refreshed. */
  invalidate(chunks: readonly number[] | 'all'): void;
}

export interface Seeder {
  /** For logs and status: a peer id or address. */
  name: string;
  source: Pick<ChunkSource, 'fetch'>;
  /** Whether the seeder holds chunk `index` (its HaveMap); absent: it may hold any. A seeder is never asked for a chunk it lacks. */
  holds?: (index: number) => boolean;
  /** How many chunks it holds (for status). */
  heldCount?: () => number;
}

export interface PeerStatus {
  name: string;
  owner: boolean;
  fetched: number;
  bytes: number;
  failures: number;
  badChunks: number;
  banned: boolean;
  /** Chunks the peer says it holds (null: not known; the owner holds all). */
  held: number | null;
  window: number;
  inFlight: number;
  mbps: number;
}

interface Peer {
  name: string;
  owner: boolean;
  source: Pick<ChunkSource, 'fetch'>;
  holds: ((index: number) => boolean) | undefined;
  heldCount: (() => number) | undefined;
  win: PeerWindow;
  fetched: number;
  bytes: number;
  failures: number;
  badChunks: number;
  strikes: number;
  banned: boolean;
  /** Not before this time after a failure (clock ms). */
  retryAt: number;
}

export interface SwarmOptions {
  owner: ChunkSource;
  seeders: readonly Seeder[];
  verifier: ChunkVerifier;
  /** A seeder fetch slower than this is abandoned and rescheduled (default 2 000 ms). */
  slowMs?: number;
  /** Strikes (chunks failing verification) before a seeder is dropped (default 3). */
  maxStrikes?: number;
  /** Owner requests background pulls may use while a seeder can serve the chunk (default 1). */
  ownerWindow?: number;
  /** Largest per-peer window (default 32). */
  maxWindow?: number;
  clock?: Clock;
  log?: (m: string) => void;
}

export class SwarmSource implements ChunkSource {
  readonly size: number;
  readonly chunkSize: number;
  readonly readOnly: boolean;
  private readonly owner: ChunkSource;
  private readonly peers: Peer[];
  private readonly verifier: ChunkVerifier;
  private readonly opts: SwarmOptions;
  private readonly log: (m: string) => void;
  private waiters: Array<() => void> = [];

  constructor(opts: SwarmOptions) {
    this.opts = opts;
    this.owner = opts.owner;
    this.size = opts.owner.size;
    this.chunkSize = opts.owner.chunkSize;
    this.readOnly = opts.owner.readOnly;
    this.verifier = opts.verifier;
    this.log = opts.log ?? (() => {});
    this.clock = opts.clock ?? systemClock;
    this.peers = [this.newPeer('owner', true, opts.owner)];
    for (const s of opts.seeders) this.addSeeder(s);
    if (opts.owner.fetchRange) this.fetchRange = (first, count, buf) => this.fetchRun(first, count, buf);
  }

  /**
   * Runs of adjacent chunks (the puller's background runs): in one request
   * to the owner while no seeder can take any (no seeder known yet, all
   * banned or backing off) — so a swarm mount without seeders pulls as fast
   * as a plain one — else chunk by chunk through the scheduler.
   */
  fetchRange?: (first: number, count: number, buf: Uint8Array) => Promise<void>;

  private async fetchRun(first: number, count: number, buf: Uint8Array): Promise<void> {
    const now = this.clock.now();
    const cs = this.chunkSize;
    // (Seeders that hold none of the run do not count.)
    if (!this.peers.some((p) => !p.owner && !p.banned && now >= p.retryAt && runHeld(p, first, count))) {
      const o = this.peers[0]!;
      const ticket = o.win.start(now);
      try {
        await this.owner.fetchRange!(first, count, buf);
      } catch (e) {
        o.win.failed(ticket, this.clock.now());
        o.failures++;
        throw e;
      }
      o.win.done(ticket, this.clock.now(), buf.length);
      o.fetched += count;
      o.bytes += buf.length;
      return;
    }
    const jobs: Promise<void>[] = [];
    for (let k = 0; k < count; k++) jobs.push(this.fetch(first + k, buf.subarray(k * cs, Math.min(buf.length, (k + 1) * cs)), false));
    const results = await Promise.allSettled(jobs);
    const bad = results.find((r) => r.status === 'rejected');
    if (bad) throw (bad as PromiseRejectedResult).reason;
  }

  private readonly clock: Clock;

  private newPeer(name: string, owner: boolean, source: Pick<ChunkSource, 'fetch'>, holds?: (index: number) => boolean, heldCount?: () => number): Peer {
    const win = new PeerWindow({ chunkBytes: this.chunkSize, maxWindow: this.opts.maxWindow ?? 32 });
    return { name, owner, source, holds, heldCount, win, fetched: 0, bytes: 0, failures: 0, badChunks: 0, strikes: 0, banned: false, retryAt: 0 };
  }

  /** A seeder found after the start (the DHT, an announce): pulls use it from now on. False if one of that name is known. */
  addSeeder(s: Seeder): boolean {
    if (this.peers.some((p) => p.name === s.name)) return false;
    this.peers.push(this.newPeer(s.name, false, s.source, s.holds, s.heldCount));
    this.wake();
    return true;
  }

  has(name: string): boolean {
    return this.peers.some((p) => p.name === name);
  }

  status(): PeerStatus[] {
    const now = this.clock.now();
    return this.peers.map((p) => ({
      name: p.name, owner: p.owner, fetched: p.fetched, bytes: p.bytes, failures: p.failures, badChunks: p.badChunks, banned: p.banned,
      held: p.owner ? null : (p.heldCount?.() ?? null),
      window: p.win.window(now), inFlight: p.win.inFlight, mbps: p.win.rate(now) / 1000,
    }));
  }

  /** A seeder that may serve chunk `index` now (holds it, known hash, not banned, not backing off). */
  private seederFor(index: number, p: Peer, now: number): boolean {
    return !p.owner && !p.banned && now >= p.retryAt && this.verifier.known(index) && (p.holds?.(index) ?? true);
  }

  /** The peer with room that would finish chunk `index` soonest, excluding `tried`; undefined when all are busy. */
  private pick(index: number, tried: Set<Peer>, urgent: boolean): Peer | undefined {
    const now = this.clock.now();
    const seedersCan = this.peers.some((p) => !tried.has(p) && this.seederFor(index, p, now));
    let best: Peer | undefined;
    let bestMs = Infinity;
    for (const p of this.peers) {
      if (p.banned || tried.has(p) || !p.win.hasRoom(now)) continue;
      if (p.owner) {
        if (!urgent && seedersCan && p.win.inFlight >= (this.opts.ownerWindow ?? 1)) continue;
        if (seedersCan && now < p.retryAt) continue;
      } else if (!this.seederFor(index, p, now)) continue;
      // Background pulls take the owner only when no seeder has room (urgent reads: whoever is soonest).
      const ms = p.win.expectedMs(now) + (p.owner && !urgent && seedersCan ? 1e9 : 0);
      if (ms < bestMs) (best = p), (bestMs = ms);
    }
    return best;
  }

  private candidatesLeft(index: number, tried: Set<Peer>, ownerOnly: boolean): boolean {
    return this.peers.some((p) => !p.banned && !tried.has(p) && (p.owner || (!ownerOnly && this.verifier.known(index) && (p.holds?.(index) ?? true))));
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  async fetch(index: number, buf: Uint8Array, urgent: boolean): Promise<void> {
    const tried = new Set<Peer>();
    let lastErr: unknown;
    for (;;) {
      const ownerOnly = false;
      const p = this.pick(index, tried, urgent);
      if (!p) {
        if (!this.candidatesLeft(index, tried, ownerOnly)) {
          throw lastErr instanceof Error ? lastErr : new QuicmapError('EIO', `chunk ${index}: no peer could supply it`);
        }
        // Everyone with a chance is busy: wait for a slot.
        await new Promise<void>((r) => {
          this.waiters.push(r);
          setTimeout(r, 50).unref();
        });
        continue;
      }
      tried.add(p);
      const ticket = p.win.start(this.clock.now());
      let settled = false;
      try {
        await this.fetchFrom(p, index, buf, urgent);
        p.win.done(ticket, this.clock.now(), buf.length);
        settled = true;
        if (!p.owner) {
          const v = this.verifier.check(index, buf);
          if (v !== 'ok') {
            if (v === 'bad') this.strike(p, index);
            lastErr = new QuicmapError('EIO', `chunk ${index} from ${p.name} failed verification`);
            continue;
          }
        }
        p.fetched++;
        p.bytes += buf.length;
        return;
      } catch (e) {
        lastErr = e;
        p.failures++;
        if (!settled) p.win.failed(ticket, this.clock.now());
        // The owner backs off too (while seeders can stand in for it: pick() only then honours it).
        p.retryAt = this.clock.now() + Math.min(5_000, 100 * 2 ** Math.min(6, p.failures));
        if (p.owner && !this.candidatesLeft(index, tried, false)) throw e;
      } finally {
        this.wake();
      }
    }
  }

  private async fetchFrom(p: Peer, index: number, buf: Uint8Array, urgent: boolean): Promise<void> {
    if (p.owner) return p.source.fetch(index, buf, urgent);
    // A seeder gets its own buffer: if it is too slow we move on, and its late bytes must not land in `buf`.
    const mine = new Uint8Array(buf.length);
    const slowMs = this.opts.slowMs ?? 2_000;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        p.source.fetch(index, mine, urgent),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new QuicmapError('ETIMEDOUT', `${p.name} took over ${slowMs} ms for chunk ${index}`)), slowMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
    buf.set(mine);
  }

  private strike(p: Peer, index: number): void {
    p.badChunks++;
    p.strikes++;
    this.log(`seeder ${p.name} sent chunk ${index} that does not match the owner's signed hash (strike ${p.strikes})`);
    if (p.strikes >= (this.opts.maxStrikes ?? 3) && !p.banned) {
      p.banned = true;
      this.log(`seeder ${p.name} dropped: ${p.strikes} chunks failed verification`);
    }
  }

  push(index: number, data: Uint8Array): Promise<void> {
    return this.owner.push(index, data);
  }

  flush(): Promise<void> {
    return this.owner.flush();
  }

  zero(index: number): Promise<void> {
    return this.owner.zero ? this.owner.zero(index) : this.owner.push(index, new Uint8Array(Math.min(this.chunkSize, this.size - index * this.chunkSize)));
  }

  watch(onChanged: (chunks: readonly number[] | 'all') => void): () => void {
    const inner = this.owner.watch?.((c) => {
      this.verifier.invalidate(c);
      onChanged(c);
    });
    return inner ?? (() => {});
  }
}

function runHeld(p: Peer, first: number, count: number): boolean {
  if (!p.holds) return true;
  for (let i = first; i < first + count; i++) if (p.holds(i)) return true;
  return false;
}
