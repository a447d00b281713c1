/**
 * LiveSession: the sharer's state of one resumable session, which outlives
 * the stream it arrived on. It holds the requests in progress (shared by
 * every stream of the session, so the in-flight bound spans a resume), the
 * highest request id received (duplicates are dropped by id), the reply log
 * (p2p/protocol/reply-log.ts: every reply kept until the client acks it),
 * and the current stream's sender, if any.
 *
 * A stream attaches (`attach`) and detaches when it ends (`detach`); while
 * detached, replies of requests still running go into the log only. A
 * resumed session's log is replayed once the new stream's first ACK says
 * the client is ready (its count of replies received), so replayed replies
 * never reach a client before it has registered its requests again.
 *
 * Bytes the log holds (read data not yet acknowledged) are reported to the
 * node-wide ByteBudget through the session's own holder; a session whose
 * client stops acknowledging while the node is at its budget is shed.
 */
import type { BudgetHolder } from '../../base/byte-budget.ts';
import { ReplyLog } from '../protocol/reply-log.ts';
import type { ResumeCredentials } from '../protocol/session-table.ts';
import type { SessionTxn } from '../protocol/server-session.ts';

export interface SessionSender {
  send(frames: Uint8Array[]): Promise<void>;
  /** End this stream (its session was taken over by a newer stream, or dropped). */
  drop(reason: string): void;
}

/** Wakes a stream loop waiting for a free request slot; shared by the session's streams. */
export class SlotWaker {
  private waiters: Array<() => void> = [];
  wait(): Promise<void> {
    return new Promise((r) => this.waiters.push(r));
  }
  wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}

export class LiveSession {
  readonly txn: SessionTxn = { inFlight: new Set<number>(), seen: 0 };
  readonly log: ReplyLog;
  readonly slots = new SlotWaker();
  /** The session number the server's calls see (kept across resumes). */
  readonly number: number;
  creds: ResumeCredentials | undefined;
  holder: BudgetHolder | undefined;
  lastAckAt: number;
  private out: { sender: SessionSender; gen: number } | undefined;
  private gen = 0;
  private awaitingReady = false;
  private disposed = false;

  constructor(number: number, window: number, now: number) {
    this.number = number;
    this.log = new ReplyLog(window);
    this.lastAckAt = now;
  }

  get attached(): boolean {
    return this.out !== undefined;
  }

  get isDisposed(): boolean {
    return this.disposed;
  }

  /**
   * A stream takes the session: a stream still attached (its end not yet
   * noticed) is dropped. `resumed`: the log waits for the client's ready ACK.
   * Returns the attachment's generation (for `detach` and `ack`).
   */
  attach(sender: SessionSender, resumed: boolean): number {
    const old = this.out;
    if (old) {
      this.out = undefined;
      this.log.detach();
      old.sender.drop('session taken over by a new link');
    }
    const gen = ++this.gen;
    this.out = { sender, gen };
    this.awaitingReady = resumed;
    return gen;
  }

  /** Stream `gen` ended. Returns whether it was the attached one (the session is now suspended). */
  detach(gen: number): boolean {
    if (!this.out || this.out.gen !== gen) return false;
    this.out = undefined;
    this.log.detach();
    return true;
  }

  /** A reply (OK / ERROR frames) to log and send; `release` runs once the client acknowledged it (ReplyLog.append). */
  reply(frames: Uint8Array[], now: number, release?: () => void): void {
    if (frames.length === 0 || this.disposed) return;
    this.log.append(frames, release);
    this.pump(now);
  }

  /** An ACK on stream `gen`. Throws ProtocolError for an ack of replies never sent. */
  ack(received: number, now: number, gen: number): void {
    if (!this.out || this.out.gen !== gen) return;
    this.lastAckAt = now;
    if (this.awaitingReady) {
      this.awaitingReady = false;
      this.log.resume(received, now);
    } else this.log.ack(received, now);
    this.pump(now);
  }

  /** Free everything (the session expired, was evicted or dropped). */
  dispose(reason: string): void {
    if (this.disposed) return;
    this.disposed = true;
    const out = this.out;
    this.out = undefined;
    out?.sender.drop(reason);
    this.holder?.release();
    this.slots.wake();
  }

  private pump(now: number): void {
    const out = this.out;
    if (out && !this.awaitingReady) {
      const frames = this.log.drain(now);
      if (frames.length) void out.sender.send(frames);
    }
    this.holder?.set(this.log.unackedBytes);
  }
}
