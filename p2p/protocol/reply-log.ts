/**
 * The sharer's side of a resumable session's reply stream: a TxnChannel
 * (txn-channel.ts) whose records are reply frames (OK / ERROR to a request).
 *
 * Every reply gets the next sequence number of the session, written into
 * its header's offset field, and stays in the log until the client
 * acknowledges it (ACK frames, cumulative). When the link breaks the log
 * keeps filling — requests in progress still finish — and nothing goes out;
 * when the client resumes, saying the highest sequence it received, the
 * log sends again everything after that, in order. So a reply lost with a
 * link (a read's data, a write's OK) is answered again, and a request is
 * never run twice to get its answer back.
 *
 * Bounded: the client must acknowledge; a log holding more than `window`
 * replies means a client that does not, and `overflowing` says so (the
 * adapter drops the session). Sans-IO: the clock is an input.
 */
import { ProtocolError } from '../../base/errors.ts';
import { TxnChannel } from './txn-channel.ts';

/** Header offset field: bytes 8..16, a u64 split into two u32 halves. */
function stampSequence(header: Uint8Array, seq: number): void {
  const v = new DataView(header.buffer, header.byteOffset, 24);
  v.setUint32(8, Math.floor(seq / 0x1_0000_0000));
  v.setUint32(12, seq >>> 0);
}

export class ReplyLog {
  private readonly channel: TxnChannel<Uint8Array[], never>;
  /** Replies with a release callback, by ascending sequence number. */
  private readonly releases: Array<{ seq: number; release: () => void }> = [];
  readonly window: number;

  constructor(window: number) {
    this.window = window;
    // The window is enforced here (overflowing), not by the channel: a reply
    // to a request already running must always find room.
    this.channel = new TxnChannel<Uint8Array[], never>({
      maxUnacked: Number.MAX_SAFE_INTEGER,
      maxUnackedBytes: Number.MAX_SAFE_INTEGER,
      ackDelayMs: Number.POSITIVE_INFINITY,
      ackEvery: Number.MAX_SAFE_INTEGER,
      retransmitMs: Number.POSITIVE_INFINITY,
    });
  }

  /** Replies sent so far (the last sequence number handed out). */
  get lastSequence(): number {
    return this.channel.lastId;
  }
  get unackedCount(): number {
    return this.channel.unackedCount;
  }
  get unackedBytes(): number {
    return this.channel.unackedByteCount;
  }
  get overflowing(): boolean {
    return this.channel.unackedCount > this.window;
  }
  get attached(): boolean {
    return this.channel.connected;
  }

  /**
   * Log a reply (header first, as the frame builders return it); returns its
   * sequence number. `release` runs once the client has acknowledged it: it
   * was received, so nothing will send its frames again and their buffers may
   * be reused (a log dropped with its session never calls it).
   */
  append(frames: Uint8Array[], release?: () => void): number {
    const seq = this.channel.lastId + 1;
    stampSequence(frames[0]!, seq);
    let bytes = 0;
    for (const f of frames) bytes += f.length;
    this.channel.send(frames, bytes);
    if (release) this.releases.push({ seq, release });
    return seq;
  }

  /** Run the release callbacks of every reply up to `received` (in order; the queue is sorted by sequence). */
  private released(received: number): void {
    let n = 0;
    while (n < this.releases.length && this.releases[n]!.seq <= received) n++;
    if (n === 0) return;
    for (const r of this.releases.splice(0, n)) r.release();
  }

  /** Frames to put on the wire now, in order (nothing while detached). */
  drain(now: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (let rec; (rec = this.channel.poll(now)); ) if (rec.id !== 0 && rec.payload) out.push(...rec.payload);
    return out;
  }

  /** The client received every reply up to `received`. Throws ProtocolError for an ack of a reply never sent. */
  ack(received: number, now: number): void {
    this.channel.receive({ id: 0, ack: received }, now);
    this.released(received);
  }

  /** The link broke: keep everything, send nothing until `resume`. */
  detach(): void {
    this.channel.linkDown();
  }

  /** A new link: the client has `received` up to there; the rest goes out again on `drain`. */
  resume(received: number, now: number): void {
    if (!Number.isSafeInteger(received) || received < 0 || received > this.channel.lastId) {
      throw new ProtocolError(`resume claims reply ${received}, but only ${this.channel.lastId} were sent`);
    }
    this.channel.resume(received, now);
    this.released(received);
  }
}
