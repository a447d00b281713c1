/**
 * RemoteRegion: a ReadWriterAt whose bytes live on a sharer, reached over a
 * transport. What a direct mount serves through NBD. A thin facade over
 * three parts:
 *
 * - the RequestTable (request-table.ts): every accepted request with its
 *   deadline, independent of any link — a request made while there is no
 *   link waits at most `waitForLinkMs` for one (then EIO); a sent request
 *   must be answered within `requestTimeoutMs` (then ETIMEDOUT, and the link
 *   that left it unanswered is replaced); requests on a link that dies fail
 *   at once with EIO, an I/O error for the NBD client, never a hang;
 * - the LinkSupervisor (link-supervisor.ts): liveness pings, dead-link
 *   detection, reconnect with backoff, and the final errors (a refusal, or
 *   a sharer whose region is no longer the one mounted);
 * - the current ClientLink (link.ts): the wire.
 *
 * The table and the supervisor are sans-IO; this file owns their one timer
 * (a `Wakeup` on a `Clock`, the system clock unless a test passes a
 * VirtualClock). Many requests in flight on one link, bounded by the
 * negotiated max-in-flight; callers beyond it queue here (FIFO), not on the
 * wire. Requests above the negotiated max frame are split (all-settled).
 *
 * Arguments are not checked here: the stack's guard above this store checks
 * ranges and rights for local callers, and the sharer checks every request
 * at its trust boundary.
 */
import type { Connection } from '../../transports/transport.ts';
import { ClosedError, QuicmapError, RequestTooLargeError } from '../../base/errors.ts';
import { systemClock, Wakeup, type Clock } from '../../base/clock.ts';
import { Semaphore } from '../../base/semaphore.ts';
import { splitRange } from '../../base/split-range.ts';
import type { Capability } from '../../engine/capability.ts';
import type { ReadWriterAt, StoreCaps, WriteOptions, ZeroOptions } from '../../engine/rwat.ts';
import type { Manifest } from '../protocol/manifest.ts';
import { callBodyLimit, packCallParts, unpackReply, type Limits } from '../protocol/messages.ts';
import { ClientLink, type LinkOp, type LinkOptions } from './link.ts';
import type { ReplyCounter } from '../protocol/client-session.ts';
import { idAfter } from '../protocol/server-session.ts';
import { LinkSupervisor, type SupervisorAction } from './link-supervisor.ts';
import { RequestTable } from './request-table.ts';
import { DEFAULT_LIMITS, SESSION_BYE } from './server.ts';

export interface RemoteRegionOptions {
  /** Dial the sharer (transport + address + expected key); called again on reconnect. */
  connect: () => Promise<Connection>;
  grant: Uint8Array;
  sharer: Uint8Array;
  regionId: Uint8Array;
  /** True when the grant is read-only: advertise the region read-only (the sharer enforces it anyway). */
  readOnlyGrant?: boolean;
  limits?: Partial<Limits>;
  requestTimeoutMs?: number;
  livenessMs?: number;
  /** While idle, PING after this much silence (default 5 000 ms). */
  idlePingMs?: number;
  waitForLinkMs?: number;
  /**
   * How long requests that were on a link when it died wait for a link that
   * resumes their session (default 6 000 ms: a short outage costs nothing;
   * a sharer gone for good fails them soon after). Then EIO.
   */
  resumeWaitMs?: number;
  backoff?: { minMs?: number; maxMs?: number };
  agent?: string;
  log?: (message: string) => void;
  /** Time source for deadlines, liveness and backoff (tests: a VirtualClock). */
  clock?: Clock;
  /** Ask for a resumable session (default true; the sharer must offer it too). */
  resume?: boolean;
  /** How long `close` waits for the sharer's answer to its goodbye (default 1 000 ms; 0: no goodbye, the session lingers until its TTL). */
  goodbyeMs?: number;
  /**
   * Test hook: cut the link (reset its stream) after every `every`-th
   * request put on the wire, at most `max` times. Default from the
   * environment: QUICMAP_TEST_CUT_LINK_EVERY=N[xMAX] (MAX default 4).
   */
  cutLinkEvery?: { every: number; max: number };
}

