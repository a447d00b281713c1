/**
 * One side of a resumable transaction channel, after the clustering seed
 * (shared/seeds/003): "both sides generate a sequential transaction id on
 * transmit and receive acks, allowing both sides to determine when old data
 * can be thrown away and allowing a connection to be broken, restarted, and
 * resynchronized."
 *
 * - Every record this side sends gets the next id of the session (1, 2, …).
 * - The peer acknowledges cumulatively: `ack` = the highest id it has
 *   received *and applied* in order. Acks ride on the peer's own records, or
 *   go alone (id 0) after `ackDelayMs` or every `ackEvery` records.
 * - A record is kept until acknowledged, so a broken link loses nothing:
 *   after `resume(peerReceived)` everything the peer has not acknowledged is
 *   sent again, in order.
 * - The receiver takes only the next id it expects. A lower id is a
 *   duplicate of something already applied (dropped, acked again); a higher
 *   one is past a gap (dropped; the sender goes back to its oldest unacked
 *   record after `retransmitMs`, which matters only on links that can lose
 *   records — over a reliable stream leave it at Infinity and rely on
 *   resume). So every record is applied exactly once and in order.
 * - Unacknowledged records are bounded by count and bytes (`canSend`): that
 *   is the memory a peer must keep for replay, and the backpressure.
 *
 * Sans-IO: no sockets, no timers. The adapter feeds what arrives
 * (`receive`), the clock (`handleTimeout(now)`, `nextTimeout()`) and link
 * events (`linkDown`, `resume`), and drains what to send (`poll`).
 */
import { ProtocolError } from '../../base/errors.ts';

export interface TxnRecord<P> {
  /** Transaction id; 0 for a record that only carries an ack. */
  id: number;
  /** Highest id of the other direction received and applied in order (0: none yet). */
  ack: number;
  /** The transaction itself; absent on a pure ack. */
  payload?: P;
}

export interface TxnLimits {
  /** Records sent and not yet acknowledged, at most. */
  maxUnacked: number;
  /** Their payload bytes, at most (one record is always allowed, so a big one cannot wedge the channel). */
  maxUnackedBytes: number;
  /** A received record is acknowledged within this many ms even if nothing else goes out. */
  ackDelayMs: number;
  /** …or after this many records, whichever comes first. */
  ackEvery: number;
  /** Go back to the oldest unacked record when it has waited this long (Infinity: only on resume). */
  retransmitMs: number;
}

export const DEFAULT_TXN_LIMITS: TxnLimits = {
  maxUnacked: 1024,
  maxUnackedBytes: 64 * 1024 * 1024,
  ackDelayMs: 5,
  ackEvery: 32,
  retransmitMs: Number.POSITIVE_INFINITY,
};

interface Pending<P> {
  id: number;
  payload: P;
  bytes: number;
  sentAt: number | undefined;
}

/** `Out`: what this side sends; `In`: what the peer sends (often the same). */
export class TxnChannel<Out, In = Out> {
  private readonly limits: TxnLimits;
  private nextId = 1;
  private readonly unacked: Pending<Out>[] = [];
  private unackedBytes = 0;
  /** Index into `unacked` of the next record to (re)transmit. */
  private cursor = 0;
  private received = 0;
  private ackSent = 0;
  private ackDueAt: number | undefined;
  private up: boolean;

  constructor(limits: Partial<TxnLimits> = {}, opts: { connected?: boolean } = {}) {
    this.limits = { ...DEFAULT_TXN_LIMITS, ...limits };
    this.up = opts.connected ?? true;
  }

  /** Highest id of the peer's records applied here, in order: what a resume tells the peer. */
  get receivedId(): number {
    return this.received;
  }
  /** Ids handed out so far (the last one sent is `lastId`). */
  get lastId(): number {
    return this.nextId - 1;
  }
  get unackedCount(): number {
    return this.unacked.length;
  }
  get unackedByteCount(): number {
    return this.unackedBytes;
  }
  get connected(): boolean {
    return this.up;
  }

  /** Whether a record of `bytes` fits the unacked window now. */
  canSend(bytes: number): boolean {
    if (this.unacked.length === 0) return true;
    return this.unacked.length < this.limits.maxUnacked && this.unackedBytes + bytes <= this.limits.maxUnackedBytes;
  }

