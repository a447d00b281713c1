/**
 * WriteThrottle: slows the application's writes at a migration source so
 * that dirty rounds converge (auto-converge, as QEMU's cpu-throttle does for
 * vCPUs). At `pct` percent the write path runs in cycles: open for one
 * timeslice (10 ms), then closed for pct / (100 - pct) timeslices — at 50 %
 * open 10 ms of every 20, at 99 % 10 ms of every second. A write arriving
 * while closed waits for the next open slice, so an application that waits
 * for its writes (a VM, a database) dirties at most about (100 - pct) % of
 * what it would unthrottled. Writes already admitted are never delayed;
 * reads always pass.
 *
 * The schedule is sans-IO (`delayMs(now)`); `wrap(store)` is the thin
 * adapter that waits on the clock. Put it above the WriteGate: a write
 * waiting here is not "in the store", so closing the gate for a handover
 * never waits out a throttle cycle (the write then meets the closed gate and
 * is refused, unacknowledged).
 */
import { QuicmapError } from '../../base/errors.ts';
import { systemClock, type Clock } from '../../base/clock.ts';
import type { ReadWriterAt } from '../rwat.ts';
import { WriteAdmissionLayer } from './write-admission.ts';

/** QEMU's CPU_THROTTLE_TIMESLICE_NS: the open part of every cycle. */
export const THROTTLE_TIMESLICE_MS = 10;
/** Highest throttle (QEMU's cpu-throttle max is 99 as well): the writer is never stopped outright. */
export const MAX_THROTTLE_PCT = 99;

export interface ThrottleStats {
  /** Current throttle, percent (0: off). */
  pct: number;
  /** Writes that had to wait, and the total of their waits. */
  delayedWrites: number;
  delayedMs: number;
}

export class WriteThrottle {
  private percent = 0;
  private cycleStart = 0;
  private readonly clock: Clock;
  private readonly sliceMs: number;
  private delayed = 0;
  private delayedTotal = 0;
  private readonly waiters = new Set<() => void>();

  constructor(opts: { clock?: Clock; sliceMs?: number } = {}) {
    this.clock = opts.clock ?? systemClock;
    this.sliceMs = opts.sliceMs ?? THROTTLE_TIMESLICE_MS;
  }

  get pct(): number {
    return this.percent;
  }

  /** Set the throttle (0 turns it off and releases every waiting write). */
  set(pct: number, now = this.clock.now()): void {
    if (!Number.isFinite(pct) || pct < 0 || pct > MAX_THROTTLE_PCT) throw new QuicmapError('EINVAL', `throttle must be 0 to ${MAX_THROTTLE_PCT} %, not ${pct}`);
    if (pct === this.percent) return;
    this.percent = pct;
    this.cycleStart = now;
    // Waiting writes re-check against the new schedule.
    for (const w of [...this.waiters]) w();
  }

  /** Length of one open + closed cycle at the current throttle, ms. */
  get cycleMs(): number {
    return this.percent === 0 ? this.sliceMs : (this.sliceMs * 100) / (100 - this.percent);
  }

  /** How long a write arriving at `now` waits (0: it passes now). Sans-IO. */
  delayMs(now: number): number {
    if (this.percent === 0) return 0;
    const cycle = this.cycleMs;
    const into = (((now - this.cycleStart) % cycle) + cycle) % cycle;
    return into < this.sliceMs ? 0 : cycle - into;
  }

  stats(): ThrottleStats {
    return { pct: this.percent, delayedWrites: this.delayed, delayedMs: this.delayedTotal };
  }

  /** Wait until the schedule lets a write through. */
  async pass(): Promise<void> {
    let d = this.delayMs(this.clock.now());
    if (d === 0) return;
    const from = this.clock.now();
    this.delayed++;
    while (d > 0) {
      await new Promise<void>((resolve) => {
        const wake = () => {
          this.waiters.delete(wake);
          cancel();
          resolve();
        };
        const cancel = this.clock.schedule(this.clock.now() + d, wake);
        this.waiters.add(wake);
      });
      d = this.delayMs(this.clock.now());
    }
    this.delayedTotal += this.clock.now() - from;
  }

  wrap(store: ReadWriterAt): ReadWriterAt {
    return new WriteAdmissionLayer(store, (fn) => this.pass().then(fn));
  }
}
