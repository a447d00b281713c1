/**
 * The sessions a node keeps so that a broken link can be resumed: each has
 * an id and a resume token handed to the peer when it opens, and is bound to
 * the peer's public key. When the link breaks the session is suspended, and
 * kept for `ttlMs`; a new link from the *same* key presenting the id and the
 * token takes it back (its transaction channels then replay what the other
 * side has not acknowledged). Anything else — an unknown or expired id,
 * another key, a wrong token — is refused with EACCES, and the peer starts a
 * new session.
 *
 * Bounded: at most `maxSessions` node-wide and `maxPerPeer` per peer key;
 * when either is full, the suspended session (of that peer, for the per-peer
 * bound) that would expire first makes room, and when all are live a new
 * one is refused (EBUSY) rather than grow. `onDrop` hears of every session
 * that leaves the table other than by `close` (expired or evicted), so its
 * owner can free what the state holds. Sans-IO: the clock is an input.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { QuicmapError } from '../../base/errors.ts';

export interface ResumeCredentials {
  /** 16 random bytes naming the session. */
  sessionId: Uint8Array;
  /** 32 random bytes only the two peers know. */
  token: Uint8Array;
}

interface Entry<S> {
  peerKey: Uint8Array;
  peerHex: string;
  token: Uint8Array;
  state: S;
  /** undefined while a link is attached; else when the suspended session is dropped. */
  expiresAt: number | undefined;
}

const keyOf = (id: Uint8Array): string => Buffer.from(id).toString('hex');

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

export class SessionTable<S> {
  private readonly sessions = new Map<string, Entry<S>>();
  private readonly maxSessions: number;
  private readonly maxPerPeer: number;
  private readonly ttlMs: number;
  private readonly onDrop: ((state: S, why: 'expired' | 'evicted') => void) | undefined;

  constructor(opts: { maxSessions: number; ttlMs: number; maxPerPeer?: number; onDrop?: (state: S, why: 'expired' | 'evicted') => void }) {
    if (!(opts.maxSessions >= 1) || !(opts.ttlMs >= 0)) throw new Error('SessionTable needs maxSessions ≥ 1 and ttlMs ≥ 0');
    this.maxSessions = opts.maxSessions;
    this.maxPerPeer = Math.max(1, Math.min(opts.maxPerPeer ?? opts.maxSessions, opts.maxSessions));
    this.ttlMs = opts.ttlMs;
    this.onDrop = opts.onDrop;
  }

  get ttl(): number {
    return this.ttlMs;
  }

  /** Sessions held for `peerKey` (live and suspended). */
  countFor(peerKey: Uint8Array): number {
    const hex = keyOf(peerKey);
    let n = 0;
    for (const e of this.sessions.values()) if (e.peerHex === hex) n++;
    return n;
  }

  get size(): number {
    return this.sessions.size;
  }

  /** A new live session for `peerKey`; returns what the peer must present to resume it. */
  open(peerKey: Uint8Array, state: S, now: number): ResumeCredentials {
    this.handleTimeout(now);
    const peerHex = keyOf(peerKey);
    if (this.countFor(peerKey) >= this.maxPerPeer && !this.evictOneSuspended(peerHex)) {
      throw new QuicmapError('EBUSY', `session limit reached for this peer (${this.maxPerPeer} live sessions)`);
    }
    if (this.sessions.size >= this.maxSessions && !this.evictOneSuspended()) {
      throw new QuicmapError('EBUSY', `session limit reached (${this.maxSessions} live sessions)`);
    }
    const creds = { sessionId: new Uint8Array(randomBytes(16)), token: new Uint8Array(randomBytes(32)) };
    this.sessions.set(keyOf(creds.sessionId), { peerKey: Uint8Array.from(peerKey), peerHex, token: creds.token, state, expiresAt: undefined });
    return creds;
  }

  /** The link of a session broke: keep it for `ttlMs` in case the peer comes back. */
  suspend(sessionId: Uint8Array, now: number): void {
    const e = this.sessions.get(keyOf(sessionId));
    if (e && e.expiresAt === undefined) e.expiresAt = now + this.ttlMs;
  }

  /** Take a suspended session back for a new link; throws EACCES unless key, id and token all match. */
  resume(peerKey: Uint8Array, sessionId: Uint8Array, token: Uint8Array, now: number): S {
    this.handleTimeout(now);
    const e = this.sessions.get(keyOf(sessionId));
    // One answer for every refusal: a prober learns nothing about which part was wrong.
    const refuse = () => new QuicmapError('EACCES', 'no such session to resume (unknown, expired, or not yours)');
    if (!e || !sameBytes(e.peerKey, peerKey) || !sameBytes(e.token, token)) throw refuse();
    // A session still attached (its old link not yet noticed dead) is taken
    // over too: the new link proves the same key and token.
    e.expiresAt = undefined;
    return e.state;
  }

  /** End a session for good (closed cleanly, or its state is gone). */
  close(sessionId: Uint8Array): void {
    this.sessions.delete(keyOf(sessionId));
  }

  handleTimeout(now: number): void {
    for (const [k, e] of this.sessions) {
      if (e.expiresAt !== undefined && now >= e.expiresAt) {
        this.sessions.delete(k);
        this.onDrop?.(e.state, 'expired');
      }
    }
  }

  nextTimeout(): number | undefined {
    let t: number | undefined;
    for (const e of this.sessions.values()) if (e.expiresAt !== undefined && (t === undefined || e.expiresAt < t)) t = e.expiresAt;
    return t;
  }

  private evictOneSuspended(peerHex?: string): boolean {
    let victim: string | undefined;
    let soonest = Number.POSITIVE_INFINITY;
    for (const [k, e] of this.sessions) {
      if (peerHex !== undefined && e.peerHex !== peerHex) continue;
      if (e.expiresAt !== undefined && e.expiresAt < soonest) {
        soonest = e.expiresAt;
        victim = k;
      }
    }
    if (victim === undefined) return false;
    const e = this.sessions.get(victim)!;
    this.sessions.delete(victim);
    this.onDrop?.(e.state, 'evicted');
    return true;
  }
}
