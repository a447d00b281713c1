/**
 * QuicmapNode: one process's place in the swarm. It owns one identity, one
 * endpoint per transport (opened on first use, shared by all its regions
 * and mounts), the relay client, at most one DHT client, the peer table,
 * and the regions it shares and mounts; `share` and `mount` are operations
 * on it, `status()` is what the control socket answers.
 *
 * Sharing with a DHT publishes the region's signed record (endpoints,
 * relays) and re-publishes it; with relays it reserves a slot on each and
 * serves the circuits that come in like any other connection. Mounting goes
 * through a PathDialer (ticket hints, then the DHT record's endpoints, then
 * its relays; upgrade from relay to direct).
 *
 * Each shared region has its own listener per transport (the wire protocol
 * names the region in HELLO after the connection is set up, and the region
 * server serves one region) and its own relay reservation, tagged with the
 * region id so a relay routes each circuit to the right one.
 */
import { QuicmapError } from '../../base/errors.ts';
import { base32Encode, type Identity } from '../../crypto/identity.ts';
import { regionIdText } from '../../crypto/grant.ts';
import type { TransportName } from '../../crypto/endpoint.ts';
import { parseTicket } from '../../crypto/ticket.ts';
import type { ReadWriterAt } from '../../engine/rwat.ts';
import type { Listener, Transport } from '../../transports/transport.ts';
import { DhtClient, type DhtBootstrap } from '../dht/client.ts';
import { RecordPublisher } from '../dht/publisher.ts';
import { topicFor } from '../dht/topic.ts';
import type { RegionRecord } from '../dht/record.ts';
import { mountTicket, type MountTicketOptions, type MountedTicket } from '../mount.ts';
import { formatRelayAddress, parseRelayAddress } from '../relay/address.ts';
import { RelayTransport } from '../relay/transport.ts';
import { shareRegion, type ShareOptions, type SharedRegion } from '../share.ts';
import { openTransport } from '../transports.ts';
import { ControlServer } from './control.ts';
import { PathDialer } from './dialer.ts';
import { reachableAddresses } from './endpoints.ts';
import { meterListener, newMeter, type Meter } from './metered.ts';
import { PATH_VIAS, PeerTable, describePath, pathVia, type PathVia } from './peer-table.ts';
import type { NodeStatus } from './status.ts';
import { canPunchListener, type PunchListener } from '../../transports/udp-punch.ts';

/** How long a QUIC connection from an address a hole punch was started towards counts as that punch's. */
const PUNCH_EXPECT_MS = 60_000;

export interface NodeOptions {
  identity: Identity;
  /** Join a DHT: bootstrap nodes ("host:port"), 'public' (only when the user asks), or an open client. */
  dht?: { bootstrap: DhtBootstrap; listen?: string; host?: string; queryTimeoutMs?: number } | DhtClient;
  /** Relays ("RELAY_ID@HOST:PORT") on which shared regions reserve a slot. */
  relays?: string[];
  /** Unix socket path for status; absent: none. */
  control?: string;
  /** Re-publish interval of DHT records (default 5 min). */
  republishMs?: number;
  /** Probe for a direct path this often while a mount is relayed (default 5 s; 0 off). */
  upgradeIntervalMs?: number;
  /** Hole punch through the relay while a mount is relayed (default true). */
  punch?: boolean;
  /** What the node is (shown in status): "share", "mount", ... */
  role?: string;
  log?: (message: string) => void;
}

export interface NodeShareOptions extends Omit<ShareOptions, 'identity' | 'transport' | 'wrapListener' | 'log'> {
  transport?: TransportName;
}

export interface NodeShare {
  shared: SharedRegion;
  ticket: string;
  record: RegionRecord | undefined;
  publisher: RecordPublisher | undefined;
  relayListeners: Listener[];
  meter: Meter;
  close(): Promise<void>;
}

export interface NodeMount {
  mounted: MountedTicket;
  dialer: PathDialer;
  meter: Meter;
  close(): Promise<void>;
}

interface Operation {
  name: string;
  startedAt: number;
  progress?: string;
}

export class QuicmapNode {
  readonly identity: Identity;
  readonly peers = new PeerTable();
  readonly relay: RelayTransport;
  dht: DhtClient | undefined;
  control: ControlServer | undefined;
  readonly shares: NodeShare[] = [];
  readonly mounts: NodeMount[] = [];
  /** Extra status sections (a relay server, a DHT node) added by the command. */
  readonly extra: Record<string, () => unknown> = {};
  private readonly transports = new Map<string, Promise<Transport>>();
  private readonly ownsDht: boolean;
  private readonly operations = new Set<Operation>();
  private readonly o: NodeOptions;
  private readonly log: (m: string) => void;
  private readonly startedAt = Date.now();
  /** Addresses ("ip:port") our QUIC listeners punched towards, for which peer (hex), until when: their connections are `punched`. */
  private readonly punchedTowards = new Map<string, { peer: string; until: number }>();

