/**
 * One client connection: the thin I/O adapter between a socket and the
 * sans-IO handshake and request decoder. Requests run concurrently and are
 * answered by handle as they finish; in-flight requests (count and bytes)
 * and unsent replies are bounded by pausing the socket.
 */
import type { Socket } from 'node:net';
import { errorCode } from '../../base/errors.ts';
import {
  CMD_BLOCK_STATUS,
  CMD_CACHE,
  CMD_DISC,
  CMD_FLAG_FAST_ZERO,
  CMD_FLAG_FUA,
  CMD_FLAG_NO_HOLE,
  CMD_FLAG_REQ_ONE,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  META_BASE_ALLOCATION_ID,
  NBD_ERRNO,
  STATE_HOLE,
  STATE_ZERO,
  commandName,
} from './constants.ts';
import type { ExportEntry } from './export.ts';
import { NbdHandshake } from './handshake.ts';
import { RequestDecoder, type NbdRequest } from './requests.ts';
import { blockStatusReply, errorReply, okReply, readReplyHeaderSize, writeReadReplyHeader } from './replies.ts';
import type { BufferPool } from './buffer-pool.ts';
import { writeParts } from '../rwat.ts';
import { EXTENTS, VECTORED } from '../capability.ts';
import { nbdErrnoOf } from './errno.ts';

export interface ConnectionLimits {
  maxPayload: number;
  maxInFlight: number;
  maxInFlightBytes: number;
}

export interface ConnectionHost {
  readonly limits: ConnectionLimits;
  readonly buffers: BufferPool;
  handshake(): NbdHandshake;
  entry(name: string): ExportEntry | undefined;
  log(message: string): void;
  stats: { reads: number; writes: number; bytesRead: number; bytesWritten: number };
  /**
   * Offered every connection that has just negotiated an export: true when
   * the host has taken the socket over (to serve it on a worker thread) and
   * this connection must not touch it again.
   */
  handOff?(socket: Socket, entry: ExportEntry, negotiated: Negotiated): boolean;
}

/** What the handshake settled, for a connection that goes on elsewhere. */
export interface Negotiated {
  structured: boolean;
  blockStatus: boolean;
  /** Bytes read past the end of the handshake. */
  rest: Uint8Array;
}

/** Command flags each command may carry (anything else is answered EINVAL). */
const KNOWN_FLAGS: Record<number, number> = {
  [CMD_READ]: 0,
  [CMD_WRITE]: CMD_FLAG_FUA,
  [CMD_FLUSH]: 0,
  [CMD_TRIM]: CMD_FLAG_FUA,
  [CMD_WRITE_ZEROES]: CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
  [CMD_CACHE]: 0,
  [CMD_BLOCK_STATUS]: CMD_FLAG_REQ_ONE,
};

export class NbdConnection {
  private handshake: NbdHandshake | undefined;
  private decoder: RequestDecoder | undefined;
  private entry: ExportEntry | undefined;
  private inFlight = 0;
  private inFlightBytes = 0;
  private disconnecting = false;
  private closed = false;
  private idle: (() => void) | undefined;
  readonly done: Promise<void>;
  private resolveDone!: () => void;

