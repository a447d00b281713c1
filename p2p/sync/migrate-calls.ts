/**
 * Live migration on the wire: the source serves the handover calls, the
 * target drives them through RemoteMigrationControl (the engine's
 * MigrationControl). All ride on CALL frames over the request table.
 *
 *   migrate.ping     {}          → {}                          (round trip)
 *   migrate.throttle {pct, leaseMs} → {pct, delayedWrites, delayedMs}
 *                                                              (auto-converge: slow the application's
 *                                                              writes to pct % for leaseMs, then lift it;
 *                                                              ENOTSUP when the source has no throttle)
 *   migrate.suspend  {feed?, since?} → {feed, version, chunks, throttle}
 *                                                              (prepare: on-suspend, writes closed, flushed;
 *                                                              version = the feed's final version; chunks =
 *                                                              the final dirty list since `since` (u32 LE),
 *                                                              null when it does not fit or feed differs)
 *   migrate.commit   {}          → {}                          (ownership moves to the caller)
 *   migrate.abort    {}          → {aborted}
 *
 * Only a read-write grant may suspend or commit (EPERM otherwise); the
 * target is named by its peer key (the connection's authenticated key), so
 * only the node that prepared can commit.
 */
import { base32Encode } from '../../crypto/identity.ts';
import { QuicmapError } from '../../base/errors.ts';
import type { SyncedLayer } from '../../engine/layers/synced.ts';
import type { WriteGate } from '../../engine/layers/write-gate.ts';
import type { MigrationControl } from '../../engine/migrate/target.ts';
import { Ownership } from '../../engine/migrate/ownership.ts';
import type { ChangeFeed } from '../../engine/tracking/change-feed.ts';
import type { ThrottleStats, WriteThrottle } from '../../engine/layers/write-throttle.ts';
import { decodeChanges, packChunks } from './change-calls.ts';
import type { RemoteRegion } from '../remote/region.ts';
import type { RegionServer } from '../remote/server.ts';
import type { RemoteChunkSource } from './remote-source.ts';

export interface MigrationSourceOptions {
  gate: WriteGate;
  feed: ChangeFeed;
  /** Make every acknowledged write durable (the backend's flush). */
  flush: () => Promise<void>;
  /** The application stops writing (--on-suspend); a failure refuses the finalize. */
  onSuspend?: (target: string) => Promise<void>;
  prepareTimeoutMs?: number;
  /** Record the handover durably (before it is answered); a failure refuses the commit. */
  onCommit?: (target: string) => Promise<void>;
  /** The application's write path throttle (auto-converge); absent: migrate.throttle is ENOTSUP. */
  throttle?: WriteThrottle;
  /** Longest throttle lease a target may ask (default 30 s). */
  maxThrottleLeaseMs?: number;
  log?: (m: string) => void;
}

export interface MigrationSource {
  ownership: Ownership;
  close(): void;
}

export function serveMigration(server: RegionServer, o: MigrationSourceOptions): MigrationSource {
  const log = o.log ?? (() => {});
  const ownership = new Ownership(o.prepareTimeoutMs ?? 30_000);
  let timer: NodeJS.Timeout | undefined;
  let leaseTimer: NodeJS.Timeout | undefined;
  const rw = (readOnly: boolean, what: string) => {
    if (readOnly) throw new QuicmapError('EPERM', `${what} needs a read-write ticket`);
  };
  const unthrottle = (why: string) => {
    clearTimeout(leaseTimer);
    leaseTimer = undefined;
    if (o.throttle && o.throttle.pct > 0) {
      o.throttle.set(0);
      log(`migration: writer throttle lifted (${why})`);
    }
  };
  server.handle('migrate.ping', async () => ({}));
  server.handle('migrate.throttle', async (args, ctx) => {
    rw(ctx.readOnly, 'throttling the writer for a migration');
    const t = o.throttle;
    if (!t) throw new QuicmapError('ENOTSUP', 'this source has no writer throttle');
    const a = (args ?? {}) as Record<string, unknown>;
    const pct = Number(a.pct);
    const leaseMs = Math.min(o.maxThrottleLeaseMs ?? 30_000, Number(a.leaseMs ?? 10_000));
    if (!Number.isFinite(pct) || pct < 0 || pct > 99 || !Number.isFinite(leaseMs) || leaseMs <= 0) throw new QuicmapError('EINVAL', 'migrate.throttle: pct must be 0 to 99 and leaseMs positive');
    // Only while this node owns the region and no other target is finalizing.
    if (ownership.phase === 'owner') {
      if (pct !== t.pct) log(`migration to ${base32Encode(ctx.peer)}: not converging; writer throttle ${t.pct} % → ${pct} %`);
      if (pct === 0) unthrottle('the target asked');
      else {
        t.set(pct);
        clearTimeout(leaseTimer);
        leaseTimer = setTimeout(() => unthrottle(`no renewal within ${leaseMs} ms`), leaseMs);
        leaseTimer.unref();
      }
    }
    return t.stats();
  });
  server.handle('migrate.suspend', async (args, ctx) => {
    rw(ctx.readOnly, 'finalizing a migration');
    const target = base32Encode(ctx.peer);
    ownership.prepare(target, Date.now());
    log(`migration to ${target}: finalizing (suspending the application, closing writes)`);
    try {
      await o.onSuspend?.(target);
      await o.gate.close(`suspended: the region is being handed over to ${target}`);
      // Writes that just finished record their change in a continuation: let those run.
      await new Promise<void>((r) => setImmediate(r));
      await o.flush();
    } catch (e) {
      ownership.abort(target);
      o.gate.open();
      unthrottle('the finalize failed');
      throw new QuicmapError('EIO', `suspend failed: ${(e as Error).message}`, { cause: e });
    }
    clearTimeout(timer);
    timer = setTimeout(() => {
      if (ownership.handleTimeout(Date.now())) {
        o.gate.open();
        unthrottle('the handover timed out');
        log(`migration to ${target}: no commit within ${ownership.prepareTimeoutMs} ms; this node is the owner again (writes open; the application is still suspended)`);
      }
    }, ownership.prepareTimeoutMs);
    timer.unref();
    // The final dirty list rides on this answer (no separate round trip for it during the downtime).
    const a = (args ?? {}) as Record<string, unknown>;
    const since = Number(a.since);
    let chunks: Uint8Array | null = null;
    if (Number(a.feed) === o.feed.id && Number.isSafeInteger(since) && since >= 0 && since <= o.feed.current) {
      const list = o.feed.changedSince(since, ctx.session);
      if (list.length * 4 + 256 <= ctx.maxReply) chunks = packChunks(list);
    }
    const stats = o.throttle?.stats();
    return { feed: o.feed.id, version: o.feed.current, chunks, ...(stats ? { throttle: stats } : {}) };
  });
  server.handle('migrate.commit', async (_args, ctx) => {
    rw(ctx.readOnly, 'committing a migration');
    const target = base32Encode(ctx.peer);
    if (ownership.phase === 'suspended' && ownership.targetId === target && o.onCommit) {
      // The prepare must not time out while the handover is being recorded.
      clearTimeout(timer);
      try {
        await o.onCommit(target);
      } catch (e) {
        ownership.abort(target);
        o.gate.open();
        unthrottle('the handover failed');
        log(`migration to ${target}: could not record the handover (${(e as Error).message}); this node stays the owner`);
        throw new QuicmapError('EIO', `the source could not record the handover: ${(e as Error).message}`);
      }
    }
    ownership.commit(target);
    clearTimeout(timer);
    unthrottle('handed over');
    o.gate.setReason(`read-only: ownership moved to ${target} (migrated)`);
    log(`migration to ${target}: handed over; ${target} owns the region now, this node seeds it read-only`);
    return {};
  });
  server.handle('migrate.abort', async (_args, ctx) => {
    const target = base32Encode(ctx.peer);
    const aborted = ownership.abort(target);
    if (aborted) {
      clearTimeout(timer);
      o.gate.open();
      unthrottle('the target aborted');
      log(`migration to ${target}: aborted by the target; this node is the owner again`);
    }
    return { aborted };
  });
  return {
    ownership,
    close: () => {
      clearTimeout(timer);
      clearTimeout(leaseTimer);
    },
  };
}

