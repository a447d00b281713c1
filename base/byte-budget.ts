/**
 * ByteBudget: memory a whole node (a server, a relay) may hold on behalf of
 * its clients, beside each connection's own limit, so that N hostile clients
 * cannot take N × the per-connection budget.
 *
 * Each connection is a `BudgetHolder` that reports what it holds
 * (`set(bytes)`: requests in progress, replies not yet read by the client,
 * input not yet decoded). A holder asks `mayTake()` before reading more:
 *
 *   - below the limit, anyone may;
 *   - at the limit, only a holder that holds nothing (it reads its replies,
 *     so it is not the problem) may, as long as the node stays below
 *     limit + reserve: a well-behaved client still gets one request at a time
 *     through while hostile ones hold the budget;
 *   - otherwise the holder waits (`whenRoom`) and the budget sheds: the
 *     holder that holds the most while its client has stalled for `stallMs`
 *     (not reading its replies, or stopped mid-request) is told to go
 *     (`shed()`), and the next, until the node is below its limit.
 *
 * So the bytes held stay under limit + reserve + one request and one input
 * chunk per connection that was let through, and a client that stops
 * reading loses its connection instead of everyone else's service.
 *
 * Across threads: the total (and the count of waiting holders) lives in a
 * SharedArrayBuffer; a server whose connections are served on worker
 * threads gives each thread a ByteBudget over the same buffer
 * (`describe()` → `new ByteBudget(description)`), so the limit is the
 * node's, not each thread's. Each thread sheds only its own holders, and
 * does so while the node is at its limit and anyone, on any thread, waits;
 * waiters re-check on a timer, so room made on another thread is seen
 * within a tick.
 */

export interface ByteBudgetOptions {
  /** Bytes all holders together may hold before new work waits. */
  limit: number;
  /** Headroom above `limit` for holders that hold nothing. Default limit / 8. */
  reserve?: number;
  /** A holder with no progress for this long may be shed while the node is at its limit. Default 2 000 ms. */
  stallMs?: number;
  /** The clock, for tests. */
  now?: () => number;
  /** Share the total with the ByteBudgets of other threads (from `describe()`). */
  shared?: SharedArrayBuffer;
}

/** What another thread needs to join this budget. */
export interface ByteBudgetDescription {
  limit: number;
  reserve: number;
  stallMs: number;
  shared: SharedArrayBuffer;
}

export interface HolderHooks {
  /** Called when the budget sheds this holder: close the connection. */
  shed: () => void;
  /**
   * True when the holder's client has let its bytes sit for at least
   * `stallMs` (`now` given): it does not read its replies, or stopped in the
   * middle of a request while we were reading. Time the holder spent paused
   * by us must not count.
   */
  stalled: (now: number, stallMs: number) => boolean;
}

export class BudgetHolder {
  private bytes = 0;
  private waiter: (() => void) | undefined;
  released = false;
  private readonly budget: ByteBudget;
  readonly hooks: HolderHooks;

  constructor(budget: ByteBudget, hooks: HolderHooks) {
    this.budget = budget;
    this.hooks = hooks;
  }

  get held(): number {
    return this.bytes;
  }

  /** Report what this holder holds now. */
  set(bytes: number): void {
    if (this.released) return;
    const delta = bytes - this.bytes;
    this.bytes = bytes;
    this.budget.adjust(delta);
  }

  /** May this holder take more work? */
  mayTake(): boolean {
    return this.budget.allows(this);
  }

  /** Call `wake` once the budget has room again (replaces an earlier wake-up). */
  whenRoom(wake: () => void): void {
    this.waiter = wake;
    this.budget.wait(this);
  }

  /** @internal */
  takeWaiter(): (() => void) | undefined {
    const w = this.waiter;
    this.waiter = undefined;
    return w;
  }

  /** The connection is gone: give back everything it held. Idempotent. */
  release(): void {
    if (this.released) return;
    this.set(0);
    this.released = true;
    this.waiter = undefined;
    this.budget.forget(this);
  }
}

export class ByteBudget {
  readonly limit: number;
  readonly reserve: number;
  readonly stallMs: number;
  readonly now: () => number;
  readonly stats = { shed: 0, peak: 0 };
  /** [0]: bytes held node-wide; [1]: holders waiting node-wide. */
  private readonly cells: BigInt64Array;
  private readonly sharedBuffer: SharedArrayBuffer;
  private readonly holders = new Set<BudgetHolder>();
  private waiting: BudgetHolder[] = [];
  private timer: NodeJS.Timeout | undefined;
  private wakeScheduled = false;

