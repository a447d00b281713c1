/**
 * CopyTarget: the destination side of a third-party copy, on a read-write
 * sharer. The orchestrator forwards references (`copy.fetch`: a delegation
 * and, per piece, the cache id, its source range and where it goes); the
 * target claims them at the origin with the delegation, fetches each piece
 * from the origin directly, writes it to its own store, and gives the
 * references back in batches. The bytes never pass the orchestrator.
 *
 * - Bounded: fetched pieces wait for their write in a local copy table
 *   (HeldRefs, `holdBytes`); a fetch that finds it full drops the piece and
 *   fetches it again once there is room (the seed's "a target may throw away
 *   an element it has not de-ref'd and re-request it").
 * - Forced flush: a long poll (`ref.events`) per origin; pieces the origin
 *   wants back are fetched and written first, and their de-refs sent at once.
 * - Links that break: fetches, claims and de-refs are retried (the
 *   RemoteRegion reconnects by itself) for `retryMs`; writes are idempotent
 *   by range, so a piece fetched again is simply written again. Past that,
 *   the call fails and the orchestrator asks for the range again.
 * - Same node: when the origin is this very sharer (the seed's
 *   `cp file_on_A file_on_A`), references resolve in this process, and the
 *   bytes never leave it.
 */
import { randomBytes } from 'node:crypto';
import { QuicmapError } from '../../base/errors.ts';
import { openDelegation, verifyDelegationFor, type DelegationClaims } from '../../crypto/delegation.ts';
import { openGrant, type GrantClaims } from '../../crypto/grant.ts';
import type { Identity } from '../../crypto/identity.ts';
import type { ReadWriterAt } from '../../engine/rwat.ts';
import type { ChangeFeed } from '../../engine/tracking/change-feed.ts';
import { MachineCollisionError, MachineDirectory, machineOf, type CacheId } from '../protocol/cache-id.ts';
import { HeldRefs } from '../protocol/cache-refs.ts';
import type { RemoteRegion } from '../remote/region.ts';
import type { RegionServer } from '../remote/server.ts';
import { PeerDialer } from './dial.ts';
import { parseEndpoint, type Endpoint } from '../../crypto/endpoint.ts';
import type { Transport } from '../../transports/transport.ts';
import type { RefOrigin } from './ref-origin.ts';
import {
  COPY_FETCH,
  REF_CLAIM,
  REF_DEREF,
  REF_EVENTS,
  REF_FETCH,
  argsOf,
  decodeForwardPieces,
  encodeRefCounts,
  hex,
  idBytes,
  refCounts,
  uint,
  type ForwardPiece,
  type RefCount,
} from './wire.ts';

/** How the target reaches an origin: over the wire, or in this process. */
export interface OriginClient {
  claim(ids: readonly CacheId[]): Promise<void>;
  fetch(id: CacheId): Promise<{ offset: number; data: Uint8Array }>;
  /** `key`: the same for a retry, so the origin applies it once. */
  deref(refs: readonly RefCount[], key: string): Promise<void>;
  events(waitMs: number): Promise<RefCount[]>;
  close(): Promise<void>;
}

class RemoteOriginClient implements OriginClient {
  readonly region: RemoteRegion;
  constructor(region: RemoteRegion) {
    this.region = region;
  }
  async claim(ids: readonly CacheId[]): Promise<void> {
    await this.region.call(REF_CLAIM, { ids: ids.map(idBytes) });
  }
  async fetch(id: CacheId): Promise<{ offset: number; data: Uint8Array }> {
    const r = argsOf(await this.region.call(REF_FETCH, { id: idBytes(id) }), REF_FETCH);
    if (!(r.data instanceof Uint8Array)) throw new QuicmapError('EPROTO', 'ref.fetch: no data in the answer');
    return { offset: uint(r, 'offset', REF_FETCH), data: r.data };
  }
  async deref(refs: readonly RefCount[], key: string): Promise<void> {
    await this.region.call(REF_DEREF, { refs: encodeRefCounts(refs), key });
  }
  async events(waitMs: number): Promise<RefCount[]> {
    return refCounts(argsOf(await this.region.call(REF_EVENTS, { waitMs }), REF_EVENTS), 'flush', REF_EVENTS);
  }
  close(): Promise<void> {
    return this.region.close();
  }
}