  /** Queue a transaction; returns its id. The caller checks `canSend` first (backpressure). */
  send(payload: Out, bytes: number): number {
    if (!this.canSend(bytes)) throw new Error('TxnChannel.send past the unacked window: check canSend first');
    const id = this.nextId++;
    this.unacked.push({ id, payload, bytes, sentAt: undefined });
    this.unackedBytes += bytes;
    return id;
  }

  /** The next record to put on the wire, or undefined when there is nothing to send now. */
  poll(now: number): TxnRecord<Out> | undefined {
    if (!this.up) return undefined;
    const next = this.unacked[this.cursor];
    if (next) {
      this.cursor++;
      next.sentAt = now;
      this.noteAckSent();
      return { id: next.id, ack: this.received, payload: next.payload };
    }
    if (this.ackDue(now)) {
      this.noteAckSent();
      return { id: 0, ack: this.received };
    }
    return undefined;
  }

  /**
   * A record from the peer. Returns the payload when it is the next
   * transaction to apply; undefined for a pure ack, a duplicate or a record
   * past a gap. Throws ProtocolError for an ack of something never sent.
   */
  receive(rec: TxnRecord<In>, now: number): In | undefined {
    this.takeAck(rec.ack);
    if (rec.id === 0) return undefined;
    if (rec.id === this.received + 1) {
      this.received = rec.id;
      if (this.ackDueAt === undefined) this.ackDueAt = now + this.limits.ackDelayMs;
      return rec.payload;
    }
    // A duplicate (already applied) or a record past a gap: drop it, and
    // answer with an ack at once so the sender learns where we are.
    this.ackDueAt = now;
    if (this.ackSent === this.received) this.ackSent = this.received - 1;
    return undefined;
  }

  /** The link broke: nothing goes out until `resume`; everything unacked will be sent again. */
  linkDown(): void {
    this.up = false;
    this.ackDueAt = undefined;
  }

  /**
   * A new link to the same peer and session, whose side says it has applied
   * up to `peerReceived`: drop what that acknowledges and send the rest again.
   */
  resume(peerReceived: number, now: number): void {
    this.takeAck(peerReceived);
    this.up = true;
    this.cursor = 0;
    // Tell the peer where we are even if we have nothing of our own to send.
    this.ackSent = this.received - 1;
    this.ackDueAt = now;
  }

  handleTimeout(now: number): void {
    if (!this.up || this.cursor === 0) return;
    const oldest = this.unacked[0];
    if (oldest?.sentAt !== undefined && now - oldest.sentAt >= this.limits.retransmitMs) this.cursor = 0;
  }

  /** When `handleTimeout` or `poll` next has something to do; undefined: nothing pending. */
  nextTimeout(): number | undefined {
    if (!this.up) return undefined;
    let t: number | undefined;
    if (this.ackDueAt !== undefined && this.received > this.ackSent) t = this.ackDueAt;
    const oldest = this.unacked[0];
    if (this.cursor > 0 && oldest?.sentAt !== undefined && Number.isFinite(this.limits.retransmitMs)) {
      const r = oldest.sentAt + this.limits.retransmitMs;
      t = t === undefined ? r : Math.min(t, r);
    }
    return t;
  }

  private ackDue(now: number): boolean {
    if (this.received <= this.ackSent) return false;
    return this.received - this.ackSent >= this.limits.ackEvery || (this.ackDueAt !== undefined && now >= this.ackDueAt);
  }

  private noteAckSent(): void {
    this.ackSent = this.received;
    this.ackDueAt = undefined;
  }

  private takeAck(ack: number): void {
    if (!Number.isSafeInteger(ack) || ack < 0 || ack > this.nextId - 1) {
      throw new ProtocolError(`peer acknowledged transaction ${ack}, but only ${this.nextId - 1} were sent`);
    }
    let n = 0;
    while (n < this.unacked.length && this.unacked[n]!.id <= ack) {
      this.unackedBytes -= this.unacked[n]!.bytes;
      n++;
    }
    if (n === 0) return;
    this.unacked.splice(0, n);
    this.cursor = Math.max(0, this.cursor - n);
  }
}
