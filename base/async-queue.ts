/**
 * A FIFO whose consumers wait: used for accept queues (connections, streams).
 * `close()` ends it (pending and later shifts get null once drained);
 * `fail(err)` makes pending and later shifts reject. Items still queued when
 * it is failed are handed to `onDrop` so nothing (a stream, a connection) is
 * leaked without being closed.
 */
export class AsyncQueue<T> {
  private readonly items: T[] = [];
  private readonly waiters: Array<{ resolve: (v: T | null) => void; reject: (e: unknown) => void }> = [];
  private ended = false;
  private error: unknown = undefined;

  private readonly onDrop?: (item: T) => void;
  constructor(onDrop?: (item: T) => void) {
    this.onDrop = onDrop;
  }

  get size(): number {
    return this.items.length;
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /** Returns false (and drops the item) if the queue is already closed. */
  push(item: T): boolean {
    if (this.ended) {
      this.onDrop?.(item);
      return false;
    }
    const w = this.waiters.shift();
    if (w) w.resolve(item);
    else this.items.push(item);
    return true;
  }

  shift(): Promise<T | null> {
    if (this.items.length) return Promise.resolve(this.items.shift()!);
    if (this.error !== undefined) return Promise.reject(this.error);
    if (this.ended) return Promise.resolve(null);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** No more items; queued ones can still be taken. */
  close(): void {
    if (this.ended) return;
    this.ended = true;
    for (const w of this.waiters.splice(0)) w.resolve(null);
  }

  /** Drop what is queued (through onDrop) and answer every shift with null. */
  closeAndDrain(): void {
    this.close();
    for (const item of this.items.splice(0)) this.onDrop?.(item);
  }

  fail(err: unknown): void {
    if (this.error !== undefined) return;
    this.error = err;
    this.ended = true;
    for (const item of this.items.splice(0)) this.onDrop?.(item);
    for (const w of this.waiters.splice(0)) w.reject(err);
  }
}
