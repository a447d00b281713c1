/**
 * A counting semaphore with a FIFO queue: bounds requests in flight to the
 * negotiated maximum while later callers wait their turn in order.
 */
export class Semaphore {
  private available: number;
  private readonly queue: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private failed: Error | undefined;

  constructor(count: number) {
    this.available = count;
  }

  get waiting(): number {
    return this.queue.length;
  }

  acquire(): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.available > 0) {
      this.available--;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => this.queue.push({ resolve, reject }));
  }

  release(): void {
    const next = this.queue.shift();
    if (next) next.resolve();
    else this.available++;
  }

  /** Reject every waiter and every later acquire (on close). */
  failAll(err: Error): void {
    this.failed = err;
    for (const w of this.queue.splice(0)) w.reject(err);
  }
}