function cutHookFromEnv(): { every: number; max: number } | undefined {
  const m = /^(\d+)(?:x(\d+))?$/.exec(process.env.QUICMAP_TEST_CUT_LINK_EVERY ?? '');
  if (!m || Number(m[1]) < 1) return undefined;
  return { every: Number(m[1]), max: m[2] === undefined ? 4 : Number(m[2]) };
}

/** Ops whose effect is known without an answer: asking again is harmless. */
const knownWithoutAnswer = (op: LinkOp): boolean => op.op === 'read' || op.op === 'ping';

export interface RemoteRegionStats {
  connects: number;
  linkFailures: number;
  requests: number;
  bytesRead: number;
  bytesWritten: number;
  /** Write requests (frames) issued: what the sharer should have applied, each once. */
  writes: number;
  /** Links that took back their session (nothing lost). */
  resumes: number;
  /** Reconnects whose session the sharer no longer had (a new one was started). */
  resumesRefused: number;
  /** Requests sent again on a resumed session (the sharer had not received them). */
  resent: number;
  /** Requests failed because a session was lost while they were on the wire (their effect unknown). */
  lost: number;
}

/** Trim and zero carry no payload, so their pieces may be much larger than a frame. */
const MAX_RANGE_PIECE = 1 << 30;

export class RemoteRegion implements ReadWriterAt {
  readonly caps: StoreCaps;
  readonly limits: Limits;
  /** The largest CALL body the sharer takes (its negotiated maxFrame when it offered `large-call`, else 16 KiB). */
  readonly maxCallBody: number;
  readonly stats: RemoteRegionStats = { connects: 0, linkFailures: 0, requests: 0, bytesRead: 0, bytesWritten: 0, writes: 0, resumes: 0, resumesRefused: 0, resent: 0, lost: 0 };
  /** The session's reply count and credentials (resumable sessions), kept across links. */
  private readonly txn: NonNullable<LinkOptions['txn']> | undefined;
  private readonly cutHook: { every: number; max: number } | undefined;
  private cutCount = 0;
  private cuts = 0;
  /** While a lost link's session may still be resumed: new requests wait until then for a link. */
  private resumeUntil = 0;
  private current: Manifest;
  private link: ClientLink | undefined;
  /** Generation of `link` (request table entries name the link they were sent on). */
  private linkNo = 0;
  private closed = false;
  private readonly opts: RemoteRegionOptions;
  private readonly log: (m: string) => void;
  private readonly clock: Clock;
  private readonly table: RequestTable<LinkOp>;
  private readonly supervisor: LinkSupervisor;
  private readonly slots: Semaphore;
  private readonly wakeup: Wakeup;
  private armedAt: number | undefined;

  private constructor(opts: RemoteRegionOptions, first: ClientLink, txn: NonNullable<LinkOptions['txn']> | undefined) {
    this.opts = opts;
    this.txn = txn;
    this.cutHook = opts.cutLinkEvery ?? cutHookFromEnv();
    this.log = opts.log ?? (() => {});
    this.clock = opts.clock ?? systemClock;
    this.current = first.manifest;
    this.limits = { ...first.limits };
    this.slots = new Semaphore(this.limits.maxInFlight);
    this.maxCallBody = callBodyLimit(this.limits, first.caps);
    const m = first.manifest;
    this.caps = {
      readOnly: m.readOnly || opts.readOnlyGrant === true,
      canTrim: m.canTrim && first.caps.has('trim'),
      fastZero: m.fastZero,
      multiConn: m.multiConn,
      preferredBlockSize: m.preferredBlockSize,
    };
    this.table = new RequestTable({ waitMs: opts.waitForLinkMs ?? 2_000, requestMs: opts.requestTimeoutMs ?? 30_000 });
    const now = this.clock.now();
    this.supervisor = new LinkSupervisor(
      {
        livenessMs: opts.livenessMs ?? 3_000,
        idlePingMs: opts.idlePingMs ?? 5_000,
        minBackoffMs: opts.backoff?.minMs ?? 100,
        maxBackoffMs: opts.backoff?.maxMs ?? 2_000,
      },
      { manifest: first.manifest, limits: first.limits, caps: first.caps },
      now,
    );
    this.wakeup = new Wakeup(this.clock, (t) => this.onTimeout(t));
    this.adopt(first);
    this.rearm();
  }

