/**
 * PassThroughLayer: the base of every layer. Each call goes to the store
 * below unchanged, so a layer overrides only what it changes — nbdkit's
 * filters pass everything through by default in the same way. Caps and
 * capability queries pass through too: a layer that changes what a
 * capability means (remapped offsets, checked or split writes) must override
 * `capability` and answer for itself.
 *
 * Lifecycle: `start` / `stop` do nothing here; a background layer (puller,
 * pusher) overrides them. The stack (engine/stack.ts) calls them on each of
 * its layers, bottom-up and top-down, so a layer never starts or stops the
 * one below it itself. `close` closes the store below: a stack closes from
 * the top.
 */
import type { Capability, Lifecycle } from '../capability.ts';
import type { ReadWriterAt, StoreCaps, WriteOptions, ZeroOptions } from '../rwat.ts';

export abstract class PassThroughLayer implements ReadWriterAt, Lifecycle {
  protected readonly inner: ReadWriterAt;

  constructor(inner: ReadWriterAt) {
    this.inner = inner;
  }

  /** The store this layer wraps. */
  get below(): ReadWriterAt {
    return this.inner;
  }

  get caps(): StoreCaps {
    return this.inner.caps;
  }

  size(): Promise<number> {
    return this.inner.size();
  }

  readAt(buf: Uint8Array, offset: number): Promise<void> {
    return this.inner.readAt(buf, offset);
  }

  writeAt(data: Uint8Array, offset: number, opts?: WriteOptions): Promise<void> {
    return this.inner.writeAt(data, offset, opts);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    return this.inner.trim(offset, length, opts);
  }

  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.inner.writeZeroes(offset, length, opts);
  }

  capability<T>(key: Capability<T>): T | undefined {
    return this.inner.capability(key);
  }

  async start(): Promise<void> {}

  async stop(): Promise<void> {}

  close(): Promise<void> {
    return this.inner.close();
  }
}
