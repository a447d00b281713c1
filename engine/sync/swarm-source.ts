/**
 * SwarmSource: a ChunkSource that fetches from every node holding a copy —
 * the owner and any number of seeders — and trusts a seeder's bytes only
 * when they match the owner's signed chunk-hash list (`ChunkVerifier`), so
 * a lying seeder cannot poison a mount. Pushes, flushes and the change
 * feed always go to the owner.
 *
 * Scheduling: each peer has a window (requests in flight it may have),
 * grown on success and halved on failure, and a throughput estimate; a
 * fetch goes to the peer with the most free window, faster first, seeders
 * before the owner (spreading load off it). A failed or too-slow fetch is
 * rescheduled on another peer; a chunk that fails verification is fetched
 * elsewhere and the peer gets a strike (three: it is dropped for good,
 * logged). A chunk whose hash is not known for its current version (the
 * owner changed it since the list was taken) comes from the owner only.
 */
import { QuicmapError } from '../../base/errors.ts';
import type { ChunkSource } from './chunk-source.ts';

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
}

export interface PeerStatus {
  name: string;
  owner: boolean;
  fetched: number;
  bytes: number;
  failures: number;
  badChunks: number;
  banned: boolean;
  window: number;
  inFlight: number;
  mbps: number;
}

interface Peer {
  name: string;
  owner: boolean;
  source: Pick<ChunkSource, 'fetch'>;
  window: number;
  inFlight: number;
  fetched: number;
  bytes: number;
  failures: number;
  badChunks: number;
  strikes: number;
  banned: boolean;
  /** Bytes per ms, EWMA. */
  rate: number;
  /** Not before this time after a failure (performance.now ms). */
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
  log?: (m: string) => void;
}

const MAX_WINDOW = 32;

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
    const peer = (name: string, owner: boolean, source: Pick<ChunkSource, 'fetch'>): Peer => ({
      name, owner, source, window: 4, inFlight: 0, fetched: 0, bytes: 0, failures: 0, badChunks: 0, strikes: 0, banned: false, rate: 0, retryAt: 0,
    });
    this.peers = [peer('owner', true, opts.owner), ...opts.seeders.map((s) => peer(s.name, false, s.source))];
  }

  status(): PeerStatus[] {
    return this.peers.map((p) => ({
      name: p.name, owner: p.owner, fetched: p.fetched, bytes: p.bytes, failures: p.failures, badChunks: p.badChunks, banned: p.banned, window: p.window, inFlight: p.inFlight, mbps: p.rate / 1000,
    }));
  }

  /** The best peer with a free slot for chunk `index`, excluding `tried`; undefined when all are busy. */
  private pick(index: number, tried: Set<Peer>, ownerOnly: boolean): Peer | undefined {
    const now = performance.now();
    let best: Peer | undefined;
    let bestScore = -Infinity;
    for (const p of this.peers) {
      if (p.banned || tried.has(p) || p.inFlight >= p.window) continue;
      if (!p.owner && (ownerOnly || now < p.retryAt || !this.verifier.known(index))) continue;
      // Free share of the window, then speed; seeders get a small edge to keep load off the owner.
      const score = (p.window - p.inFlight) / p.window + p.rate / 1e6 + (p.owner ? 0 : 0.05);
      if (score > bestScore) (best = p), (bestScore = score);
    }
    return best;
  }

  private candidatesLeft(index: number, tried: Set<Peer>, ownerOnly: boolean): boolean {
    return this.peers.some((p) => !p.banned && !tried.has(p) && (p.owner || (!ownerOnly && this.verifier.known(index))));
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
      const p = this.pick(index, tried, ownerOnly);
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
      p.inFlight++;
      const t0 = performance.now();
      try {
        await this.fetchFrom(p, index, buf, urgent);
        const dt = Math.max(0.05, performance.now() - t0);
        p.rate = p.rate === 0 ? buf.length / dt : 0.8 * p.rate + 0.2 * (buf.length / dt);
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
        p.window = Math.min(MAX_WINDOW, p.window + 1);
        return;
      } catch (e) {
        lastErr = e;
        p.failures++;
        p.window = Math.max(1, Math.floor(p.window / 2));
        if (!p.owner) p.retryAt = performance.now() + Math.min(5_000, 100 * 2 ** Math.min(6, p.failures));
        if (p.owner && !this.candidatesLeft(index, tried, false)) throw e;
      } finally {
        p.inFlight--;
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
