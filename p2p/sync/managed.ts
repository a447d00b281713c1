/**
 * openManaged: a managed mount of a RemoteRegion — the stack
 *   ChunkedLayer → SyncedLayer(cache, RemoteChunkSource) → RemoteRegion
 * with the background puller and pusher started. What `quicmap mount
 * --managed` serves through NBD (with a GuardLayer on top).
 */
import { QuicmapError } from '../../base/errors.ts';
import { openBackend } from '../../engine/backends/open.ts';
import { ChunkedLayer } from '../../engine/layers/chunked.ts';
import { LocalReadLayer } from '../../engine/layers/local-reads.ts';
import { SyncedLayer, type SyncEvent, type SyncProgress } from '../../engine/layers/synced.ts';
import { loadPullOrder } from '../../engine/sync/load-order.ts';
import { TraceFile } from '../../engine/sync/trace-file.ts';
import type { ReadWriterAt } from '../../engine/rwat.ts';
import type { RemoteRegion } from '../remote/region.ts';
import { RemoteChunkSource } from './remote-source.ts';
import { HashListVerifier } from '../../engine/sync/hash-list.ts';
import { SwarmSource, type PeerStatus } from '../../engine/sync/swarm-source.ts';
import { loadHashList } from './hash-calls.ts';
import { RefPullSource, type RefPullOptions, type RefHolderStatus, type RefPullStats } from './ref-pull.ts';
import { HaveMap } from '../../engine/sync/have-map.ts';
import { HavePoller } from './have-calls.ts';

export interface ManagedOptions {
  /** memory (default) | file:PATH | dir:PATH */
  cache?: string;
  pullWorkers?: number;
  /** sequential | reverse | volatility | trace:FILE | priority:MODULE */
  pullOrder?: string;
  pushIntervalMs?: number;
  maxDirtyBytes?: number;
  /** Record the first-touch order of clients to this file. */
  recordTrace?: string;
  /** Chunk size of pulls and pushes (default: the manifest's). */
  chunkSize?: number;
  /**
   * Other nodes serving a copy of the same region (their RemoteRegions):
   * chunks are pulled from all of them and the owner, and a seeder's bytes
   * are used only when they match the owner's signed chunk-hash list.
   */
  seeders?: ReadonlyArray<{ name: string; region: RemoteRegion }>;
  /** How often each seeder's chunk map is asked for (default 1000 ms). */
  haveIntervalMs?: number;
  /** Pull through the swarm scheduler even with no seeder yet (seeders found later join with `addSeeder`: the DHT). */
  swarm?: boolean;
  /**
   * Ask the owner where chunks are held (`ref.locate`) and pull those from
   * their holders by reference, verified against the owner's signed hashes
   * (ref-pull.ts); the rest from the owner. Needs this node's identity (the
   * holders see the owner's delegation bound to it).
   */
  byReference?: Pick<RefPullOptions, 'identity' | 'transport' | 'maxStrikes' | 'slowMs' | 'machineOf'>;
  /** A second link to the owner for reads a client waits for (no head-of-line wait behind background pulls). */
  urgent?: RemoteRegion;
  /** Reads of local chunks straight from the cache (default true; false: every read through the chunked path, for A/B runs). */
  localReads?: boolean;
  /** Push writes to the owner (default true). */
  push?: boolean;
  onEvent?: (e: SyncEvent) => void;
  log?: (m: string) => void;
}

/**
 * What a status view (the node's `status` command, a control socket) reads
 * of a managed mount: chunk counts, bytes pulled and pushed, completion,
 * and per-seeder statistics (strikes, bans) when pulling from a swarm.
 */
export interface ManagedStatus {
  progress(): SyncProgress;
  peers(): PeerStatus[] | undefined;
  /** Pulls by reference (`byReference`): chunks and bytes from holders and from the owner, per holder. */
  references(): (RefPullStats & { holders: RefHolderStatus[] }) | undefined;
}

export interface ManagedMount {
  /** The byte-addressable store to serve (put a GuardLayer on it). */
  store: ReadWriterAt;
  synced: SyncedLayer;
  source: RemoteChunkSource;
  /** Per-peer pull statistics when pulling from seeders too (strikes, bans: what `status` shows). */
  peers(): PeerStatus[] | undefined;
  /** The status view of this mount. */
  status: ManagedStatus;
  /**
   * Pull from another seeder from now on (needs `seeders` or `swarm` at
   * open). False when the mount has no swarm or knows the name already;
   * throws EINVAL when the seeder's region has another size.
   */
  addSeeder(name: string, region: RemoteRegion): boolean;
  close(): Promise<void>;
}