  private constructor(o: NodeOptions, dht: DhtClient | undefined, ownsDht: boolean) {
    this.o = o;
    this.identity = o.identity;
    this.log = o.log ?? (() => {});
    this.dht = dht;
    this.ownsDht = ownsDht;
    this.relay = new RelayTransport(o.identity, { log: this.log });
  }

  static async open(o: NodeOptions): Promise<QuicmapNode> {
    for (const r of o.relays ?? []) parseRelayAddress(r);
    let dht: DhtClient | undefined;
    let owns = false;
    if (o.dht instanceof DhtClient) dht = o.dht;
    else if (o.dht) {
      dht = await DhtClient.open({ ...o.dht, log: o.log });
      owns = true;
    }
    const node = new QuicmapNode(o, dht, owns);
    try {
      if (o.control) {
        node.control = await ControlServer.start(o.control, (req) => {
          if (req.op === 'status') return node.status();
          throw new Error(`unknown op "${String(req.op)}"`);
        });
        node.log(`control socket: ${o.control}`);
      }
    } catch (e) {
      await node.close();
      throw e;
    }
    return node;
  }

  /** The node's endpoint for a transport, opened on first use. */
  transport(name: TransportName): Promise<Transport> {
    let t = this.transports.get(name);
    if (!t) {
      t = openTransport(name, this.identity);
      this.transports.set(name, t);
    }
    return t;
  }

  private async track<T>(name: string, work: (op: Operation) => Promise<T>): Promise<T> {
    const op: Operation = { name, startedAt: Date.now() };
    this.operations.add(op);
    try {
      return await work(op);
    } finally {
      this.operations.delete(op);
    }
  }

  async share(o: NodeShareOptions & { store: ReadWriterAt }): Promise<NodeShare> {
    const transportName = o.transport ?? 'quic';
    const transport = await this.transport(transportName);
    const meter = newMeter();
    // Connections from a relay listener are circuits ("RELAY@HOST:PORT#id") or hole-punched TCP ("ip:port");
    // those on our own listener from an address we punched towards (for that peer) are hole-punched QUIC.
    const wrap = (l: Listener, viaRelay: boolean) =>
      meterListener(l, (c) => {
        const relayed = viaRelay && c.remoteAddress.includes('@');
        const punched = viaRelay || this.wasPunched(c.remoteAddress, c.remotePublicKey);
        const path = relayed
          ? { kind: 'relay' as const, transport: 'relay', address: c.remoteAddress }
          : { kind: 'direct' as const, transport: viaRelay ? 'tcp' : transportName, address: c.remoteAddress, ...(punched ? { punched: true } : {}) };
        const e = this.peers.connected(base32Encode(c.remotePublicKey), path, undefined, Date.now(), c);
        return [...this.peers.meters(e, path), meter];
      });
    // With a DHT the ticket needs no addresses (unless hints were asked for).
    const advertise = o.advertise ?? (this.dht ? [] : undefined);
    const raw: Listener[] = [];
    const wrapOwn = (l: Listener) => {
      raw.push(l);
      return wrap(l, false);
    };
    const shared = await shareRegion({ ...o, identity: this.identity, transport, wrapListener: wrapOwn, log: this.log, ...(advertise ? { advertise } : {}) });
    // The region's QUIC listener takes part in QUIC hole punches through its relays (its socket punches, then accepts).
    const puncher = raw.find((l): l is Listener & PunchListener => canPunchListener(l));
    const relayOpts = puncher ? { quicPunch: { socket: () => puncher.punchSocket(), onPunch: (address: string, peer: Uint8Array) => this.expectPunch(address, peer) } } : {};
    const relayListeners: Listener[] = [];
    let publisher: RecordPublisher | undefined;
    let record: RegionRecord | undefined;
    try {
      for (const r of this.o.relays ?? []) {
        // One reservation per region (tagged with its id): circuits name the region they want.
        const tagged = formatRelayAddress({ ...parseRelayAddress(r), tag: shared.regionId });
        const l = await this.track(`reserve on relay ${r}`, () => this.relay.listen(tagged, relayOpts));
        relayListeners.push(l);
        void shared.server.serveListener(wrap(l, true));
      }
      if (this.dht) {
        const size = await o.store.size();
        const endpoints = (o.advertise ?? reachableAddresses(shared.address)).map((address) => ({ transport: transportName, address }));
        record = {
          regionId: shared.regionId,
          size,
          chunkSize: Math.max(64 * 1024, o.store.caps.preferredBlockSize),
          version: Date.now(),
          endpoints,
          relays: (this.o.relays ?? []).map(parseRelayAddress),
        };
        const port = Number(/:(\d+)$/.exec(shared.address)?.[1] ?? 0);
        publisher = new RecordPublisher({ dht: this.dht, identity: this.identity, record, port, intervalMs: this.o.republishMs, log: this.log });
        const p = publisher;
        await this.track(`dht publish region ${regionIdText(shared.regionId)}`, () => p.start());
      }
    } catch (e) {
      publisher?.stop();
      await Promise.all(relayListeners.map((l) => l.close()));
      await shared.close();
      throw e;
    }
    let closing: Promise<void> | undefined;
    const entry: NodeShare = {
      shared,
      ticket: shared.ticket,
      record,
      publisher,
      relayListeners,
      meter,
      close: () =>
        (closing ??= (async () => {
          publisher?.stop();
          await Promise.all(relayListeners.map((l) => l.close()));
          await shared.close();
          this.shares.splice(this.shares.indexOf(entry), 1);
        })()),
    };
    this.shares.push(entry);
    return entry;
  }

