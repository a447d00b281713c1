/**
 * FeedLayer: records every write, trim and zero that passes through it in
 * a ChangeFeed (origin LOCAL_ORIGIN), so the writes of an application on
 * the sharer's own host — through `quicmap share --socket` — invalidate
 * the chunks mounters have cached, and a migration finds them dirty.
 * The change is recorded after the store below acknowledged it: a reader
 * told about a change always finds the new bytes.
 *
 * It answers the TRACKING capability from the feed (every change to the
 * region, peers' included, not only the writes through this layer).
 */
import { TRACKING, VECTORED, type Capability, type TrackingStore, type VectoredStore } from '../capability.ts';
import type { ReadWriterAt, WriteOptions, ZeroOptions } from '../rwat.ts';
import { LOCAL_ORIGIN, type ChangeFeed } from '../tracking/change-feed.ts';
import { PassThroughLayer } from './pass-through.ts';

export class FeedLayer extends PassThroughLayer {
  readonly feed: ChangeFeed;
  private readonly origin: number;
  private readonly vectored: VectoredStore | undefined;
  private tracker: TrackingStore | undefined;

  constructor(inner: ReadWriterAt, feed: ChangeFeed, origin = LOCAL_ORIGIN) {
    super(inner);
    this.feed = feed;
    this.origin = origin;
    const v = inner.capability(VECTORED);
    this.vectored = v && {
      writev: async (parts, offset, opts) => {
        let n = 0;
        for (const p of parts) n += p.length;
        await v.writev(parts, offset, opts);
        this.feed.record(offset, n, this.origin);
      },
    };
  }

  override async writeAt(data: Uint8Array, offset: number, opts?: WriteOptions): Promise<void> {
    await this.inner.writeAt(data, offset, opts);
    this.feed.record(offset, data.length, this.origin);
  }

  override async trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    await this.inner.trim(offset, length, opts);
    this.feed.record(offset, length, this.origin);
  }

  override async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    await this.inner.writeZeroes(offset, length, opts);
    this.feed.record(offset, length, this.origin);
  }

  override capability<T>(key: Capability<T>): T | undefined {
    if (key === (VECTORED as Capability<unknown>)) return this.vectored as T | undefined;
    if (key === (TRACKING as Capability<unknown>)) return (this.tracker ??= this.feed.tracker()) as T;
    return this.inner.capability(key);
  }
}
