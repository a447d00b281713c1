/**
 * The record layer of the TCP transport: turns a socket that finished the
 * handshake into a sequence of authenticated, encrypted records.
 *
 *   record = u32 BE length of (ciphertext + tag) | ciphertext | tag
 *
 * The length prefix is authenticated as associated data. Senders queue whole
 * frames with `enqueue`; everything queued in one burst of work is sealed into one
 * record (up to `MAX_RECORD_PLAINTEXT`), so small control frames and the data
 * they accompany cost one AEAD call and one socket write. Records are sealed
 * and written in order, which keeps the implicit nonce counters of both ends
 * in step.
 *
 * A record that fails authentication (tampering, replay, reordering), or a
 * length above the maximum, kills the link with EPROTO.
 */
import type { Socket } from 'node:net';
import { RecordOpener, RecordSealer, TAG_BYTES } from '../crypto/aead.ts';
import type { SessionKeys } from '../crypto/handshake.ts';
import { QuicmapError } from '../base/errors.ts';

/** Large records are encrypted and written in slices of this size (pipelining with the peer's decryption). */
const SEAL_SLICE = 64 * 1024;

/** Largest plaintext in one record: a 256 KiB data frame plus room for small frames. */
export const MAX_RECORD_PLAINTEXT = 256 * 1024 + 4096;

/** Size of the reusable socket read buffer (what libuv reads at most per call, as Node's default). */
const READ_BUFFER = 64 * 1024;

/**
 * Make `socket` read into `buf` over and over and call `onBytes(buf, n)` for
 * each read, instead of allocating a fresh buffer per read and emitting
 * 'data'. That is what `net.connect({ onread })` does; accepted sockets and
 * sockets that already did a handshake cannot be given that option, so this
 * switches the socket over through the same internals (the `kBuffer` /
 * `kBufferCb` slots that `onread` fills, and the handle's `useUserBuffer`).
 * Returns false, changing nothing, if this Node.js lacks them.
 *
 * Why: at high rates the per-read allocations (64 KiB each) were a third of
 * the external memory the link churned through, and drove the garbage
 * collector. The socket must be paused, with nothing left in its readable
 * buffer; 'end', 'close' and 'error' are emitted as usual.
 */
export function readIntoStaticBuffer(socket: Socket, buf: Buffer, onBytes: (buf: Buffer, n: number) => void): boolean {
  const internals = socket as unknown as Record<symbol, unknown> & { _handle?: { useUserBuffer?: (b: Uint8Array) => void } | null };
  const symbols = Object.getOwnPropertySymbols(socket);
  const kBuffer = symbols.find((x) => x.description === 'kBuffer');
  const kBufferCb = symbols.find((x) => x.description === 'kBufferCb');
  const kBufferGen = symbols.find((x) => x.description === 'kBufferGen');
  const handle = internals._handle;
  if (!kBuffer || !kBufferCb || !kBufferGen || internals[kBuffer] || internals[kBufferGen] !== null) return false;
  if (!handle || typeof handle.useUserBuffer !== 'function') return false;
  if (socket.readableLength !== 0) return false;
  internals[kBuffer] = buf;
  internals[kBufferCb] = (n: number, b: Buffer): void => onBytes(b, n);
  handle.useUserBuffer(buf);
  return true;
}

export interface LinkHandlers {
  /**
   * One decrypted, authenticated record (whole frames only), as the pieces
   * it was decrypted in. Throwing from here kills the link.
   */
  onRecord(plaintext: Buffer[]): void;
  /** The link is gone; err is undefined after a clean end of the socket. */
  onClose(err: QuicmapError | undefined): void;
}

