/**
 * FrameWriter: the one writer of a stream. Frames from concurrent requests
 * must reach the wire whole and in order, and a ByteStream promises ordering
 * only within one write() call — two overlapping calls may interleave when
 * the transport waits for flow-control credit. So every frame goes through
 * here: one write() in progress at a time, and frames queued meanwhile are
 * sent together in the next call as one list of buffers (still no copy of
 * payloads; many small request headers become one transport write).
 * Memory stays bounded by the callers: each awaits its own frame's promise,
 * and callers are themselves bounded by the in-flight limit.
 */
import type { ByteStream } from '../../transports/transport.ts';

export class FrameWriter {
  private queue: Uint8Array[] = [];
  private waiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private busy = false;
  private failed: Error | undefined;

  private readonly stream: ByteStream;

  constructor(stream: ByteStream) {
    this.stream = stream;
  }

  write(frames: readonly Uint8Array[]): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    for (const f of frames) if (f.length) this.queue.push(f);
    const p = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (!this.busy) void this.drain();
    return p;
  }

  private async drain(): Promise<void> {
    this.busy = true;
    while (this.waiters.length) {
      const bufs = this.queue;
      const waiters = this.waiters;
      this.queue = [];
      this.waiters = [];
      try {
        if (bufs.length) await this.stream.write(bufs);
        for (const w of waiters) w.resolve();
      } catch (e) {
        this.failed = e as Error;
        for (const w of [...waiters, ...this.waiters]) w.reject(e as Error);
        this.queue = [];
        this.waiters = [];
      }
    }
    this.busy = false;
  }
}
