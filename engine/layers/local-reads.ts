/**
 * LocalReadLayer: the front of a managed mount (above the ChunkedLayer over
 * a SyncedLayer). A read whose chunks are all local goes straight to the
 * cache in one piece (`SyncedLayer.readIfLocal`); anything else — a read
 * touching a remote chunk, every write, zero and trim — goes through the
 * chunked path below. It exists because the chunked path costs a split, a
 * promise per chunk and per layer, and once a region is pulled that is all
 * overhead: the cached read path should cost about what a local export does.
 */
import { PassThroughLayer } from './pass-through.ts';
import type { ReadWriterAt } from '../rwat.ts';
import type { SyncedLayer } from './synced.ts';

export class LocalReadLayer extends PassThroughLayer {
  private readonly synced: SyncedLayer;

  /** `chunked`: the ChunkedLayer over `synced`. */
  constructor(chunked: ReadWriterAt, synced: SyncedLayer) {
    super(chunked);
    this.synced = synced;
  }

  override readAt(buf: Uint8Array, offset: number): Promise<void> {
    return this.synced.readIfLocal(buf, offset) ?? this.inner.readAt(buf, offset);
  }

}
