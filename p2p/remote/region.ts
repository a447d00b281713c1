/**
 * RemoteRegion: a ReadWriterAt whose bytes live on a sharer, reached over a
 * transport. What a direct mount serves through NBD.
 *
 * - Many requests in flight on one link, bounded by the negotiated
 *   max-in-flight; callers beyond it queue here (FIFO), not on the wire.
 *   Requests above the negotiated max frame are split.
 * - When the link dies (sharer killed, network gone) every pending request
 *   fails at once with EIO — an NBD client sees an I/O error, never a hang —
 *   and a reconnect loop with exponential backoff runs in the background.
 *   Requests made while there is no link wait at most `waitForLinkMs` for
 *   one, then fail with EIO; once the sharer is back, requests succeed again.
 * - Liveness: while requests are pending, silence for `livenessMs/2` sends a
 *   PING and silence for `livenessMs` declares the link dead. This catches a
 *   sharer that vanished without closing (SIGKILL under QUIC sends no close)
 *   much sooner than the transport's idle timeout would. An idle region
 *   pings every `idlePingMs`, so a dead link is found (and replaced) before
 *   the next request needs it.
 * - Each request also has a deadline (`requestTimeoutMs`) for a sharer that
 *   answers pings but whose store hangs; it fails with ETIMEDOUT.
 * - A refusal on reconnect (grant now expired, region gone) or a manifest
 *   that no longer matches (the region changed size) is final: requests fail
 *   with that error instead of retrying forever.
 */
import type { Connection } from '../../transports/transport.ts';
import { ClosedError, QuicmapError } from '../../base/errors.ts';
import type { ReadWriterAt, StoreCaps, WriteOptions, ZeroOptions } from '../../engine/rwat.ts';
import type { Capability } from '../../engine/capability.ts';
import type { Manifest } from '../protocol/manifest.ts';
import type { Limits } from '../protocol/messages.ts';
import { ClientLink, isRefusal } from './link.ts';
import { DEFAULT_LIMITS } from './server.ts';
import { Semaphore } from '../../base/semaphore.ts';
import { splitRange } from '../../base/split-range.ts';

export interface RemoteRegionOptions {
  /** Dial the sharer (transport + address + expected key); called again on reconnect. */
  connect: () => Promise<Connection>;
  grant: Uint8Array;
  sharer: Uint8Array;
  regionId: Uint8Array;
  /** True when the grant is read-only: refuse writes locally too (the sharer enforces it anyway). */
  readOnlyGrant?: boolean;
  limits?: Partial<Limits>;
  requestTimeoutMs?: number;
  livenessMs?: number;
  /** While idle, PING after this much silence (default 5 000 ms). */
  idlePingMs?: number;
  waitForLinkMs?: number;
  backoff?: { minMs?: number; maxMs?: number };
  agent?: string;
  log?: (message: string) => void;
}

export interface RemoteRegionStats {
  connects: number;
  linkFailures: number;
  requests: number;
  bytesRead: number;
  bytesWritten: number;
}

/** Trim and zero carry no payload, so their pieces may be much larger than a frame. */
const MAX_RANGE_PIECE = 1 << 30;

export class RemoteRegion implements ReadWriterAt {
  readonly caps: StoreCaps;
  private current: Manifest;
  readonly limits: Limits;
  readonly stats: RemoteRegionStats = { connects: 0, linkFailures: 0, requests: 0, bytesRead: 0, bytesWritten: 0 };
  private link: ClientLink | undefined;
  private reconnecting: Promise<void> | undefined;
  private linkWaiters: Array<() => void> = [];
  private finalError: QuicmapError | undefined;
  private closed = false;
  private readonly slots: Semaphore;
  private readonly opts: RemoteRegionOptions;
  private readonly timing: { requestTimeoutMs: number; livenessMs: number; idlePingMs: number; waitForLinkMs: number; minMs: number; maxMs: number };
  private readonly log: (m: string) => void;
  private livenessTimer: NodeJS.Timeout | undefined;

