/**
 * Seeders through the DHT, both sides:
 *
 * - `SeedPublisher` (a managed mount that serves its copy): once the copy
 *   holds chunks, it leaves its seed ticket on the region's seeder board
 *   (p2p/dht/seeder-record.ts: a sealed BEP44 item per listen address) and
 *   then announces the seed port under the region's topic (BEP5), and
 *   repeats both every `intervalMs` (DHT nodes forget).
 * - `SeederFinder` (a managed mount that pulls): looks the topic up, reads
 *   the board item of each address found (the sharer's own announce has
 *   none), mounts each seed ticket read-only and hands the region to the
 *   swarm (`onSeeder`), again every `intervalMs` for seeders that come
 *   later. Its own address and the owner are skipped; a seeder whose copy
 *   has another size is refused. What a seeder sends is verified by the
 *   swarm against the owner's signed hashes, as for `--seeder` tickets.
 */
import { regionIdText } from '../../crypto/grant.ts';
import type { Identity } from '../../crypto/identity.ts';
import { base32Encode } from '../../crypto/identity.ts';
import { parseTicket } from '../../crypto/ticket.ts';
import { recordReady } from '../dht/record.ts';
import { openSeedValue, sealSeedValue, seedBoard, seedSalt, type SeedBoard } from '../dht/seeder-record.ts';
import type { DhtClient } from '../dht/client.ts';
import { topicFor } from '../dht/topic.ts';
import { reachableAddresses } from '../node/endpoints.ts';
import { mountTicket, type MountedTicket } from '../mount.ts';
import type { RemoteRegionOptions } from '../remote/region.ts';

export interface SeedPublisherOptions {
  dht: DhtClient;
  /** The region's owner (the sharer's key) and id: the topic and the board. */
  sharer: Uint8Array;
  regionId: Uint8Array;
  /** The seed share: its read-only ticket and bound address. */
  ticket: string;
  address: string;
  /** Whether the copy holds anything worth serving yet (polled until true). */
  ready?: () => boolean;
  intervalMs?: number;
  log?: (m: string) => void;
}

export class SeedPublisher {
  private readonly o: SeedPublisherOptions;
  private timer: NodeJS.Timeout | undefined;
  private poll: NodeJS.Timeout | undefined;
  private stopped = false;
  private running: Promise<void> = Promise.resolve();
  private seq = 0;
  /** Rounds that left the item and the announce (tests, status). */
  published = 0;
  lastError: string | undefined;

  constructor(o: SeedPublisherOptions) {
    this.o = o;
  }

  /** Starts publishing once `ready()`; resolves after the first round (or at once if not ready yet). */
  start(): Promise<void> {
    const go = () => {
      this.timer = setInterval(() => void this.round(), this.o.intervalMs ?? 300_000);
      this.timer.unref();
      return this.round();
    };
    if (!this.o.ready || this.o.ready()) return go();
    this.poll = setInterval(() => {
      if (this.stopped || !this.o.ready!()) return;
      clearInterval(this.poll);
      void go();
    }, 250);
    this.poll.unref();
    return Promise.resolve();
  }

  /** Resolves when the round under way (if any) is over. */
  settled(): Promise<void> {
    return this.running;
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
    clearInterval(this.poll);
  }

  private round(): Promise<void> {
    this.running = this.running.then(async () => {
      if (this.stopped) return;
      const log = this.o.log ?? (() => {});
      try {
        await recordReady();
        const board = seedBoard(this.o.sharer, this.o.regionId);
        const v = sealSeedValue(board, this.o.ticket);
        this.seq = Math.max(this.seq + 1, Date.now());
        // The board item first: whoever sees the announce finds the item.
        for (const a of reachableAddresses(this.o.address).slice(0, 4)) await this.o.dht.putValue(board, seedSalt(a), v, this.seq);
        const port = Number(/:(\d+)$/.exec(this.o.address)?.[1] ?? 0);
        await this.o.dht.announce(topicFor(this.o.regionId, this.o.sharer), port);
        this.published++;
        this.lastError = undefined;
        if (this.published === 1) log(`dht: seeding region ${regionIdText(this.o.regionId)} at ${this.o.address}`);
      } catch (e) {
        this.lastError = (e as Error).message;
        log(`dht: announcing this mount as a seeder failed: ${this.lastError}`);
      }
    });
    return this.running;
  }
}

