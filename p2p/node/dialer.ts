/**
 * PathDialer: how a mount reaches its sharer, cheapest path first.
 *
 *   1. the ticket's address hints, direct;
 *   2. the sharer's DHT record (signed, validated): its endpoints, direct;
 *   3. the relays that record lists: a circuit through each in turn.
 *
 * Every connection is metered (per peer, per region) and its path goes into
 * the peer table. While the path is a relay, the dialer keeps probing the
 * direct endpoints; once one answers it waits for the relayed link to go
 * quiet, closes it, and hands the direct connection to the reconnect that
 * follows (the upgrade; `status` shows the path change).
 */
import { QuicmapError } from '../../base/errors.ts';
import { base32Encode } from '../../crypto/identity.ts';
import type { Ticket } from '../../crypto/ticket.ts';
import type { Connection, Transport } from '../../transports/transport.ts';
import type { DhtClient } from '../dht/client.ts';
import type { Endpoint, RegionRecord } from '../dht/record.ts';
import { dialOrder, type TransportName } from '../../crypto/endpoint.ts';
import { formatRelayAddress, parseRelayAddress } from '../relay/address.ts';
import { canPunchTransport } from '../../transports/udp-punch.ts';
import { isIP } from 'node:net';
import { parseHostPort } from '../../transports/util.ts';

/** The IP family of a relay's address (the QUIC socket that punches must be of it). */
const familyOf = (relay: string): 4 | 6 => (isIP(parseHostPort(parseRelayAddress(relay).address).host) === 6 ? 6 : 4);
import type { RelayTransport } from '../relay/transport.ts';
import { meterConnection, type Meter } from './metered.ts';
import type { PeerPath, PeerTable } from './peer-table.ts';

export interface PathDialerOptions {
  ticket: Ticket;
  /** The node's endpoint for a transport name (opened on first use). */
  transport: (name: TransportName) => Promise<Transport>;
  relay: RelayTransport;
  dht: DhtClient | undefined;
  peers: PeerTable;
  /** Extra meters the connections feed (the mount's own). */
  meters: Meter[];
  /** Deadline of one direct dial. Default 3 000 ms. */
  directTimeoutMs?: number;
  /** Deadline of one relayed dial. Default 5 000 ms. */
  relayTimeoutMs?: number;
  /** How often to probe for a direct path while relayed; 0: never. Default 5 000 ms. */
  upgradeIntervalMs?: number;
  /** Try hole punching through the relay while relayed (default true). */
  punch?: boolean;
  /** Deadline of the QUIC handshake after a punch (the first Initial may meet a NAT not yet open). Default 6 000 ms (the Initial is sent three times by then). */
  punchDialTimeoutMs?: number;
  /** A relayed link silent for this long is idle enough to move. Default 300 ms. */
  quietMs?: number;
  log?: (message: string) => void;
}

export class PathDialer {
  private readonly o: PathDialerOptions;
  private readonly sharer: Uint8Array;
  private readonly sharerId: string;
  private record: RegionRecord | undefined;
  private current: { conn: Connection; path: PeerPath } | undefined;
  private stash: { conn: Connection; path: PeerPath; rttMs: number } | undefined;
  private upgradeTimer: NodeJS.Timeout | undefined;
  private firstProbe: NodeJS.Timeout | undefined;
  /** When the direct endpoints last failed before a relayed path was taken (0: not just now). */
  private directFailedAt = 0;
  private probing = false;
  private lastCode: import('../../base/errors.ts').ErrorCode | undefined;
  private closed = false;
  private readonly log: (m: string) => void;
  /** Path upgrades done (relay -> direct). */
  upgrades = 0;
  /** Outcome of the last hole punch attempt, for status. */
  punch: string | undefined;
  private punchAttempts = 0;
  private lastPunchAt = 0;

  constructor(o: PathDialerOptions) {
    this.o = o;
    this.sharer = o.ticket.claims.sharer;
    this.sharerId = base32Encode(this.sharer);
    this.log = o.log ?? (() => {});
  }

  /** The sharer's DHT record, once looked up (validated). */
  get dhtRecord(): RegionRecord | undefined {
    return this.record;
  }

  get path(): PeerPath | undefined {
    return this.current?.path;
  }

  private hints(): Endpoint[] {
    // QUIC first, then the ticket's other endpoints (WebTransport, TCP) in its order.
    return dialOrder(this.o.ticket.claims.endpoints);
  }

