/**
 * The one range splitter: a request larger than what the other side takes
 * at once (an NBD server's maximum block, a negotiated frame) becomes
 * pieces issued concurrently, and the call settles only once every piece
 * has. All-settled, not Promise.all: when one piece fails, the others may
 * still be writing into the caller's buffer; rejecting before they finish
 * would hand the buffer back while it is still being written (the
 * ReadWriterAt contract says a store owns the buffer until it settles).
 */

/** Wait for every job, then throw the first failure (in issue order), if any. */
export async function settleAll(jobs: readonly Promise<unknown>[]): Promise<void> {
  if (jobs.length === 1) {
    await jobs[0];
    return;
  }
  const results = await Promise.allSettled(jobs);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/**
 * Run `piece(at, length, last)` for consecutive pieces of at most `max`
 * bytes covering [0, length) (`at` relative to the start of the range;
 * `last` marks the final piece), concurrently, all-settled. A range of
 * length 0 is one call with length 0.
 */
export function splitRange(length: number, max: number, piece: (at: number, length: number, last: boolean) => Promise<void>): Promise<void> {
  if (!(max > 0)) throw new RangeError(`piece size must be positive, not ${max}`);
  if (length <= max) return piece(0, length, true);
  const jobs: Promise<void>[] = [];
  for (let at = 0; at < length; at += max) {
    const n = Math.min(max, length - at);
    jobs.push(piece(at, n, at + n >= length));
  }
  return settleAll(jobs);
}
