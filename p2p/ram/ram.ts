/**
 * openRemoteRam: the library call behind `quicmap ram`. Mounts each storage
 * peer's ticket, and builds a PagedStore (the bounded plaintext cache, an
 * engine layer) over SealedPages (sealing, versions, replicas). The result
 * is a ReadWriterAt to serve over NBD (or anything else).
 *
 * The region id is random per run and the keys are derived from the node's
 * identity seed and that id: the contents live as long as this process (the
 * version table is here), like RAM.
 */
import type { Identity } from '../../crypto/identity.ts';
import { newRegionId, regionIdText } from '../../crypto/grant.ts';
import { QuicmapError } from '../../base/errors.ts';
import { PagedStore, type PagedStats } from '../../engine/layers/paged.ts';
import { mountTicket, type MountedTicket } from '../mount.ts';
import type { Transport } from '../../transports/transport.ts';
import { STORE_MAX_FRAME } from './store.ts';
import { StorePeerClient } from './store-calls.ts';
import { SealedPages, type PeerReport, type ReplicationReport } from './sealed-pages.ts';

export interface RemoteRamOptions {
  identity: Identity;
  size: number;
  tickets: string[];
  replicas: number;
  cacheBytes: number;
  chunkSize?: number;
  /** Probe the peers this often (default 1000 ms); lost after 3 failed probes. */
  probeMs?: number;
  /** Dirty chunks are sealed and pushed this long after their first write (default 1000 ms). */
  writeBackMs?: number;
  /** A link to a peer that sends nothing for this long is dead (its requests fail over to other replicas). Default 6000 ms. */
  livenessMs?: number;
  /** Tests: the loopback transport instead of the tickets' ones. */
  transport?: Transport;
  log?: (message: string) => void;
}

export interface RamStatus {
  region: string;
  size: number;
  chunkSize: number;
  cache: PagedStats;
  replication: ReplicationReport;
  peers: Array<PeerReport & { address: string }>;
}

/** What `end()` did. */
export interface RamEnd {
  /** Chunks that were cached, and of them not yet on any peer (dropped: the contents end here). */
  cachedChunks: number;
  dirtyChunks: number;
  /** Chunk copies the live peers deleted by the deadline. */
  released: number;
  /** False when the peers had not all answered by the deadline (they keep unreadable ciphertext until they restart). */
  releasedAll: boolean;
}

export interface RemoteRam {
  store: PagedStore;
  pages: SealedPages;
  regionId: Uint8Array;
  status(): RamStatus;
  /** Save every dirty chunk, then close (waits for the peers: a FLUSH). */
  close(): Promise<void>;
  /**
   * End the region (what SIGTERM does): the contents are volatile — the keys
   * come from a per-run region id, so nothing saved now could ever be read —
   * so nothing is saved: the plaintext cache is wiped, requests fail with
   * ESHUTDOWN, the peers are asked to delete the chunks (for at most
   * `releaseMs`, default 1000), then every link is closed, failing whatever
   * still waits on a peer. Bounded even when every peer is gone.
   */
  end(opts?: { releaseMs?: number }): Promise<RamEnd>;
}

export async function openRemoteRam(opts: RemoteRamOptions): Promise<RemoteRam> {
  const log = opts.log ?? (() => {});
  const chunkSize = opts.chunkSize ?? 64 * 1024;
  if (opts.size % chunkSize !== 0) throw new QuicmapError('EINVAL', `the size must be a multiple of the chunk size (${chunkSize} bytes)`);
  const mounts: MountedTicket[] = [];
  const closeMounts = () => Promise.all(mounts.map((m) => m.close().catch(() => {})));
  try {
    for (const [i, ticket] of opts.tickets.entries()) {
      try {
        mounts.push(
          await mountTicket({
            identity: opts.identity,
            ticket,
            ...(opts.transport ? { transport: opts.transport } : {}),
            region: { limits: { maxFrame: STORE_MAX_FRAME }, requestTimeoutMs: 10_000, livenessMs: opts.livenessMs ?? 6_000 },
            log: (m) => log(`store ${i + 1}: ${m}`),
          }),
        );
      } catch (e) {
        const code = e instanceof QuicmapError ? e.code : 'EIO';
        throw new QuicmapError(code, `storage peer ${i + 1} (of ${opts.tickets.length}): ${(e as Error).message}`);
      }
    }
  } catch (e) {
    await closeMounts();
    throw e;
  }
  const regionId = newRegionId();
  const pages = new SealedPages({
    secret: opts.identity.seed,
    regionId,
    chunkSize,
    chunks: opts.size / chunkSize,
    peers: mounts.map((m) => ({ name: m.sharerId.slice(0, 12), peer: new StorePeerClient(m.region) })),
    replicas: opts.replicas,
    log,
  });
  const store = new PagedStore({ size: opts.size, chunkSize, cacheBytes: opts.cacheBytes, pages, writeBackMs: opts.writeBackMs ?? 1000 });
  await pages.probe();
  await store.start();
  let probing = false;
  const probe = setInterval(() => {
    if (probing) return;
    probing = true;
    void pages.probe().catch(() => {}).finally(() => (probing = false));
  }, opts.probeMs ?? 1000);
  probe.unref();
  log(
    `encrypted RAM region ${regionIdText(regionId)}: ${opts.size} bytes in ${chunkSize}-byte chunks, ${opts.replicas} replica(s) on ${mounts.length} storage peer(s), ` +
      `plaintext cache ${store.capacity * chunkSize} bytes`,
  );
  let closing: Promise<void> | undefined;
  return {
    store,
    pages,
    regionId,
    status() {
      const reports = pages.peerReports();
      return {
        region: regionIdText(regionId),
        size: opts.size,
        chunkSize,
        cache: store.pagedStats,
        replication: pages.replication(),
        peers: reports.map((r, i) => ({ ...r, address: mounts[i]?.endpoint?.address ?? '' })),
      };
    },
    close() {
      closing ??= (async () => {
        clearInterval(probe);
        try {
          await store.close();
        } finally {
          await closeMounts();
        }
      })();
      return closing;
    },
    async end(o = {}) {
      clearInterval(probe);
      const dropped = store.end();
      let released = 0;
      let releasedAll = false;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        pages.release((n) => (released += n)).then(() => void (releasedAll = true)),
        new Promise<void>((r) => (timer = setTimeout(r, o.releaseMs ?? 1000))),
      ]);
      clearTimeout(timer);
      // Closing the links fails every request still waiting on a peer, so what is left settles now.
      closing ??= closeMounts().then(() => pages.close());
      await closing;
      return { ...dropped, released, releasedAll };
    },
  };
}
