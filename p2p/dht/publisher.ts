/**
 * RecordPublisher: keeps one region findable in the DHT. Publishes the
 * region's BEP44 record and BEP5-announces its topic now and then every
 * `intervalMs` (DHT nodes forget records and announces after a while, and
 * new nodes closer to the target join); `update` publishes a changed record
 * at once with a higher seq.
 *
 * seq is a millisecond clock (bumped past the last one used), so it grows
 * across restarts of the sharer too and a DHT node never refuses the new
 * record as "sequence number less than current".
 */
import type { Identity } from '../../crypto/identity.ts';
import type { DhtClient } from './client.ts';
import type { RegionRecord } from './record.ts';
import { topicFor } from './topic.ts';

export interface RecordPublisherOptions {
  dht: DhtClient;
  identity: Identity;
  record: RegionRecord;
  /** Port announced under the topic (the sharer's transport port). */
  port: number;
  /** Re-publish interval. Default 5 minutes. */
  intervalMs?: number;
  now?: () => number;
  log?: (message: string) => void;
}

export class RecordPublisher {
  private record: RegionRecord;
  private seq = 0;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private running: Promise<void> = Promise.resolve();
  /** Successful publications (tests and status). */
  published = 0;
  lastError: string | undefined;
  private readonly o: RecordPublisherOptions;

  constructor(o: RecordPublisherOptions) {
    this.o = o;
    this.record = o.record;
  }

  get currentSeq(): number {
    return this.seq;
  }

  get current(): RegionRecord {
    return this.record;
  }

  /** Publish now and keep re-publishing; resolves after the first publication (or its failure, logged). */
  start(): Promise<void> {
    this.bumpSeq();
    const first = this.publish();
    // DHT nodes refuse a put whose seq is not above the one they hold
    // (BEP44 error 302), so every re-publication takes a new seq too.
    this.timer = setInterval(() => {
      this.bumpSeq();
      void this.publish();
    }, this.o.intervalMs ?? 300_000);
    this.timer.unref();
    return first;
  }

  /** Publish a changed record (new endpoints, relays, version) with a higher seq. */
  update(record: RegionRecord): Promise<void> {
    this.record = record;
    this.bumpSeq();
    return this.publish();
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
  }

  private bumpSeq(): void {
    this.seq = Math.max(this.seq + 1, (this.o.now ?? Date.now)());
  }

  private publish(): Promise<void> {
    // One publication at a time, in order: a slow put never overtakes a newer one.
    this.running = this.running.then(async () => {
      if (this.stopped) return;
      const log = this.o.log ?? (() => {});
      try {
        const stored = await this.o.dht.put(this.o.identity, this.record, this.seq);
        await this.o.dht.announce(topicFor(this.record.regionId, this.o.identity.publicKey), this.o.port).catch((e) => log(`dht: announce failed: ${(e as Error).message}`));
        this.published++;
        this.lastError = undefined;
        log(`dht: published region ${Buffer.from(this.record.regionId).toString('hex')} seq ${this.seq} (stored on ${stored} nodes)`);
      } catch (e) {
        this.lastError = (e as Error).message;
        log(`dht: publishing region ${Buffer.from(this.record.regionId).toString('hex')} failed: ${this.lastError}`);
      }
    });
    return this.running;
  }
}