  /** Connect, present the grant, learn the manifest. A refusal throws the sharer's error (EACCES, EPERM). */
  static async open(opts: RemoteRegionOptions): Promise<RemoteRegion> {
    const txn = opts.resume === false ? undefined : { counter: { received: 0, acked: 0 } as ReplyCounter };
    const link = await RemoteRegion.dial(opts, txn);
    const r = new RemoteRegion(opts, link, txn);
    r.stats.connects++;
    return r;
  }

  private static async dial(opts: RemoteRegionOptions, txn: LinkOptions['txn']): Promise<ClientLink> {
    const conn = await opts.connect();
    return ClientLink.open(conn, {
      txn,
      grant: opts.grant,
      sharer: opts.sharer,
      regionId: opts.regionId,
      limits: { ...DEFAULT_LIMITS, ...opts.limits },
      caps: ['trim', 'zero', 'fua', 'ping', 'call', 'large-call'],
      agent: opts.agent ?? 'quicmap',
    });
  }

  /** The manifest of the latest session (generation changes when the sharer restarts). */
  get manifest(): Manifest {
    return this.current;
  }

  /** True while a link to the sharer is up. */
  get connected(): boolean {
    return this.link !== undefined && !this.link.isDead;
  }

  // ---- link lifecycle ------------------------------------------------------

  private adopt(link: ClientLink): void {
    const no = ++this.linkNo;
    this.link = link;
    const g = link.granted;
    // Copied: the decoded fields may be views of a received chunk.
    if (this.txn && g) this.txn.resume = { session: Uint8Array.from(g.session), token: Uint8Array.from(g.token) };
    link.start({
      reply: (id, err) => this.table.settle(id, err),
      received: () => this.supervisor.received(this.clock.now()),
      dead: (reason) => this.onLinkDead(no, link, reason),
    });
    this.dispatch(link, no);
    link.ready();
  }

  /**
   * Send what waits in the table on `link`; the supervisor times the peer's
   * answer from the first send. Requests sent on an earlier link of a
   * resumed session that the sharer already has (at or below its received
   * mark) are only expected here: their replies come from its log. The
   * others go on the wire (again).
   */
  private dispatch(link: ClientLink, no: number): void {
    const now = this.clock.now();
    const g = link.granted;
    this.table.dispatch(no, now, (id, op, resent) => {
      const there = resent && g !== undefined && g.resumed && g.received !== 0 && !idAfter(id, g.received);
      if (resent && !there) this.stats.resent++;
      this.supervisor.sent(now);
      link.send(id, op, !there);
    });
  }

  private onLinkDead(no: number, link: ClientLink, reason: QuicmapError): void {
    // A resumable session keeps its requests for the next link; otherwise they fail now.
    if (link.granted && !this.closed) {
      // Until then, requests made meanwhile wait as long: a short outage is invisible to the NBD client.
      const wait = Math.max(this.opts.resumeWaitMs ?? 6_000, this.opts.waitForLinkMs ?? 2_000);
      this.resumeUntil = this.clock.now() + wait;
      this.table.requeue(no, this.clock.now(), (op) => op.op !== 'ping', reason, wait);
    } else this.table.linkLost(no, reason);
    if (no !== this.linkNo || this.closed) return;
    this.link = undefined;
    this.stats.linkFailures++;
    this.log(`link to sharer lost: ${reason.message}; reconnecting`);
    this.act(this.supervisor.linkDown());
  }

