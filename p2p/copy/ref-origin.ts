/**
 * RefOrigin: the origin side of cache-by-reference, on a sharer. A read can
 * be answered with references instead of bytes (`ref.read`): the origin
 * reads each piece into its bounded cache (OriginCache, sans-IO), counts one
 * reference per piece for the caller, and sends the 8-byte cache IDs. Whoever
 * holds a reference fetches the bytes (`ref.fetch`) and gives it back
 * (`ref.deref`, batched by the holder); at zero the piece is freed.
 *
 * References are forwarded by a *claim*: the destination of a third-party
 * copy presents a delegation from the holder (crypto/delegation.ts, checked
 * when its session opened) and takes the holder's references over
 * (`ref.claim`) — only references the delegator holds, only pieces inside
 * the delegated range; a forged, already claimed or out-of-range id is an
 * EACCES answer.
 *
 * Bounded: bytes and lines. When a read finds the cache full, the origin
 * forces a flush of its oldest pieces (the holders learn of it through the
 * `ref.events` long poll, fetch what they still need, and de-ref) and waits
 * a moment for room; if none comes, the piece goes inline in the answer —
 * the protocol degrades to passing data, it never fails.
 *
 * Answers lost with a link: `ref.read` and `ref.deref` carry a key; the
 * same key from the same holder is answered from memory (the references
 * made the first time, still held) instead of being applied again, so a
 * retried read does not orphan references and a retried de-ref does not
 * take two. A claim the caller already made is answered as made.
 *
 * Holders that vanish: every call renews the caller's lease (the events
 * poll does so while a holder is connected); a holder silent for `leaseMs`
 * loses its references, so a dead peer cannot pin the cache.
 */
import { QuicmapError } from '../../base/errors.ts';
import type { Identity } from '../../crypto/identity.ts';
import { delegationCovers, type DelegationClaims } from '../../crypto/delegation.ts';
import type { ReadWriterAt } from '../../engine/rwat.ts';
import { machineOf, type CacheId } from '../protocol/cache-id.ts';
import { OriginCache, type HolderId } from '../protocol/cache-refs.ts';
import type { CallContext, RegionServer } from '../remote/server.ts';
import {
  REF_CLAIM,
  REF_DEREF,
  REF_EVENTS,
  REF_FETCH,
  REF_READ,
  REF_STATS,
  argsOf,
  encodeRefCounts,
  hex,
  idBytes,
  idOf,
  list,
  refCounts,
  uint,
  type RefCount,
  type RefPiece,
} from './wire.ts';

export interface RefElement {
  offset: number;
  length: number;
  data: Uint8Array;
}

export interface RefOriginOptions {
  identity: Identity;
  store: ReadWriterAt;
  /** The machine part of this node's IDs (default: from its key, `machineOf`; tests force collisions). */
  machine?: number;
  /** Which of this node's caches (16 bits of every id). Default 0. */
  slot?: number;
  /** Bytes the cache may hold. Default 64 MiB. */
  maxBytes?: number;
  /** Pieces the cache may hold. Default 4096. */
  maxLines?: number;
  /** Bytes per reference. Default 512 KiB (capped so a fetch answer fits the caller's frame). */
  pieceSize?: number;
  /** How long a read waits for a forced flush to make room before it answers inline. Default 2 s. */
  flushWaitMs?: number;
  /** A holder silent this long loses its references. Default 120 s. */
  leaseMs?: number;
  /** Largest range one `ref.read` covers. Default 64 MiB. */
  maxReadLength?: number;
  log?: (m: string) => void;
}

export interface RefOriginStats {
  references: number;
  inlinePieces: number;
  inlineBytes: number;
  fetches: number;
  fetchedBytes: number;
  derefs: number;
  claims: number;
  flushRequests: number;
  refused: number;
  expiredHolders: number;
}

/** What `status` and `ref.stats` show. */
export interface RefOriginView extends RefOriginStats {
  lines: number;
  bytes: number;
  maxBytes: number;
  /** References outstanding: 0 once every holder gave its references back. */
  refs: number;
  holders: number;
}

const MARGIN = 4096;