export class SecureLink {
  private readonly sealer: RecordSealer;
  private readonly opener: RecordOpener;
  // Receive state: records are decrypted piece by piece as bytes arrive (no
  // reassembly copy; decryption overlaps the transfer of the rest).
  private readonly header = Buffer.alloc(4);
  private headerGot = 0;
  private inBody = false;
  private ctLeft = 0;
  private readonly tag = Buffer.alloc(TAG_BYTES);
  private tagGot = 0;
  private pieces: Buffer[] = [];
  private readonly leftover: Buffer[];
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private flushScheduled = false;
  private flushWaiters: Array<() => void> = [];
  private drainWaiters: Array<() => void> = [];
  private dead = false;
  private handlers: LinkHandlers | undefined;
  /** True when socket reads land in one reusable buffer (see readIntoStaticBuffer); false on the 'data' fallback. */
  staticReads = false;
  lastReceiveAt = Date.now();
  lastSendAt = Date.now();

  constructor(
    private readonly socket: Socket,
    keys: SessionKeys,
    /** Bytes that arrived after the handshake, before the link took over. */
    leftover: Buffer[],
    /** Socket send buffer above which data writers wait for 'drain'. */
    private readonly highWater: number,
  ) {
    this.sealer = new RecordSealer(keys.sendKey);
    this.opener = new RecordOpener(keys.recvKey);
    this.leftover = leftover;
  }

  /** Begin delivering records. Separate from the constructor so handlers can refer to the link. */
  start(handlers: LinkHandlers): void {
    this.handlers = handlers;
    const onBytes = (buf: Buffer, n: number): void => {
      this.lastReceiveAt = Date.now();
      this.receive(buf, n);
    };
    // Bytes the socket buffered while it was paused come after the handshake leftovers.
    for (let b: Buffer | null; (b = this.socket.read() as Buffer | null) !== null; ) this.leftover.push(b);
    this.staticReads = readIntoStaticBuffer(this.socket, Buffer.allocUnsafe(READ_BUFFER), onBytes);
    if (!this.staticReads) this.socket.on('data', (chunk: Buffer) => onBytes(chunk, chunk.length));
    this.socket.on('drain', () => this.releaseDrain());
    this.socket.on('error', (e) => this.kill(new QuicmapError('EIO', `socket error: ${e.message}`, { cause: e })));
    this.socket.on('close', () => this.kill(new QuicmapError('ESHUTDOWN', 'connection lost')));
    this.socket.on('end', () => this.kill(undefined));
    // The handshake paused the socket so no byte was lost in between.
    this.socket.resume();
    for (const b of this.leftover.splice(0)) this.receive(b, b.length);
  }

  get isDead(): boolean {
    return this.dead;
  }

  /**
   * Consume `chunk[0, end)`. The chunk may be the link's reusable read
   * buffer: nothing here keeps a reference to it (header and tag are copied,
   * the cipher writes plaintext to fresh buffers).
   */
  private receive(chunk: Buffer, end: number): void {
    try {
      let off = 0;
      while (off < end && !this.dead) {
        if (!this.inBody) {
          const n = Math.min(4 - this.headerGot, end - off);
          chunk.copy(this.header, this.headerGot, off, off + n);
          this.headerGot += n;
          off += n;
          if (this.headerGot < 4) break;
          const len = this.header.readUInt32BE(0);
          if (len > MAX_RECORD_PLAINTEXT + TAG_BYTES || len < TAG_BYTES) {
            throw new QuicmapError('EPROTO', `record length ${len} out of bounds`);
          }
          this.opener.begin(len - TAG_BYTES, this.header);
          this.inBody = true;
          this.ctLeft = len - TAG_BYTES;
          this.tagGot = 0;
          this.pieces = [];
        } else if (this.ctLeft > 0) {
          const n = Math.min(this.ctLeft, end - off);
          const pt = this.opener.update(chunk.subarray(off, off + n));
          if (pt.length) this.pieces.push(pt);
          this.ctLeft -= n;
          off += n;
        } else {
          const n = Math.min(TAG_BYTES - this.tagGot, end - off);
          chunk.copy(this.tag, this.tagGot, off, off + n);
          this.tagGot += n;
          off += n;
          if (this.tagGot < TAG_BYTES) break;
          this.opener.finish(this.tag);
          const pieces = this.pieces;
          this.pieces = [];
          this.inBody = false;
          this.headerGot = 0;
          this.handlers!.onRecord(pieces);
        }
      }
    } catch (e) {
      const err = e instanceof QuicmapError ? e : new QuicmapError('EPROTO', `bad record: ${(e as Error).message}`, { cause: e });
      this.kill(err);
    }
  }