  private readonly host: ConnectionHost;
  readonly socket: Socket;
  constructor(
    host: ConnectionHost,
    socket: Socket,
    preNegotiated?: string | { name: string; structured: boolean; blockStatus: boolean },
  ) {
    this.host = host;
    this.socket = socket;
    this.done = new Promise((r) => (this.resolveDone = r));
    socket.setNoDelay?.(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    // Unsent reply bytes count against the budget; draining frees it.
    socket.on('drain', () => this.updateFlow());
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // A client that simply goes away is not worth a log line.
      if (err.code !== 'ECONNRESET' && err.code !== 'EPIPE') this.host.log(`nbd: connection error: ${err.message}`);
    });
    socket.on('close', () => this.finish());
    if (preNegotiated !== undefined) {
      const pre = typeof preNegotiated === 'string' ? { name: preNegotiated, structured: false, blockStatus: false } : preNegotiated;
      const entry = host.entry(pre.name);
      if (!entry) throw new Error(`no export named "${pre.name}"`);
      this.startTransmission(entry, pre.structured, pre.blockStatus);
    } else {
      this.handshake = host.handshake();
      socket.write(NbdHandshake.greeting());
    }
  }

  /** The export this connection is attached to, once in transmission. */
  get exportName(): string | undefined {
    return this.entry?.name;
  }

  /** Stop reading, let in-flight requests answer, then close. */
  async shutdown(graceMs = 5000): Promise<void> {
    if (this.closed) return;
    this.socket.pause();
    this.disconnecting = true;
    let grace: NodeJS.Timeout | undefined;
    const deadline = new Promise((r) => (grace = setTimeout(r, graceMs)));
    await Promise.race([this.whenIdle(), deadline]);
    // Send what is queued (corked replies included) before closing; a client
    // that does not read gets destroyed at the deadline.
    if (this.corked) {
      this.corked = false;
      this.socket.uncork();
    }
    this.socket.end();
    await Promise.race([this.done, deadline]);
    clearTimeout(grace); // a pending timer would keep the process alive for graceMs
    this.socket.destroy();
    await this.done;
  }

  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    this.resolveDone();
  }

  private whenIdle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((r) => (this.idle = r));
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    if (this.handshake) {
      const outcome = this.handshake.push(chunk);
      for (const b of this.handshake.takeOutput()) this.socket.write(b);
      if (outcome.kind === 'close') {
        this.host.log(`nbd: closing connection during handshake: ${outcome.reason}`);
        // Destroy once our last bytes are out: a client that ignores the FIN
        // must not keep the socket (and its table entry) forever.
        this.socket.end(() => this.socket.destroy());
        return;
      }
      if (outcome.kind === 'transmission') {
        this.handshake = undefined;
        const entry = this.host.entry(outcome.export.name);
        if (!entry) {
          this.socket.destroy();
          return;
        }
        if (this.host.handOff?.(this.socket, entry, { structured: outcome.structured, blockStatus: outcome.blockStatus, rest: outcome.rest })) {
          this.closed = true; // the socket is someone else's now
          this.resolveDone();
          return;
        }
        this.startTransmission(entry, outcome.structured, outcome.blockStatus);
        if (outcome.rest.length) this.feed(outcome.rest);
      }
      return;
    }
    this.feed(chunk);
  }

  /** Structured replies negotiated; base:allocation selected. */
  private structured = false;
  private blockStatus = false;

  private startTransmission(entry: ExportEntry, structured = false, blockStatus = false): void {
    this.entry = entry;
    this.structured = structured;
    this.blockStatus = blockStatus;
    const pool = this.host.buffers;
    // Stores with writev take a split payload as the socket chunks it arrived in.
    const vectored = entry.store.capability(VECTORED) !== undefined;
    this.decoder = new RequestDecoder(this.host.limits.maxPayload, (req) => this.onRequest(req), (n) => pool.take(n), vectored);
  }

  private feed(chunk: Buffer): void {
    if (this.disconnecting) return;
    try {
      this.decoder!.push(chunk);
    } catch (e) {
      // Garbage on the wire: this client is broken, others are not affected.
      this.host.log(`nbd: dropping client: ${(e as Error).message}`);
      this.socket.destroy();
      return;
    }
    this.updateFlow();
  }

  private canAcceptMore(): boolean {
    const { maxInFlight, maxInFlightBytes } = this.host.limits;
    // Bytes being worked on plus reply bytes the client has not read yet.
    return this.inFlight < maxInFlight && this.inFlightBytes + this.socket.writableLength < maxInFlightBytes;
  }

  private updateFlow(): void {
    if (this.closed || this.disconnecting || !this.decoder) return;
    if (this.canAcceptMore()) {
      if (this.decoder.isPaused) {
        try {
          this.decoder.resume();
        } catch (e) {
          this.host.log(`nbd: dropping client: ${(e as Error).message}`);
          this.socket.destroy();
          return;
        }
      }
      if (!this.decoder.isPaused && this.socket.isPaused()) this.socket.resume();
    } else if (!this.socket.isPaused()) {
      this.socket.pause();
    }
  }

  private onRequest(req: NbdRequest): boolean {
    if (req.type === CMD_DISC) {
      this.disconnecting = true;
      void this.disconnect();
      return false;
    }
    const bytes = req.type === CMD_READ || req.type === CMD_WRITE ? Math.min(req.length, this.host.limits.maxPayload) : 0;
    this.inFlight++;
    this.inFlightBytes += bytes;
    void this.run(req).then((r) => {
      const reply = Buffer.isBuffer(r) ? r : r.reply;
      const pooled = Buffer.isBuffer(r) ? undefined : r.pooled;
      this.inFlight--;
      this.inFlightBytes -= bytes;
      const pool = this.host.buffers;
      // The store is done with a gathered WRITE payload: recycle it.
      if (req.gathered) pool.give(req.gathered);
      if (!this.closed && !this.socket.destroyed) {
        if (!pooled) this.corkForThisTurn();
        // write()'s false (past Node's 16 KiB high-water mark, i.e. after every
        // large READ reply) is not a reason to pause: canAcceptMore counts the
        // unsent bytes against the in-flight budget instead.
        if (pooled) this.socket.write(reply, () => pool.give(pooled));
        else this.socket.write(reply);
      }
      if (this.inFlight === 0 && this.idle) {
        const r = this.idle;
        this.idle = undefined;
        r();
      }
      this.updateFlow();
    });
    return this.canAcceptMore();
  }

  /**
   * Replies finishing in the same loop iteration go out in one writev instead of one
   * syscall (and one wake-up of the client) each: small WRITE/FLUSH replies
   * otherwise dominate the server's CPU time.
   */
  private corked = false;
  private corkForThisTurn(): void {
    if (this.corked) return;
    this.corked = true;
    this.socket.cork();
    // After this loop iteration's I/O callbacks: every reply finished while
    // handling the chunks read in this wake-up leaves in one writev.
    setImmediate(() => {
      if (!this.corked) return;
      this.corked = false;
      this.socket.uncork();
    });
  }

  private async disconnect(): Promise<void> {
    // The spec asks the server to finish outstanding requests before closing.
    await this.whenIdle();
    try {
      await this.entry!.store.flush();
    } catch (e) {
      this.host.log(`nbd: flush at disconnect failed: ${(e as Error).message}`);
    }
    this.socket.end(() => this.socket.destroy());
  }

  /** Run one request; always resolves to the complete reply (a READ's comes with the pool buffer behind it). */
  private async run(req: NbdRequest): Promise<Buffer | { reply: Buffer; pooled: Buffer }> {
    const entry = this.entry!;
    const { store } = entry;
    const fua = (req.flags & CMD_FLAG_FUA) !== 0;
    try {
      if (req.tooLarge) return this.errorReply(req, NBD_ERRNO.EINVAL, `${commandName(req.type)} of ${req.length} bytes exceeds the maximum`);
      if (req.flags & ~(KNOWN_FLAGS[req.type] ?? 0)) {
        return this.errorReply(req, NBD_ERRNO.EINVAL, `${commandName(req.type)} with unsupported flags 0x${req.flags.toString(16)}`);
      }
      const needsRange = req.type !== CMD_FLUSH;
      if (needsRange && (req.offset + req.length > entry.size || req.offset > entry.size)) {
        // proto.md: writes past the end SHOULD fail with ENOSPC, other requests with EINVAL.
        const errno = req.type === CMD_WRITE || req.type === CMD_WRITE_ZEROES ? NBD_ERRNO.ENOSPC : NBD_ERRNO.EINVAL;
        return this.errorReply(req, errno, `${commandName(req.type)} [${req.offset}, +${req.length}) beyond size ${entry.size}`);
      }
      switch (req.type) {
        case CMD_READ: {
          const head = readReplyHeaderSize(this.structured);
          const pooled = this.host.buffers.take(head + req.length);
          const reply = pooled.subarray(0, head + req.length);
          try {
            if (req.length) await store.readAt(reply.subarray(head), req.offset);
          } catch (e) {
            this.host.buffers.give(pooled);
            throw e;
          }
          writeReadReplyHeader(reply, req, this.structured, req.offset, req.length);
          this.host.stats.reads++;
          this.host.stats.bytesRead += req.length;
          return { reply, pooled };
        }
        case CMD_WRITE:
          if (entry.readOnly) return this.errorReply(req, NBD_ERRNO.EPERM, 'write to a read-only export');
          if (req.parts) await writeParts(store, req.parts, req.offset, { fua });
          else if (req.length) await store.writeAt(req.payload!, req.offset, { fua });
          this.host.stats.writes++;
          this.host.stats.bytesWritten += req.length;
          return this.okReply(req);
        case CMD_FLUSH:
          await store.flush();
          return this.okReply(req);
        case CMD_TRIM:
          if (entry.readOnly) return this.errorReply(req, NBD_ERRNO.EPERM, 'trim on a read-only export');
          if (req.length) await store.trim(req.offset, req.length, { fua });
          return this.okReply(req);
        case CMD_WRITE_ZEROES:
          if (entry.readOnly) return this.errorReply(req, NBD_ERRNO.EPERM, 'write-zeroes on a read-only export');
          if (req.flags & CMD_FLAG_FAST_ZERO && !store.caps.fastZero) return this.errorReply(req, NBD_ERRNO.ENOTSUP, 'no fast zeroing');
          if (req.length) await store.writeZeroes(req.offset, req.length, { fua, noHole: (req.flags & CMD_FLAG_NO_HOLE) !== 0 });
          return this.okReply(req);
        case CMD_CACHE:
          return this.okReply(req);
        case CMD_BLOCK_STATUS:
          return await this.blockStatusOf(req);
        default:
          return this.errorReply(req, NBD_ERRNO.EINVAL, `unsupported command ${commandName(req.type)}`);
      }
    } catch (e) {
      const code = errorCode(e);
      return this.errorReply(req, nbdErrnoOf(code), `${commandName(req.type)} failed: ${(e as Error).message}`);
    }
  }

  /** BLOCK_STATUS for base:allocation: the store's extents, or all data if it cannot tell. */
  private async blockStatusOf(req: NbdRequest): Promise<Buffer> {
    if (!this.blockStatus) return this.errorReply(req, NBD_ERRNO.EINVAL, 'BLOCK_STATUS without a negotiated base:allocation context');
    if (req.length === 0) return this.errorReply(req, NBD_ERRNO.EINVAL, 'BLOCK_STATUS of length 0');
    const store = this.entry!.store;
    const ext = store.capability(EXTENTS);
    const found = ext ? await ext.extents(req.offset, req.length) : [{ length: req.length, hole: false, zero: false }];
    // Descriptors are 32-bit: split longer runs; REQ_ONE asks for the first only.
    const out: Array<{ length: number; flags: number }> = [];
    for (const e of found) {
      const flags = (e.hole ? STATE_HOLE : 0) | (e.zero ? STATE_ZERO : 0);
      for (let left = e.length; left > 0; ) {
        const n = Math.min(left, 0x80000000);
        out.push({ length: n, flags });
        left -= n;
      }
    }
    return blockStatusReply(req, META_BASE_ALLOCATION_ID, req.flags & CMD_FLAG_REQ_ONE ? out.slice(0, 1) : out);
  }

  private okReply(req: NbdRequest): Buffer {
    return okReply(req, this.structured);
  }

  private errorReply(req: NbdRequest, errno: number, why: string): Buffer {
    this.host.log(`nbd: ${this.entry?.name ?? '?'}: ${why}`);
    return errorReply(req, this.structured, errno, why);
  }

}