export class RefOrigin {
  readonly cache: OriginCache<RefElement>;
  readonly stats: RefOriginStats = { references: 0, inlinePieces: 0, inlineBytes: 0, fetches: 0, fetchedBytes: 0, derefs: 0, claims: 0, flushRequests: 0, refused: 0, expiredHolders: 0 };
  readonly machine: number;
  private readonly o: Required<Omit<RefOriginOptions, 'identity' | 'store' | 'log' | 'slot' | 'machine'>>;
  private readonly store: ReadWriterAt;
  private readonly log: (m: string) => void;
  private readonly lastSeen = new Map<HolderId, number>();
  /** Per holder, the last keyed reads (their answers) and de-refs: a retry gets the same answer, applied once. */
  private readonly recent = new Map<HolderId, Map<string, RefPiece[] | 'deref'>>();
  private readonly running = new Map<string, Promise<RefPiece[]>>();
  private roomWaiters: Array<() => void> = [];
  private readonly eventWaiters = new Map<HolderId, Set<() => void>>();
  private readonly sweep: ReturnType<typeof setInterval>;
  private closed = false;

  constructor(opts: RefOriginOptions) {
    this.store = opts.store;
    this.log = opts.log ?? (() => {});
    this.o = {
      maxBytes: opts.maxBytes ?? 64 << 20,
      maxLines: opts.maxLines ?? 4096,
      pieceSize: opts.pieceSize ?? 512 << 10,
      flushWaitMs: opts.flushWaitMs ?? 2_000,
      leaseMs: opts.leaseMs ?? 120_000,
      maxReadLength: opts.maxReadLength ?? 64 << 20,
    };
    this.machine = opts.machine ?? machineOf(opts.identity.publicKey);
    this.cache = new OriginCache({ machine: this.machine, slot: opts.slot ?? 0, maxLines: this.o.maxLines, maxBytes: this.o.maxBytes });
    this.sweep = setInterval(() => this.expire(Date.now()), Math.max(250, this.o.leaseMs / 4));
    this.sweep.unref();
  }

  view(): RefOriginView {
    return { ...this.stats, lines: this.cache.lineCount, bytes: this.cache.byteCount, maxBytes: this.o.maxBytes, refs: this.cache.totalRefs, holders: this.cache.holders().length };
  }

  /** Register the calls on a region server. */
  serve(server: RegionServer): void {
    const guard = async <T>(fn: () => Promise<T> | T): Promise<T> => {
      try {
        return await fn();
      } catch (e) {
        if (e instanceof QuicmapError && e.code === 'EACCES') this.stats.refused++;
        throw e;
      }
    };
    server.handle(REF_READ, (args, ctx) =>
      guard(async () => {
        const a = argsOf(args, REF_READ);
        const pieces = await this.read(hex(ctx.peer), uint(a, 'offset', REF_READ), uint(a, 'length', REF_READ), ctx.maxReply, keyOf(a, REF_READ));
        return { refs: pieces.map((p) => ({ offset: p.offset, length: p.length, ...(p.id !== undefined ? { id: idBytes(p.id) } : { data: p.data }) })) };
      }),
    );
    server.handle(
      REF_CLAIM,
      (args, ctx) =>
        guard(() => {
          if (!ctx.delegation) throw new QuicmapError('EACCES', 'a claim needs a delegation (open the session with one)');
          const ids = list(argsOf(args, REF_CLAIM), 'ids', REF_CLAIM).map((x) => idOf(x, REF_CLAIM));
          return { claimed: this.claim(ctx.delegation, hex(ctx.peer), ids) };
        }),
      { delegated: true },
    );
    server.handle(
      REF_FETCH,
      (args, ctx) =>
        guard(() => {
          const el = this.fetch(hex(ctx.peer), idOf(argsOf(args, REF_FETCH).id, REF_FETCH));
          if (el.length > ctx.maxReply - 1024) throw new QuicmapError('EOVERFLOW', `piece of ${el.length} bytes does not fit this session's frames`);
          return { offset: el.offset, data: el.data };
        }),
      { delegated: true },
    );
    server.handle(
      REF_DEREF,
      (args, ctx) =>
        guard(() => {
          const a = argsOf(args, REF_DEREF);
          return { freed: this.deref(hex(ctx.peer), refCounts(a, 'refs', REF_DEREF), a.lenient === true, keyOf(a, REF_DEREF)) };
        }),
      { delegated: true },
    );
    server.handle(
      REF_EVENTS,
      async (args, ctx) => {
        const waitMs = Math.min(uint(argsOf(args, REF_EVENTS), 'waitMs', REF_EVENTS), 20_000);
        return { flush: encodeRefCounts(await this.events(hex(ctx.peer), waitMs)) };
      },
      { delegated: true },
    );
    server.handle(REF_STATS, async () => this.view());
  }