  /**
   * Queue one frame (its parts are referenced, not copied, until the next
   * flush: callers that hand out caller-owned buffers await `flushed()`).
   */
  enqueue(parts: readonly Uint8Array[], bytes: number): void {
    if (this.dead) return;
    if (this.pendingBytes + bytes > MAX_RECORD_PLAINTEXT) this.flush();
    for (const p of parts) this.pending.push(p);
    this.pendingBytes += bytes;
    if (this.pendingBytes >= MAX_RECORD_PLAINTEXT - 4096) this.flush();
    else if (!this.flushScheduled) {
      this.flushScheduled = true;
      // nextTick runs after the promise jobs already queued, so a burst of
      // awaits (open, write, closeWrite) still lands in one record.
      process.nextTick(() => this.flush());
    }
  }

  /** Resolves once everything queued so far has been sealed (caller buffers are free again). */
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
    const n = this.pendingBytes;
    this.pending = [];
    this.pendingBytes = 0;
    const header = Buffer.allocUnsafe(4);
    header.writeUInt32BE(n + TAG_BYTES, 0);
    this.sealer.begin(n, header);
    if (n <= SEAL_SLICE) {
      // Small record: header, ciphertext and tag leave in one writev.
      this.socket.cork();
      this.socket.write(header);
      for (const p of parts) if (p.length) this.socket.write(this.sealer.update(p));
      this.socket.write(this.sealer.finish());
      this.socket.uncork();
    } else {
      // Large record: send each slice as soon as it is encrypted, so the peer
      // decrypts the start while we encrypt the rest (the tag comes last and
      // the peer uses nothing before checking it).
      let batch: Buffer[] = [header];
      let batched = 0;
      for (const p of parts) {
        for (let off = 0; off < p.length; off += SEAL_SLICE) {
          const ct = this.sealer.update(p.subarray(off, Math.min(p.length, off + SEAL_SLICE)));
          batch.push(ct);
          batched += ct.length;
          if (batched >= SEAL_SLICE) {
            this.writeBatch(batch);
            batch = [];
            batched = 0;
          }
        }
      }
      batch.push(this.sealer.finish());
      this.writeBatch(batch);
    }
    this.lastSendAt = Date.now();
    this.releaseFlush();
  }

  private writeBatch(bufs: Buffer[]): void {
    if (bufs.length === 1) {
      this.socket.write(bufs[0]!);
      return;
    }
    this.socket.cork();
    for (const b of bufs) this.socket.write(b);
    this.socket.uncork();
  }

  private releaseFlush(): void {
    const ws = this.flushWaiters;
    this.flushWaiters = [];
    for (const w of ws) w();
  }

  /** True when data writers should wait (the socket's send buffer is full). */
  get congested(): boolean {
    return this.socket.writableLength + this.pendingBytes > this.highWater;
  }

  /** Resolves when the socket buffer is below the high-water mark again (or the link died). */
  writable(): Promise<void> {
    if (!this.congested || this.dead) return Promise.resolve();
    return new Promise((r) => this.drainWaiters.push(r));
  }

  private releaseDrain(): void {
    const ws = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of ws) w();
  }

  /** Flush, then end the socket; destroy it if the peer does not close within graceMs. */
  end(graceMs = 1000): void {
    if (this.dead) return;
    this.flush();
    this.dead = true;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), graceMs).unref();
    this.finish(undefined);
  }

  /** Drop the link now. */
  kill(err: QuicmapError | undefined): void {
    if (this.dead) {
      this.socket.destroy();
      return;
    }
    this.dead = true;
    this.pending = [];
    this.pendingBytes = 0;
    this.socket.destroy();
    this.finish(err);
  }

  private finish(err: QuicmapError | undefined): void {
    this.releaseFlush();
    this.releaseDrain();
    this.handlers?.onClose(err);
  }
}