/** The target's side: MigrationControl over a RemoteRegion and its chunk source. */
export class RemoteMigrationControl implements MigrationControl {
  private readonly region: RemoteRegion;
  private readonly source: RemoteChunkSource;
  private readonly synced: SyncedLayer;

  constructor(region: RemoteRegion, source: RemoteChunkSource, synced: SyncedLayer) {
    this.region = region;
    this.source = source;
    this.synced = synced;
  }

  async rtt(): Promise<number> {
    const t = performance.now();
    await this.region.call('migrate.ping', null);
    return performance.now() - t;
  }

  async syncDirty(): Promise<number> {
    const before = this.synced.progress().invalidations;
    await this.source.pollChanges();
    return this.synced.progress().invalidations - before;
  }

  async suspend(): Promise<{ finalDirty: number; throttle?: ThrottleStats } | void> {
    const feed = this.source.feedId;
    const r = (await this.region.call('migrate.suspend', feed === null ? null : { feed, since: this.source.feedVersion })) as { feed?: unknown; version?: unknown; chunks?: unknown; throttle?: unknown } | null;
    const version = Number(r?.version);
    if (!Number.isSafeInteger(version)) throw new QuicmapError('EPROTO', 'migrate.suspend: malformed reply');
    const throttle = decodeThrottle(r?.throttle);
    // The final dirty list came with the answer: apply it (everything up to the final version).
    if (r?.chunks instanceof Uint8Array && Number(r.feed) === feed) {
      const n = this.source.applyChanges(decodeChanges({ feed: r.feed, version, chunks: r.chunks }));
      if (this.source.feedVersion >= version) return { finalDirty: n, ...(throttle ? { throttle } : {}) };
    }
    // An older source (or a list too long for one reply): poll up to the final version.
    for (let i = 0; this.source.feedVersion < version; i++) {
      if (i > 100) throw new QuicmapError('EIO', 'the source feed does not reach its final version');
      await this.source.pollChanges();
    }
  }

  async throttle(pct: number, leaseMs: number): Promise<ThrottleStats> {
    const s = decodeThrottle(await this.region.call('migrate.throttle', { pct, leaseMs }));
    if (!s) throw new QuicmapError('EPROTO', 'migrate.throttle: malformed reply');
    return s;
  }

  async commit(): Promise<void> {
    await this.region.call('migrate.commit', null);
  }

  async abort(): Promise<void> {
    await this.region.call('migrate.abort', null);
  }
}

function decodeThrottle(v: unknown): ThrottleStats | undefined {
  const o = v as Record<string, unknown> | null | undefined;
  if (!o || typeof o !== 'object') return undefined;
  const pct = Number(o.pct);
  const delayedWrites = Number(o.delayedWrites);
  const delayedMs = Number(o.delayedMs);
  if (![pct, delayedWrites, delayedMs].every(Number.isFinite)) return undefined;
  return { pct, delayedWrites, delayedMs };
}