  /** The range as pieces: references held by `holder`, or inline data when there is no room. */
  async read(holder: HolderId, offset: number, length: number, maxReply: number, key?: string): Promise<RefPiece[]> {
    const size = await this.store.size();
    if (length === 0 || offset + length > size) throw new QuicmapError('EINVAL', `ref.read: [${offset}, +${length}) is not inside the region of ${size} bytes`);
    if (length > this.o.maxReadLength) throw new QuicmapError('EOVERFLOW', `ref.read of ${length} bytes is above ${this.o.maxReadLength}`);
    this.touch(holder);
    if (key === undefined) return this.readFresh(holder, offset, length, maxReply);
    // A retry may arrive while the read it repeats is still running (its link died first): it gets that read's answer.
    const slot = `${holder}\0${key}`;
    const running = this.running.get(slot);
    if (running) {
      const r = await running.catch(() => undefined);
      if (r && this.stillHeld(holder, r, offset)) return r;
    }
    const before = this.recent.get(holder)?.get(key);
    // The answer to this very read was lost with a link: the same references, still held.
    if (Array.isArray(before) && this.stillHeld(holder, before, offset)) return before;
    const p = this.readFresh(holder, offset, length, maxReply);
    this.running.set(slot, p);
    try {
      const out = await p;
      if (out.every((x) => x.id !== undefined)) this.remember(holder, key, out);
      return out;
    } finally {
      if (this.running.get(slot) === p) this.running.delete(slot);
    }
  }

  private stillHeld(holder: HolderId, pieces: readonly RefPiece[], offset: number): boolean {
    return pieces.length > 0 && pieces[0]!.offset === offset && pieces.every((p) => p.id !== undefined && this.cache.heldBy(holder, p.id) > 0);
  }

  private async readFresh(holder: HolderId, offset: number, length: number, maxReply: number): Promise<RefPiece[]> {
    const budget = maxReply - MARGIN;
    const piece = Math.max(4096, Math.min(this.o.pieceSize, Math.floor(budget / 4096) * 4096));
    const out: RefPiece[] = [];
    let inline = 0;
    // The pieces are read from the store together (a batch's latency is one read, not sixteen), then referenced in order.
    const ranges: Array<{ pos: number; len: number }> = [];
    for (let pos = offset; pos < offset + length; pos += piece) ranges.push({ pos, len: Math.min(piece, offset + length - pos) });
    const reads = ranges.map(async ({ pos, len }) => {
      const data = new Uint8Array(len);
      await this.store.readAt(data, pos);
      return data;
    });
    const settled = await Promise.allSettled(reads);
    const bad = settled.find((r) => r.status === 'rejected');
    if (bad) throw (bad as PromiseRejectedResult).reason;
    for (let k = 0; k < ranges.length; k++) {
      const { pos, len } = ranges[k]!;
      const data = (settled[k] as PromiseFulfilledResult<Uint8Array>).value;
      const el = { offset: pos, length: len, data };
      let id = this.cache.reference(holder, el, len);
      if (id === undefined && (await this.makeRoom(len))) id = this.cache.reference(holder, el, len);
      if (id !== undefined) {
        this.stats.references++;
        out.push({ id, offset: pos, length: len });
      } else {
        // Full even after a flush: the bytes go in the answer, bounded by its frame.
        if (inline + len > budget && out.length > 0) break;
        inline += len;
        this.stats.inlinePieces++;
        this.stats.inlineBytes += len;
        out.push({ offset: pos, length: len, data });
      }
    }
    this.touch(holder);
    return out;
  }

  /** `to` takes over the delegator's references to `ids`: all or none. */
  claim(d: DelegationClaims, to: HolderId, ids: readonly CacheId[]): number {
    const from = hex(d.delegator);
    this.touch(to);
    // Claimed already by this very caller (its answer was lost): nothing to take, nothing to refuse.
    ids = ids.filter((id) => !(this.cache.heldBy(from, id) === 0 && this.cache.heldBy(to, id) > 0));
    for (const id of ids) {
      // EACCES for an id the delegator does not hold: forged, released, or claimed already.
      const el = this.cache.fetch(from, id);
      if (!delegationCovers(d, el.offset, el.length)) {
        throw new QuicmapError('EACCES', `cache id ${id.toString(16)} names [${el.offset}, +${el.length}), outside the delegated [${d.offset}, +${d.length})`);
      }
    }
    let n = 0;
    for (const id of ids) {
      const k = this.cache.heldBy(from, id);
      if (k === 0) continue; // named twice in one claim
      this.cache.transfer(from, to, id, k);
      n += k;
    }
    this.stats.claims += n;
    // A forced flush follows the reference to its new holder.
    if (this.cache.flushingHeldBy(to).length > 0) this.notify(to);
    return n;
  }