  private expectPunch(address: string, peer: Uint8Array): void {
    const now = Date.now();
    for (const [k, v] of this.punchedTowards) if (v.until < now || this.punchedTowards.size > 256) this.punchedTowards.delete(k);
    this.punchedTowards.set(address, { peer: Buffer.from(peer).toString('hex'), until: now + PUNCH_EXPECT_MS });
  }

  private wasPunched(address: string, peer: Uint8Array): boolean {
    const v = this.punchedTowards.get(address);
    return v !== undefined && v.until >= Date.now() && v.peer === Buffer.from(peer).toString('hex');
  }

  async mount(o: Omit<MountTicketOptions, 'identity' | 'connect' | 'transport' | 'log'> & { directTimeoutMs?: number }): Promise<NodeMount> {
    const ticket = await parseTicket(o.ticket);
    if (ticket.claims.endpoints.length === 0 && !this.dht) {
      throw new QuicmapError('EINVAL', 'the ticket holds no address: the sharer is found through the DHT (mount with --dht HOST:PORT)');
    }
    const meter = newMeter();
    const dialer = new PathDialer({
      ticket,
      transport: (n) => this.transport(n),
      relay: this.relay,
      dht: this.dht,
      peers: this.peers,
      meters: [meter],
      ...(o.directTimeoutMs !== undefined ? { directTimeoutMs: o.directTimeoutMs } : {}),
      ...(this.o.upgradeIntervalMs !== undefined ? { upgradeIntervalMs: this.o.upgradeIntervalMs } : {}),
      ...(this.o.punch !== undefined ? { punch: this.o.punch } : {}),
      log: this.log,
    });
    let mounted: MountedTicket;
    try {
      mounted = await this.track(`mount region ${regionIdText(ticket.claims.regionId)}`, () => mountTicket({ ...o, identity: this.identity, connect: dialer.connect, log: this.log }));
    } catch (e) {
      await dialer.close();
      throw e;
    }
    // The record only points the way; the sharer's signed manifest (checked in WELCOME) is what counts.
    const rec = dialer.dhtRecord;
    const man = mounted.region.manifest;
    if (rec && (rec.size !== man.size || rec.chunkSize !== man.chunkSize)) {
      this.log(`dht: the record of region ${regionIdText(ticket.claims.regionId)} says ${rec.size} bytes / ${rec.chunkSize}-byte chunks, the sharer's signed manifest ${man.size} / ${man.chunkSize}: using the manifest (the record is stale)`);
    }
    let closing: Promise<void> | undefined;
    const entry: NodeMount = {
      mounted,
      dialer,
      meter,
      close: () =>
        (closing ??= (async () => {
          await dialer.close();
          await mounted.close();
          this.mounts.splice(this.mounts.indexOf(entry), 1);
        })()),
    };
    this.mounts.push(entry);
    return entry;
  }

  /**
   * Announce this node as a seeder of a region (BEP5, under the region's
   * topic): what a mount that holds chunks does, so other mounts can pull
   * from it (managed mounts). Re-announce on an interval; returns a stop function.
   */
  announceSeeder(regionId: Uint8Array, sharer: Uint8Array, port: number, intervalMs = 300_000): () => void {
    const dht = this.dht;
    if (!dht) throw new QuicmapError('EINVAL', 'announcing a seeder needs the DHT (--dht)');
    const topic = topicFor(regionId, sharer);
    const once = () => void dht.announce(topic, port).catch((e) => this.log(`dht: seeder announce failed: ${(e as Error).message}`));
    once();
    const timer = setInterval(once, intervalMs);
    timer.unref();
    return () => clearInterval(timer);
  }

