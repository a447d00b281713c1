/**
 * ChunkSource: where a synced layer's chunks come from and go back to — the
 * region's owner (a sharer reached over the network, a migration source),
 * or in tests a plain store. The engine defines it and knows nothing of
 * networks; p2p/ implements it over a RemoteRegion (Silo's migrator "does
 * not know anything about networks"; neither does this).
 *
 * Chunk i covers [i·chunkSize, min((i+1)·chunkSize, size)).
 */
export interface ChunkSource {
  readonly size: number;
  readonly chunkSize: number;
  /** The owner refuses writes (a read-only grant, a migration source after handover). */
  readonly readOnly: boolean;
  /**
   * Read chunk `index` into `buf` (exactly its length). `urgent` marks a
   * fetch a reader waits for (NeedAt): it must not queue behind background
   * pulls.
   */
  fetch(index: number, buf: Uint8Array, urgent: boolean): Promise<void>;
  /** Optional: chunks first..first+count-1 into `buf` in one request (background pulls of adjacent chunks). */
  fetchRange?(first: number, count: number, buf: Uint8Array): Promise<void>;
  /** Write chunk `index` back to the owner (whole chunk). */
  push(index: number, data: Uint8Array): Promise<void>;
  /** Optional: make chunk `index` zeros at the owner without sending them (trims, zeroed chunks). */
  zero?(index: number): Promise<void>;
  /** Every push acknowledged before this call is durable at the owner. */
  flush(): Promise<void>;
  /**
   * Subscribe to the owner's own changes (DirtyList): `onChanged` gets chunk
   * indices whose content at the owner changed, or 'all' when the owner
   * cannot say which (it restarted, the change log was too far behind).
   * Returns an unsubscribe function. Sources without change feeds omit it.
   */
  watch?(onChanged: (chunks: readonly number[] | 'all') => void): () => void;
}

/** A ChunkSource over any store: tests, and a local owner in the same process. */
export interface StoreLike {
  readAt(buf: Uint8Array, offset: number): Promise<void>;
  writeAt(data: Uint8Array, offset: number): Promise<void>;
  flush(): Promise<void>;
}

export function storeChunkSource(store: StoreLike, size: number, chunkSize: number, readOnly = false): ChunkSource {
  return {
    size,
    chunkSize,
    readOnly,
    fetch: (i, buf) => store.readAt(buf, i * chunkSize),
    push: (i, data) => store.writeAt(data, i * chunkSize),
    flush: () => store.flush(),
  };
}

export function chunkCount(size: number, chunkSize: number): number {
  return Math.ceil(size / chunkSize);
}

/** Length of chunk `index` (the last one may be short). */
export function chunkLength(index: number, size: number, chunkSize: number): number {
  return Math.min(chunkSize, size - index * chunkSize);
}
