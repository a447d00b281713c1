/**
 * RelayBook: the relay's bookkeeping, sans-IO with the clock as input —
 * reservations (who may be reached through this relay, until when),
 * circuits (who talks to whom, bytes carried, deadlines) and the quotas on
 * both. The server asks it before doing anything and applies its verdicts;
 * `nextTimeout` / `handleTimeout(now)` drive expiry (tested on a virtual clock).
 */
import type { CircuitLimits, Refusal } from './messages.ts';

export interface RelayQuotas {
  /** Reservations held at once. */
  maxReservations: number;
  /** Circuits one peer may be part of at once (either end). */
  maxCircuitsPerPeer: number;
  /** Circuits in all. */
  maxCircuits: number;
  /** Bytes one circuit may carry, both directions together; 0: no limit. */
  circuitBytes: number;
  /** How long one circuit may last; 0: no limit. */
  circuitDurationMs: number;
  /** How long a reservation lasts unless renewed. */
  reservationTtlMs: number;
  /** Both ends of a circuit must connect within this. */
  circuitSetupMs: number;
  /** When set, only these peers (hex keys) may reserve or open circuits. */
  allow?: ReadonlySet<string>;
}

/**
 * Defaults sized for bulk region data: a mount may move gigabytes through a
 * circuit (libp2p's 128 KiB / 2 min circuits break exactly that).
 */
export const DEFAULT_QUOTAS: RelayQuotas = {
  maxReservations: 128,
  maxCircuitsPerPeer: 16,
  maxCircuits: 512,
  circuitBytes: 64 * 1024 ** 3,
  circuitDurationMs: 24 * 3600_000,
  reservationTtlMs: 3600_000,
  circuitSetupMs: 10_000,
};

export type Verdict<T> = ({ ok: true } & T) | { ok: false; refusal: Refusal; message: string };

export interface CircuitEntry {
  id: number;
  from: string;
  to: string;
  bytes: number;
  /** Deadline: setup until spliced, then the duration limit (0: none). */
  deadline: number;
  spliced: boolean;
}

export type Expiry = { kind: 'reservation'; peer: string } | { kind: 'circuit'; id: number; refusal: Refusal; message: string };

export class RelayBook {
  readonly quotas: RelayQuotas;
  private readonly reservations = new Map<string, number>(); // peer -> expiresAt
  private readonly circuits = new Map<number, CircuitEntry>();
  private readonly perPeer = new Map<string, number>();
  private nextId = 1;

  constructor(quotas: Partial<RelayQuotas> = {}) {
    this.quotas = { ...DEFAULT_QUOTAS, ...quotas };
  }

  get limits(): CircuitLimits {
    return { bytes: this.quotas.circuitBytes, durationMs: this.quotas.circuitDurationMs };
  }

  get reservationCount(): number {
    return this.reservations.size;
  }

  get circuitCount(): number {
    return this.circuits.size;
  }

  private allowed(peer: string): boolean {
    return !this.quotas.allow || this.quotas.allow.has(peer);
  }

  /** Reserve (or renew) slot `key` for `peer` (key: the peer, or the peer and a service tag). */
  reserve(peer: string, now: number, key = peer): Verdict<{ expiresAt: number }> {
    if (!this.allowed(peer)) return { ok: false, refusal: 'PERMISSION_DENIED', message: 'this peer is not on the relay\'s allow list' };
    if (!this.reservations.has(key) && this.reservations.size >= this.quotas.maxReservations) {
      return { ok: false, refusal: 'RESERVATION_REFUSED', message: `the relay holds its maximum of ${this.quotas.maxReservations} reservations` };
    }
    const expiresAt = now + this.quotas.reservationTtlMs;
    this.reservations.set(key, expiresAt);
    return { ok: true, expiresAt };
  }

  hasReservation(peer: string, now: number): boolean {
    const e = this.reservations.get(peer);
    return e !== undefined && e > now;
  }

  /** The peer's control connection is gone: its reservation goes with it. */
  release(peer: string): void {
    this.reservations.delete(peer);
  }

