/**
 * The sync loops take the project's clock (base/clock.ts) as input, so pull
 * and push timing is tested on its VirtualClock instead of sleeps. Two
 * helpers on top of it: `sleep` (a promise for a delay on any Clock) and
 * `settle` (let several turns of promise callbacks run, for tests).
 */
import { turn, type Clock } from '../../base/clock.ts';

export { systemClock, VirtualClock, type Clock } from '../../base/clock.ts';

export function sleep(clock: Clock, ms: number): Promise<void> {
  return new Promise((r) => clock.schedule(clock.now() + ms, r));
}

/** Let queued promise callbacks and immediates run, `rounds` turns. */
export async function settle(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) await turn();
}
