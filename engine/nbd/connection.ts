/**
 * One client connection: the thin I/O adapter between a socket and the
 * sans-IO handshake and request decoder. Requests run concurrently and are
 * answered by handle as they finish.
 *
 * Memory is bounded by pausing the socket. What the connection holds is
 * charged to its own budget and to the server-wide one (base/byte-budget.ts):
 * payload bytes of requests in progress, input received but not decoded yet
 * (a WRITE payload still arriving), and every reply not yet taken by the
 * kernel at its length plus REPLY_OVERHEAD (the bookkeeping Node keeps per
 * queued write), so a client sending a million 1-byte READs or unknown
 * commands and never reading is stopped after a bounded number of replies.
 * The handshake is bounded the same way (replies are produced only while
 * the client reads them) and must finish within a deadline.
 * Log lines are rate-limited per connection.
 */
import type { Socket } from 'node:net';
import type { AdmissionTicket } from '../../base/admission.ts';
import type { BudgetHolder, ByteBudget } from '../../base/byte-budget.ts';
import { RateLimitedLog } from '../../base/rate-limited-log.ts';
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

const EMPTY = Buffer.alloc(0);

export interface ConnectionLimits {
  maxPayload: number;
  maxInFlight: number;
  /** Bytes one connection may hold (requests in progress, undecoded input, unsent replies at their cost). */
  maxInFlightBytes: number;
  /** The handshake must reach transmission within this. */
  handshakeTimeoutMs: number;
}

/** What one queued reply costs beyond its bytes: Node's per-write bookkeeping (measured ~200 B). */
export const REPLY_OVERHEAD = 256;

/** Handshake replies queued in the socket before we stop reading options. */
const HANDSHAKE_HIGH_WATER = 64 * 1024;

export interface ConnectionHost {
  readonly limits: ConnectionLimits;
  readonly buffers: BufferPool;
  /** The server-wide budget every connection charges. */
  readonly budget: ByteBudget;
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
  /** Called once the connection has ended wherever it went on (frees its admission slot). */
  onClosed?: () => void;
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
  /** Replies handed to the socket and not yet written to the kernel, at their cost (bytes + REPLY_OVERHEAD each). */
  private unsentCost = 0;
  private disconnecting = false;
  /** Shutting down, replies all answered: input is read and dropped. */
  private draining = false;
  private closed = false;
  private idle: (() => void) | undefined;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private readonly holder: BudgetHolder;
  private readonly logLimited: RateLimitedLog;
  /** When the client last took our output / last sent us bytes while we were reading; for stall detection. */
  private lastOutput = Date.now();
  private lastInput = Date.now();
  /** The socket is paused because of a budget (not the client's fault when it sends nothing). */
  private pausedByUs = false;
  readonly done: Promise<void>;
  private resolveDone!: () => void;
  private readonly host: ConnectionHost;
  readonly socket: Socket;
  private readonly ticket: AdmissionTicket | undefined;