  constructor(opts: ByteBudgetOptions) {
    if (!(opts.limit > 0)) throw new RangeError('a byte budget needs a positive limit');
    this.limit = opts.limit;
    this.reserve = opts.reserve ?? Math.floor(opts.limit / 8);
    this.stallMs = opts.stallMs ?? 2000;
    this.now = opts.now ?? Date.now;
    this.sharedBuffer = opts.shared ?? new SharedArrayBuffer(16);
    this.cells = new BigInt64Array(this.sharedBuffer);
  }

  /** For a ByteBudget on another thread that shares this one's total. */
  describe(): ByteBudgetDescription {
    return { limit: this.limit, reserve: this.reserve, stallMs: this.stallMs, shared: this.sharedBuffer };
  }

  /** Bytes held node-wide (every thread sharing this budget). */
  get used(): number {
    return Number(Atomics.load(this.cells, 0));
  }

  private get waitingAnywhere(): number {
    return Number(Atomics.load(this.cells, 1));
  }

  private setWaiting(list: BudgetHolder[]): void {
    const delta = list.length - this.waiting.length;
    this.waiting = list;
    if (delta) Atomics.add(this.cells, 1, BigInt(delta));
  }

  get holderCount(): number {
    return this.holders.size;
  }

  holder(hooks: HolderHooks): BudgetHolder {
    const h = new BudgetHolder(this, hooks);
    this.holders.add(h);
    return h;
  }

  /** @internal */
  adjust(delta: number): void {
    if (delta === 0) return;
    const used = Number(Atomics.add(this.cells, 0, BigInt(delta))) + delta;
    if (used > this.stats.peak) this.stats.peak = used;
    if (delta < 0 && this.waiting.length && used < this.limit) this.scheduleWake();
    // At the limit, watch for stalled holders here even if nobody here waits: someone on another thread may.
    if (delta > 0 && used >= this.limit) this.armShedding();
  }

  /** @internal */
  allows(h: BudgetHolder): boolean {
    const used = this.used;
    if (used < this.limit) return true;
    return h.held === 0 && used < this.limit + this.reserve;
  }

  /** @internal */
  wait(h: BudgetHolder): void {
    if (!this.waiting.includes(h)) this.setWaiting([...this.waiting, h]);
    if (this.used < this.limit) this.scheduleWake();
    else this.armShedding();
  }

  /** @internal */
  forget(h: BudgetHolder): void {
    this.holders.delete(h);
    if (this.waiting.includes(h)) this.setWaiting(this.waiting.filter((x) => x !== h));
  }

  /** Wake waiters in the order they started waiting; each re-checks and may wait again (at the back). */
  private scheduleWake(): void {
    if (this.wakeScheduled) return;
    this.wakeScheduled = true;
    setImmediate(() => {
      this.wakeScheduled = false;
      const ws = this.waiting;
      this.setWaiting([]);
      for (const h of ws) h.takeWaiter()?.();
    });
  }

  private armShedding(): void {
    if (this.timer) return;
    const tick = Math.max(20, Math.min(250, this.stallMs >> 2));
    this.timer = setInterval(() => this.shedStalled(), tick);
    this.timer.unref();
  }

  /** While at the limit with someone waiting, shed the largest stalled holder(s). Public for tests with a virtual clock. */
  shedStalled(): void {
    const total = this.used;
    if (total < this.limit) {
      if (this.timer) clearInterval(this.timer);
      this.timer = undefined;
      if (this.waiting.length) this.scheduleWake();
      return;
    }
    // Waiters here may be let through by the reserve once another thread made room.
    if (this.waiting.length) this.scheduleWake();
    if (this.waitingAnywhere === 0) return;
    const now = this.now();
    const stalled = [...this.holders]
      .filter((h) => h.held > 0 && h.hooks.stalled(now, this.stallMs))
      .sort((a, b) => b.held - a.held);
    let used = total;
    for (const h of stalled) {
      if (used < this.limit) break;
      used -= h.held;
      this.stats.shed++;
      // shed() closes the connection; it releases its holder when its work is done.
      try {
        h.hooks.shed();
      } catch {}
      h.release();
    }
  }
}