class LocalOriginClient implements OriginClient {
  private readonly origin: RefOrigin;
  private readonly d: DelegationClaims;
  private readonly me: string;
  constructor(origin: RefOrigin, d: DelegationClaims, me: string) {
    this.origin = origin;
    this.d = d;
    this.me = me;
  }
  async claim(ids: readonly CacheId[]): Promise<void> {
    this.origin.claim(this.d, this.me, ids);
  }
  async fetch(id: CacheId): Promise<{ offset: number; data: Uint8Array }> {
    const el = this.origin.fetch(this.me, id);
    return { offset: el.offset, data: el.data };
  }
  async deref(refs: readonly RefCount[], key: string): Promise<void> {
    this.origin.deref(this.me, refs, false, key);
  }
  events(waitMs: number): Promise<RefCount[]> {
    return this.origin.events(this.me, waitMs);
  }
  async close(): Promise<void> {}
}

export interface CopyTargetOptions {
  identity: Identity;
  store: ReadWriterAt;
  regionId: Uint8Array;
  /** Peer writes are recorded here (mounters' caches are invalidated, migration sees them dirty). */
  feed?: ChangeFeed;
  /** This sharer's own origin: references it issued resolve without the network. */
  localOrigin?: RefOrigin;
  /** Dial origins with this transport instead of their grants' (tests: a loopback transport). */
  transport?: Transport;
  /** Bytes of fetched pieces waiting for their write, per origin. Default 16 MiB. */
  holdBytes?: number;
  /** Pieces fetched at once per forwarded batch. Default 8. */
  fetchers?: number;
  /** How long a piece keeps being retried while the origin is unreachable. Default 60 s. */
  retryMs?: number;
  /** How an origin's key maps to the machine part of its cache IDs (default `machineOf`; tests force collisions). */
  machineOf?: (key: Uint8Array) => number;
  log?: (m: string) => void;
}

export interface CopyTargetStats {
  /** Batches refused because two origins this target knows share the machine part of their IDs. */
  collisions: number;
  batches: number;
  pieces: number;
  bytes: number;
  fetches: number;
  refetched: number;
  dropped: number;
  flushed: number;
  retries: number;
  localPieces: number;
  failedBatches: number;
}

interface OriginEntry {
  client: OriginClient;
  local: boolean;
  held: HeldRefs<Uint8Array>;
  urgent: Set<CacheId>;
  roomWaiters: Array<() => void>;
  active: number;
  idleTimer: ReturnType<typeof setTimeout> | undefined;
  closed: boolean;
}

const RETRIABLE = new Set(['EIO', 'ETIMEDOUT']);

export class CopyTarget {
  readonly stats: CopyTargetStats = { collisions: 0, batches: 0, pieces: 0, bytes: 0, fetches: 0, refetched: 0, dropped: 0, flushed: 0, retries: 0, localPieces: 0, failedBatches: 0 };
  private readonly o: CopyTargetOptions;
  private readonly dialer: PeerDialer;
  private readonly me: string;
  private readonly origins = new Map<string, Promise<OriginEntry>>();
  /** Every origin key seen, by the machine part of its IDs: an ID names its origin only while that part is unique. */
  private readonly machines: MachineDirectory;
  private closed = false;

  constructor(o: CopyTargetOptions) {
    this.o = o;
    this.machines = new MachineDirectory(o.machineOf ?? machineOf);
    this.dialer = new PeerDialer(o.identity, o.transport);
    this.me = hex(o.identity.publicKey);
  }

  serve(server: RegionServer): void {
    server.handle(COPY_FETCH, async (args, ctx) => {
      if (ctx.readOnly) throw new QuicmapError('EPERM', 'copy.fetch writes to this region: it needs a read-write ticket');
      const a = argsOf(args, COPY_FETCH);
      if (!(a.delegation instanceof Uint8Array)) throw new QuicmapError('EINVAL', 'copy.fetch: no delegation');
      return this.fetchBatch(a.delegation, decodeForwardPieces(a, COPY_FETCH), originHints(a));
    });
  }

