/**
 * The receiving half of a stream: chunks that arrived and were not read yet.
 * Shared by the in-memory and TCP transports. It tracks how many bytes are
 * buffered so the sender side can be throttled (memory: the writer waits for
 * `drained`; TCP mux: consumed bytes are returned to the peer as window
 * credit via `onConsumed`).
 */
export class InboundBuffer {
  private readonly chunks: Uint8Array[] = [];
  private buffered = 0;
  private ended = false;
  private error: Error | undefined;
  private reader: { resolve: (v: Uint8Array | null) => void; reject: (e: unknown) => void } | undefined;
  private drainWaiters: Array<() => void> = [];

  /**
   * @param lowWater `drained()` resolves once at most this many bytes are buffered.
   * @param onConsumed called with the size of each chunk handed to the reader.
   */
  private readonly lowWater: number;
  private readonly onConsumed?: (bytes: number) => void;
  constructor(
    lowWater: number,
    onConsumed?: (bytes: number) => void,
  ) {
    this.lowWater = lowWater;
    this.onConsumed = onConsumed;
  }

  get bufferedBytes(): number {
    return this.buffered;
  }

  /** True once end() or fail() was called. */
  get isFinished(): boolean {
    return this.ended || this.error !== undefined;
  }

  push(chunk: Uint8Array): void {
    if (this.isFinished || chunk.length === 0) return;
    if (this.reader) {
      const r = this.reader;
      this.reader = undefined;
      this.onConsumed?.(chunk.length);
      r.resolve(chunk);
      return;
    }
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /** The peer finished writing: after the buffered chunks, read() gives null. */
  end(): void {
    if (this.isFinished) return;
    this.ended = true;
    if (this.reader && this.chunks.length === 0) {
      const r = this.reader;
      this.reader = undefined;
      r.resolve(null);
    }
    this.releaseDrainWaiters();
  }

  /** Reset: buffered data is dropped, pending and later reads reject. */
  fail(err: Error): void {
    if (this.error) return;
    this.error = err;
    this.chunks.length = 0;
    this.buffered = 0;
    if (this.reader) {
      const r = this.reader;
      this.reader = undefined;
      r.reject(err);
    }
    this.releaseDrainWaiters();
  }

  read(): Promise<Uint8Array | null> {
    if (this.error) return Promise.reject(this.error);
    if (this.reader) return Promise.reject(new Error('read() called while another read() is pending'));
    const chunk = this.chunks.shift();
    if (chunk) {
      this.buffered -= chunk.length;
      this.onConsumed?.(chunk.length);
      if (this.buffered <= this.lowWater) this.releaseDrainWaiters();
      return Promise.resolve(chunk);
    }
    if (this.ended) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      this.reader = { resolve, reject };
    });
  }

  /** Resolves once the buffer is at or below the low-water mark, or finished. */
  drained(): Promise<void> {
    if (this.buffered <= this.lowWater || this.isFinished) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  private releaseDrainWaiters(): void {
    const ws = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of ws) w();
  }
}