  private act(action: SupervisorAction | undefined): void {
    if (action) {
      switch (action.kind) {
        case 'dial':
          void this.redial();
          break;
        case 'ping': {
          const link = this.link;
          if (link) {
            const { id, done } = this.table.add({ op: 'ping' }, this.clock.now());
            done.catch(() => {}); // its answer (or absence) is all that matters
            this.dispatch(link, this.linkNo);
            void id;
          }
          break;
        }
        case 'kill':
          this.link?.kill(action.reason);
          break;
      }
    }
    this.rearm();
  }

  private async redial(): Promise<void> {
    let link: ClientLink;
    try {
      link = await RemoteRegion.dial(this.opts, this.txn);
    } catch (e) {
      if (this.closed) return;
      const final = this.supervisor.dialFailed(this.clock.now(), e);
      if (final) this.giveUp(final);
      this.rearm();
      return;
    }
    if (this.closed) {
      await link.close();
      return;
    }
    const final = this.supervisor.linkUp(this.clock.now(), { manifest: link.manifest, limits: link.limits, caps: link.caps });
    if (final) {
      await link.close();
      this.giveUp(final);
      return;
    }
    if (link.manifest.generation !== this.current.generation) this.log('sharer restarted (new region generation); resuming');
    this.current = link.manifest;
    this.stats.connects++;
    const g = link.granted;
    if (g?.resumed) {
      this.stats.resumes++;
      this.log(`reconnected to sharer; session resumed (${this.table.waitingCount} requests carried over)`);
    } else {
      // No session to go back to: what was on the wire and cannot be known
      // to have landed (writes, flushes, calls) fails; reads are asked again.
      const why = g?.refused ? `${g.refused.code}: ${g.refused.message}` : this.txn ? 'the sharer does not resume sessions' : 'resume off';
      if (this.txn?.resume) this.stats.resumesRefused++;
      const n = this.table.failUnknowable(knownWithoutAnswer, new QuicmapError('EIO', `link to the sharer lost and its session could not be resumed (${why}): the request may or may not have been applied`));
      this.stats.lost += n;
      this.log(this.txn?.resume ? `reconnected to sharer; session not resumed (${why}), new session${n ? `, ${n} requests failed` : ''}` : 'reconnected to sharer');
    }
    this.adopt(link);
    this.rearm();
  }

  private giveUp(err: QuicmapError): void {
    this.resumeUntil = 0;
    this.log(`giving up on the sharer: ${err.message}`);
    this.table.failWaiting(err);
    this.rearm();
  }

  // ---- time ------------------------------------------------------------------

  private onTimeout(now: number): void {
    this.armedAt = undefined;
    for (const { id, link } of this.table.handleTimeout(now)) {
      if (link !== this.linkNo || !this.link) continue;
      this.link.forget(id);
      // A sharer that stops answering one request is not trusted with the others.
      this.link.kill(new QuicmapError('EIO', 'request timed out; reconnecting'));
    }
    this.act(this.supervisor.handleTimeout(now, this.table.sentCount > 0));
  }

  /** Keep the one timer at the earliest deadline of the table and the supervisor. */
  private rearm(): void {
    if (this.closed) return;
    const a = this.table.nextTimeout();
    const b = this.supervisor.nextTimeout(this.table.sentCount > 0);
    const at = a === undefined ? b : b === undefined ? a : Math.min(a, b);
    // Deadlines only move later with activity; an early wake-up just re-arms.
    if (at === undefined || (this.armedAt !== undefined && this.armedAt <= at)) return;
    this.armedAt = at;
    this.wakeup.arm(at);
  }

  // ---- requests --------------------------------------------------------------

  /** One frame-sized request: wait for a slot, enter the table, go out on the link if there is one. */
  private async request(op: LinkOp): Promise<void> {
    if (this.closed) throw new ClosedError('remote region');
    await this.slots.acquire();
    try {
      const failure = this.supervisor.failure;
      if (failure) throw failure;
      this.stats.requests++;
      if (op.op === 'write') this.stats.writes++;
      const now = this.clock.now();
      const { done } = this.table.add(op, now, this.link ? 0 : this.resumeUntil);
      const link = this.link;
      if (link && !link.isDead) {
        this.dispatch(link, this.linkNo);
        this.maybeCut(link);
      }
      this.rearm();
      await done;
    } finally {
      this.slots.release();
    }
  }