  constructor(
    host: ConnectionHost,
    socket: Socket,
    preNegotiated?: string | { name: string; structured: boolean; blockStatus: boolean },
    ticket?: AdmissionTicket,
  ) {
    this.host = host;
    this.socket = socket;
    this.ticket = ticket;
    this.done = new Promise((r) => (this.resolveDone = r));
    this.logLimited = new RateLimitedLog((m) => host.log(m), { burst: 5, windowMs: 10_000 });
    this.holder = host.budget.holder({
      shed: () => {
        this.log(`nbd: dropping client ${this.peer}: it holds ${this.holder.held} bytes and has not read its replies for ${host.budget.stallMs} ms while the server is at its memory budget`);
        this.socket.destroy();
      },
      stalled: (now, stallMs) =>
        (this.unsentCost > 0 && now - this.lastOutput >= stallMs) ||
        (!this.pausedByUs && (this.decoder?.buffered ?? 0) > 0 && now - this.lastInput >= stallMs),
    });
    socket.setNoDelay?.(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    // Unsent reply bytes count against the budget; draining frees it.
    socket.on('drain', () => {
      this.lastOutput = Date.now();
      this.updateFlow();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // A client that simply goes away is not worth a log line.
      if (err.code !== 'ECONNRESET' && err.code !== 'EPIPE') this.log(`nbd: connection error: ${err.message}`);
    });
    socket.on('close', () => this.finish());
    if (preNegotiated !== undefined) {
      const pre = typeof preNegotiated === 'string' ? { name: preNegotiated, structured: false, blockStatus: false } : preNegotiated;
      const entry = host.entry(pre.name);
      if (!entry) throw new Error(`no export named "${pre.name}"`);
      ticket?.promote();
      this.startTransmission(entry, pre.structured, pre.blockStatus);
    } else {
      this.handshake = host.handshake();
      socket.write(NbdHandshake.greeting());
      const ms = host.limits.handshakeTimeoutMs;
      this.handshakeTimer = setTimeout(() => {
        if (!this.handshake || this.closed) return;
        this.log(`nbd: client ${this.peer} did not finish the handshake within ${ms} ms; closing`);
        this.socket.destroy();
      }, ms);
      this.handshakeTimer.unref();
    }
  }

  private get peer(): string {
    return this.socket.remoteAddress ? `${this.socket.remoteAddress}:${this.socket.remotePort}` : 'on the unix socket';
  }

  /** Logs of this connection, rate-limited: a client cannot flood the server's log. */
  private log(message: string): void {
    this.logLimited.log(message);
  }

  /** Close at once, e.g. to make room for a newer connection. */
  evict(why: string): void {
    if (this.closed) return;
    this.log(`nbd: closing client ${this.peer}: ${why}`);
    this.socket.destroy();
  }

  /** The export this connection is attached to, once in transmission. */
  get exportName(): string | undefined {
    return this.entry?.name;
  }

  /**
   * Stop reading, let in-flight requests answer, then close: as soon as the
   * last reply is with the kernel, or at `graceMs` for a client that does
   * not take its replies. The client's answer to our FIN is not waited for:
   * an idle libnbd or qemu client reads nothing until its next request.
   */
  async shutdown(graceMs = 5000): Promise<void> {
    if (this.closed) return;
    this.socket.pause();
    this.disconnecting = true;
    let grace: NodeJS.Timeout | undefined;
    const deadline = new Promise((r) => (grace = setTimeout(r, graceMs)));
    await Promise.race([this.whenIdle(), deadline]);
    // Nothing the client sends from now on is served: read and drop it, so
    // closing with its bytes unread does not reset the connection (and the
    // replies still on their way with it).
    this.draining = true;
    this.socket.resume();
    // Send what is queued (corked replies included) before closing.
    if (this.corked) {
      this.corked = false;
      this.socket.uncork();
    }
    const flushed = new Promise<void>((r) => this.socket.end(() => r()));
    await Promise.race([flushed, this.done, deadline]);
    clearTimeout(grace); // a pending timer would keep the process alive for graceMs
    this.socket.destroy();
    await this.done;
  }

  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.handshakeTimer);
    this.ticket?.release();
    // Replies still queued die with the socket; whatever the store is still
    // doing is charged until it finishes (see onRequest).
    this.unsentCost = 0;
    this.account();
    if (this.inFlight === 0) this.holder.release();
    this.logLimited.flush();
    this.resolveDone();
  }

  /** Report what this connection holds to the server-wide budget. */
  private account(): number {
    const held = this.inFlightBytes + this.unsentCost + (this.closed ? 0 : (this.decoder?.buffered ?? 0) + (this.handshake ? this.socket.writableLength : 0));
    this.holder.set(held);
    return held;
  }

  private whenIdle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((r) => (this.idle = r));
  }

  private onData(chunk: Buffer): void {
    if (this.closed || this.draining) return;
    this.lastInput = Date.now();
    if (this.handshake) return this.handshakeData(chunk);
    this.feed(chunk);
  }

  private handshakeData(chunk: Buffer): void {
    const hs = this.handshake!;
    for (;;) {
      const outcome = hs.push(chunk);
      chunk = EMPTY;
      const out = hs.takeOutput();
      if (out.length) this.socket.write(out.length === 1 ? out[0]! : Buffer.concat(out));
      if (outcome.kind === 'close') {
        this.log(`nbd: closing connection during handshake: ${outcome.reason}`);
        // Destroy once our last bytes are out: a client that ignores the FIN
        // must not keep the socket (and its table entry) forever.
        this.socket.end(() => this.socket.destroy());
        return;
      }
      if (outcome.kind === 'transmission') {
        this.handshake = undefined;
        clearTimeout(this.handshakeTimer);
        const entry = this.host.entry(outcome.export.name);
        if (!entry) {
          this.socket.destroy();
          return;
        }
        if (this.ticket && !this.ticket.promote()) {
          this.log(`nbd: closing client ${this.peer}: too many connections (from its address or in total)`);
          this.socket.destroy();
          return;
        }
        const ticket = this.ticket;
        const negotiated = { structured: outcome.structured, blockStatus: outcome.blockStatus, rest: outcome.rest, onClosed: () => ticket?.release() };
        if (this.host.handOff?.(this.socket, entry, negotiated)) {
          // The socket is someone else's now; its admission slot is freed when the worker is done with it.
          this.closed = true;
          this.holder.release();
          this.logLimited.flush();
          this.resolveDone();
          return;
        }
        this.startTransmission(entry, outcome.structured, outcome.blockStatus);
        if (outcome.rest.length) this.feed(outcome.rest);
        else this.updateFlow();
        return;
      }
      if (!hs.waitingForOutput) return;
      // Options left, replies piling up: go on only once the client reads them.
      if (this.socket.writableLength >= HANDSHAKE_HIGH_WATER) {
        this.socket.pause();
        this.account();
        this.socket.once('drain', () => {
          if (this.closed || this.handshake !== hs) return;
          this.socket.resume();
          this.handshakeData(EMPTY);
        });
        return;
      }
    }
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
      this.log(`nbd: dropping client: ${(e as Error).message}`);
      this.socket.destroy();
      return;
    }
    this.updateFlow();
  }

  /** Room for more work, on this connection and in the server-wide budget. */
  private canAcceptMore(): boolean {
    const { maxInFlight, maxInFlightBytes } = this.host.limits;
    const held = this.account();
    return this.inFlight < maxInFlight && held < maxInFlightBytes && this.holder.mayTake();
  }

  private updateFlow(): void {
    if (this.closed || this.disconnecting || !this.decoder) return;
    if (this.canAcceptMore()) {
      if (this.decoder.isPaused) {
        try {
          this.decoder.resume();
        } catch (e) {
          this.log(`nbd: dropping client: ${(e as Error).message}`);
          this.socket.destroy();
          return;
        }
      }
      if (!this.decoder.isPaused && this.socket.isPaused()) {
        this.pausedByUs = false;
        this.lastInput = Date.now();
        this.socket.resume();
      }
    } else {
      if (!this.socket.isPaused()) this.socket.pause();
      this.pausedByUs = true;
      // Held back by the server-wide budget rather than our own: wake up when it has room.
      if (!this.holder.mayTake()) this.holder.whenRoom(() => this.updateFlow());
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
        // unsent replies, at their cost, against the budgets instead.
        const cost = reply.length + REPLY_OVERHEAD;
        this.unsentCost += cost;
        this.socket.write(reply, () => {
          if (pooled) pool.give(pooled);
          if (this.closed) return;
          this.unsentCost -= cost;
          this.lastOutput = Date.now();
          this.updateFlow();
        });
      }
      if (this.closed) {
        this.account();
        if (this.inFlight === 0) this.holder.release();
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
      this.log(`nbd: flush at disconnect failed: ${(e as Error).message}`);
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
    this.log(`nbd: ${this.entry?.name ?? '?'}: ${why}`);
    return errorReply(req, this.structured, errno, why);
  }

}
