/**
 * Reads answered with a reference: "chunk i is held by peer P under id X".
 * The owner of a region knows which of its mounters hold copies of which
 * chunks (they tell it: `hold.offer`), and a managed mount's puller that
 * asks (`ref.locate`) gets references to those holders instead of bytes; it
 * then fetches each chunk from its holder directly (`hold.fetch`) and checks
 * it against the owner's signed chunk hashes, as for any seeder (ref-pull.ts).
 *
 * Three parties, one capability chain (crypto/delegation.ts):
 * - The holder P serves its copy as a read-only region (the seed share) and
 *   offers it to the owner with a read grant on that copy, signed by P and
 *   bound to the owner's key, plus a bitmap of the chunks it holds.
 * - The owner O answers `ref.locate` with, per holder used, a delegation of
 *   that grant bound to the caller's key (read-only, 10 minutes), and per
 *   chunk a cache ID naming the holder: machine part of P's key, slot
 *   `HELD_SLOT`, line = chunk index (the holder's copy is its cache table).
 * - The puller B opens a delegated session at P with it (the grant inside
 *   tells B P's key, endpoints and region) and calls `hold.fetch {id}`. P
 *   answers only from chunks it holds locally (never pulls on demand for
 *   someone else's reference): `{held: false}` sends B back to the owner.
 *
 * Freshness: the owner stamps each offer with its change-feed version; a
 * chunk the owner changed after the holder's last offer is not referenced
 * (the holder's copy may be the old one). Whatever slips through is caught
 * by B's hash check.
 *
 * Bounds: at most `maxHolders` holders per region (an offer beyond that is
 * ENOSPC), a bitmap of exactly the region's chunks, offers expire after
 * `leaseMs` without renewal (or at once with `hold.withdraw`), at most
 * `MAX_LOCATE` chunks and `MAX_HOLDERS_PER_ANSWER` holders per answer.
 */
import { QuicmapError, ProtocolError } from '../../base/errors.ts';
import { systemClock, type Clock } from '../../base/clock.ts';
import { delegationCovers, signDelegation } from '../../crypto/delegation.ts';
import { checkGrantTime, openGrant, signGrant, type GrantClaims } from '../../crypto/grant.ts';
import type { Endpoint } from '../../crypto/endpoint.ts';
import type { Identity } from '../../crypto/identity.ts';
import type { ChangeFeed } from '../../engine/tracking/change-feed.ts';
import { MAX_LINE, machineOf, makeCacheId, splitCacheId } from '../protocol/cache-id.ts';
import type { RemoteRegion } from '../remote/region.ts';
import type { CallContext, RegionServer } from '../remote/server.ts';
import { argsOf, hex, idBytes, idOf, uint } from '../copy/wire.ts';

export const HOLD_OFFER = 'hold.offer';
export const HOLD_WITHDRAW = 'hold.withdraw';
export const HOLD_FETCH = 'hold.fetch';
export const REF_LOCATE = 'ref.locate';

/** The slot of a holder's cache IDs that names its copy of a region (line = chunk index). */
export const HELD_SLOT = 0xffff;
export const MAX_LOCATE = 256;
export const MAX_HOLDERS_PER_ANSWER = 4;
/** Bytes of chunk bitmap per `hold.offer` (65 536 chunks): far below the control-body limit. */
export const MAX_OFFER_PAGE = 8192;
const POPCOUNT = Uint8Array.from({ length: 256 }, (_, b) => [0, 1, 2, 3, 4, 5, 6, 7].reduce((n, k) => n + ((b >> k) & 1), 0));
/** How long a delegation handed out by `ref.locate` is valid. */
export const HELD_DELEGATION_S = 600;

export interface HolderView {
  key: string;
  chunks: number;
  regionId: string;
  ageMs: number;
}

export interface HolderBoardStats {
  offers: number;
  withdrawn: number;
  expired: number;
  refused: number;
  locates: number;
  /** Chunks answered with a reference (not with "ask me"). */
  referenced: number;
}

interface HolderEntry {
  key: Uint8Array;
  keyHex: string;
  grant: Uint8Array;
  claims: GrantClaims;
  have: Uint8Array;
  count: number;
  /** The owner's change-feed version when this offer came: later changes are not in the holder's copy. */
  version: number;
  seen: number;
  /** Delegations signed for callers, reused until close to their end. */
  delegations: Map<string, { bytes: Uint8Array; notAfter: number }>;
}