  /** Peers that announced a region (the sharer and its seeders), as "host:port". */
  async seeders(regionId: Uint8Array, sharer: Uint8Array, timeoutMs = 5_000): Promise<string[]> {
    if (!this.dht) throw new QuicmapError('EINVAL', 'finding seeders needs the DHT (--dht)');
    const found = await this.dht.lookup(topicFor(regionId, sharer), timeoutMs);
    return found.map((p) => `${p.host}:${p.port}`);
  }

  status(): NodeStatus {
    return {
      id: this.identity.id,
      role: this.o.role ?? 'node',
      pid: process.pid,
      uptimeMs: Date.now() - this.startedAt,
      control: this.control?.path ?? null,
      dht: this.dht ? { address: this.dht.address, nodes: this.dht.nodeCount } : null,
      regions: this.shares.map((s) => ({
        regionId: regionIdText(s.shared.regionId),
        address: s.shared.address,
        transport: s.shared.transport.name,
        relays: this.relay.reservations().filter((r) => s.relayListeners.some((l) => l.address === r.relay)),
        sessions: s.shared.server.stats.sessions,
        bytesRead: s.shared.server.stats.bytesRead,
        bytesWritten: s.shared.server.stats.bytesWritten,
        writesApplied: s.shared.server.stats.writesApplied,
        resumes: s.shared.server.stats.resumes,
        resumesRefused: s.shared.server.stats.resumesRefused,
        duplicates: s.shared.server.stats.duplicates,
        sessionsKept: s.shared.server.sessionCount,
        goodbyes: s.shared.server.stats.goodbyes,
        sent: s.meter.sent,
        received: s.meter.received,
        dht: s.publisher ? { seq: s.publisher.currentSeq, published: s.publisher.published, lastError: s.publisher.lastError ?? null } : null,
      })),
      mounts: this.mounts.map((m) => ({
        regionId: regionIdText(m.mounted.ticket.claims.regionId),
        sharer: m.mounted.sharerId,
        connected: m.mounted.region.connected,
        path: describePath(m.dialer.path),
        upgrades: m.dialer.upgrades,
        punch: m.dialer.punch ?? null,
        requests: m.mounted.region.stats.requests,
        bytesRead: m.mounted.region.stats.bytesRead,
        bytesWritten: m.mounted.region.stats.bytesWritten,
        writes: m.mounted.region.stats.writes,
        linkFailures: m.mounted.region.stats.linkFailures,
        resumes: m.mounted.region.stats.resumes,
        resumesRefused: m.mounted.region.stats.resumesRefused,
        resent: m.mounted.region.stats.resent,
        lost: m.mounted.region.stats.lost,
        sent: m.meter.sent,
        received: m.meter.received,
      })),
      peers: this.peers.all().map((p) => ({
        id: p.id,
        path: describePath(p.path),
        via: p.path ? pathVia(p.path) : null,
        transport: p.path?.transport ?? null,
        address: p.path?.address ?? null,
        rttMs: ((r) => (r === undefined ? null : Math.round(r * 10) / 10))(p.liveRtt?.() ?? p.rttMs),
        lastSeen: p.lastSeen ? new Date(p.lastSeen).toISOString() : null,
        sent: p.meter.sent,
        received: p.meter.received,
        bytes: Object.fromEntries(PATH_VIAS.map((v) => [v, { sent: p.byVia[v].sent, received: p.byVia[v].received }])) as Record<PathVia, { sent: number; received: number }>,
        history: p.history.map((h) => ({ at: new Date(h.at).toISOString(), from: h.from, to: h.to })),
      })),
      operations: [...this.operations].map((op) => ({ name: op.name, elapsedMs: Date.now() - op.startedAt, progress: op.progress ?? null })),
      ...Object.fromEntries(Object.entries(this.extra).map(([k, f]) => [k, f()])),
    };
  }

  async close(): Promise<void> {
    await Promise.all([...this.mounts].map((m) => m.close().catch(() => {})));
    await Promise.all([...this.shares].map((s) => s.close().catch(() => {})));
    await this.relay.close().catch(() => {});
    for (const t of this.transports.values()) await t.then((x) => x.close(), () => {}).catch(() => {});
    if (this.ownsDht) await this.dht?.destroy();
    await this.control?.close().catch(() => {});
  }
}
