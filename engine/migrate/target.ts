/**
 * The migration target's orchestrator: transport-agnostic (it drives a
 * SyncedLayer and a MigrationControl; p2p/ implements the control over the
 * wire), with the clock as an input. Phases:
 *
 *   track      the source's change feed has a base version (the synced
 *              layer's source was opened with it): every later change at
 *              the source will be reported
 *   precopy    the puller copies the region while the application keeps
 *              running at the source
 *   rounds     dirty rounds: ask the feed what changed (invalidate, re-pull)
 *              until the predicted stop-and-copy time is under the limit
 *              (FinalizePolicy)
 *   converge   (during rounds) when they do not converge, the source is
 *              asked to throttle its application's writes, stepping up
 *              (engine/migrate/auto-converge.ts)
 *   suspend    the source runs --on-suspend, closes writes and flushes; its
 *              answer carries the final dirty list (one round trip)
 *   final-sync the final dirty list (a separate round trip only when the
 *              source's answer did not carry it)
 *   final-pull every chunk still missing, all at once with many requests in
 *              flight (skipped with post-copy: missing chunks are faulted
 *              in on demand after resume)
 *   handover   two-phase commit of ownership (engine/migrate/ownership.ts)
 *   resumed    the target is the owner: writes open, --on-resume ran
 *
 * Downtime is measured from the start of suspend to the moment the
 * target accepts writes.
 */
import { QuicmapError, errorCode } from '../../base/errors.ts';
import type { SyncedLayer } from '../layers/synced.ts';
import { sleep, systemClock, type Clock } from '../sync/clock.ts';
import type { ThrottleStats } from '../layers/write-throttle.ts';
import { AutoConverge, type AutoConvergeOptions } from './auto-converge.ts';
import { decideFinalize, type FinalizeMode } from './finalize-policy.ts';

export interface MigrationControl {
  /** One round trip to the source, in ms. */
  rtt(): Promise<number>;
  /** Ask the source's change feed now; changed chunks are invalidated in the synced layer. Returns how many. */
  syncDirty(): Promise<number>;
  /**
   * Prepare: resolves once the source is suspended and its region will not
   * change any more. `{finalDirty}`: the final dirty list came with the
   * answer and is applied (no separate final sync needed).
   */
  suspend(): Promise<void | { finalDirty: number; throttle?: ThrottleStats }>;
  /**
   * Optional (auto-converge): throttle the source's application writes to
   * `pct` % (0: off) for `leaseMs` (then the source lifts it by itself: a
   * target that died does not leave the application slowed). Returns the
   * source's throttle counters. ENOTSUP: the source cannot.
   */
  throttle?(pct: number, leaseMs: number): Promise<ThrottleStats>;
  /** Commit the handover; once this resolves the target is the owner. Idempotent. */
  commit(): Promise<void>;
  /** Give up a prepared handover (the source is the owner again). Best effort. */
  abort(): Promise<void>;
}

export type MigrationPhase = 'track' | 'precopy' | 'rounds' | 'converge' | 'suspend' | 'final-sync' | 'final-pull' | 'handover' | 'resumed' | 'complete' | 'failed';

export interface MigrationOptions {
  synced: SyncedLayer;
  control: MigrationControl;
  finalize: FinalizeMode;
  maxDowntimeMs: number;
  postCopy?: boolean;
  clock?: Clock;
  /** Time between dirty rounds (default 100 ms). */
  roundMs?: number;
  /** The source counts as lost after failing this long (default 5 000 ms). */
  sourceLostMs?: number;
  /** Auto-converge (default on when the control can throttle); false: never throttle the source. */
  converge?: AutoConvergeOptions | false;
  /** How long each throttle request holds at the source unless renewed (default 10 000 ms; renewed every quarter of it). */
  throttleLeaseMs?: number;
  /** Requests in flight in the final pull (default 32). */
  finalPullConcurrency?: number;
  /** Open writes on the target. Called once, after the handover; the downtime ends when it returns. */
  resume: () => Promise<void>;
  /** After resume (not counted as downtime): run --on-resume. */
  afterResume?: () => Promise<void>;
  onPhase?: (phase: MigrationPhase, detail: Record<string, unknown>) => void;
}

export interface MigrationResult {
  downtimeMs: number;
  totalMs: number;
  /** Bytes pulled from the source. */
  bytes: number;
  /** Rounds of asking the source's change feed, pre-copy included. */
  rounds: number;
  /** Of those, the rounds after the first full pass (the dirty rounds proper). */
  dirtyRounds: number;
  predictedMs: number;
  postCopy: boolean;
  why: string;
  /** Where the downtime went, ms: suspend (the source's answer), final sync, final pull, handover, resume. */
  stopMs: { suspend: number; finalSync: number; finalPull: number; handover: number; resume: number };
  /** Chunks pulled during the stop. */
  finalChunks: number;
  /** Auto-converge: the throttle asked at the end, steps taken, and the source's counters (delayed writes). */
  throttle: { pct: number; steps: number; delayedWrites: number; delayedMs: number; supported: boolean };
}

