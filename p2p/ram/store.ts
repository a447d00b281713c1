/**
 * openChunkStore: the library call behind `quicmap store`. A storage peer
 * for encrypted remote RAM: it serves the chunk.* calls (store-calls.ts)
 * over the region server, so it inherits that listener's rules (admission
 * per source with fair eviction of pending connections, HELLO deadline,
 * sessions per source and in total, the node-wide memory budget, which
 * charges each CALL body) and its tickets: the ticket it returns is what a
 * RAM node presents. The "region" behind it is a placeholder of one block;
 * the chunks live in a ChunkVault bounded by the quota.
 */
import type { Identity } from '../../crypto/identity.ts';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { shareRegion, type SharedRegion } from '../share.ts';
import type { TransportChoice } from '../transports.ts';
import { serveChunkStore, type StoreCallStats } from './store-calls.ts';
import { DirVault, MemoryVault, type ChunkVault } from './vault.ts';

/** Largest CALL frame the store takes: a 1 MiB chunk, sealed, in its msgpack envelope. */
export const STORE_MAX_FRAME = 1024 * 1024 + 4096;

export interface ChunkStoreOptions {
  identity: Identity;
  listen: string;
  transport?: TransportChoice;
  quota: number;
  /** 'memory' (default) or a directory. */
  backend?: { kind: 'memory' } | { kind: 'dir'; path: string };
  /** Keep a region id across restarts (a dir: store does) so its ticket stays valid. */
  regionId?: Uint8Array;
  /** Requests one session may have in flight (default 32): with the frame size, the per-connection bound. */
  maxInFlight?: number;
  log?: (message: string) => void;
}

export interface ChunkStore {
  ticket: string;
  address: string;
  vault: ChunkVault;
  calls: StoreCallStats;
  shared: SharedRegion;
  close(): Promise<void>;
}

export async function openChunkStore(opts: ChunkStoreOptions): Promise<ChunkStore> {
  const backend = opts.backend ?? { kind: 'memory' };
  const vault = backend.kind === 'dir' ? await DirVault.open(backend.path, opts.quota) : new MemoryVault(opts.quota);
  const placeholder = new MemoryBackend(4096);
  let shared: SharedRegion;
  try {
    shared = await shareRegion({
      identity: opts.identity,
      store: placeholder,
      transport: opts.transport ?? 'quic',
      listen: opts.listen,
      limits: { maxFrame: STORE_MAX_FRAME, maxInFlight: opts.maxInFlight ?? 32 },
      ...(opts.regionId ? { regionId: opts.regionId } : {}),
      log: opts.log,
    });
  } catch (e) {
    await vault.close();
    await placeholder.close();
    throw e;
  }
  const calls = serveChunkStore(shared.server, vault);
  return {
    ticket: shared.ticket,
    address: shared.address,
    vault,
    calls,
    shared,
    async close() {
      await shared.close();
      await vault.close();
      await placeholder.close();
    },
  };
}