export interface HolderBoardOptions {
  identity: Identity;
  size: number;
  chunkSize: number;
  feed?: ChangeFeed;
  maxHolders?: number;
  /** An offer not renewed for this long is dropped (default 30 s). */
  leaseMs?: number;
  clock?: Clock;
  /** How a holder's key maps to the machine part of its IDs (default `machineOf`; tests force collisions). */
  machineOf?: (key: Uint8Array) => number;
  log?: (m: string) => void;
}

/** The owner's side: who holds which chunks of this region. */
export class HolderBoard {
  readonly stats: HolderBoardStats = { offers: 0, withdrawn: 0, expired: 0, refused: 0, locates: 0, referenced: 0 };
  private readonly o: HolderBoardOptions;
  private readonly holders = new Map<string, HolderEntry>();
  private readonly chunks: number;
  private readonly clock: Clock;
  private turn = 0;

  constructor(o: HolderBoardOptions) {
    this.o = o;
    this.chunks = Math.ceil(o.size / o.chunkSize);
    this.clock = o.clock ?? systemClock;
  }

  serve(server: RegionServer): void {
    server.handle(HOLD_OFFER, async (args, ctx) => this.offer(ctx, argsOf(args, HOLD_OFFER)));
    server.handle(HOLD_WITHDRAW, async (_args, ctx) => ({ withdrawn: this.withdraw(ctx.peer) }));
    server.handle(REF_LOCATE, async (args, ctx) => {
      const a = argsOf(args, REF_LOCATE);
      const from = uint(a, 'from', REF_LOCATE);
      const count = uint(a, 'count', REF_LOCATE, MAX_LOCATE);
      const exclude = a.exclude === undefined ? [] : a.exclude;
      if (!Array.isArray(exclude) || exclude.length > 64 || !exclude.every((k) => typeof k === 'string' && k.length <= 64)) {
        throw new ProtocolError(`${REF_LOCATE}: "exclude" must be at most 64 key strings`);
      }
      return this.locate(ctx.peer, from, count, new Set(exclude as string[]));
    });
  }

  view(): { holders: HolderView[]; stats: HolderBoardStats } {
    this.expire();
    const now = this.clock.now();
    return {
      holders: [...this.holders.values()].map((h) => ({ key: h.keyHex, chunks: h.count, regionId: hex(h.claims.regionId), ageMs: now - h.seen })),
      stats: { ...this.stats },
    };
  }

  /**
   * A holder offers its copy: `{grant, chunkSize, from, have}` — a page of
   * its chunk bitmap (one bit per chunk, LSB first) starting at chunk `from`
   * (a multiple of 8), at most `MAX_OFFER_PAGE` bytes, so a call stays far
   * below the control-body limit whatever the region's size. Each page
   * renews the offer; bits outside it are kept.
   */
  async offer(ctx: Pick<CallContext, 'peer'>, a: Record<string, unknown>): Promise<{ accepted: number }> {
    try {
      const grant = a.grant;
      const have = a.have;
      const bytes = Math.ceil(this.chunks / 8);
      const from = a.from === undefined ? 0 : uint(a, 'from', HOLD_OFFER);
      if (!(grant instanceof Uint8Array)) throw new ProtocolError(`${HOLD_OFFER}: "grant" must be bytes`);
      if (from % 8 !== 0 || from >= Math.max(1, this.chunks)) throw new ProtocolError(`${HOLD_OFFER}: "from" must be a multiple of 8 below ${this.chunks}`);
      if (!(have instanceof Uint8Array) || have.length === 0 || have.length > MAX_OFFER_PAGE || from / 8 + have.length > bytes) {
        throw new ProtocolError(`${HOLD_OFFER}: "have" must be 1 to ${MAX_OFFER_PAGE} bytes of the bitmap of ${this.chunks} chunks, from chunk ${from}`);
      }
      if (a.chunkSize !== this.o.chunkSize) throw new QuicmapError('EINVAL', `${HOLD_OFFER}: the holder's chunks are ${String(a.chunkSize)} bytes, this region's ${this.o.chunkSize}`);
      const keyHex = hex(ctx.peer);
      this.expire();
      const old = this.holders.get(keyHex);
      const sameGrant = old !== undefined && Buffer.from(old.grant).equals(Buffer.from(grant));
      let claims = old?.claims;
      if (!sameGrant) {
        // The grant is the holder's own (signed by the peer that offers it), for the owner to delegate.
        claims = await openGrant(grant, ctx.peer);
        if (!claims.grantee || !Buffer.from(claims.grantee).equals(Buffer.from(this.o.identity.publicKey))) {
          throw new QuicmapError('EACCES', `${HOLD_OFFER}: the grant must be bound to this owner's key`);
        }
        if (claims.endpoints.length === 0) throw new QuicmapError('EINVAL', `${HOLD_OFFER}: the grant names no endpoint to reach the holder`);
      }
      checkGrantTime(claims!); // wall time (the clock here is monotonic: leases only)
      if (claims!.expiresAt !== 0 && claims!.expiresAt * 1000 < Date.now() + 120_000) throw new QuicmapError('EACCES', `${HOLD_OFFER}: the grant expires within two minutes`);
      if (!old && this.holders.size >= (this.o.maxHolders ?? 32)) throw new QuicmapError('ENOSPC', `${HOLD_OFFER}: this region has ${this.holders.size} holders already`);
      const bitmap = old ? old.have : new Uint8Array(bytes);
      bitmap.set(have, from / 8);
      // Bits past the last chunk mean nothing.
      if (this.chunks % 8 !== 0) bitmap[bytes - 1]! &= (1 << (this.chunks % 8)) - 1;
      let count = 0;
      for (const b of bitmap) count += POPCOUNT[b]!;
      this.holders.set(keyHex, {
        key: Uint8Array.from(ctx.peer),
        keyHex,
        grant: sameGrant ? old.grant : Uint8Array.from(grant),
        claims: claims!,
        have: bitmap,
        count,
        version: this.o.feed?.current ?? 0,
        seen: this.clock.now(),
        delegations: sameGrant ? old.delegations : new Map(),
      });
      this.stats.offers++;
      if (!old) this.o.log?.(`holder ${keyHex.slice(0, 12)}… offers ${count} chunk(s) of this region`);
      return { accepted: count };
    } catch (e) {
      this.stats.refused++;
      throw e;
    }
  }