  private async lookup(): Promise<RegionRecord | undefined> {
    if (!this.o.dht) return this.record;
    try {
      const v = await this.o.dht.get({ sharer: this.sharer, regionId: this.o.ticket.claims.regionId });
      if (v?.ok) this.record = v.record;
      else if (!v) this.log(`dht: no record for this region yet`);
    } catch (e) {
      this.log(`dht: lookup failed: ${(e as Error).message}`);
    }
    return this.record;
  }

  /**
   * `strict`: a peer with another key at one of these addresses is an error
   * (the ticket's hints); otherwise (addresses from the DHT, which may be
   * private addresses meaning another host here) it is skipped.
   */
  private async dialDirect(eps: Endpoint[], errors: string[], strict = false): Promise<{ conn: Connection; path: PeerPath; rttMs: number } | undefined> {
    const seen = new Set<string>();
    for (const ep of eps) {
      const key = `${ep.transport}://${ep.address}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const t0 = performance.now();
      try {
        const t = await this.o.transport(ep.transport);
        const conn = await t.dial(ep.address, this.sharer, { timeoutMs: this.o.directTimeoutMs ?? 3_000 });
        return { conn, path: { kind: 'direct', transport: ep.transport, address: ep.address }, rttMs: performance.now() - t0 };
      } catch (e) {
        if (strict && e instanceof QuicmapError && e.code === 'EACCES') {
          throw new QuicmapError('EACCES', `the peer at ${ep.address} is not the sharer named in the ticket (${this.sharerId}): ${e.message}`);
        }
        errors.push(`${key}: ${(e as Error).message}`);
        if (e instanceof QuicmapError) this.lastCode = e.code;
      }
    }
    return undefined;
  }

  /** What RemoteRegion calls to (re)connect. */
  connect = async (): Promise<Connection> => {
    if (this.closed) throw new QuicmapError('ESHUTDOWN', 'mount closed');
    const stash = this.stash;
    this.stash = undefined;
    if (stash) return this.adopt(stash);
    const errors: string[] = [];
    this.lastCode = undefined;
    let got = await this.dialDirect(this.hints(), errors, true);
    const record = got ? this.record : await this.lookup();
    if (!got && record) got = await this.dialDirect(record.endpoints, errors);
    if (!got && record) {
      for (const r of record.relays) {
        const address = formatRelayAddress({ ...r, tag: this.o.ticket.claims.regionId });
        const t0 = performance.now();
        try {
          const conn = await this.o.relay.dial(address, this.sharer, { timeoutMs: this.o.relayTimeoutMs ?? 5_000 });
          got = { conn, path: { kind: 'relay', transport: 'relay', address }, rttMs: performance.now() - t0 };
          break;
        } catch (e) {
          if (e instanceof QuicmapError && e.code === 'EACCES') throw e;
          errors.push(`relay ${r.address}: ${(e as Error).message}`);
          if (e instanceof QuicmapError) this.lastCode = e.code;
        }
      }
    }
    if (!got) {
      if (errors.length === 0) {
        throw new QuicmapError('EIO', this.o.dht ? 'the ticket has no addresses and the DHT has no record of this region (is the sharer running with --dht?)' : 'ticket names no address to reach the sharer (mount with --dht to look it up)');
      }
      throw new QuicmapError(this.lastCode ?? 'EIO', `cannot reach the sharer ${this.sharerId.slice(0, 12)}: ${errors.join('; ')}`);
    }
    return this.adopt(got, errors);
  };

  private adopt(got: { conn: Connection; path: PeerPath; rttMs: number }, fellBack: string[] = []): Connection {
    const entry = this.o.peers.connected(this.sharerId, got.path, got.rttMs, Date.now(), got.conn);
    const conn = meterConnection(got.conn, [...this.o.peers.meters(entry, got.path), ...this.o.meters]);
    this.current = { conn, path: got.path };
    this.log(`path to sharer: ${got.path.kind === 'direct' ? `direct ${got.path.transport}://${got.path.address}` : `relay ${got.path.address}`} (${got.rttMs.toFixed(1)} ms to connect${fellBack.length ? `; fell back: ${fellBack.join('; ')}` : ''})`);
    clearInterval(this.upgradeTimer);
    clearTimeout(this.firstProbe);
    const every = this.o.upgradeIntervalMs ?? 5_000;
    if (got.path.kind === 'relay' && every > 0) {
      // The direct endpoints just failed (fellBack): the first probe, soon, goes straight to a hole punch.
      this.directFailedAt = fellBack.length ? Date.now() : 0;
      this.upgradeTimer = setInterval(() => void this.probe(), every);
      this.upgradeTimer.unref();
      this.firstProbe = setTimeout(() => void this.probe(), Math.min(1_000, every));
      this.firstProbe.unref();
    }
    return conn;
  }

  /** While relayed: try the direct endpoints; on success, move over when the link is quiet. */
  private async probe(): Promise<void> {
    if (this.probing || this.closed || this.current?.path.kind !== 'relay') return;
    this.probing = true;
    try {
      const record = await this.lookup();
      // Endpoints that failed less than an interval ago are not dialled again before the punch.
      const recent = Date.now() - this.directFailedAt < (this.o.upgradeIntervalMs ?? 5_000);
      let direct = recent ? undefined : await this.dialDirect([...this.hints(), ...(record?.endpoints ?? [])], []);
      if (!direct) direct = await this.tryPunch();
      if (!direct) return;
      const relayed = this.current;
      if (this.closed || relayed?.path.kind !== 'relay') {
        await direct.conn.close();
        return;
      }
      clearInterval(this.upgradeTimer);
      clearTimeout(this.firstProbe);
      this.stash = direct;
      const meter = this.o.peers.get(this.sharerId).meter;
      const quiet = this.o.quietMs ?? 300;
      while (!this.closed && performance.now() - meter.lastActivity < quiet) await new Promise((r) => setTimeout(r, quiet / 3));
      this.upgrades++;
      this.log(`path upgrade: a direct path to the sharer answers (${direct.path.transport}://${direct.path.address}${direct.path.punched ? ', hole punched' : ''}); leaving relay ${relayed.path.address}`);
      await relayed.conn.close();
    } catch (e) {
      this.log(`direct path probe: ${(e as Error).message}`);
    } finally {
      this.probing = false;
    }
  }

  /**
   * No direct endpoint answers: ask the relay in use to coordinate a hole
   * punch (a few tries, then once a minute): over QUIC first, from the
   * socket our QUIC dials use (where the transport can: the ngtcp2 one),
   * else or then by TCP simultaneous open. A failure keeps the relayed path.
   */
  private async tryPunch(): Promise<{ conn: Connection; path: PeerPath; rttMs: number } | undefined> {
    const via = this.current?.path;
    if (!via || via.kind !== 'relay' || (this.o.punch ?? true) === false) return undefined;
    const now = Date.now();
    if (this.punchAttempts >= 3 && now - this.lastPunchAt < 60_000) return undefined;
    this.punchAttempts++;
    this.lastPunchAt = now;
    const failures: string[] = [];
    const t0 = performance.now();
    const quic = await this.o.transport('quic').catch(() => undefined);
    const socket = quic && canPunchTransport(quic) ? quic.dialerPunchSocket(familyOf(via.address)) : undefined;
    if (quic && socket) {
      try {
        const r = await this.o.relay.punchQuic(via.address, this.sharer, socket, (a) => quic.dial(a, this.sharer, { timeoutMs: this.o.punchDialTimeoutMs ?? 6_000 }));
        this.punch = `succeeded over quic (${r.address}; we were seen at ${r.observed})`;
        return { conn: r.conn, path: { kind: 'direct', transport: 'quic', address: r.address, punched: true }, rttMs: performance.now() - t0 };
      } catch (e) {
        if (this.closed || this.current?.path.kind !== 'relay') return undefined;
        failures.push(`quic: ${(e as Error).message}`);
        this.log(`hole punch over quic through ${via.address} failed: ${(e as Error).message}; trying tcp`);
      }
    }
    const t1 = performance.now();
    try {
      const conn = await this.o.relay.punch(via.address, this.sharer);
      this.punch = `succeeded over tcp (${conn.remoteAddress})${failures.length ? `; ${failures.join('; ')}` : ''}`;
      return { conn, path: { kind: 'direct', transport: 'tcp', address: conn.remoteAddress, punched: true }, rttMs: performance.now() - t1 };
    } catch (e) {
      failures.push(`tcp: ${(e as Error).message}`);
      this.punch = `failed, staying on the relay: ${failures.join('; ')}`;
      this.log(`hole punch through ${via.address}: ${this.punch}`);
      return undefined;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.upgradeTimer);
    clearTimeout(this.firstProbe);
    await this.stash?.conn.close();
    this.stash = undefined;
  }
}
