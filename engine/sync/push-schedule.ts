/**
 * PushSchedule: when a synced layer pushes its dirty chunks in the
 * background, sans-IO with the clock as input (`nextTimeout`, `due(now)`),
 * so the thresholds are tested on a virtual clock.
 *
 * A push round is due when dirty bytes reach `maxDirtyBytes` (a burst of
 * writes goes out without waiting), or when the oldest unpushed write is
 * `intervalMs` old. An interval of 0 pushes as soon as anything is dirty
 * (write-through in the background); FLUSH does not wait for either: it
 * pushes everything it covers at once.
 */
export interface PushScheduleOptions {
  intervalMs: number;
  maxDirtyBytes: number;
}

export class PushSchedule {
  readonly intervalMs: number;
  readonly maxDirtyBytes: number;
  /** Time the oldest write not yet covered by a push round happened; undefined while clean. */
  private oldest: number | undefined;

  constructor(opts: PushScheduleOptions) {
    if (!(opts.intervalMs >= 0)) throw new RangeError(`push interval must be >= 0, not ${opts.intervalMs}`);
    if (!(opts.maxDirtyBytes > 0)) throw new RangeError(`max dirty bytes must be > 0, not ${opts.maxDirtyBytes}`);
    this.intervalMs = opts.intervalMs;
    this.maxDirtyBytes = opts.maxDirtyBytes;
  }

  /** A chunk became dirty at `now`. */
  dirtied(now: number): void {
    this.oldest ??= now;
  }

  /** A round started at `now` covering everything dirty so far; `stillDirty` says whether anything is left. */
  roundStarted(): void {
    this.oldest = undefined;
  }

  /** Should a round start now? */
  due(now: number, dirtyBytes: number): boolean {
    if (dirtyBytes <= 0) return false;
    if (dirtyBytes >= this.maxDirtyBytes) return true;
    return this.oldest !== undefined && now - this.oldest >= this.intervalMs;
  }

  /** When to look again (absolute time), or undefined when nothing is waiting. */
  nextTimeout(): number | undefined {
    return this.oldest === undefined ? undefined : this.oldest + this.intervalMs;
  }
}
