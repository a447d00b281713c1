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

export interface DeadlineOptions {
  /** Called once when the deadline passes, before the returned promise rejects. */
  onTimeout?: (err: QuicmapError) => void;
  /** The error to reject with (default DeadlineError naming `what`). */
  error?: () => QuicmapError;
  clock?: Clock;
}

export function withDeadline<T>(work: Promise<T>, ms: number, what: string, opts: DeadlineOptions = {}): Promise<T> {
  const clock = opts.clock ?? systemClock;
  let cancel: (() => void) | undefined;
  const timeout = new Promise<never>((_, reject) => {
    cancel = clock.schedule(clock.now() + ms, () => {
      const err = opts.error?.() ?? new DeadlineError(what, ms);
      opts.onTimeout?.(err);
      reject(err);
    });
  });
  return Promise.race([work, timeout]).finally(() => cancel?.());
}
