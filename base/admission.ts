/**
 * AdmissionGate: who may hold a connection slot on a listener, so that idle,
 * slow or flooding peers cannot starve real ones.
 *
 * A connection is *pending* from accept until it has proved itself (finished
 * its handshake, sent a valid HELLO), then *active*. Pending slots are the
 * ones an attacker can take for free, so they are bounded per source and in
 * total, and the gate is fair when full: a newcomer is never turned away for
 * lack of a pending slot; instead the oldest pending connection of the
 * source that holds the most pending slots is evicted (its own oldest one if
 * the newcomer's source is at its limit). A source that opens connections
 * and sits on them only ever pushes out its own, and everyone else keeps at
 * least an equal share. Active connections are capped per source and in
 * total (refused beyond, never evicted: they did prove themselves).
 *
 * Sources are IP addresses (an IPv6 address counts by its /64, which one
 * host usually owns whole); a unix socket is one source.
 */

export interface AdmissionLimits {
  /** Connections still handshaking, in total. */
  maxPending: number;
  /** Connections still handshaking, per source. */
  maxPendingPerSource: number;
  /** Connections past their handshake, in total. */
  maxActive: number;
  /** Connections past their handshake, per source. */
  maxActivePerSource: number;
}

export interface AdmissionStats {
  admitted: number;
  evicted: number;
  refused: number;
}

/** The source key of an address: IPv4 as is, IPv6 by its /64, IPv4-mapped IPv6 as IPv4. */
export function sourceOf(address: string | undefined): string {
  if (!address) return 'local';
  let a = address.startsWith('[') ? address.slice(1, address.indexOf(']')) : address;
  if (a.startsWith('::ffff:') && a.includes('.')) return a.slice(7);
  if (!a.includes(':')) return a;
  a = a.split('%')[0]!;
  // Expand "::" enough to take the first four groups.
  const [head, tail] = a.includes('::') ? a.split('::') : [a, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(Math.max(0, 8 - h.length - t.length)).fill('0'), ...t];
  return `${groups.slice(0, 4).map((g) => (g || '0').toLowerCase().replace(/^0+(?=.)/, '')).join(':')}::/64`;
}

/** The source key of a "host:port" / "[v6]:port" address (as transports report a peer). */
export function sourceOfHostPort(address: string): string {
  if (address.startsWith('[')) return sourceOf(address.slice(1, address.indexOf(']')));
  const i = address.lastIndexOf(':');
  // One colon: IPv4 (or a name) with a port; more: a bare IPv6 address.
  return sourceOf(i > 0 && address.indexOf(':') === i ? address.slice(0, i) : address);
}

export class AdmissionTicket {
  /** Set by the gate; for ordering evictions. */
  readonly since: number;
  state: 'pending' | 'active' | 'released' = 'pending';
  private readonly gate: AdmissionGate;
  readonly source: string;
  /** Called (once) if the gate evicts this pending connection to admit a newer one. */
  readonly evict: () => void;

  constructor(gate: AdmissionGate, source: string, evict: () => void, seq: number) {
    this.gate = gate;
    this.source = source;
    this.evict = evict;
    this.since = seq;
  }

  /** The connection proved itself: move it to an active slot. False (and released) if the active limits are reached. */
  promote(): boolean {
    return this.gate.promote(this);
  }

  /** The connection is gone (or refused): free its slot. Idempotent. */
  release(): void {
    this.gate.release(this);
  }
}

export class AdmissionGate {
  readonly limits: AdmissionLimits;
  readonly stats: AdmissionStats = { admitted: 0, evicted: 0, refused: 0 };
  private readonly pending = new Map<string, AdmissionTicket[]>(); // per source, oldest first
  private readonly active = new Map<string, number>();
  private pendingCount = 0;
  private activeCount = 0;
  private seq = 0;

  constructor(limits: AdmissionLimits) {
    for (const [k, v] of Object.entries(limits)) {
      if (!Number.isInteger(v) || v < 1) throw new RangeError(`admission limit ${k} must be a positive integer, not ${v}`);
    }
    this.limits = { ...limits };
  }

  get pendingConnections(): number {
    return this.pendingCount;
  }

  get activeConnections(): number {
    return this.activeCount;
  }

  /** Pending and active slots a source holds. */
  held(source: string): { pending: number; active: number } {
    return { pending: this.pending.get(source)?.length ?? 0, active: this.active.get(source) ?? 0 };
  }

  /**
   * A connection arrived from `source`. Returns its ticket, or undefined if
   * the source already holds all the active slots it may have. Never fails
   * for lack of pending slots: an older pending connection is evicted.
   */
  admit(source: string, evict: () => void): AdmissionTicket | undefined {
    const { maxPending, maxPendingPerSource, maxActive, maxActivePerSource } = this.limits;
    const act = this.active.get(source) ?? 0;
    if (act >= maxActivePerSource || this.activeCount >= maxActive) {
      this.stats.refused++;
      return undefined;
    }
    const mine = this.pending.get(source);
    if (mine && mine.length >= maxPendingPerSource) this.evictOldest(source);
    else if (this.pendingCount >= maxPending) this.evictOldest(this.heaviestSource());
    const t = new AdmissionTicket(this, source, evict, this.seq++);
    let list = this.pending.get(source);
    if (!list) this.pending.set(source, (list = []));
    list.push(t);
    this.pendingCount++;
    this.stats.admitted++;
    return t;
  }

  /** @internal (AdmissionTicket.promote) */
  promote(t: AdmissionTicket): boolean {
    if (t.state !== 'pending') return t.state === 'active';
    this.dropPending(t);
    const act = this.active.get(t.source) ?? 0;
    if (act >= this.limits.maxActivePerSource || this.activeCount >= this.limits.maxActive) {
      t.state = 'released';
      this.stats.refused++;
      return false;
    }
    t.state = 'active';
    this.active.set(t.source, act + 1);
    this.activeCount++;
    return true;
  }

  /** @internal (AdmissionTicket.release) */
  release(t: AdmissionTicket): void {
    if (t.state === 'pending') this.dropPending(t);
    else if (t.state === 'active') {
      const n = (this.active.get(t.source) ?? 1) - 1;
      if (n > 0) this.active.set(t.source, n);
      else this.active.delete(t.source);
      this.activeCount--;
    }
    t.state = 'released';
  }

  private dropPending(t: AdmissionTicket): void {
    const list = this.pending.get(t.source);
    const i = list ? list.indexOf(t) : -1;
    if (i < 0) return;
    list!.splice(i, 1);
    if (list!.length === 0) this.pending.delete(t.source);
    this.pendingCount--;
  }

  /** The source with the most pending slots; among equals, the one whose oldest is oldest. */
  private heaviestSource(): string {
    let best: string | undefined;
    let bestLen = 0;
    let bestSince = Infinity;
    for (const [src, list] of this.pending) {
      const since = list[0]!.since;
      if (list.length > bestLen || (list.length === bestLen && since < bestSince)) {
        best = src;
        bestLen = list.length;
        bestSince = since;
      }
    }
    return best!;
  }

  private evictOldest(source: string): void {
    const t = this.pending.get(source)?.[0];
    if (!t) return;
    this.dropPending(t);
    t.state = 'released';
    this.stats.evicted++;
    try {
      t.evict();
    } catch {
      // The evicted connection's teardown is its own business.
    }
  }
}