  private constructor(opts: RemoteRegionOptions, first: ClientLink) {
    this.opts = opts;
    this.log = opts.log ?? (() => {});
    this.timing = {
      requestTimeoutMs: opts.requestTimeoutMs ?? 30_000,
      livenessMs: opts.livenessMs ?? 3_000,
      idlePingMs: opts.idlePingMs ?? 5_000,
      waitForLinkMs: opts.waitForLinkMs ?? 2_000,
      minMs: opts.backoff?.minMs ?? 100,
      maxMs: opts.backoff?.maxMs ?? 2_000,
    };
    this.current = first.manifest;
    this.limits = { ...first.limits };
    this.slots = new Semaphore(this.limits.maxInFlight);
    const m = first.manifest;
    this.caps = {
      readOnly: m.readOnly || opts.readOnlyGrant === true,
      canTrim: m.canTrim && first.caps.has('trim'),
      fastZero: m.fastZero,
      multiConn: m.multiConn,
      preferredBlockSize: m.preferredBlockSize,
    };
    this.adopt(first);
    this.livenessTimer = setInterval(() => this.checkLiveness(), Math.max(50, this.timing.livenessMs / 4));
    this.livenessTimer.unref();
  }

  /** Connect, present the grant, learn the manifest. A refusal throws the sharer's error (EACCES, EPERM). */
  static async open(opts: RemoteRegionOptions): Promise<RemoteRegion> {
    const link = await RemoteRegion.dial(opts);
    const r = new RemoteRegion(opts, link);
    r.stats.connects++;
    return r;
  }

  private static async dial(opts: RemoteRegionOptions): Promise<ClientLink> {
    const conn = await opts.connect();
    return ClientLink.open(conn, {
      grant: opts.grant,
      sharer: opts.sharer,
      regionId: opts.regionId,
      limits: { ...DEFAULT_LIMITS, ...opts.limits },
      caps: ['trim', 'zero', 'fua', 'ping'],
      agent: opts.agent ?? 'quicmap',
    });
  }

  /** The manifest of the latest session (generation changes when the sharer restarts). */
  get manifest(): Manifest {
    return this.current;
  }

  /** True while a link to the sharer is up. */
  get connected(): boolean {
    return this.link !== undefined && !this.link.isDead;
  }

  private adopt(link: ClientLink): void {
    this.link = link;
    void link.dead.then((reason) => {
      if (this.link !== link) return;
      this.link = undefined;
      if (this.closed) return;
      this.stats.linkFailures++;
      this.log(`link to sharer lost: ${reason.message}; reconnecting`);
      this.startReconnect();
    });
    const waiters = this.linkWaiters;
    this.linkWaiters = [];
    for (const w of waiters) w();
  }

  private startReconnect(): void {
    if (this.reconnecting || this.closed || this.finalError) return;
    this.reconnecting = (async () => {
      let delay = this.timing.minMs;
      while (!this.closed && !this.link && !this.finalError) {
        try {
          const link = await RemoteRegion.dial(this.opts);
          if (this.closed) {
            await link.close();
            return;
          }
          const m = link.manifest;
          if (m.size !== this.manifest.size) {
            await link.close();
            this.fail(new QuicmapError('EIO', `the shared region changed size (${this.manifest.size} → ${m.size} bytes); remount it`));
            return;
          }
          if (m.generation !== this.current.generation) this.log('sharer restarted (new region generation); resuming');
          this.current = m;
          this.stats.connects++;
          this.log('reconnected to sharer');
          this.adopt(link);
          return;
        } catch (e) {
          const code = e instanceof QuicmapError ? e.code : 'EIO';
          if (isRefusal(code)) {
            this.fail(e as QuicmapError);
            return;
          }
          await new Promise((r) => setTimeout(r, delay));
          delay = Math.min(delay * 2, this.timing.maxMs);
        }
      }
    })().finally(() => {
      this.reconnecting = undefined;
    });
  }

  private fail(err: QuicmapError): void {
    this.finalError = err;
    this.log(`giving up on the sharer: ${err.message}`);
    const waiters = this.linkWaiters;
    this.linkWaiters = [];
    for (const w of waiters) w();
  }

