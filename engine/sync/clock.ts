/**
 * The clock the background sync loops take as input, so pull and push
 * timing is tested on a virtual clock (`VirtualClock`) instead of sleeps.
 */
export interface Clock {
  /** Milliseconds, monotonic. */
  now(): number;
  /** Call `fn` after `ms`; returns a cancel function. Real timers never keep the process alive. */
  after(ms: number, fn: () => void): () => void;
}

export const realClock: Clock = {
  now: () => performance.now(),
  after(ms, fn) {
    const t = setTimeout(fn, Math.max(0, ms));
    t.unref();
    return () => clearTimeout(t);
  },
};

export function sleep(clock: Clock, ms: number): Promise<void> {
  return new Promise((r) => clock.after(ms, r));
}

/** A clock that moves only when told to; timers fire in time order during `advance`. */
export class VirtualClock implements Clock {
  private t = 0;
  private seq = 0;
  private readonly timers = new Map<number, { at: number; fn: () => void }>();

  now(): number {
    return this.t;
  }

  after(ms: number, fn: () => void): () => void {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return () => void this.timers.delete(id);
  }

  get pending(): number {
    return this.timers.size;
  }

  /** Move time forward by `ms`, firing due timers in order and letting promises settle between them. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const e of this.timers) if (e[1].at <= end && (!next || e[1].at < next[1].at || (e[1].at === next[1].at && e[0] < next[0]))) next = e;
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = Math.max(this.t, next[1].at);
      next[1].fn();
      await settle();
    }
    this.t = end;
    await settle();
  }
}

/** Let queued promise callbacks and immediates run. */
export async function settle(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise<void>((r) => setImmediate(r));
}
