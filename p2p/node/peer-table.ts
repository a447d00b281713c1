/**
 * The node's peer table: for each peer id, the addresses it is known by,
 * when it was last seen, the path in use (direct, or via which relay), the
 * dial time of the current path as its round-trip estimate, and the bytes
 * exchanged (in all, and per kind of path: direct, relayed, hole punched).
 * Path changes are kept (bounded) so `status` can show an upgrade.
 */
import { newMeter, type Meter } from './metered.ts';

export type PathKind = 'direct' | 'relay';

/** How a peer is reached, as `status` reports it: a hole-punched path is direct but made through a relay. */
export type PathVia = 'direct' | 'relayed' | 'punched';
export const PATH_VIAS: readonly PathVia[] = ['direct', 'relayed', 'punched'];

export function pathVia(p: PeerPath): PathVia {
  return p.kind === 'relay' ? 'relayed' : p.punched ? 'punched' : 'direct';
}

export interface PeerPath {
  kind: PathKind;
  /** The transport used ("quic", "tcp", "relay"). */
  transport: string;
  /** The address dialled or accepted on (a relay address for relayed paths). */
  address: string;
  /** A direct path made by hole punching through a relay. */
  punched?: boolean;
}

export interface PeerEntry {
  id: string;
  addresses: Set<string>;
  lastSeen: number;
  path: PeerPath | undefined;
  /** Time the current path took to dial (connect + handshake), ms: an RTT estimate (one to two round trips). */
  rttMs: number | undefined;
  /** The current connection's own RTT measurement (QUIC's smoothed RTT, the TCP mux's keep-alive round trip), when it has one. */
  liveRtt: (() => number | undefined) | undefined;
  meter: Meter;
  /** The same bytes split by the kind of path they took. */
  byVia: Record<PathVia, Meter>;
  /** Path changes, newest last (at most 16). */
  history: Array<{ at: number; from: string; to: string }>;
}

function describe(p: PeerPath | undefined): string {
  if (!p) return 'none';
  return p.kind === 'direct' ? `direct ${p.transport}://${p.address}${p.punched ? ' (hole punched)' : ''}` : `relay ${p.address}`;
}

export class PeerTable {
  private readonly peers = new Map<string, PeerEntry>();

  get(id: string): PeerEntry {
    let e = this.peers.get(id);
    if (!e) {
      e = { id, addresses: new Set(), lastSeen: 0, path: undefined, rttMs: undefined, liveRtt: undefined, meter: newMeter(), byVia: { direct: newMeter(), relayed: newMeter(), punched: newMeter() }, history: [] };
      this.peers.set(id, e);
    }
    return e;
  }

  /** A connection to `id` is up on `path`. Returns the entry; a changed path is recorded in its history. */
  connected(id: string, path: PeerPath, rttMs: number | undefined, now = Date.now(), conn?: object): PeerEntry {
    const e = this.get(id);
    const before = describe(e.path);
    const after = describe(path);
    if (before !== after) {
      e.history.push({ at: now, from: before, to: after });
      if (e.history.length > 16) e.history.shift();
    }
    e.path = path;
    e.rttMs = rttMs;
    e.liveRtt = conn && 'rttMs' in conn ? () => (conn as { rttMs?: number }).rttMs : undefined;
    e.lastSeen = now;
    e.addresses.add(path.address);
    return e;
  }

  /** The meters a connection to this peer on `path` feeds: the peer's total and its path kind's. */
  meters(e: PeerEntry, path: PeerPath): Meter[] {
    return [e.meter, e.byVia[pathVia(path)]];
  }

  seen(id: string, now = Date.now()): void {
    this.get(id).lastSeen = now;
  }

  all(): PeerEntry[] {
    return [...this.peers.values()];
  }
}

export { describe as describePath };
