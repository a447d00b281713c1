/**
 * The link under the multiplexer: whole batches of mux frames over any
 * reliable, ordered byte pipe that is already secure (a TLS socket, one
 * long-lived QUIC stream, a relayed end-to-end channel).
 *
 *   batch = u32 BE length | frames (length <= MAX_BATCH)
 *
 * Senders queue whole frames with `enqueue`; everything queued in one burst
 * of work leaves as one batch, so small control frames and the data they
 * accompany cost one write. The receiver hands the mux whole batches (as the
 * pieces they arrived in, not copied), so the mux never sees half a frame.
 * A length above the maximum kills the link with EPROTO.
 *
 * The pipe itself is a `LinkIO` (below): `duplexIO` for node streams,
 * quic.ts has its own for native QUIC streams.
 */
import type { Duplex } from 'node:stream';
import { QuicmapError } from '../base/errors.ts';

/** Largest batch: a 256 KiB data frame plus room for small frames. */
export const MAX_BATCH = 256 * 1024 + 4096;
export const BATCH_HEADER = 4;

export interface LinkHandlers {
  /** One batch of whole frames, as the pieces it arrived in. Throwing from here kills the link. */
  onRecord(pieces: Buffer[]): void;
  /** The link is gone; err is undefined after a clean end. */
  onClose(err: QuicmapError | undefined): void;
}

/** What the mux needs from the link below it. */
export interface Link {
  start(handlers: LinkHandlers): void;
  readonly isDead: boolean;
  enqueue(parts: readonly Uint8Array[], bytes: number): void;
  flushed(): Promise<void>;
  readonly congested: boolean;
  writable(): Promise<void>;
  end(graceMs?: number): void;
  kill(err: QuicmapError | undefined): void;
  readonly lastReceiveAt: number;
  readonly lastSendAt: number;
}

export interface LinkIOEvents {
  onBytes(chunk: Buffer): void;
  /** The pipe took what was queued (queuedBytes went down). */
  onDrain(): void;
  /** The peer ended its side cleanly. */
  onEnd(): void;
  onError(err: QuicmapError): void;
}

/** A byte pipe: ordered writes, queued-byte count, events, end and destroy. */
export interface LinkIO {
  start(events: LinkIOEvents): void;
  /** Queue buffers in order (they are referenced until written). */
  write(bufs: readonly Uint8Array[]): void;
  /** Bytes written but not yet taken by the pipe. */
  readonly queuedBytes: number;
  /** Send what is queued, then end our side. */
  end(): void;
  /** Drop the pipe now. */
  destroy(): void;
}

/** Batches up to this size are joined into one buffer before writing. */
const JOIN_LIMIT = 4 * 1024;

/** A node Duplex (net.Socket, tls.TLSSocket, a relayed stream) as a LinkIO. */
export function duplexIO(d: Duplex, describe: (e: Error) => QuicmapError): LinkIO {
  return {
    start(ev) {
      d.on('data', (b: Buffer) => ev.onBytes(b));
      d.on('drain', () => ev.onDrain());
      d.on('end', () => ev.onEnd());
      d.on('error', (e) => ev.onError(describe(e)));
      d.on('close', () => ev.onError(new QuicmapError('ESHUTDOWN', 'connection lost')));
      d.resume();
    },
    write(bufs) {
      if (bufs.length === 1) {
        d.write(bufs[0]!);
        return;
      }
      let total = 0;
      for (const b of bufs) total += b.length;
      // A batch of small frames: one small (pooled) buffer, one write. Otherwise
      // corked writes, which node:tls gathers with one native copy (no garbage
      // for the JS heap to collect, unlike a joined Buffer).
      if (total <= JOIN_LIMIT) {
        d.write(Buffer.concat(bufs as Uint8Array[], total));
        return;
      }
      d.cork();
      for (const b of bufs) d.write(b);
      d.uncork();
    },
    get queuedBytes() {
      return d.writableLength;
    },
    end() {
      d.end();
    },
    destroy() {
      d.destroy();
    },
  };
}

export class FrameLink implements Link {
  private readonly header = Buffer.alloc(BATCH_HEADER);
  private headerGot = 0;
  private bodyLeft = -1;
  private pieces: Buffer[] = [];
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private flushScheduled = false;
  private flushWaiters: Array<() => void> = [];
  private drainWaiters: Array<() => void> = [];
  private dead = false;
  private handlers: LinkHandlers | undefined;
  lastReceiveAt = Date.now();
  lastSendAt = Date.now();

  private readonly io: LinkIO;
  /** Bytes queued in the pipe above which data writers wait. */
  private readonly highWater: number;