  withdraw(peer: Uint8Array): boolean {
    const gone = this.holders.delete(hex(peer));
    if (gone) this.stats.withdrawn++;
    return gone;
  }

  /** References for chunks [from, from+count) the caller may fetch from holders (never itself, never `exclude`). */
  async locate(caller: Uint8Array, from: number, count: number, exclude: ReadonlySet<string>): Promise<{ holders: Array<{ delegation: Uint8Array }>; refs: Array<{ index: number; holder: number; id: Uint8Array }> }> {
    this.stats.locates++;
    this.expire();
    const me = hex(caller);
    const feed = this.o.feed;
    const candidates = [...this.holders.values()].filter((h) => h.keyHex !== me && !exclude.has(h.keyHex));
    const used: HolderEntry[] = [];
    const refs: Array<{ index: number; holder: number; id: Uint8Array }> = [];
    const end = Math.min(this.chunks, from + count);
    for (let i = from; i < end && i <= MAX_LINE; i++) {
      const can = candidates.filter((h) => h.have[i >> 3]! & (1 << (i & 7)) && (!feed || feed.lastChanged(i) <= h.version));
      if (can.length === 0) continue;
      // Spread the chunks over the holders; prefer one already in this answer once the answer names the most it may.
      let h = can[(this.turn++ >>> 0) % can.length]!;
      if (used.length >= MAX_HOLDERS_PER_ANSWER && !used.includes(h)) {
        const again = can.find((c) => used.includes(c));
        if (!again) continue;
        h = again;
      }
      let k = used.indexOf(h);
      if (k < 0) k = used.push(h) - 1;
      refs.push({ index: i, holder: k, id: idBytes(makeCacheId((this.o.machineOf ?? machineOf)(h.key), HELD_SLOT, i)) });
    }
    this.stats.referenced += refs.length;
    const holders = await Promise.all(used.map(async (h) => ({ delegation: await this.delegationFor(h, caller) })));
    return { holders, refs };
  }

  private async delegationFor(h: HolderEntry, caller: Uint8Array): Promise<Uint8Array> {
    const k = hex(caller);
    const nowS = Math.floor(Date.now() / 1000);
    const have = h.delegations.get(k);
    if (have && have.notAfter - nowS > HELD_DELEGATION_S / 2) return have.bytes;
    const bytes = await signDelegation(this.o.identity, { grant: h.grant, delegate: caller, offset: 0, length: this.o.size, validFor: HELD_DELEGATION_S, notBefore: nowS });
    h.delegations.set(k, { bytes, notAfter: nowS + HELD_DELEGATION_S });
    if (h.delegations.size > 256) h.delegations.delete(h.delegations.keys().next().value!);
    return bytes;
  }

