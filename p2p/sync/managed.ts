/**
 * openManaged: a managed mount of a RemoteRegion — the stack
 *   ChunkedLayer → SyncedLayer(cache, RemoteChunkSource) → RemoteRegion
 * with the background puller and pusher started. What `quicmap mount
 * --managed` serves through NBD (with a GuardLayer on top).
 */
import { QuicmapError } from '../../base/errors.ts';
import { openBackend } from '../../engine/backends/open.ts';
import { ChunkedLayer } from '../../engine/layers/chunked.ts';
import { SyncedLayer, type SyncEvent } from '../../engine/layers/synced.ts';
import { loadPullOrder } from '../../engine/sync/load-order.ts';
import { TraceFile } from '../../engine/sync/trace-file.ts';
import type { ReadWriterAt } from '../../engine/rwat.ts';
import type { RemoteRegion } from '../remote/region.ts';
import { RemoteChunkSource } from './remote-source.ts';

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
  /** Push writes to the owner (default true). */
  push?: boolean;
  onEvent?: (e: SyncEvent) => void;
  log?: (m: string) => void;
}

export interface ManagedMount {
  /** The byte-addressable store to serve (put a GuardLayer on it). */
  store: ReadWriterAt;
  synced: SyncedLayer;
  source: RemoteChunkSource;
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
  try {
    trace = opts.recordTrace ? await TraceFile.create(opts.recordTrace, Math.ceil(size / chunkSize), chunkSize) : undefined;
    source = await RemoteChunkSource.open(region, { chunkSize, log: opts.log });
    const synced = new SyncedLayer({
      cache,
      source,
      pullWorkers: opts.pullWorkers ?? 4,
      pullOrder: order,
      pushIntervalMs: opts.pushIntervalMs,
      maxDirtyBytes: opts.maxDirtyBytes,
      push: opts.push,
      ...(trace ? { onFirstTouch: (i: number) => trace!.touch(i) } : {}),
      onEvent: opts.onEvent,
    });
    const store = new ChunkedLayer(synced, chunkSize);
    await synced.start();
    const src = source;
    const tr = trace;
    let closing: Promise<void> | undefined;
    return {
      store,
      synced,
      source: src,
      close() {
        closing ??= (async () => {
          try {
            await store.close(); // stops the puller and pusher, pushes what is dirty, closes the cache
          } finally {
            src.close();
            await tr?.close();
          }
        })();
        return closing;
      },
    };
  } catch (e) {
    source?.close();
    await trace?.close();
    await cache.close();
    throw e;
  }
}
