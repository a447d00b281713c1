/**
 * FeedLayer: records every write, trim and zero that passes through it in
 * a ChangeFeed (origin LOCAL_ORIGIN), so the writes of an application on
 * the sharer's own host — through `quicmap share --socket` — invalidate
 * the chunks mounters have cached, and a migration finds them dirty.
 * The change is recorded after the store below acknowledged it: a reader
 * told about a change always finds the new bytes.
 */
import type { ReadWriterAt, StoreCaps, WriteOptions, ZeroOptions, Extent } from '../rwat.ts';
import { LOCAL_ORIGIN, type ChangeFeed } from '../tracking/change-feed.ts';

export class FeedLayer implements ReadWriterAt {
  readonly caps: StoreCaps;
  readonly feed: ChangeFeed;
  private readonly inner: ReadWriterAt;
  private readonly origin: number;
  extents?: (offset: number, length: number) => Promise<Extent[]>;

  constructor(inner: ReadWriterAt, feed: ChangeFeed, origin = LOCAL_ORIGIN) {
    this.inner = inner;
    this.feed = feed;
    this.origin = origin;
    this.caps = inner.caps;
    if (inner.extents) this.extents = (o, l) => inner.extents!(o, l);
  }

  size(): Promise<number> {
    return this.inner.size();
  }
  readAt(buf: Uint8Array, offset: number): Promise<void> {
    return this.inner.readAt(buf, offset);
  }
  async writeAt(data: Uint8Array, offset: number, opts?: WriteOptions): Promise<void> {
    await this.inner.writeAt(data, offset, opts);
    this.feed.record(offset, data.length, this.origin);
  }
  async writev(parts: readonly Uint8Array[], offset: number, opts?: WriteOptions): Promise<void> {
    let n = 0;
    for (const p of parts) n += p.length;
    if (this.inner.writev) await this.inner.writev(parts, offset, opts);
    else await this.inner.writeAt(Buffer.concat(parts), offset, opts);
    this.feed.record(offset, n, this.origin);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  async trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    await this.inner.trim(offset, length, opts);
    this.feed.record(offset, length, this.origin);
  }
  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    await this.inner.writeZeroes(offset, length, opts);
    this.feed.record(offset, length, this.origin);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
