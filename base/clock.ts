/**
 * Time as an input. Sans-IO state machines (liveness, request deadlines,
 * reconnect backoff) take `now` as an argument and say when they next need
 * to be woken (`nextTimeout()`, as quinn-proto does); the I/O adapter owns
 * one timer per machine through a `Clock`. Production uses `systemClock`;
 * tests drive a `VirtualClock` and advance it by hand, so liveness and
 * reconnect are tested without real sleeps.
 */
export interface Clock {
  /** Milliseconds on a monotonic scale (only differences matter). */
  now(): number;
  /** Call `fn` once `now() >= at`; returns a cancel function. Never keeps the process alive. */
  schedule(at: number, fn: () => void): () => void;
}

export const systemClock: Clock = {
  now: () => performance.now(),
  schedule(at, fn) {
    const t = setTimeout(fn, Math.max(0, at - performance.now()));
    t.unref();
    return () => clearTimeout(t);
  },
};

/** The system clock on the Date.now() scale, for adapters whose timestamps come from Date.now(). */
export const wallClock: Clock = {
  now: () => Date.now(),
  schedule(at, fn) {
    const t = setTimeout(fn, Math.max(0, at - Date.now()));
    t.unref();
    return () => clearTimeout(t);
  },
};

/** A clock that moves only when told to (tests). Timers fire in deadline order during `advance`. */
export class VirtualClock implements Clock {
  private t: number;
  private readonly timers = new Set<{ at: number; fn: () => void }>();

  constructor(start = 0) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  schedule(at: number, fn: () => void): () => void {
    const timer = { at, fn };
    this.timers.add(timer);
    return () => this.timers.delete(timer);
  }

  /** Timers still waiting. */
  get pending(): number {
    return this.timers.size;
  }

  /**
   * Move time forward by `ms`, firing due timers in order; after each one,
   * let promise callbacks and I/O run (`settle`) so the adapters react
   * before the next timer is considered.
   */
  async advance(ms: number, settle: () => Promise<void> = turn): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      let next: { at: number; fn: () => void } | undefined;
      for (const timer of this.timers) if (timer.at <= end && (!next || timer.at < next.at)) next = timer;
      if (!next) break;
      this.timers.delete(next);
      this.t = Math.max(this.t, next.at);
      next.fn();
      await settle();
    }
    this.t = end;
    await settle();
  }
}

/** One macrotask turn: pending promise callbacks and ready I/O callbacks run. */
export function turn(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}

/**
 * The one timer of a sans-IO machine: `arm(at)` (re)schedules the wake-up
 * at the machine's `nextTimeout()`, `undefined` cancels it. The callback
 * gets `now`, calls the machine's `handleTimeout(now)` and arms again.
 */
export class Wakeup {
  private readonly clock: Clock;
  private readonly fire: (now: number) => void;
  private cancel: (() => void) | undefined;
  private at: number | undefined;

  constructor(clock: Clock, fire: (now: number) => void) {
    this.clock = clock;
    this.fire = fire;
  }

  arm(at: number | undefined): void {
    if (at === this.at) return;
    this.cancel?.();
    this.cancel = undefined;
    this.at = at;
    if (at === undefined) return;
    this.cancel = this.clock.schedule(at, () => {
      this.cancel = undefined;
      this.at = undefined;
      this.fire(this.clock.now());
    });
  }

  stop(): void {
    this.arm(undefined);
  }
}
