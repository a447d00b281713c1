/**
 * RateLimitedLog: at most `burst` lines per `windowMs` pass to the sink; the
 * rest are counted and summed up in one line when the next window opens (or
 * at `flush`). One per client connection, so a client that makes the server
 * refuse a million requests costs a few log lines, not a million.
 */
export interface RateLimitOptions {
  burst?: number;
  windowMs?: number;
  now?: () => number;
}

export class RateLimitedLog {
  private readonly burst: number;
  private readonly windowMs: number;
  private readonly now: () => number;
  private windowStart = -Infinity;
  private inWindow = 0;
  private suppressed = 0;
  private readonly sink: (message: string) => void;

  constructor(sink: (message: string) => void, opts: RateLimitOptions = {}) {
    this.sink = sink;
    this.burst = opts.burst ?? 10;
    this.windowMs = opts.windowMs ?? 10_000;
    this.now = opts.now ?? Date.now;
  }

  get suppressedCount(): number {
    return this.suppressed;
  }

  log(message: string): void {
    const t = this.now();
    if (t - this.windowStart >= this.windowMs) {
      this.flush();
      this.windowStart = t;
      this.inWindow = 0;
    }
    if (this.inWindow < this.burst) {
      this.inWindow++;
      this.sink(message);
    } else this.suppressed++;
  }

  /** Report suppressed lines now (e.g. when the connection ends). */
  flush(): void {
    if (this.suppressed === 0) return;
    const n = this.suppressed;
    this.suppressed = 0;
    this.sink(`(${n} similar message${n === 1 ? '' : 's'} suppressed)`);
  }
}
