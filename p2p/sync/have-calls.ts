/**
 * The `have` call: a seeder's per-chunk map (engine/sync/have-map.ts) on
 * the wire, so a swarm puller does not ask a seeder for chunks it lacks.
 *
 *   call:  have {}
 *   reply: {chunks: number, bits: bin (one bit per chunk, LSB first)}
 *
 * The puller asks every `intervalMs` (the map only grows while a seeder
 * pulls; one bit per 64 KiB chunk is 2 KiB per GiB). A node without the
 * call (ENOTSUP: an older one, or a sharer — it holds everything) is
 * asked no more and counts as holding every chunk.
 */
import { QuicmapError, errorCode } from '../../base/errors.ts';
import { HaveMap, packHave } from '../../engine/sync/have-map.ts';
import type { RegionServer } from '../remote/server.ts';
import type { Caller } from './change-calls.ts';

export const HAVE_CALL = 'have';

/** Serve `holds` (chunks this seeder can answer from its own copy) as the `have` call. */
export function serveHaveMap(server: RegionServer, chunks: number, holds: (i: number) => boolean): void {
  server.handle(HAVE_CALL, async () => ({ chunks, bits: packHave(chunks, holds) }));
}

export function decodeHave(v: unknown, chunks: number): Uint8Array {
  const o = v as Record<string, unknown> | null;
  if (!o || typeof o !== 'object' || o.chunks !== chunks || !(o.bits instanceof Uint8Array)) throw new QuicmapError('EPROTO', 'have: malformed reply');
  return o.bits;
}

/** Keeps a seeder's HaveMap fresh: asks at once, then every `intervalMs`, until stopped or the seeder cannot answer. */
export class HavePoller {
  readonly map: HaveMap;
  private readonly region: Caller;
  private readonly intervalMs: number;
  private readonly log: (m: string) => void;
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  polls = 0;

  constructor(region: Caller, map: HaveMap, opts: { intervalMs?: number; log?: (m: string) => void; name?: string } = {}) {
    this.region = region;
    this.map = map;
    this.intervalMs = opts.intervalMs ?? 1000;
    const name = opts.name ?? 'seeder';
    const log = opts.log ?? (() => {});
    this.log = (m) => log(`${name}: ${m}`);
  }

  /** Ask now; resolves once the first answer is in (or the seeder said it cannot). */
  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    await this.tick();
  }

  private async tick(): Promise<void> {
    if (!this.running) return;
    try {
      this.map.set(decodeHave(await this.region.call(HAVE_CALL, null), this.map.chunks));
      this.polls++;
    } catch (e) {
      if (errorCode(e) === 'ENOTSUP') {
        this.log('keeps no chunk map (a full copy, or an older node): asked for any chunk');
        this.running = false;
        return;
      }
      // A seeder that does not answer keeps its last map; the swarm's own failure handling backs off from it.
      if (errorCode(e) === 'ESHUTDOWN') {
        this.running = false;
        return;
      }
    }
    if (!this.running) return;
    this.timer = setTimeout(() => void this.tick(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    this.running = false;
    clearTimeout(this.timer);
  }
}
