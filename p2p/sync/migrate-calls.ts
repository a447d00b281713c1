/**
 * Live migration on the wire: the source serves the handover calls, the
 * target drives them through RemoteMigrationControl (the engine's
 * MigrationControl). All ride on CALL frames over the request table.
 *
 *   migrate.ping     {}          → {}                          (round trip)
 *   migrate.suspend  {}          → {feed, version}             (prepare: on-suspend, writes closed, flushed;
 *                                                              version = the feed's final version)
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
  const rw = (readOnly: boolean, what: string) => {
    if (readOnly) throw new QuicmapError('EPERM', `${what} needs a read-write ticket`);
  };
  server.handle('migrate.ping', async () => ({}));
  server.handle('migrate.suspend', async (_args, ctx) => {
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
      throw new QuicmapError('EIO', `suspend failed: ${(e as Error).message}`, { cause: e });
    }
    clearTimeout(timer);
    timer = setTimeout(() => {
      if (ownership.handleTimeout(Date.now())) {
        o.gate.open();
        log(`migration to ${target}: no commit within ${ownership.prepareTimeoutMs} ms; this node is the owner again (writes open; the application is still suspended)`);
      }
    }, ownership.prepareTimeoutMs);
    timer.unref();
    return { feed: o.feed.id, version: o.feed.current };
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
        log(`migration to ${target}: could not record the handover (${(e as Error).message}); this node stays the owner`);
        throw new QuicmapError('EIO', `the source could not record the handover: ${(e as Error).message}`);
      }
    }
    ownership.commit(target);
    clearTimeout(timer);
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
      log(`migration to ${target}: aborted by the target; this node is the owner again`);
    }
    return { aborted };
  });
  return { ownership, close: () => clearTimeout(timer) };
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

  async suspend(): Promise<void> {
    const r = (await this.region.call('migrate.suspend', null)) as { feed?: unknown; version?: unknown } | null;
    const version = Number(r?.version);
    if (!Number.isSafeInteger(version)) throw new QuicmapError('EPROTO', 'migrate.suspend: malformed reply');
    // The final dirty list: everything up to the version the source reported once writes were closed.
    for (let i = 0; this.source.feedVersion < version; i++) {
      if (i > 100) throw new QuicmapError('EIO', 'the source feed does not reach its final version');
      await this.source.pollChanges();
    }
  }

  async commit(): Promise<void> {
    await this.region.call('migrate.commit', null);
  }

  async abort(): Promise<void> {
    await this.region.call('migrate.abort', null);
  }
}