  private expire(): void {
    const now = this.clock.now();
    const lease = this.o.leaseMs ?? 30_000;
    for (const [k, h] of this.holders) {
      if (now - h.seen < lease) continue;
      this.holders.delete(k);
      this.stats.expired++;
    }
  }
}

export interface HeldChunksStats {
  fetches: number;
  bytes: number;
  /** Asked for a chunk this copy does not hold (the asker goes back to the owner). */
  missing: number;
  refused: number;
}

/**
 * The holder's side of `hold.fetch`, on its seed share's server: a chunk
 * this copy holds, for a session that came with the owner's delegation (or
 * any session that may read). `readLocal` answers only from local chunks
 * (SyncedLayer.readIfLocal): undefined when the chunk is not held.
 */
export function serveHeldChunks(
  server: RegionServer,
  o: { identity: Identity; size: number; chunkSize: number; readLocal: (buf: Uint8Array, offset: number) => Promise<void> | undefined },
): HeldChunksStats {
  const stats: HeldChunksStats = { fetches: 0, bytes: 0, missing: 0, refused: 0 };
  const machine = machineOf(o.identity.publicKey);
  const chunks = Math.ceil(o.size / o.chunkSize);
  server.handle(
    HOLD_FETCH,
    async (args, ctx) => {
      const { machine: m, slot, line } = splitCacheId(idOf(argsOf(args, HOLD_FETCH).id, HOLD_FETCH));
      if (m !== machine || slot !== HELD_SLOT || line >= chunks) {
        stats.refused++;
        throw new QuicmapError('EINVAL', `${HOLD_FETCH}: the id does not name a chunk this node holds`);
      }
      const offset = line * o.chunkSize;
      const length = Math.min(o.chunkSize, o.size - offset);
      if (ctx.delegation && !delegationCovers(ctx.delegation, offset, length)) {
        stats.refused++;
        throw new QuicmapError('EACCES', `${HOLD_FETCH}: chunk ${line} is outside the delegated range`);
      }
      if (length > ctx.maxReply - 1024) throw new QuicmapError('EOVERFLOW', `${HOLD_FETCH}: a chunk of ${length} bytes does not fit this session's frames`);
      const data = new Uint8Array(length);
      const p = o.readLocal(data, offset);
      if (!p) {
        stats.missing++;
        return { held: false };
      }
      await p;
      stats.fetches++;
      stats.bytes += length;
      return { held: true, data };
    },
    { delegated: true },
  );
  return stats;
}

export interface HolderOfferOptions {
  /** The link to the owner (the holder's own mount of the region). */
  owner: RemoteRegion;
  identity: Identity;
  /** The seed share: its region id and endpoints (the grant names them). */
  seed: { regionId: Uint8Array; endpoints: Endpoint[] };
  chunkSize: number;
  chunks: number;
  /** Whether chunk i is local in the holder's copy. */
  isLocal: (i: number) => boolean;
  /** Offer again this often while the copy changes, and at least every 3rd interval (default 5 s; the owner's lease is 30 s). */
  intervalMs?: number;
  log?: (m: string) => void;
}

/** The holder's side of `hold.offer`: tells the owner which chunks its seed share holds, until stopped (then withdraws). */
export class HolderOffer {
  private readonly o: HolderOfferOptions;
  private timer: NodeJS.Timeout | undefined;
  private grant: { bytes: Uint8Array; expiresAt: number } | undefined;
  private last: Uint8Array | undefined;
  private quiet = 0;
  private running: Promise<void> = Promise.resolve();
  private stopped = false;
  /** Offers the owner accepted; the last error (status, tests). */
  offered = 0;
  lastAccepted = 0;
  lastError: string | undefined;

  constructor(o: HolderOfferOptions) {
    this.o = o;
  }

  /** Offer now, then every interval. Resolves after the first round. */
  start(): Promise<void> {
    this.timer = setInterval(() => void this.round(), this.o.intervalMs ?? 5_000);
    this.timer.unref();
    return this.round();
  }