  /** Claim, fetch and write one forwarded batch; resolves once every piece is written. */
  async fetchBatch(delegationBytes: Uint8Array, pieces: ForwardPiece[], hints: Endpoint[] = []): Promise<{ written: number; refetched: number; dropped: number }> {
    if (this.closed) throw new QuicmapError('ESHUTDOWN', 'this sharer is closing');
    const d = await openDelegation(delegationBytes);
    if (hex(d.delegate) !== this.me) throw new QuicmapError('EINVAL', 'copy.fetch: the delegation is for another peer');
    const size = await this.o.store.size();
    for (const p of pieces) {
      if (p.dst + p.length > size) throw new QuicmapError('EINVAL', `copy.fetch: destination [${p.dst}, +${p.length}) is outside this region of ${size} bytes`);
      if (p.src < d.offset || p.src + p.length > d.offset + d.length) throw new QuicmapError('EINVAL', `copy.fetch: piece [${p.src}, +${p.length}) is outside the delegated range`);
    }
    const grant = await openGrant(d.grant);
    this.checkOrigin(grant.sharer, pieces);
    // A grant without addresses (a DHT-only source): dial the endpoints the orchestrator found (the grant's key is what is checked).
    const entry = await this.originFor(d, grant.endpoints.length > 0 ? grant : { ...grant, endpoints: hints }, delegationBytes);
    entry.active++;
    if (entry.idleTimer) clearTimeout(entry.idleTimer);
    this.stats.batches++;
    const before = { refetched: this.stats.refetched, dropped: this.stats.dropped };
    try {
      await this.retry(() => entry.client.claim(pieces.map((p) => p.id)));
      for (const p of pieces) entry.held.receive(p.id, 1);
      let written = 0;
      const queue = [...pieces];
      const next = (): ForwardPiece | undefined => {
        const i = queue.findIndex((p) => entry.urgent.has(p.id));
        return i >= 0 ? queue.splice(i, 1)[0] : queue.shift();
      };
      let failure: unknown;
      // Workers stop at the first failure; every one has finished before the batch is answered.
      const worker = async () => {
        for (let p = next(); p && failure === undefined; p = next()) {
          try {
            await this.copyPiece(entry, p);
            written += p.length;
          } catch (e) {
            failure ??= e;
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(this.o.fetchers ?? 8, pieces.length) }, worker));
      if (failure !== undefined) {
        // Give back what was claimed and not written, so the origin can free it; the orchestrator asks again.
        for (const p of pieces) if (entry.held.count(p.id) > 0) entry.held.release(p.id, entry.held.count(p.id), Date.now());
        this.stats.failedBatches++;
      }
      await this.pumpDerefs(entry, true).catch((e) => this.o.log?.(`copy: de-ref to origin failed: ${(e as Error).message}`));
      if (failure !== undefined) throw failure;
      return { written, refetched: this.stats.refetched - before.refetched, dropped: this.stats.dropped - before.dropped };
    } finally {
      if (--entry.active === 0 && !entry.closed) {
        entry.idleTimer = setTimeout(() => void this.retire(entry, d), 30_000);
        entry.idleTimer.unref();
      }
    }
  }

  private async copyPiece(e: OriginEntry, p: ForwardPiece): Promise<void> {
    for (;;) {
      const got = await this.retry(() => e.client.fetch(p.id));
      this.stats.fetches++;
      if (got.offset !== p.src || got.data.length !== p.length) {
        throw new QuicmapError('EPROTO', `cache id ${p.id.toString(16)} holds [${got.offset}, +${got.data.length}), not the forwarded [${p.src}, +${p.length})`);
      }
      if (!e.held.keep(p.id, got.data, p.length)) {
        if (e.held.copyByteCount === 0) {
          // Larger than the whole table: nothing would ever make room; write it straight away.
          await this.writePiece(e, p, got.data);
          return;
        }
        // No room to hold it until written: drop it, fetch it again once there is.
        this.stats.dropped++;
        await new Promise<void>((r) => e.roomWaiters.push(r));
        this.stats.refetched++;
        continue;
      }
      await this.writePiece(e, p, e.held.local(p.id)!);
      return;
    }
  }

  private async writePiece(e: OriginEntry, p: ForwardPiece, data: Uint8Array): Promise<void> {
    try {
      await this.o.store.writeAt(data, p.dst);
      this.o.feed?.record(p.dst, p.length, 0);
    } finally {
      e.held.release(p.id, 1, Date.now());
      e.roomWaiters.splice(0).forEach((f) => f());
    }
    this.stats.pieces++;
    this.stats.bytes += p.length;
    if (e.local) this.stats.localPieces++;
    const urgent = e.urgent.delete(p.id);
    await this.pumpDerefs(e, urgent);
  }

  private async pumpDerefs(e: OriginEntry, force: boolean): Promise<void> {
    const batch = e.held.pollDerefs(force ? Number.POSITIVE_INFINITY : Date.now());
    if (!batch) return;
    const key = randomBytes(12).toString('hex');
    await this.retry(() => e.client.deref(batch, key));
  }

  private async retry<T>(fn: () => Promise<T>): Promise<T> {
    const deadline = Date.now() + (this.o.retryMs ?? 60_000);
    let wait = 200;
    for (;;) {
      try {
        return await fn();
      } catch (err) {
        const code = err instanceof QuicmapError ? err.code : 'EIO';
        if (!RETRIABLE.has(code) || Date.now() + wait > deadline || this.closed) throw err;
        this.stats.retries++;
        await new Promise((r) => setTimeout(r, wait));
        wait = Math.min(wait * 2, 1_000);
      }
    }
  }

