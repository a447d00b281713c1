/**
 * RemoteChunkSource: the engine's ChunkSource over a RemoteRegion — what a
 * managed mount pulls from and pushes to. Chunk fetches and pushes are
 * plain READ / WRITE requests; the owner's own changes come from its
 * change feed (ChangePoller), whose first answer is awaited before the
 * first fetch so no later change can be missed.
 *
 * Priority: background pulls move up to a MiB per request, and one link is
 * one ordered stream, so an urgent (NeedAt) fetch sent after them waits
 * behind their bytes (head-of-line). Given a second RemoteRegion to the same
 * owner (`urgent`), reads a client waits for go there, on a link of their own.
 */
import type { ChunkSource } from '../../engine/sync/chunk-source.ts';
import type { RemoteRegion } from '../remote/region.ts';
import { ChangePoller, type ChangesReply } from './change-calls.ts';

export class RemoteChunkSource implements ChunkSource {
  readonly size: number;
  readonly chunkSize: number;
  readonly readOnly: boolean;
  readonly region: RemoteRegion;
  private readonly listeners = new Set<(c: readonly number[] | 'all') => void>();
  private readonly poller: ChangePoller;
  private hasFeed = false;
  private readonly urgentRegion: RemoteRegion;

  private constructor(region: RemoteRegion, chunkSize: number, log: (m: string) => void, urgent?: RemoteRegion) {
    this.region = region;
    this.urgentRegion = urgent ?? region;
    this.size = region.manifest.size;
    this.chunkSize = chunkSize;
    this.readOnly = region.caps.readOnly;
    this.poller = new ChangePoller(region, (c) => {
      for (const l of this.listeners) l(c);
    }, log);
  }

  /** Learn the owner's feed version (if it has a feed) before anything is fetched. */
  static async open(region: RemoteRegion, opts: { chunkSize?: number; log?: (m: string) => void; urgent?: RemoteRegion } = {}): Promise<RemoteChunkSource> {
    const s = new RemoteChunkSource(region, opts.chunkSize ?? region.manifest.chunkSize, opts.log ?? (() => {}), opts.urgent);
    s.hasFeed = await s.poller.start();
    return s;
  }

  /** The owner reports its changes (it has a change feed). */
  get watching(): boolean {
    return this.hasFeed;
  }

  get feedVersion(): number {
    return this.poller.version;
  }

  /** The owner's feed id (null: not known yet). */
  get feedId(): number | null {
    return this.poller.feedId;
  }

  /** Apply a feed answer that came another way (a migration's final dirty list); returns chunks reported (-1: all). */
  applyChanges(reply: ChangesReply): number {
    return this.poller.apply(reply);
  }

  /** Ask the feed now (a migration's dirty round) instead of waiting for the long poll. */
  pollChanges(): Promise<void> {
    return this.poller.pollNow();
  }

  fetch(index: number, buf: Uint8Array, urgent: boolean): Promise<void> {
    return (urgent ? this.urgentRegion : this.region).readAt(buf, index * this.chunkSize);
  }

  fetchRange(first: number, _count: number, buf: Uint8Array): Promise<void> {
    return this.region.readAt(buf, first * this.chunkSize);
  }

  push(index: number, data: Uint8Array): Promise<void> {
    return this.region.writeAt(data, index * this.chunkSize);
  }

  zero(index: number): Promise<void> {
    return this.region.writeZeroes(index * this.chunkSize, Math.min(this.chunkSize, this.size - index * this.chunkSize));
  }

  flush(): Promise<void> {
    return this.region.flush();
  }

  watch(onChanged: (chunks: readonly number[] | 'all') => void): () => void {
    this.listeners.add(onChanged);
    return () => this.listeners.delete(onChanged);
  }

  close(): void {
    this.poller.stop();
    this.listeners.clear();
  }
}