  /** One round now (tests: without waiting for the interval). */
  round(force = false): Promise<void> {
    this.running = this.running.then(async () => {
      if (this.stopped) return;
      try {
        const have = new Uint8Array(Math.ceil(this.o.chunks / 8));
        for (let i = 0; i < this.o.chunks; i++) if (this.o.isLocal(i)) have[i >> 3]! |= 1 << (i & 7);
        const same = this.last !== undefined && Buffer.from(this.last).equals(Buffer.from(have));
        if (same && !force && ++this.quiet < 3) return;
        // The whole bitmap when renewing, forced, or after a failure; else the pages that changed.
        const all = same || force || this.last === undefined;
        this.quiet = 0;
        if (!have.some((b) => b !== 0)) return;
        const nowS = Math.floor(Date.now() / 1000);
        if (!this.grant || this.grant.expiresAt - nowS < 3600) {
          const g = await signGrant(this.o.identity, { regionId: this.o.seed.regionId, endpoints: this.o.seed.endpoints, rights: 'ro', expiresAt: nowS + 86_400, grantee: this.o.owner.manifest.sharer });
          this.grant = { bytes: g.bytes, expiresAt: g.claims.expiresAt };
        }
        // Pages of the bitmap: those that changed, or all of them now and then (that renews the offer).
        let accepted = this.lastAccepted;
        const send = async (every: boolean) => {
          for (let at = 0; at < have.length; at += MAX_OFFER_PAGE) {
            const page = have.subarray(at, Math.min(have.length, at + MAX_OFFER_PAGE));
            if (!every && this.last && Buffer.from(this.last.subarray(at, at + page.length)).equals(Buffer.from(page))) continue;
            const r = (await this.o.owner.call(HOLD_OFFER, { grant: this.grant!.bytes, chunkSize: this.o.chunkSize, from: at * 8, have: page })) as { accepted?: unknown } | null;
            if (typeof r?.accepted === 'number') accepted = r.accepted;
          }
        };
        await send(all);
        let held = 0;
        for (let i = 0; i < this.o.chunks; i++) if (have[i >> 3]! & (1 << (i & 7))) held++;
        // The owner counts fewer (it dropped the offer meanwhile, or restarted): the whole bitmap again.
        if (!all && accepted < held) await send(true);
        this.last = have;
        this.offered++;
        this.lastAccepted = accepted;
        this.lastError = undefined;
      } catch (e) {
        this.last = undefined;
        if (this.lastError !== (e as Error).message) this.o.log?.(`holder: offering this copy to the owner failed: ${(e as Error).message}`);
        this.lastError = (e as Error).message;
      }
    });
    return this.running;
  }

  /** Stop offering and withdraw the offer (best effort, bounded). */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    await this.running;
    if (this.offered === 0) return;
    let t: NodeJS.Timeout | undefined;
    await Promise.race([this.o.owner.call(HOLD_WITHDRAW, {}).catch(() => {}), new Promise<void>((r) => (t = setTimeout(r, 2_000)))]);
    clearTimeout(t);
  }
}

export interface Holding {
  offer: HolderOffer;
  served: HeldChunksStats;
  stop(): Promise<void>;
}

/**
 * A managed mount that seeds: serve `hold.fetch` on its seed share and
 * offer the copy to the owner (its chunk bitmap, again as it fills), so
 * the owner can answer other mounters' pulls with references to it.
 */
export function startHolding(o: {
  owner: RemoteRegion;
  identity: Identity;
  copy: { isLocal(i: number): boolean; readIfLocal(buf: Uint8Array, offset: number): Promise<void> | undefined };
  seed: { server: RegionServer; regionId: Uint8Array; endpoints: Endpoint[] };
  chunkSize: number;
  intervalMs?: number;
  log?: (m: string) => void;
}): Holding {
  const size = o.owner.manifest.size;
  const served = serveHeldChunks(o.seed.server, { identity: o.identity, size, chunkSize: o.chunkSize, readLocal: (buf, off) => o.copy.readIfLocal(buf, off) });
  const offer = new HolderOffer({
    owner: o.owner,
    identity: o.identity,
    seed: { regionId: o.seed.regionId, endpoints: o.seed.endpoints },
    chunkSize: o.chunkSize,
    chunks: Math.ceil(size / o.chunkSize),
    isLocal: (i) => o.copy.isLocal(i),
    ...(o.intervalMs !== undefined ? { intervalMs: o.intervalMs } : {}),
    ...(o.log ? { log: o.log } : {}),
  });
  void offer.start();
  return { offer, served, stop: () => offer.stop() };
}
