/**
 * Auto-converge (sans-IO, the clock as input): when dirty rounds do not
 * converge, ask the source to throttle its application's writes, stepping
 * up like QEMU's auto-converge (cpu-throttle-initial 20 %, increment 10 %,
 * max 99 %, throttle-trigger-threshold 50 %).
 *
 * The target observes each dirty round; every `periodMs` it judges the
 * period just ended. A period does not converge when the predicted
 * stop-and-copy time is still over the limit and either
 *   - the bytes dirtied in the period are at least `triggerPct` % of the
 *     bytes transferred in it (the writer outruns the copy), or
 *   - the prediction did not fall since the previous period.
 * After `highPeriods` such periods in a row (QEMU: 2) the throttle steps
 * up: to `initialPct` the first time, by `incrementPct` after that, capped
 * at `maxPct`. It never steps down during a migration: a throttled writer
 * that converges is finalized soon, and stepping down would only start the
 * race again. Nothing is judged before the first full pass ends (the
 * pre-copy's transfer says nothing about convergence).
 */
import { MAX_THROTTLE_PCT } from '../layers/write-throttle.ts';

export interface AutoConvergeOptions {
  initialPct?: number;
  incrementPct?: number;
  maxPct?: number;
  /** A period is "dirty-rate high" when dirtied >= this % of transferred (QEMU's throttle-trigger-threshold). */
  triggerPct?: number;
  /** Consecutive non-converging periods before a step (QEMU: 2). */
  highPeriods?: number;
  /** Length of a judged period, ms (QEMU syncs the dirty bitmap about once a second). */
  periodMs?: number;
}

export interface RoundObservation {
  now: number;
  /** Cumulative bytes the source reported dirty (invalidated chunks × chunk size). */
  dirtiedBytes: number;
  /** Cumulative bytes pulled from the source. */
  transferredBytes: number;
  /** Predicted stop-and-copy time now, ms. */
  predictedMs: number;
  maxDowntimeMs: number;
  /** The first full pass is done (dirty rounds proper). */
  firstPassDone: boolean;
}

export interface ThrottleStep {
  pct: number;
  /** Why (for logs and --json). */
  why: string;
}

export class AutoConverge {
  readonly initialPct: number;
  readonly incrementPct: number;
  readonly maxPct: number;
  private readonly triggerPct: number;
  private readonly highPeriods: number;
  private readonly periodMs: number;
  private percent = 0;
  private stepCount = 0;
  private high = 0;
  private period: { start: number; dirtied: number; transferred: number; predicted: number } | undefined;
  private lastPredicted = Infinity;

  constructor(o: AutoConvergeOptions = {}) {
    this.initialPct = clampPct(o.initialPct ?? 20);
    this.incrementPct = clampPct(o.incrementPct ?? 10);
    this.maxPct = clampPct(o.maxPct ?? MAX_THROTTLE_PCT);
    this.triggerPct = o.triggerPct ?? 50;
    this.highPeriods = Math.max(1, o.highPeriods ?? 2);
    this.periodMs = o.periodMs ?? 1000;
  }

  /** The throttle asked of the source now, percent. */
  get pct(): number {
    return this.percent;
  }

  /** Steps taken so far. */
  get steps(): number {
    return this.stepCount;
  }

  /** True once the throttle can go no higher (the finalize policy's give-up rules apply from then on). */
  get saturated(): boolean {
    return this.percent >= this.maxPct;
  }

  /** Observe a round; returns a step when the throttle should go up now. */
  observe(o: RoundObservation): ThrottleStep | undefined {
    if (!o.firstPassDone) return undefined;
    if (!this.period) {
      this.period = { start: o.now, dirtied: o.dirtiedBytes, transferred: o.transferredBytes, predicted: o.predictedMs };
      return undefined;
    }
    if (o.now - this.period.start < this.periodMs) return undefined;
    const dirtied = o.dirtiedBytes - this.period.dirtied;
    const transferred = o.transferredBytes - this.period.transferred;
    const over = o.predictedMs > o.maxDowntimeMs;
    const outrun = dirtied > 0 && dirtied * 100 >= this.triggerPct * transferred;
    const notFalling = o.predictedMs >= this.lastPredicted;
    const spanMs = o.now - this.period.start;
    this.lastPredicted = o.predictedMs;
    this.period = { start: o.now, dirtied: o.dirtiedBytes, transferred: o.transferredBytes, predicted: o.predictedMs };
    if (!over || !(outrun || notFalling)) {
      this.high = 0;
      return undefined;
    }
    if (++this.high < this.highPeriods || this.saturated) return undefined;
    this.high = 0;
    const next = this.percent === 0 ? this.initialPct : Math.min(this.maxPct, this.percent + this.incrementPct);
    if (next <= this.percent) return undefined;
    this.percent = next;
    this.stepCount++;
    const mib = (x: number) => `${(x / 1024 / 1024).toFixed(1)} MiB`;
    return {
      pct: next,
      why: `not converging (predicted ${Number.isFinite(o.predictedMs) ? o.predictedMs.toFixed(0) : '∞'} ms > ${o.maxDowntimeMs} ms; ${mib(dirtied)} dirtied vs ${mib(transferred)} copied in ${spanMs.toFixed(0)} ms${notFalling ? ', prediction not falling' : ''}): throttle the writer to ${next} %`,
    };
  }
}

function clampPct(p: number): number {
  if (!Number.isFinite(p)) return 0;
  return Math.max(0, Math.min(MAX_THROTTLE_PCT, Math.round(p)));
}