  fetch(holder: HolderId, id: CacheId): RefElement {
    this.touch(holder);
    const el = this.cache.fetch(holder, id);
    this.stats.fetches++;
    this.stats.fetchedBytes += el.length;
    return el;
  }

  /** Give references back; `lenient` gives back at most what is held (an orchestrator cleaning up after a failed forward). */
  deref(holder: HolderId, refs: readonly RefCount[], lenient = false, key?: string): number {
    this.touch(holder);
    if (key !== undefined) {
      if (this.recent.get(holder)?.get(key) === 'deref') return 0; // a retry of one applied already
      this.remember(holder, key, 'deref');
    }
    let freed = 0;
    for (const { id, n } of refs) {
      const k = lenient ? Math.min(n, this.cache.heldBy(holder, id)) : n;
      if (k === 0) continue;
      const before = this.cache.lineCount;
      this.cache.deref(holder, id, k);
      this.stats.derefs += k;
      freed += before - this.cache.lineCount;
    }
    if (freed > 0) this.wakeRoom();
    return freed;
  }

  /** The references `holder` must give back now; waits up to `waitMs` for some. */
  async events(holder: HolderId, waitMs: number): Promise<RefCount[]> {
    this.touch(holder);
    let due = this.cache.flushingHeldBy(holder);
    if (due.length === 0 && waitMs > 0 && !this.closed) {
      await new Promise<void>((resolve) => {
        let set = this.eventWaiters.get(holder);
        if (!set) this.eventWaiters.set(holder, (set = new Set()));
        const done = () => {
          clearTimeout(t);
          set.delete(done);
          resolve();
        };
        const t = setTimeout(done, waitMs);
        t.unref();
        set.add(done);
      });
      due = this.cache.flushingHeldBy(holder);
    }
    this.touch(holder);
    return due;
  }

  /** Forget holders silent for the lease (their references are void). */
  expire(now: number): void {
    let any = false;
    for (const [h, seen] of this.lastSeen) {
      if (now - seen >= this.o.leaseMs && this.cache.holders().indexOf(h) < 0) {
        this.lastSeen.delete(h);
        this.recent.delete(h);
      }
    }
    for (const h of this.cache.holders()) {
      const seen = this.lastSeen.get(h) ?? 0;
      if (now - seen < this.o.leaseMs) continue;
      this.cache.dropHolder(h);
      this.lastSeen.delete(h);
      this.recent.delete(h);
      this.stats.expiredHolders++;
      this.log(`cache: holder ${h.slice(0, 12)}… silent for ${this.o.leaseMs} ms; its references are void`);
      any = true;
    }
    if (any) this.wakeRoom();
  }

  close(): void {
    this.closed = true;
    clearInterval(this.sweep);
    for (const set of this.eventWaiters.values()) for (const f of [...set]) f();
    this.wakeRoom();
  }

  private remember(holder: HolderId, key: string, what: RefPiece[] | 'deref'): void {
    let m = this.recent.get(holder);
    if (!m) this.recent.set(holder, (m = new Map()));
    m.delete(key);
    m.set(key, what);
    while (m.size > 256) m.delete(m.keys().next().value!);
  }

  private touch(holder: HolderId): void {
    this.lastSeen.set(holder, Date.now());
  }

  private hasRoom(len: number): boolean {
    return this.cache.byteCount + len <= this.o.maxBytes && this.cache.lineCount < this.o.maxLines;
  }

  /** Force a flush of the oldest pieces and wait (bounded) for the room it makes. */
  private async makeRoom(len: number): Promise<boolean> {
    if (len > this.o.maxBytes || this.closed) return false;
    const requests = this.cache.forceFlush(Math.max(len, this.cache.byteCount + len - this.o.maxBytes));
    for (const r of requests) {
      this.stats.flushRequests++;
      this.notify(r.holder);
    }
    const deadline = Date.now() + this.o.flushWaitMs;
    while (!this.hasRoom(len) && !this.closed) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        t.unref();
        this.roomWaiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.hasRoom(len);
  }

  private wakeRoom(): void {
    const w = this.roomWaiters;
    this.roomWaiters = [];
    for (const f of w) f();
  }

  private notify(holder: HolderId): void {
    const set = this.eventWaiters.get(holder);
    if (set) for (const f of [...set]) f();
  }
}

function keyOf(a: Record<string, unknown>, what: string): string | undefined {
  const k = a.key;
  if (k === undefined || k === null) return undefined;
  if (typeof k !== 'string' || k.length > 128) throw new QuicmapError('EINVAL', `${what}: "key" must be a string of at most 128 characters`);
  return k;
}