  /**
   * Each forwarded ID must name the delegation's origin by its machine part,
   * and that part must name no other origin this target knows: two origins
   * sharing one (a 2^-24 chance per pair) make their IDs ambiguous, and the
   * batch is refused with MachineCollisionError — the orchestrator then
   * carries those bytes itself — rather than trusting the context.
   */
  private checkOrigin(origin: Uint8Array, pieces: readonly ForwardPiece[]): void {
    this.machines.add(origin);
    for (const p of pieces) {
      let key: Uint8Array;
      try {
        key = this.machines.resolve(p.id);
      } catch (e) {
        if (e instanceof MachineCollisionError) {
          this.stats.collisions++;
          throw e;
        }
        throw new QuicmapError('EACCES', `copy.fetch: cache id ${p.id.toString(16)} does not name the origin of the delegation`);
      }
      if (!Buffer.from(key).equals(Buffer.from(origin))) throw new QuicmapError('EACCES', `copy.fetch: cache id ${p.id.toString(16)} names another origin than the delegation's`);
    }
  }

  private originFor(d: DelegationClaims, g: GrantClaims, bytes: Uint8Array): Promise<OriginEntry> {
    const key = hex(d.nonce);
    let p = this.origins.get(key);
    if (!p) {
      p = this.openOrigin(d, g, bytes);
      this.origins.set(key, p);
      p.catch(() => this.origins.delete(key));
    }
    return p;
  }

  private async openOrigin(d: DelegationClaims, g: GrantClaims, bytes: Uint8Array): Promise<OriginEntry> {
    let client: OriginClient;
    const local = hex(g.sharer) === this.me && Buffer.from(g.regionId).equals(Buffer.from(this.o.regionId)) && this.o.localOrigin !== undefined;
    if (local) {
      // The same checks the origin makes on a delegated session, without the network.
      const { delegation } = await verifyDelegationFor(bytes, { sharer: this.o.identity.publicKey, regionId: this.o.regionId, peer: this.o.identity.publicKey, regionSize: await this.o.store.size() });
      client = new LocalOriginClient(this.o.localOrigin!, delegation, this.me);
      this.o.log?.('copy: the source is this region: references resolve locally');
    } else {
      const region = await this.retry(() =>
        this.dialer.open({ endpoints: g.endpoints, sharer: g.sharer, regionId: g.regionId, grant: bytes, readOnly: true, agent: 'quicmap copy target', ...(this.o.log ? { log: this.o.log } : {}) }),
      );
      client = new RemoteOriginClient(region);
    }
    const entry: OriginEntry = {
      client,
      local,
      held: new HeldRefs<Uint8Array>({ maxCopyBytes: this.o.holdBytes ?? 16 << 20, derefBatch: 32, derefDelayMs: 100 }),
      urgent: new Set(),
      roomWaiters: [],
      active: 0,
      idleTimer: undefined,
      closed: false,
    };
    void this.pollEvents(entry);
    return entry;
  }

  /** The origin's forced flushes: what it wants back is fetched and written first. */
  private async pollEvents(e: OriginEntry): Promise<void> {
    while (!e.closed && !this.closed) {
      try {
        const due = await e.client.events(10_000);
        for (const { id } of due) {
          if (e.held.count(id) > 0 && !e.urgent.has(id)) {
            e.urgent.add(id);
            this.stats.flushed++;
          }
        }
        if (due.length > 0) await new Promise((r) => setTimeout(r, 20));
      } catch {
        if (e.closed || this.closed) return;
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  private async retire(e: OriginEntry, d: DelegationClaims): Promise<void> {
    if (e.active > 0 || e.closed) return;
    e.closed = true;
    this.origins.delete(hex(d.nonce));
    await e.client.close().catch(() => {});
  }

  view(): CopyTargetStats & { origins: number } {
    return { ...this.stats, origins: this.origins.size };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const p of [...this.origins.values()]) {
      const e = await p.catch(() => undefined);
      if (!e) continue;
      e.closed = true;
      if (e.idleTimer) clearTimeout(e.idleTimer);
      e.roomWaiters.splice(0).forEach((f) => f());
      await e.client.close().catch(() => {});
    }
    this.origins.clear();
    await this.dialer.close();
  }
}

/** copy.fetch's optional `origin`: where the source listens, for a grant that names no address (at most 8). */
function originHints(a: Record<string, unknown>): Endpoint[] {
  const v = a.origin;
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || v.length > 8 || !v.every((x) => typeof x === 'string' && x.length <= 200)) throw new QuicmapError('EINVAL', 'copy.fetch: "origin" must be at most 8 endpoint strings');
  try {
    return (v as string[]).map((x) => parseEndpoint(x));
  } catch (e) {
    throw new QuicmapError('EINVAL', `copy.fetch: "origin": ${(e as Error).message}`);
  }
}
