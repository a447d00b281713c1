/**
 * LinkSupervisor: the life of a RemoteRegion's link to its sharer, sans-IO.
 * It decides when to dial, when to ping, when a silent link is dead and when
 * to give up; the facade (region.ts) performs those actions and reports back
 * what happened. Time is an input: `handleTimeout(now)` at `nextTimeout()`.
 *
 * - Liveness: while requests are pending, silence for `livenessMs/2` sends
 *   a PING and silence for `livenessMs` declares the link dead. Silence
 *   counts from the later of the last arrival and the first send after it:
 *   a link that was quiet (idle) gets the full limit to answer a new
 *   request, so only a peer that leaves something it was sent unanswered
 *   for `livenessMs` is dead. This catches
 *   a sharer that vanished without closing (SIGKILL under QUIC sends no
 *   close) much sooner than the transport's idle timeout would. An idle link
 *   pings after `idlePingMs` of silence, so a dead link is found (and
 *   replaced) before the next request needs it.
 * - Reconnect: a lost link is redialled at once, then with exponential
 *   backoff from `minBackoffMs` to `maxBackoffMs`.
 * - Final errors: a refusal on reconnect (grant expired, region gone), or a
 *   sharer whose region is no longer the one first mounted — another size,
 *   chunk size, read-only state or store capabilities, or smaller limits —
 *   ends the mount with a typed error instead of retrying forever.
 */
import { QuicmapError } from '../../base/errors.ts';
import type { Manifest } from '../protocol/manifest.ts';
import type { Limits } from '../protocol/messages.ts';
import { isRefusal } from './link.ts';

export interface SupervisorTiming {
  livenessMs: number;
  idlePingMs: number;
  minBackoffMs: number;
  maxBackoffMs: number;
}

/** What a session with the sharer offers: compared on every reconnect. */
export interface SessionFacts {
  manifest: Manifest;
  limits: Limits;
  caps: ReadonlySet<string>;
}

/** The sharer came back with a region that is not the one mounted. */
export class RegionChangedError extends QuicmapError {
  readonly changes: string[];
  constructor(changes: string[]) {
    super('EIO', `the shared region changed (${changes.join('; ')}); remount it`);
    this.changes = changes;
  }
}

/** What changed between the session first mounted and a new one; empty if it is the same region. */
export function regionChanges(first: SessionFacts, next: SessionFacts): string[] {
  const a = first.manifest;
  const b = next.manifest;
  const out: string[] = [];
  if (a.size !== b.size) out.push(`changed size: ${a.size} → ${b.size} bytes`);
  if (a.chunkSize !== b.chunkSize) out.push(`chunk size ${a.chunkSize} → ${b.chunkSize}`);
  if (a.readOnly !== b.readOnly) out.push(b.readOnly ? 'now read-only' : 'no longer read-only');
  const flag = (name: string, x: boolean, y: boolean) => {
    if (x !== y) out.push(`${name} ${x} → ${y}`);
  };
  flag('canTrim', a.canTrim, b.canTrim);
  flag('fastZero', a.fastZero, b.fastZero);
  flag('multiConn', a.multiConn, b.multiConn);
  flag('trim offered', first.caps.has('trim'), next.caps.has('trim'));
  if (first.caps.has('large-call') && !next.caps.has('large-call')) out.push('large calls no longer offered');
  if (a.preferredBlockSize !== b.preferredBlockSize) out.push(`preferred block size ${a.preferredBlockSize} → ${b.preferredBlockSize}`);
  if (next.limits.maxFrame < first.limits.maxFrame) out.push(`max frame ${first.limits.maxFrame} → ${next.limits.maxFrame}`);
  if (next.limits.maxInFlight < first.limits.maxInFlight) out.push(`max in flight ${first.limits.maxInFlight} → ${next.limits.maxInFlight}`);
  return out;
}

export type SupervisorAction =
  | { kind: 'dial' }
  | { kind: 'ping' }
  | { kind: 'kill'; reason: QuicmapError };

type State = 'up' | 'dialing' | 'backoff' | 'failed' | 'closed';

export class LinkSupervisor {
  private readonly timing: SupervisorTiming;
  private readonly first: SessionFacts;
  private stateName: State = 'up';
  private lastReceived: number;
  /** The first send since the last arrival (undefined: nothing sent since). */
  private awaitingSince: number | undefined;
  private lastPing = -Infinity;
  private retryAt = 0;
  private delay: number;
  private finalError: QuicmapError | undefined;