/** Who owns the region after a failed migration, for the message the survivor prints. */
export class MigrationError extends QuicmapError {
  readonly owner: 'source' | 'target' | 'unknown';
  readonly phase: MigrationPhase;
  constructor(phase: MigrationPhase, owner: 'source' | 'target' | 'unknown', message: string, cause?: unknown) {
    super(errorCode(cause) === 'EBUSY' ? 'EBUSY' : 'EIO', message, { cause });
    this.phase = phase;
    this.owner = owner;
  }
}

export async function runMigration(o: MigrationOptions): Promise<MigrationResult> {
  const clock = o.clock ?? systemClock;
  const synced = o.synced;
  const phase = (p: MigrationPhase, d: Record<string, unknown> = {}) => o.onPhase?.(p, d);
  const startedAt = clock.now();
  const cs = synced.chunkSize;
  phase('track');
  await synced.start();
  phase('precopy', { chunks: synced.states.count });

  // ---- pre-copy and dirty rounds (the source is unaffected by anything failing here) ----
  let rounds = 0;
  /** Rounds after the first full pass (what the give-up rule counts), and the least pending seen in them. */
  let dirtyRounds = 0;
  let minPending = Infinity;
  let lastBytes = synced.progress().pulledBytes;
  let lastBusy = synced.progress().pullBusyMs;
  let bytesPerMs = 0;
  const converge = o.converge !== false && o.control.throttle ? new AutoConverge(o.converge || {}) : undefined;
  let throttleSupported = converge !== undefined;
  let throttleStats: ThrottleStats = { pct: 0, delayedWrites: 0, delayedMs: 0 };
  let throttleAskedAt = -Infinity;
  /**
   * With auto-converge the give-up rule counts stalled rounds: rounds, once the throttle can go no
   * higher, in which the pending bytes made no new low (5 % under the least seen since the last
   * step). A pending set that still shrinks, however slowly, is converging: it is waited for.
   */
  let stalledRounds = 0;
  let progressMin = Infinity;
  let lastSteps = 0;
  const leaseMs = o.throttleLeaseMs ?? 10_000;
  let rtt = 0;
  let failingSince: number | undefined;
  let decision = { finalize: false, predictedMs: Infinity, why: '' };
  // Sticky: the first pass is done once every chunk was local at some moment, or as many bytes as
  // the region has were pulled (a busy writer may keep some chunk remote at every single check).
  let firstPass = false;
  for (;;) {
    try {
      rtt = await o.control.rtt();
      const dirty = await o.control.syncDirty();
      failingSince = undefined;
      rounds++;
      const p = synced.progress();
      const now = clock.now();
      // The copy rate while copying (bytes per busy ms): when the puller keeps up with the writer it is
      // idle most of a round, and bytes per wall-clock ms would only measure the writer.
      const busy = p.pullBusyMs - lastBusy;
      if (busy > 0 && p.pulledBytes > lastBytes) {
        const rate = (p.pulledBytes - lastBytes) / busy;
        bytesPerMs = bytesPerMs === 0 ? rate : 0.7 * bytesPerMs + 0.3 * rate;
      }
      lastBytes = p.pulledBytes;
      lastBusy = p.pullBusyMs;
      firstPass ||= p.remote + p.fetching === 0 || p.pulledBytes >= p.size;
      const firstPassDone = firstPass || o.postCopy === true;
      const pendingBytes = o.postCopy ? 0 : (p.remote + p.fetching) * cs;
      const saturated = !converge || !throttleSupported || converge.saturated;
      if (firstPassDone) {
        dirtyRounds++;
        if (converge && converge.steps !== lastSteps) {
          lastSteps = converge.steps;
          progressMin = Infinity;
        }
        const newLow = pendingBytes < progressMin * 0.95;
        progressMin = Math.min(progressMin, pendingBytes);
        if (saturated) stalledRounds = newLow ? 0 : stalledRounds + 1;
        minPending = Math.min(minPending, pendingBytes);
      }
      decision = decideFinalize(o.finalize, o.maxDowntimeMs, {
        now,
        startedAt,
        pendingBytes,
        bytesPerMs,
        rttMs: rtt,
        // While the throttle can still go up, not converging is not final: the give-up rule waits for it.
        rounds: converge && throttleSupported ? stalledRounds : dirtyRounds,
        ...(dirtyRounds > 0 ? { minPendingBytes: minPending } : {}),
      });
      phase('rounds', { round: rounds, dirty, local: p.local, chunks: p.chunks, predictedMs: decision.predictedMs, throttlePct: converge?.pct ?? 0 });
      if (decision.finalize && (firstPassDone || o.finalize.kind !== 'auto')) break;
      if (converge && throttleSupported && o.control.throttle) {
        const step = converge.observe({
          now,
          dirtiedBytes: p.invalidations * cs,
          transferredBytes: p.pulledBytes,
          predictedMs: decision.predictedMs,
          maxDowntimeMs: o.maxDowntimeMs,
          firstPassDone,
        });
        if (step) phase('converge', { throttlePct: step.pct, why: step.why });
        // Ask on a step, and renew the lease well before it runs out.
        if (step || (converge.pct > 0 && now - throttleAskedAt >= leaseMs / 4)) {
          try {
            throttleStats = await o.control.throttle(converge.pct, leaseMs);
            throttleAskedAt = now;
          } catch (e) {
            if (errorCode(e) === 'ENOTSUP') {
              throttleSupported = false;
              phase('converge', { throttlePct: 0, why: `the source cannot throttle its writer (${(e as Error).message}); rounds go on without auto-converge` });
            }
          }
        }
      }
    } catch (e) {
      failingSince ??= clock.now();
      if (clock.now() - failingSince >= (o.sourceLostMs ?? 5_000)) {
        phase('failed', { error: (e as Error).message });
        throw new MigrationError('precopy', 'source', `the source is unreachable during pre-copy (${(e as Error).message}); nothing was handed over: the source still owns the region`, e);
      }
    }
    await sleep(clock, o.roundMs ?? 100);
  }

  // ---- finalize ----
  const suspendAt = clock.now();
  phase('suspend', { why: decision.why, predictedMs: decision.predictedMs });
  let suspended: void | { finalDirty: number; throttle?: ThrottleStats };
  try {
    suspended = await o.control.suspend();
    if (suspended?.throttle) throttleStats = suspended.throttle;
  } catch (e) {
    phase('failed', { error: (e as Error).message });
    if (errorCode(e) === 'EBUSY') throw new MigrationError('suspend', 'unknown', `the source refused to finalize: ${(e as Error).message}`, e);
    throw new MigrationError('suspend', 'source', `the source did not suspend (${(e as Error).message}); the source still owns the region`, e);
  }
  const failBeforeCommit = async (p: MigrationPhase, e: unknown): Promise<never> => {
    await o.control.abort().catch(() => {});
    phase('failed', { error: (e as Error).message });
    throw new MigrationError(p, 'source', `the source failed during finalize (${(e as Error).message}); the handover did not happen: the source owns the region`, e);
  };
  const suspendedAt = clock.now();
  try {
    phase('final-sync', suspended ? { chunks: suspended.finalDirty, withSuspend: true } : {});
    if (!suspended) await o.control.syncDirty();
  } catch (e) {
    await failBeforeCommit('final-sync', e);
  }
  const syncedAt = clock.now();
  const finalChunks = synced.progress().remote + synced.progress().fetching;
  if (!o.postCopy) {
    phase('final-pull', { chunks: finalChunks });
    try {
      await synced.pullRemote(o.finalPullConcurrency ?? 32);
      await waitComplete(synced, clock, o.sourceLostMs ?? 5_000);
    } catch (e) {
      await failBeforeCommit('final-pull', e);
    }
  }
  const pulledAt = clock.now();
  phase('handover');
  let committed = false;
  let lastErr: unknown;
  for (let attempt = 0; attempt < 5 && !committed; attempt++) {
    try {
      await o.control.commit();
      committed = true;
    } catch (e) {
      lastErr = e;
      if (errorCode(e) === 'EBUSY' || errorCode(e) === 'EACCES') break; // the prepare timed out or another target holds it
      await sleep(clock, 200);
    }
  }
  if (!committed) {
    phase('failed', { error: (lastErr as Error).message });
    throw new MigrationError('handover', 'source', `the handover was not confirmed (${(lastErr as Error).message}); the target does not resume: the source owns the region`, lastErr);
  }
  synced.becomeOwner();
  const committedAt = clock.now();
  await o.resume();
  const servingAt = clock.now();
  phase('resumed', { downtimeMs: servingAt - suspendAt });
  await o.afterResume?.();
  if (o.postCopy) {
    await synced.whenComplete();
    phase('complete');
  }
  return {
    downtimeMs: servingAt - suspendAt,
    totalMs: clock.now() - startedAt,
    bytes: synced.progress().pulledBytes,
    rounds,
    dirtyRounds,
    predictedMs: decision.predictedMs,
    postCopy: o.postCopy === true,
    why: decision.why,
    stopMs: { suspend: suspendedAt - suspendAt, finalSync: syncedAt - suspendedAt, finalPull: pulledAt - syncedAt, handover: committedAt - pulledAt, resume: servingAt - committedAt },
    finalChunks: o.postCopy ? 0 : finalChunks,
    throttle: { pct: converge?.pct ?? 0, steps: converge?.steps ?? 0, delayedWrites: throttleStats.delayedWrites, delayedMs: throttleStats.delayedMs, supported: throttleSupported },
  };
}

/** Every chunk local, or an error once pulls have made no progress for `stallMs`. */
async function waitComplete(synced: SyncedLayer, clock: Clock, stallMs: number): Promise<void> {
  let last = synced.progress().local;
  let lastMove = clock.now();
  let done = false;
  const complete = synced.whenComplete().then(() => (done = true));
  while (!done) {
    await Promise.race([complete, sleep(clock, 50)]);
    const p = synced.progress();
    if (p.local !== last) {
      last = p.local;
      lastMove = clock.now();
    } else if (!done && clock.now() - lastMove > stallMs) {
      throw new QuicmapError('EIO', `no chunk arrived for ${stallMs} ms (${p.remote + p.fetching} still missing)`);
    }
  }
}