  /** The test hook (cutLinkEvery): reset the link's stream a moment after a request went out, mid-transfer. */
  private maybeCut(link: ClientLink): void {
    const h = this.cutHook;
    if (!h || this.cuts >= h.max || ++this.cutCount % h.every !== 0) return;
    const n = ++this.cuts;
    // A few turns later (0..3, varying), so the cut lands at different points of the frames in flight.
    let p = Promise.resolve();
    for (let i = 0; i < n % 4; i++) p = p.then(() => {});
    void p.then(() => link.kill(new QuicmapError('EIO', `test hook: link cut (${n} of ${h.max})`)));
  }

  async size(): Promise<number> {
    if (this.closed) throw new ClosedError('remote region');
    return this.current.size;
  }

  async readAt(buf: Uint8Array, offset: number): Promise<void> {
    await splitRange(buf.length, this.limits.maxFrame, (at, len) => this.request({ op: 'read', buf: buf.subarray(at, at + len), offset: offset + at }));
    this.stats.bytesRead += buf.length;
  }

  async writeAt(data: Uint8Array, offset: number, opts?: WriteOptions): Promise<void> {
    const fua = opts?.fua === true;
    await splitRange(data.length, this.limits.maxFrame, (at, len) => this.request({ op: 'write', data: data.subarray(at, at + len), offset: offset + at, fua }));
    this.stats.bytesWritten += data.length;
  }

  async flush(): Promise<void> {
    await this.request({ op: 'flush' });
  }

  /**
   * A named control call to the sharer (change feeds, migration, hash
   * lists: p2p/sync/), on the request table like any request (slot, link
   * wait, deadline). Resolves with the decoded reply body; ENOTSUP when the
   * sharer has no such method or does not take calls. A body above
   * `maxCallBody` is refused here with EOVERFLOW (RequestTooLargeError).
   * A large byte string as the last field of `args` is sent by reference
   * (packCallParts), not copied: leave it unchanged until the call settles.
   */
  async call(method: string, args: unknown): Promise<unknown> {
    const body = packCallParts(method, args);
    let bytes = 0;
    for (const b of body) bytes += b.length;
    if (bytes > this.maxCallBody) throw new RequestTooLargeError(bytes, this.maxCallBody);
    const reply: { body?: Uint8Array } = {};
    await this.request({ op: 'call', method, body, reply });
    return reply.body ? unpackReply(reply.body, method) : null;
  }

  async trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    if (!this.caps.canTrim) return; // advisory: a store that cannot trim ignores it
    const fua = opts?.fua === true;
    await splitRange(length, MAX_RANGE_PIECE, (at, len) => this.request({ op: 'trim', offset: offset + at, length: len, fua }));
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    const fua = opts?.fua === true;
    const noHole = opts?.noHole === true;
    await splitRange(length, MAX_RANGE_PIECE, (at, len) => this.request({ op: 'zero', offset: offset + at, length: len, fua, noHole }));
  }

  /** No capabilities beyond the core. */
  capability<T>(_key: Capability<T>): T | undefined {
    return undefined;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    // A resumable session is ended with a goodbye, so the sharer frees it now rather than keeping it for a resume (bounded: a sharer that does not answer in time keeps it until its TTL).
    if (this.txn?.resume && this.connected && (this.opts.goodbyeMs ?? 1_000) > 0) {
      let t: NodeJS.Timeout | undefined;
      await Promise.race([this.call(SESSION_BYE, {}).catch(() => {}), new Promise<void>((r) => (t = setTimeout(r, this.opts.goodbyeMs ?? 1_000)))]);
      clearTimeout(t);
    }
    if (this.closed) return;
    this.closed = true;
    this.wakeup.stop();
    this.supervisor.close();
    const link = this.link;
    this.link = undefined;
    await link?.close();
    this.table.failAll(new ClosedError('remote region'));
    this.slots.failAll(new ClosedError('remote region'));
  }
}