  /** Start with the link `first` up since `now`. */
  constructor(timing: SupervisorTiming, first: SessionFacts, now: number) {
    this.timing = timing;
    this.first = first;
    this.lastReceived = now;
    this.delay = timing.minBackoffMs;
  }

  get state(): State {
    return this.stateName;
  }

  /** The error that ended the mount, once there is one. */
  get failure(): QuicmapError | undefined {
    return this.finalError;
  }

  /** Anything arrived on the link. */
  received(now: number): void {
    this.lastReceived = now;
    this.awaitingSince = undefined;
  }

  /** A request (or ping) went out on the link: the peer owes an answer from now on. */
  sent(now: number): void {
    this.awaitingSince ??= now;
  }

  /** Where silence counts from: the peer cannot be late before it was asked anything. */
  private silentSince(): number {
    return this.awaitingSince ?? this.lastReceived;
  }

  /** A ping went out. */
  pinged(now: number): void {
    this.lastPing = now;
  }

  /** The link died: dial again at once. */
  linkDown(): SupervisorAction | undefined {
    if (this.stateName !== 'up') return undefined;
    this.stateName = 'dialing';
    return { kind: 'dial' };
  }

  /**
   * A dial came back with a session. Returns the error that ends the mount
   * if the region is not the one first mounted (the caller closes the link);
   * otherwise the link is up.
   */
  linkUp(now: number, facts: SessionFacts): QuicmapError | undefined {
    if (this.stateName !== 'dialing') return undefined;
    const changes = regionChanges(this.first, facts);
    if (changes.length) return this.fail(new RegionChangedError(changes));
    this.stateName = 'up';
    this.lastReceived = now;
    this.awaitingSince = undefined;
    this.lastPing = -Infinity;
    this.delay = this.timing.minBackoffMs;
    return undefined;
  }

  /** A dial failed: a refusal is final (returned), anything else retries after the backoff. */
  dialFailed(now: number, err: unknown): QuicmapError | undefined {
    if (this.stateName !== 'dialing') return undefined;
    const code = err instanceof QuicmapError ? err.code : 'EIO';
    if (isRefusal(code)) return this.fail(err as QuicmapError);
    this.stateName = 'backoff';
    this.retryAt = now + this.delay;
    this.delay = Math.min(this.delay * 2, this.timing.maxBackoffMs);
    return undefined;
  }

  close(): void {
    this.stateName = 'closed';
  }

  /** When `handleTimeout` must next run, given whether requests are pending. */
  nextTimeout(busy: boolean): number | undefined {
    switch (this.stateName) {
      case 'backoff':
        return this.retryAt;
      case 'up': {
        const t = this.timing;
        if (!busy) return Math.max(this.lastReceived, this.lastPing) + t.idlePingMs;
        const since = this.silentSince();
        const ping = Math.max(since + t.livenessMs / 2, this.lastPing + t.livenessMs / 4);
        return Math.min(ping, since + t.livenessMs);
      }
      default:
        return undefined;
    }
  }

  handleTimeout(now: number, busy: boolean): SupervisorAction | undefined {
    const t = this.timing;
    if (this.stateName === 'backoff') {
      if (now < this.retryAt) return undefined;
      this.stateName = 'dialing';
      return { kind: 'dial' };
    }
    if (this.stateName !== 'up') return undefined;
    const silent = now - this.silentSince();
    if (!busy) {
      // Idle: an occasional PING finds a vanished sharer before the next
      // request does, so the reconnect happens in the background.
      if (now >= Math.max(this.lastReceived, this.lastPing) + t.idlePingMs) return this.ping(now);
      return undefined;
    }
    if (silent >= t.livenessMs) {
      return { kind: 'kill', reason: new QuicmapError('EIO', `sharer stopped answering (nothing received for ${Math.round(silent)} ms)`) };
    }
    if (silent >= t.livenessMs / 2 && now >= this.lastPing + t.livenessMs / 4) return this.ping(now);
    return undefined;
  }

  private ping(now: number): SupervisorAction {
    this.lastPing = now;
    return { kind: 'ping' };
  }

  private fail(err: QuicmapError): QuicmapError {
    this.stateName = 'failed';
    this.finalError = err;
    return err;
  }
}
