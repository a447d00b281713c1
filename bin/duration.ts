/** Durations with millisecond precision for flags like --push-interval 250ms, --max-downtime 50ms, --finalize after:30s. */
import { UsageError } from './command.ts';

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** "250ms", "2s", "1.5m", "0" → milliseconds; `what` names the command and flag for the error. */
export function parseDurationMs(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/i.exec(text);
  if (!m) throw new UsageError(`${what}: not a duration: "${text}" (try 250ms, 2s, 1m)`);
  return Math.round(Number(m[1]) * UNIT_MS[(m[2] ?? 's').toLowerCase()]!);
}
