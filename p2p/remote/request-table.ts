/**
 * RequestTable: every request a RemoteRegion has accepted and not yet
 * answered, with its deadline, independent of any link. Sans-IO: time comes
 * in as `now`, and the owner wakes it at `nextTimeout()` to call
 * `handleTimeout(now)`. Request ids are allocated here (u32, 0 reserved),
 * unique across links, so a reply is matched to the request whatever link
 * carried it — the base resumable streams will build on.
 *
 * A request is first *waiting* (no link yet: it may wait `waitMs` for one)
 * and then *sent* on one link (it must be answered within `requestMs`).
 * When a link dies, the requests sent on it either fail at once (EIO: an
 * NBD client sees an I/O error, never a hang) — `linkLost` — or, when the
 * link carried a resumable session, go back to waiting for the next link of
 * that session — `requeue` — keeping their ids, so the sharer recognises
 * the ones it already has (it answers those from its replay log) and the
 * others are sent again. If the session cannot be resumed, `failUnknowable`
 * fails the ones whose effect cannot be known (a write that may or may not
 * have landed) and keeps the rest (a read is simply asked again).
 */
import { QuicmapError } from '../../base/errors.ts';

interface Entry<Op> {
  id: number;
  op: Op;
  /** The link it was sent on; 0 while waiting. */
  link: number;
  deadline: number;
  /** Put on the wire at least once (on some link). */
  sentOnce: boolean;
  resolve: () => void;
  reject: (e: Error) => void;
}

export interface TableTimeouts {
  /** How long a request waits for a link before failing with EIO. */
  waitMs: number;
  /** How long a sent request waits for its answer before failing with ETIMEDOUT. */
  requestMs: number;
}

export class RequestTable<Op> {
  private readonly timeouts: TableTimeouts;
  // Maps iterate in id order (the order requests go on the wire). In `sent`
  // that is also deadline order; `waiting` may hold requeued requests with
  // later deadlines ahead of new ones, so its deadlines are scanned.
  private readonly waiting = new Map<number, Entry<Op>>();
  private readonly sent = new Map<number, Entry<Op>>();
  private nextId = 0;

  constructor(timeouts: TableTimeouts) {
    this.timeouts = timeouts;
  }

  /** Requests accepted and not answered (waiting or sent). */
  get size(): number {
    return this.waiting.size + this.sent.size;
  }

  get sentCount(): number {
    return this.sent.size;
  }

  get waitingCount(): number {
    return this.waiting.size;
  }

  /** Accept a request; it waits for `dispatch` (until `now + waitMs`, or `waitUntil` if later). The promise settles with its answer. */
  add(op: Op, now: number, waitUntil = 0): { id: number; done: Promise<void> } {
    const id = this.allocate();
    let entry!: Entry<Op>;
    const done = new Promise<void>((resolve, reject) => {
      entry = { id, op, link: 0, deadline: Math.max(now + this.timeouts.waitMs, waitUntil), sentOnce: false, resolve, reject };
    });
    this.waiting.set(id, entry);
    return { id, done };
  }

  /** Move every waiting request onto `link`, in id order; `send` puts each on the wire (`resent`: it was sent on an earlier link). */
  dispatch(link: number, now: number, send: (id: number, op: Op, resent: boolean) => void): void {
    if (this.waiting.size === 0) return;
    const batch = [...this.waiting.values()];
    this.waiting.clear();
    for (const e of batch) {
      const resent = e.sentOnce;
      e.link = link;
      e.sentOnce = true;
      e.deadline = now + this.timeouts.requestMs;
      this.sent.set(e.id, e);
      send(e.id, e.op, resent);
    }
  }

  /**
   * Link `link` of a resumable session died: its requests wait for the next
   * link (up to `waitMs`, default the table's), ahead of newer ones and
   * keeping their ids; those `keep` rejects (liveness pings of the dead
   * link) fail with `err`.
   */
  requeue(link: number, now: number, keep: (op: Op) => boolean, err: Error, waitMs = this.timeouts.waitMs): void {
    const back: Entry<Op>[] = [];
    for (const e of [...this.sent.values()]) {
      if (e.link !== link) continue;
      this.sent.delete(e.id);
      if (!keep(e.op)) {
        e.reject(err);
        continue;
      }
      e.link = 0;
      e.deadline = now + waitMs;
      back.push(e);
    }
    if (back.length === 0) return;
    const newer = [...this.waiting.values()];
    this.waiting.clear();
    for (const e of [...back, ...newer]) this.waiting.set(e.id, e);
  }

  /**
   * The session could not be resumed (a new one started): requests already
   * sent whose effect cannot be known fail with `err`; the others (`known`:
   * reads) wait to be sent on the new session. Returns how many failed.
   */
  failUnknowable(known: (op: Op) => boolean, err: Error): number {
    let n = 0;
    for (const e of [...this.waiting.values()]) {
      if (!e.sentOnce || known(e.op)) continue;
      this.waiting.delete(e.id);
      e.reject(err);
      n++;
    }
    return n;
  }

  /** The answer to `id` arrived (on any link). Unknown ids (answered or given up on) are ignored. */
  settle(id: number, err?: Error): void {
    const e = this.sent.get(id);
    if (!e) return;
    this.sent.delete(id);
    if (err) e.reject(err);
    else e.resolve();
  }

  /** Link `link` died: the requests sent on it fail with `err`. */
  linkLost(link: number, err: Error): void {
    for (const e of [...this.sent.values()]) {
      if (e.link !== link) continue;
      this.sent.delete(e.id);
      e.reject(err);
    }
  }

  /** Fail every request (final error, close). */
  failAll(err: Error): void {
    const all = [...this.waiting.values(), ...this.sent.values()];
    this.waiting.clear();
    this.sent.clear();
    for (const e of all) e.reject(err);
  }

  /** Fail the requests still waiting for a link (a final error). */
  failWaiting(err: Error): void {
    const all = [...this.waiting.values()];
    this.waiting.clear();
    for (const e of all) e.reject(err);
  }

  nextTimeout(): number | undefined {
    let at: number | undefined;
    for (const e of this.waiting.values()) if (at === undefined || e.deadline < at) at = e.deadline;
    for (const e of this.sent.values()) {
      if (at === undefined || e.deadline < at) at = e.deadline;
      break;
    }
    return at;
  }

  /**
   * Fail what is overdue: waiting requests with EIO (no link came), sent ones
   * with ETIMEDOUT. Returns the sent requests that timed out (id and link), so
   * the owner can make their link forget them and replace a link that left a
   * request unanswered.
   */
  handleTimeout(now: number): Array<{ id: number; link: number }> {
    for (const e of [...this.waiting.values()]) {
      if (e.deadline > now) continue;
      this.waiting.delete(e.id);
      e.reject(new QuicmapError('EIO', 'sharer unreachable (reconnecting in the background)'));
    }
    const timedOut: Array<{ id: number; link: number }> = [];
    for (const e of this.sent.values()) {
      if (e.deadline > now) break;
      this.sent.delete(e.id);
      timedOut.push({ id: e.id, link: e.link });
      e.reject(new QuicmapError('ETIMEDOUT', `sharer did not answer within ${this.timeouts.requestMs} ms`));
    }
    return timedOut;
  }

  private allocate(): number {
    // u32 ids, 0 reserved; skip any still in the table after a wrap.
    do {
      this.nextId = this.nextId >= 0xffff_ffff ? 1 : this.nextId + 1;
    } while (this.sent.has(this.nextId) || this.waiting.has(this.nextId));
    return this.nextId;
  }
}