  private checkLiveness(): void {
    const link = this.link;
    if (!link || link.isDead) return;
    const silent = performance.now() - link.lastReceived;
    if (link.pendingCount === 0) {
      // Idle: an occasional PING finds a vanished sharer before the next
      // request does, so the reconnect happens in the background.
      if (silent > this.timing.idlePingMs) link.ping().done.catch(() => {});
      return;
    }
    if (silent > this.timing.livenessMs) {
      link.kill(new QuicmapError('EIO', `sharer stopped answering (nothing received for ${Math.round(silent)} ms)`));
    } else if (silent > this.timing.livenessMs / 2) {
      // The answer (or its absence) is all that matters; errors surface via kill.
      link.ping().done.catch(() => {});
    }
  }

  /** The current link, waiting a bounded time for a reconnect. */
  private async currentLink(): Promise<ClientLink> {
    if (this.closed) throw new ClosedError('remote region');
    if (this.finalError) throw this.finalError;
    if (this.link && !this.link.isDead) return this.link;
    this.startReconnect();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, this.timing.waitForLinkMs);
      this.linkWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    if (this.closed) throw new ClosedError('remote region');
    if (this.finalError) throw this.finalError;
    if (this.link && !this.link.isDead) return this.link;
    throw new QuicmapError('EIO', 'sharer unreachable (reconnecting in the background)');
  }

  /** One frame-sized request: wait for a slot and a link, send, await the reply with a deadline. */
  private async request(send: (link: ClientLink) => { id: number; done: Promise<void> }): Promise<void> {
    await this.slots.acquire();
    try {
      const link = await this.currentLink();
      this.stats.requests++;
      const { id, done } = send(link);
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          const err = new QuicmapError('ETIMEDOUT', `sharer did not answer within ${this.timing.requestTimeoutMs} ms`);
          link.abandon(id, err);
          // A sharer that stops answering one request is not trusted with the others.
          link.kill(new QuicmapError('EIO', 'request timed out; reconnecting'));
          reject(err);
        }, this.timing.requestTimeoutMs);
      });
      try {
        await Promise.race([done, deadline]);
      } finally {
        clearTimeout(timer);
      }
    } finally {
      this.slots.release();
    }
  }

  async size(): Promise<number> {
    if (this.closed) throw new ClosedError('remote region');
    return this.manifest.size;
  }

  async readAt(buf: Uint8Array, offset: number): Promise<void> {
    await splitRange(buf.length, this.limits.maxFrame, (at, len) => this.request((l) => l.read(buf.subarray(at, at + len), offset + at)));
    this.stats.bytesRead += buf.length;
  }

  async writeAt(data: Uint8Array, offset: number, opts?: WriteOptions): Promise<void> {
    const fua = opts?.fua === true;
    await splitRange(data.length, this.limits.maxFrame, (at, len) => this.request((l) => l.write(data.subarray(at, at + len), offset + at, fua)));
    this.stats.bytesWritten += data.length;
  }

  async flush(): Promise<void> {
    await this.request((l) => l.flush());
  }

  async trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    if (!this.caps.canTrim) return; // advisory: a store that cannot trim ignores it
    const fua = opts?.fua === true;
    await splitRange(length, MAX_RANGE_PIECE, (at, len) => this.request((l) => l.trim(offset + at, len, fua)));
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    const fua = opts?.fua === true;
    const noHole = opts?.noHole === true;
    await splitRange(length, MAX_RANGE_PIECE, (at, len) => this.request((l) => l.zero(offset + at, len, fua, noHole)));
  }

  /** No capabilities beyond the core. */
  capability<T>(_key: Capability<T>): T | undefined {
    return undefined;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.livenessTimer);
    const link = this.link;
    this.link = undefined;
    await link?.close();
    const waiters = this.linkWaiters;
    this.linkWaiters = [];
    for (const w of waiters) w();
    this.slots.failAll(new ClosedError('remote region'));
  }
}