  /**
   * A circuit from peer `from` to peer `to`, who must hold the reservation
   * `toKey` (a peer may hold several, one per service tag; default: `to`).
   */
  openCircuit(from: string, to: string, now: number, toKey = to): Verdict<{ id: number }> {
    if (!this.allowed(from)) return { ok: false, refusal: 'PERMISSION_DENIED', message: 'this peer is not on the relay\'s allow list' };
    if (from === to) return { ok: false, refusal: 'PERMISSION_DENIED', message: 'a circuit to oneself' };
    if (!this.hasReservation(toKey, now)) return { ok: false, refusal: 'NO_RESERVATION', message: 'the target holds no reservation on this relay' };
    const max = this.quotas.maxCircuitsPerPeer;
    if ((this.perPeer.get(from) ?? 0) >= max) return { ok: false, refusal: 'RESOURCE_LIMIT_EXCEEDED', message: `this peer already has ${max} circuits` };
    if ((this.perPeer.get(to) ?? 0) >= max) return { ok: false, refusal: 'RESOURCE_LIMIT_EXCEEDED', message: `the target already has ${max} circuits` };
    if (this.circuits.size >= this.quotas.maxCircuits) return { ok: false, refusal: 'RESOURCE_LIMIT_EXCEEDED', message: `the relay carries its maximum of ${this.quotas.maxCircuits} circuits` };
    const id = this.nextId++;
    this.circuits.set(id, { id, from, to, bytes: 0, deadline: now + this.quotas.circuitSetupMs, spliced: false });
    this.bump(from, 1);
    this.bump(to, 1);
    return { ok: true, id };
  }

  circuit(id: number): CircuitEntry | undefined {
    return this.circuits.get(id);
  }

  /** Both ends arrived: the duration limit starts now. */
  spliced(id: number, now: number): void {
    const c = this.circuits.get(id);
    if (!c) return;
    c.spliced = true;
    c.deadline = this.quotas.circuitDurationMs > 0 ? now + this.quotas.circuitDurationMs : 0;
  }

  /** Account `n` bytes about to be forwarded; refuses them once the circuit would pass its quota. */
  carry(id: number, n: number): Verdict<object> {
    const c = this.circuits.get(id);
    if (!c) return { ok: false, refusal: 'CONNECTION_FAILED', message: 'no such circuit' };
    const cap = this.quotas.circuitBytes;
    if (cap > 0 && c.bytes + n > cap) return { ok: false, ...this.byteLimit(id) };
    c.bytes += n;
    return { ok: true };
  }

  /** The refusal of a circuit past its byte quota (also when a native splice found it so). */
  byteLimit(id: number): { refusal: Refusal; message: string } {
    return { refusal: 'CIRCUIT_BYTE_LIMIT', message: `circuit ${id} reached its limit of ${this.quotas.circuitBytes} bytes` };
  }

  closeCircuit(id: number): CircuitEntry | undefined {
    const c = this.circuits.get(id);
    if (!c) return undefined;
    this.circuits.delete(id);
    this.bump(c.from, -1);
    this.bump(c.to, -1);
    return c;
  }

  private bump(peer: string, d: number): void {
    const n = (this.perPeer.get(peer) ?? 0) + d;
    if (n <= 0) this.perPeer.delete(peer);
    else this.perPeer.set(peer, n);
  }

  /** The earliest moment `handleTimeout` has work, or undefined. */
  nextTimeout(): number | undefined {
    let t = Infinity;
    for (const e of this.reservations.values()) t = Math.min(t, e);
    for (const c of this.circuits.values()) if (c.deadline > 0) t = Math.min(t, c.deadline);
    return t === Infinity ? undefined : t;
  }

  /** Expire what is due at `now`: reservations removed, circuits removed and returned with their refusal. */
  handleTimeout(now: number): Expiry[] {
    const out: Expiry[] = [];
    for (const [peer, e] of this.reservations) {
      if (e <= now) {
        this.reservations.delete(peer);
        out.push({ kind: 'reservation', peer });
      }
    }
    for (const c of [...this.circuits.values()]) {
      if (c.deadline > 0 && c.deadline <= now) {
        this.closeCircuit(c.id);
        out.push(
          c.spliced
            ? { kind: 'circuit', id: c.id, refusal: 'CIRCUIT_TIME_LIMIT', message: `circuit ${c.id} reached its limit of ${this.quotas.circuitDurationMs} ms` }
            : { kind: 'circuit', id: c.id, refusal: 'CONNECTION_FAILED', message: `circuit ${c.id}: both ends did not connect within ${this.quotas.circuitSetupMs} ms` },
        );
      }
    }
    return out;
  }
}
