/**
 * The one deadline helper: race a promise against a time limit and fail
 * with a typed ETIMEDOUT error naming what took too long. The timer never
 * keeps the process alive and is cleared as soon as the work settles.
 * `onTimeout` lets the caller abandon the work (destroy a socket, reset a
 * stream) when the deadline passes.
 */
import { QuicmapError } from './errors.ts';
import { systemClock, type Clock } from './clock.ts';

export class DeadlineError extends QuicmapError {
  constructor(what: string, ms: number) {
    super('ETIMEDOUT', `${what} did not finish within ${ms} ms`);
  }
}

export interface DeadlineOptions<T = unknown> {
  /** Called once when the deadline passes, before the returned promise rejects. */
  onTimeout?: (err: QuicmapError) => void;
  /** The error to reject with (default DeadlineError naming `what`). */
  error?: () => QuicmapError;
  /** A value that arrives after the deadline: release it (close the connection that came too late). */
  late?: (value: T) => void;
  clock?: Clock;
}

export function withDeadline<T>(work: Promise<T>, ms: number, what: string, opts: DeadlineOptions<T> = {}): Promise<T> {
  const clock = opts.clock ?? systemClock;
  return new Promise<T>((resolve, reject) => {
    let done = false;
    const cancel = clock.schedule(clock.now() + ms, () => {
      if (done) return;
      done = true;
      const err = opts.error?.() ?? new DeadlineError(what, ms);
      opts.onTimeout?.(err);
      reject(err);
    });
    work.then(
      (v) => {
        if (done) return opts.late?.(v);
        done = true;
        cancel();
        resolve(v);
      },
      (e: unknown) => {
        if (done) return;
        done = true;
        cancel();
        reject(e);
      },
    );
  });
}