  constructor(io: LinkIO, highWater: number) {
    this.io = io;
    this.highWater = highWater;
  }

  start(handlers: LinkHandlers): void {
    this.handlers = handlers;
    this.io.start({
      onBytes: (b) => {
        this.lastReceiveAt = Date.now();
        this.receive(b);
      },
      onDrain: () => this.releaseDrain(),
      onEnd: () => this.kill(undefined),
      onError: (e) => this.kill(e),
    });
  }

  get isDead(): boolean {
    return this.dead;
  }

  private receive(chunk: Buffer): void {
    try {
      let off = 0;
      const end = chunk.length;
      while (off < end && !this.dead) {
        if (this.bodyLeft < 0) {
          const n = Math.min(BATCH_HEADER - this.headerGot, end - off);
          chunk.copy(this.header, this.headerGot, off, off + n);
          this.headerGot += n;
          off += n;
          if (this.headerGot < BATCH_HEADER) break;
          const len = this.header.readUInt32BE(0);
          if (len > MAX_BATCH || len === 0) throw new QuicmapError('EPROTO', `batch length ${len} out of bounds`);
          this.headerGot = 0;
          this.bodyLeft = len;
          this.pieces = [];
        }
        const n = Math.min(this.bodyLeft, end - off);
        this.pieces.push(off === 0 && n === end ? chunk : chunk.subarray(off, off + n));
        this.bodyLeft -= n;
        off += n;
        if (this.bodyLeft === 0) {
          this.bodyLeft = -1;
          const pieces = this.pieces;
          this.pieces = [];
          this.handlers!.onRecord(pieces);
        }
      }
    } catch (e) {
      this.kill(e instanceof QuicmapError ? e : new QuicmapError('EPROTO', `bad batch: ${(e as Error).message}`, { cause: e }));
    }
  }

  /** Queue one frame (referenced, not copied, until the next flush: callers handing out their own buffers await `flushed()`). */
  enqueue(parts: readonly Uint8Array[], bytes: number): void {
    if (this.dead) return;
    if (this.pendingBytes + bytes > MAX_BATCH) this.flush();
    for (const p of parts) this.pending.push(p);
    this.pendingBytes += bytes;
    if (this.pendingBytes >= MAX_BATCH - 4096) this.flush();
    else if (!this.flushScheduled) {
      this.flushScheduled = true;
      // nextTick runs after the promise jobs already queued, so a burst of
      // awaits (open, write, closeWrite) still lands in one batch.
      process.nextTick(() => this.flush());
    }
  }

  /** Resolves once everything queued so far was handed to the pipe (caller buffers are the pipe's now). */
  flushed(): Promise<void> {
    if (this.pendingBytes === 0) return Promise.resolve();
    return new Promise((r) => this.flushWaiters.push(r));
  }

  flush(): void {
    this.flushScheduled = false;
    if (this.pendingBytes === 0 || this.dead) {
      this.releaseFlush();
      return;
    }
    const parts = this.pending;
    const header = Buffer.allocUnsafe(BATCH_HEADER);
    header.writeUInt32BE(this.pendingBytes, 0);
    parts.unshift(header);
    this.pending = [];
    this.pendingBytes = 0;
    this.io.write(parts);
    this.lastSendAt = Date.now();
    this.releaseFlush();
  }

  private releaseFlush(): void {
    const ws = this.flushWaiters;
    this.flushWaiters = [];
    for (const w of ws) w();
  }

  get congested(): boolean {
    return this.io.queuedBytes + this.pendingBytes > this.highWater;
  }

  writable(): Promise<void> {
    if (!this.congested || this.dead) return Promise.resolve();
    return new Promise((r) => this.drainWaiters.push(r));
  }

  private releaseDrain(): void {
    if (this.congested && !this.dead) return;
    const ws = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of ws) w();
  }

  /** Flush, then end the pipe; destroy it if the peer does not close within graceMs. */
  end(graceMs = 1000): void {
    if (this.dead) return;
    this.flush();
    this.dead = true;
    this.io.end();
    setTimeout(() => this.io.destroy(), graceMs).unref();
    this.finish(undefined);
  }

  kill(err: QuicmapError | undefined): void {
    if (this.dead) {
      this.io.destroy();
      return;
    }
    this.dead = true;
    this.pending = [];
    this.pendingBytes = 0;
    this.io.destroy();
    this.finish(err);
  }

  private finish(err: QuicmapError | undefined): void {
    this.releaseFlush();
    const ws = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of ws) w();
    this.handlers?.onClose(err);
  }
}
