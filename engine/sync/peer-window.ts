/**
 * PeerWindow: how many chunk requests one peer may have in flight, sized
 * from what the peer has measurably delivered (sans-IO: every event takes
 * `now`, in ms, as input; nothing here reads a clock or sets a timer).
 *
 * The model is BBR's in miniature. Each completed request yields a
 * delivery-rate sample: the bytes the peer delivered between that request's
 * start and its end, over that time (so pipelined requests measure the
 * pipe, not one request). The bottleneck rate is the windowed maximum of
 * those samples, the path's round trip the windowed minimum of request
 * latencies; the window is `gain × rate × minRtt / chunkBytes` requests —
 * enough to keep the peer's pipe full, no more — clamped to
 * [1, maxWindow]. Before any sample the window is `initial`.
 *
 * So a fast seeder gets a deep window and a slow one a shallow one, and a
 * scheduler that also ranks peers by `expectedMs` (when the next request
 * would finish) sends a slow seeder only what it can deliver in time: it
 * never holds the pull back behind chunks it is still sending.
 *
 * A failure halves the window until the next good sample (the peer is
 * treated as congested); old samples age out after `filterMs`, so a peer
 * that slows down is noticed.
 */

export interface PeerWindowOptions {
  /** Bytes of one request (a chunk). */
  chunkBytes: number;
  /** Window before any sample (default 4). */
  initial?: number;
  maxWindow?: number;
  /** Window = gain × BDP (default 2: room for the rate to grow). */
  gain?: number;
  /** How long a rate or RTT sample counts (default 10 000 ms). */
  filterMs?: number;
}

interface Sample {
  at: number;
  value: number;
}

export class PeerWindow {
  private readonly chunkBytes: number;
  private readonly initial: number;
  private readonly maxWindow: number;
  private readonly gain: number;
  private readonly filterMs: number;
  /** Bytes delivered so far (completed requests). */
  private delivered = 0;
  private readonly starts = new Map<number, { at: number; delivered: number }>();
  private nextId = 1;
  private rates: Sample[] = [];
  private rtts: Sample[] = [];
  private penalty = 1;
  inFlight = 0;

  constructor(o: PeerWindowOptions) {
    this.chunkBytes = Math.max(1, o.chunkBytes);
    this.initial = o.initial ?? 4;
    this.maxWindow = o.maxWindow ?? 32;
    this.gain = o.gain ?? 2;
    this.filterMs = o.filterMs ?? 10_000;
  }

  /** A request starts; returns its ticket for `done` / `failed`. */
  start(now: number): number {
    const id = this.nextId++;
    this.starts.set(id, { at: now, delivered: this.delivered });
    this.inFlight++;
    return id;
  }

  /** Request `id` delivered `bytes`. */
  done(id: number, now: number, bytes: number): void {
    const s = this.starts.get(id);
    if (!s) return;
    this.starts.delete(id);
    this.inFlight--;
    this.delivered += bytes;
    const elapsed = Math.max(0.01, now - s.at);
    push(this.rates, { at: now, value: (this.delivered - s.delivered) / elapsed }, now, this.filterMs, (a, b) => a >= b);
    push(this.rtts, { at: now, value: elapsed }, now, this.filterMs, (a, b) => a <= b);
    this.penalty = 1;
  }

  /** Request `id` failed or was abandoned. */
  failed(id: number, _now: number): void {
    if (!this.starts.delete(id)) return;
    this.inFlight--;
    this.penalty = Math.min(this.penalty * 2, 1024);
  }

  /** Bottleneck delivery rate, bytes per ms (0: no sample yet). */
  rate(now: number): number {
    expire(this.rates, now, this.filterMs);
    return this.rates[0]?.value ?? 0;
  }

  /** Shortest request latency seen recently, ms (undefined: no sample yet). */
  minRtt(now: number): number | undefined {
    expire(this.rtts, now, this.filterMs);
    return this.rtts[0]?.value;
  }

  /** Requests this peer may have in flight now. */
  window(now: number): number {
    const rate = this.rate(now);
    const rtt = this.minRtt(now);
    const base = rate > 0 && rtt !== undefined ? Math.ceil((this.gain * rate * rtt) / this.chunkBytes) : this.initial;
    return Math.max(1, Math.min(this.maxWindow, Math.floor(base / this.penalty)));
  }

  hasRoom(now: number): boolean {
    return this.inFlight < this.window(now);
  }

  /**
   * When one more request sent now would complete, ms from now: the queue
   * ahead of it drained at the measured rate plus one round trip. Unknown
   * peers are optimistic (they get tried, then measured).
   */
  expectedMs(now: number): number {
    const rate = this.rate(now);
    const rtt = this.minRtt(now) ?? 0;
    if (rate <= 0) return rtt;
    return rtt + ((this.inFlight + 1) * this.chunkBytes) / rate;
  }
}

/**
 * Monotonic-deque windowed extreme: `better(a, b)` keeps `a` in front of a
 * newer `b` only if a is at least as good; the front is the extreme of the
 * last `filterMs`.
 */
function push(q: Sample[], s: Sample, now: number, filterMs: number, better: (a: number, b: number) => boolean): void {
  while (q.length > 0 && !better(q[q.length - 1]!.value, s.value)) q.pop();
  q.push(s);
  expire(q, now, filterMs);
}

function expire(q: Sample[], now: number, filterMs: number): void {
  while (q.length > 1 && now - q[0]!.at > filterMs) q.shift();
  // A lone old sample still counts (better than nothing) until a new one replaces it.
}