export interface FoundSeeder {
  /** Short id of the seeder (its key). */
  name: string;
  address: string;
  mounted: MountedTicket;
}

export interface SeederFinderOptions {
  dht: DhtClient;
  identity: Identity;
  sharer: Uint8Array;
  regionId: Uint8Array;
  /** The region's size: a seeder serving another size is refused. */
  size: number;
  /** Addresses to skip (this node's own seed listener). */
  exclude?: readonly string[];
  /** A new seeder, mounted; return false to refuse it (it is closed). */
  onSeeder: (s: FoundSeeder) => boolean | void;
  /** Look again this often (default 10 s; 0: only when `lookOnce` is called). */
  intervalMs?: number;
  lookupTimeoutMs?: number;
  region?: Partial<Pick<RemoteRegionOptions, 'requestTimeoutMs' | 'waitForLinkMs'>>;
  /** At most this many seeders (default 16). */
  maxSeeders?: number;
  log?: (m: string) => void;
}

export class SeederFinder {
  private readonly o: SeederFinderOptions;
  private readonly seeders = new Map<string, FoundSeeder>();
  /** Addresses whose board item was read and refused, or that failed: not tried again for a while. */
  private readonly skipUntil = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private looking: Promise<number> | undefined;
  private stopped = false;
  private board: SeedBoard | undefined;

  constructor(o: SeederFinderOptions) {
    this.o = o;
  }

  get found(): FoundSeeder[] {
    return [...this.seeders.values()];
  }

  start(): void {
    const every = this.o.intervalMs ?? 10_000;
    if (every <= 0) return;
    this.timer = setInterval(() => void this.lookOnce().catch(() => {}), every);
    this.timer.unref();
  }

  /** One lookup round; resolves to the number of new seeders. */
  lookOnce(): Promise<number> {
    this.looking ??= this.look().finally(() => (this.looking = undefined));
    return this.looking;
  }

  private async look(): Promise<number> {
    const log = this.o.log ?? (() => {});
    await recordReady();
    this.board ??= seedBoard(this.o.sharer, this.o.regionId);
    const peers = await this.o.dht.lookup(topicFor(this.o.regionId, this.o.sharer), this.o.lookupTimeoutMs ?? 5_000);
    const exclude = new Set(this.o.exclude ?? []);
    const now = Date.now();
    let added = 0;
    for (const p of peers.slice(0, 64)) {
      if (this.stopped || this.seeders.size >= (this.o.maxSeeders ?? 16)) break;
      const address = `${p.host}:${p.port}`;
      if (exclude.has(address) || this.seeders.has(address) || (this.skipUntil.get(address) ?? 0) > now) continue;
      try {
        const item = await this.o.dht.getValue(this.board.publicKey, seedSalt(address), 3_000);
        // No item: the owner's own announce, or a seeder whose item has not spread yet (looked at again next round).
        if (!item) continue;
        const ticketText = openSeedValue(this.board, item.v);
        const ticket = await parseTicket(ticketText);
        const key = ticket.claims.sharer;
        if (Buffer.from(key).equals(Buffer.from(this.o.identity.publicKey)) || Buffer.from(key).equals(Buffer.from(this.o.sharer))) {
          this.skipUntil.set(address, now + 60_000);
          continue;
        }
        const mounted = await mountTicket({ identity: this.o.identity, ticket: ticketText, region: { ...this.o.region }, log: () => {} });
        if (mounted.region.manifest.size !== this.o.size) {
          log(`dht: seeder at ${address} serves ${mounted.region.manifest.size} bytes, the region has ${this.o.size}: ignored`);
          await mounted.close().catch(() => {});
          this.skipUntil.set(address, now + 60_000);
          continue;
        }
        const found: FoundSeeder = { name: base32Encode(key).slice(0, 12), address, mounted };
        if (this.stopped || this.o.onSeeder(found) === false) {
          await mounted.close().catch(() => {});
          this.skipUntil.set(address, now + 60_000);
          continue;
        }
        this.seeders.set(address, found);
        added++;
        log(`dht: pulling from seeder ${found.name} at ${address}`);
      } catch (e) {
        log(`dht: seeder at ${address} not used: ${(e as Error).message}`);
        this.skipUntil.set(address, now + 30_000);
      }
    }
    return added;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await this.looking?.catch(() => {});
    await Promise.all([...this.seeders.values()].map((s) => s.mounted.close().catch(() => {})));
    this.seeders.clear();
  }
}
