/**
 * When a migration target finalizes (sans-IO): `--finalize now` at once
 * after the first pass, `after:DUR` once that long has passed since the
 * start, `auto` once the predicted stop-and-copy time — the bytes still
 * to pull after suspending, at the throughput measured so far, plus one
 * round trip for the final dirty list and one for the handover — is under
 * `--max-downtime`. Auto also finalizes when the dirty rate will never let
 * the prediction fall under the limit, and says so: after `maxRounds`
 * dirty rounds — rounds after the first full pass, not the pre-copy's
 * (a long pre-copy of a large region must not count as not converging) —
 * at a round whose pending bytes are near the least seen in the dirty
 * rounds (not at a peak of the writer), and after twice `maxRounds` in any
 * case. The downtime is then the best it can do, not the target.
 */
export type FinalizeMode = { kind: 'auto' } | { kind: 'now' } | { kind: 'after'; ms: number };

export interface FinalizeInput {
  now: number;
  startedAt: number;
  /** Bytes that would have to be pulled during the stop (remote + being fetched). */
  pendingBytes: number;
  /** Measured pull throughput, bytes per ms (0: not known yet). */
  bytesPerMs: number;
  /** Measured round trip to the source, ms. */
  rttMs: number;
  /** Dirty rounds done (after the first full pass). */
  rounds: number;
  /** Least `pendingBytes` seen in the dirty rounds so far (absent: no give-up timing by it). */
  minPendingBytes?: number;
}

export interface FinalizeDecision {
  finalize: boolean;
  predictedMs: number;
  why: string;
}

export function predictStopCopyMs(i: FinalizeInput): number {
  const transfer = i.pendingBytes === 0 ? 0 : i.bytesPerMs > 0 ? i.pendingBytes / i.bytesPerMs : Infinity;
  return transfer + 2 * i.rttMs;
}

export function decideFinalize(mode: FinalizeMode, maxDowntimeMs: number, i: FinalizeInput, maxRounds = 30): FinalizeDecision {
  const predictedMs = predictStopCopyMs(i);
  switch (mode.kind) {
    case 'now':
      return { finalize: true, predictedMs, why: '--finalize now' };
    case 'after':
      return i.now - i.startedAt >= mode.ms ? { finalize: true, predictedMs, why: `--finalize after ${mode.ms} ms` } : { finalize: false, predictedMs, why: 'waiting' };
    case 'auto':
      if (predictedMs <= maxDowntimeMs) return { finalize: true, predictedMs, why: `predicted stop-and-copy ${predictedMs.toFixed(1)} ms <= ${maxDowntimeMs} ms` };
      if (i.rounds >= maxRounds) {
        const nearBest = i.minPendingBytes === undefined || i.pendingBytes <= i.minPendingBytes * 1.25;
        if (nearBest || i.rounds >= 2 * maxRounds) {
          return { finalize: true, predictedMs, why: `still ${predictedMs.toFixed(1)} ms after ${i.rounds} dirty rounds: the region changes faster than it can be copied; finalizing anyway` };
        }
      }
      return { finalize: false, predictedMs, why: 'waiting' };
  }
}