export async function openManaged(region: RemoteRegion, opts: ManagedOptions = {}): Promise<ManagedMount> {
  const size = region.manifest.size;
  const chunkSize = opts.chunkSize ?? region.manifest.chunkSize;
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0 || chunkSize > region.limits.maxFrame) {
    throw new QuicmapError('EINVAL', `chunk size ${chunkSize} must be between 1 and the link's max frame (${region.limits.maxFrame})`);
  }
  const order = await loadPullOrder(opts.pullOrder ?? 'sequential', chunkSize);
  const cache = await openBackend(opts.cache ?? 'memory', { size, create: true, chunkSize });
  if ((await cache.size()) < size) {
    await cache.close();
    throw new QuicmapError('EINVAL', `cache ${opts.cache} holds ${await cache.size().catch(() => 0)} bytes; the region needs ${size}`);
  }
  let trace: TraceFile | undefined;
  let source: RemoteChunkSource | undefined;
  const havePollers: HavePoller[] = [];
  try {
    trace = opts.recordTrace ? await TraceFile.create(opts.recordTrace, Math.ceil(size / chunkSize), chunkSize) : undefined;
    source = await RemoteChunkSource.open(region, { chunkSize, log: opts.log, ...(opts.urgent ? { urgent: opts.urgent } : {}) });
    let swarm: SwarmSource | undefined;
    let refs: RefPullSource | undefined;
    let refresh: NodeJS.Timeout | undefined;
    const haveReady: Promise<void>[] = [];
    const seederOf = (name: string, r: RemoteRegion) => {
      if (r.manifest.size !== size) throw new QuicmapError('EINVAL', `seeder ${name} serves ${r.manifest.size} bytes, the region has ${size}`);
      // Which chunks it holds (a seeder that is a managed mount pulls too): never ask it for one it lacks.
      const have = new HaveMap(Math.ceil(size / chunkSize));
      const poller = new HavePoller(r, have, { name, ...(opts.log ? { log: opts.log } : {}), ...(opts.haveIntervalMs ? { intervalMs: opts.haveIntervalMs } : {}) });
      havePollers.push(poller);
      haveReady.push(poller.start());
      return { name, source: { fetch: (i: number, buf: Uint8Array) => r.readAt(buf, i * chunkSize) }, holds: (i: number) => have.has(i), heldCount: () => have.count() };
    };
    const wantSwarm = (opts.seeders && opts.seeders.length > 0) || opts.swarm;
    if (wantSwarm || opts.byReference) {
      const initial = (opts.seeders ?? []).map((s) => seederOf(s.name, s.region));
      // The first chunk maps before the first pull (bounded: a seeder that does not answer is not waited for).
      let waitMaps: NodeJS.Timeout | undefined;
      await Promise.race([Promise.all(haveReady), new Promise<void>((r) => (waitMaps = setTimeout(r, 2_000)))]);
      clearTimeout(waitMaps);
      const verifier = new HashListVerifier(Math.ceil(size / chunkSize));
      const owner = region.manifest.sharer;
      const regionId = region.manifest.regionId;
      await loadHashList(region, verifier, owner, regionId);
      if (opts.byReference) refs = new RefPullSource({ ...opts.byReference, owner: source, verifier, ...(opts.log ? { log: opts.log } : {}) });
      if (wantSwarm) swarm = new SwarmSource({
        owner: refs ?? source,
        seeders: initial,
        verifier,
        log: opts.log,
      });
      // Hashes of chunks the owner changed are stale; fetch the list again now and then.
      refresh = setInterval(() => {
        if (verifier.knownCount < verifier.chunks) void loadHashList(region, verifier, owner, regionId).catch(() => {});
      }, 2_000);
      refresh.unref();
    }
    const synced = new SyncedLayer({
      cache,
      source: swarm ?? refs ?? source,
      pullWorkers: opts.pullWorkers ?? 8,
      maxPullRun: Math.max(1, Math.min(16, Math.floor(region.limits.maxFrame / chunkSize))),
      pullOrder: order,
      pushIntervalMs: opts.pushIntervalMs,
      maxDirtyBytes: opts.maxDirtyBytes,
      push: opts.push,
      ...(trace ? { onFirstTouch: (i: number) => trace!.touch(i) } : {}),
      onEvent: opts.onEvent,
    });
    const chunked = new ChunkedLayer(synced, chunkSize);
    // Reads of local chunks skip the chunked path (the cached read path: one cache read per request).
    const store = opts.localReads === false ? chunked : new LocalReadLayer(chunked, synced);
    await synced.start();
    const src = source;
    const tr = trace;
    let closing: Promise<void> | undefined;
    return {
      store,
      synced,
      source: src,
      peers: () => swarm?.status(),
      status: { progress: () => synced.progress(), peers: () => swarm?.status(), references: () => refs?.view() },
      addSeeder: (name, r) => (swarm ? swarm.addSeeder(seederOf(name, r)) : false),
      close() {
        closing ??= (async () => {
          try {
            await store.close(); // stops the puller and pusher, pushes what is dirty, closes the cache
          } finally {
            clearInterval(refresh);
            await refs?.close();
            for (const p of havePollers) p.stop();
            src.close();
            await tr?.close();
          }
        })();
        return closing;
      },
    };
  } catch (e) {
    for (const p of havePollers) p.stop();
    source?.close();
    await trace?.close();
    await cache.close();
    throw e;
  }
}
