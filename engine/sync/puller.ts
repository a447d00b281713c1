/**
 * Puller: N background workers that make a synced layer's chunks local in
 * the order a PullOrder gives, skipping chunks that are already local or
 * being fetched (a reader that needs a chunk fetches it itself, first).
 * After the plan it sweeps the rest in index order, then waits for chunks
 * that become remote again (the owner changed them) and pulls those too,
 * so a long-running mount converges to a full local copy.
 *
 * A failed pull (the owner unreachable) is retried with a backoff; the
 * worker never gives up while running — the layer keeps serving what is
 * local meanwhile.
 */
import type { Clock } from './clock.ts';
import { sleep } from './clock.ts';
import type { PlanContext, PullOrder } from './pull-order.ts';

export interface PullTarget {
  readonly chunks: number;
  isRemote(i: number): boolean;
  /** Fetch chunk i in the background (not urgent); resolves when it is local or no longer needed. */
  pullBackground(i: number): Promise<void>;
  /**
   * Optional: fetch the run of chunks first..first+count-1 in one request
   * (fewer round trips: at 25 ms RTT one chunk per request caps a worker at
   * chunkSize / RTT). Chunks of the run that are no longer remote are skipped.
   */
  pullRun?(first: number, count: number): Promise<void>;
  planContext(): PlanContext;
}

export interface PullerOptions {
  workers: number;
  order: PullOrder;
  /** Longest run of adjacent chunks pulled in one request (default 1; needs PullTarget.pullRun). */
  maxRun?: number;
  clock: Clock;
  /** First retry delay after a failure (doubles to `maxBackoffMs`). */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  onError?: (chunk: number, err: unknown) => void;
  /** Called each time no remote chunk is left (the region is fully local). */
  onComplete?: () => void;
}

export class Puller {
  private readonly target: PullTarget;
  private readonly opts: PullerOptions;
  private plan: number[] = [];
  private cursor = 0;
  private sweep = 0;
  private picks = 0;
  private readonly requeued: number[] = [];
  private wake: (() => void) | undefined;
  private running = false;
  private workers: Promise<void>[] = [];
  private active = 0;
  private completeSignalled = false;
  /** Resolves when stop() is called: a worker backing off returns at once (a stop never waits out a backoff). */
  private stopped: Promise<void> = Promise.resolve();
  private signalStop: () => void = () => {};
  failures = 0;

  constructor(target: PullTarget, opts: PullerOptions) {
    this.target = target;
    this.opts = opts;
  }

  get isRunning(): boolean {
    return this.running;
  }

  start(): void {
    if (this.running || this.opts.workers <= 0) return;
    this.running = true;
    this.stopped = new Promise<void>((r) => (this.signalStop = r));
    this.plan = this.opts.order.plan(this.target.planContext());
    this.cursor = 0;
    this.sweep = 0;
    this.workers = [];
    for (let w = 0; w < this.opts.workers; w++) this.workers.push(this.work());
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.signalStop();
    this.notify();
    await Promise.all(this.workers);
  }

  /** Chunk i became remote again: pull it (after the plan). */
  requeue(i: number): void {
    this.requeued.push(i);
    this.completeSignalled = false;
    this.notify();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** The next chunk to pull, or undefined when nothing is remote right now. */
  next(): number | undefined {
    const t = this.target;
    const every = this.opts.order.replanEvery;
    if (every && this.picks > 0 && this.picks % every === 0 && this.cursor < this.plan.length) {
      this.plan = this.opts.order.plan(t.planContext());
      this.cursor = 0;
    }
    while (this.cursor < this.plan.length) {
      const i = this.plan[this.cursor++]!;
      if (t.isRemote(i)) return (this.picks++, i);
    }
    while (this.sweep < t.chunks) {
      const i = this.sweep++;
      if (t.isRemote(i)) return (this.picks++, i);
    }
    while (this.requeued.length > 0) {
      const i = this.requeued.shift()!;
      if (t.isRemote(i)) return (this.picks++, i);
    }
    return undefined;
  }

  /**
   * Extend a pick into a run: while the plan goes on with the adjacent chunk
   * (ascending or descending) and it is remote, take it too. Returns
   * [first, count] ascending.
   */
  private extend(i: number): [number, number] {
    const max = this.target.pullRun ? Math.max(1, this.opts.maxRun ?? 1) : 1;
    let lo = i;
    let hi = i;
    const t = this.target;
    while (hi - lo + 1 < max && this.cursor < this.plan.length) {
      const j = this.plan[this.cursor]!;
      if (j === hi + 1 && lo === i && t.isRemote(j)) hi = j;
      else if (j === lo - 1 && hi === i && t.isRemote(j)) lo = j;
      else break;
      this.cursor++;
      this.picks++;
    }
    // The sweep (index order) extends upward too.
    if (this.cursor >= this.plan.length && hi === i && lo === i) {
      while (hi - lo + 1 < max && this.sweep === hi + 1 && this.sweep < t.chunks && t.isRemote(this.sweep)) hi = this.sweep++;
    }
    return [lo, hi - lo + 1];
  }

  /**
   * What one worker pulls at once: the run starting at pick i and, when the
   * order jumps about (a learned trace, volatility: runs of one chunk), more
   * picks until as many chunks are in flight as one run would carry. Without
   * this a scattered order moves one chunk per worker per round trip: 8
   * workers × 64 KiB at 50 ms RTT is 10 MB/s where a sequential pull of runs
   * fills the link, and a learned order lost to sequential
   * (bench/RESULTS.md, managed, third stop).
   */
  private gather(i: number): Array<[number, number]> {
    const max = this.target.pullRun ? Math.max(1, this.opts.maxRun ?? 1) : 1;
    const picks: Array<[number, number]> = [this.extend(i)];
    let chunks = picks[0]![1];
    while (chunks < max) {
      const j = this.next();
      if (j === undefined) break;
      const run = this.extend(j);
      picks.push(run);
      chunks += run[1];
    }
    return picks;
  }

  private async work(): Promise<void> {
    const min = this.opts.minBackoffMs ?? 100;
    const max = this.opts.maxBackoffMs ?? 5_000;
    let backoff = min;
    while (this.running) {
      const i = this.next();
      if (i === undefined) {
        if (this.active === 0 && !this.completeSignalled) {
          this.completeSignalled = true;
          this.opts.onComplete?.();
        }
        await new Promise<void>((r) => (this.wake = chain(this.wake, r)));
        continue;
      }
      this.active++;
      const picks = this.gather(i);
      try {
        const pull = Promise.all(picks.map(([first, count]) => (count > 1 ? this.target.pullRun!(first, count) : this.target.pullBackground(first))));
        // A stop does not wait for a pull stuck on an unreachable owner; its outcome no longer matters.
        pull.catch(() => {});
        await Promise.race([pull, this.stopped]);
        backoff = min;
      } catch (e) {
        this.failures++;
        this.opts.onError?.(i, e);
        for (const [first, count] of picks) for (let k = 0; k < count; k++) this.requeued.push(first + k);
        await Promise.race([sleep(this.opts.clock, backoff), this.stopped]);
        backoff = Math.min(max, backoff * 2);
      } finally {
        this.active--;
      }
      // Workers that went idle while this pull ran may now be needed (or the region is complete).
      if (this.active === 0) this.notify();
    }
  }
}

function chain(prev: (() => void) | undefined, next: () => void): () => void {
  return prev ? () => (prev(), next()) : next;
}
