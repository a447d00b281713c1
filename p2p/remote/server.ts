/**
 * RegionServer: serves any ReadWriterAt to remote peers over a transport.
 * A thin I/O adapter around the sans-IO ServerSession: it reads the stream,
 * checks the grant a client presents in HELLO (signed by this sharer, for
 * this region, not expired, bound to the right peer if bound at all), runs
 * the store operations the session hands it, and writes the replies.
 *
 * One session per stream: a client may open several streams on a connection
 * (each is an independent session with its own HELLO), though RemoteRegion
 * uses one. Store operations of a session run concurrently up to the
 * negotiated max-in-flight; at the limit the server stops reading the stream,
 * so a client that ignores the limit is slowed by backpressure, not buffered.
 *
 * Admission and memory (issue 8): connections enter through an
 * AdmissionGate (base/admission.ts) keyed by source address — a connection
 * is pending until its first valid HELLO (the transport proved a key, but
 * keys cost nothing; the grant is what counts), pending ones are capped per
 * source and in total with the oldest of the fullest source evicted for a
 * newcomer, sessions are capped per source and in total. Streams per
 * connection are capped. Bytes held for requests in progress (read buffers
 * until their reply is sent, write payloads until stored) are charged to a
 * server-wide ByteBudget; at its limit streams stop reading, and a peer
 * whose replies have not moved for `stallMs` is dropped, largest first.
 */
import { BufferPool } from '../../engine/nbd/buffer-pool.ts';
import type { Identity } from '../../crypto/identity.ts';
import { base32Encode } from '../../crypto/identity.ts';
import { regionIdText, verifyGrantFor } from '../../crypto/grant.ts';
import { isDelegation, verifyDelegationFor, type DelegationClaims } from '../../crypto/delegation.ts';
import type { ByteStream, Connection, Listener } from '../../transports/transport.ts';
import { QuicmapError, errorCode } from '../../base/errors.ts';
import type { ReadWriterAt } from '../../engine/rwat.ts';
import { signManifest } from '../protocol/manifest.ts';
import { packReplyParts, type Capability, type HelloBody, type Limits } from '../protocol/messages.ts';
import { ServerSession, type ServerRequest } from '../protocol/server-session.ts';
import { FrameWriter } from './frame-writer.ts';
import { systemClock, type Clock } from '../../base/clock.ts';
import { AdmissionGate, sourceOfHostPort, type AdmissionTicket } from '../../base/admission.ts';
import { ByteBudget, type BudgetHolder } from '../../base/byte-budget.ts';
import { SessionTable } from '../protocol/session-table.ts';
import type { SessionGrant } from '../protocol/messages.ts';
import { LiveSession, SlotWaker, type SessionSender } from './live-session.ts';


export const DEFAULT_LIMITS: Limits = { maxFrame: 1024 * 1024, maxInFlight: 64 };

export interface RegionServerOptions {
  identity: Identity;
  store: ReadWriterAt;
  /** 16 bytes; grants must name it. */
  regionId: Uint8Array;
  limits?: Partial<Limits>;
  /** Advertised in the manifest (default: the store's preferred block size, at least 64 KiB). */
  chunkSize?: number;
  /** Changes when the sharer restarts (default: start time in ms). */
  generation?: number;
  /** A connection that has not completed HELLO within this is dropped. Default 10 000 ms. */
  helloTimeoutMs?: number;
  /** Connections with a session, in total and per source address; more are closed at once. Defaults 256 and 64. */
  maxConnections?: number;
  /** Time source for the HELLO deadline and the grace before closing (tests: a VirtualClock). */
  clock?: Clock;
  maxConnectionsPerSource?: number;
  /** Connections still without a valid HELLO, in total and per source (a newcomer evicts the oldest of the fullest source). Defaults 64 and 8. */
  maxPending?: number;
  maxPendingPerSource?: number;
  /** Streams (sessions) one connection may have open. Default 4. */
  maxStreamsPerConnection?: number;
  /** Bytes all sessions together may hold for requests in progress. Default 256 MiB. */
  memoryBudget?: number;
  /** A peer holding budget whose replies have not moved for this long is dropped when the budget is full. Default 2 000 ms. */
  stallMs?: number;
  log?: (message: string) => void;
  /** Called after each write, trim or zero a peer made succeeded (the change feed records it, by session). */
  onWrite?: (offset: number, length: number, session: number) => void;
  /**
   * Resumable sessions: how many are kept (live or suspended) node-wide and
   * per peer key, and how long a suspended one waits for its peer. Defaults
   * 256, 8 and 60 000 ms. `resumable: false` offers none (old behaviour).
   */
  resumable?: boolean;
  maxSessions?: number;
  maxSessionsPerPeer?: number;
  sessionTtlMs?: number;
}

/**
 * The goodbye: a client ending its session on purpose calls this last; the
 * sharer answers and frees the session (and its reply log) when the stream
 * ends, instead of keeping it for a resume until the TTL.
 */
export const SESSION_BYE = 'session.bye';

/** Who made a call (or a write): the session, its peer, its rights. */
export interface CallContext {
  /** Unique per session of this server (a reconnecting client gets a new one). */
  session: number;
  peer: Uint8Array;
  readOnly: boolean;
  /** Largest reply body the session's peer accepts (the negotiated max frame). */
  maxReply: number;
  /**
   * Set when the peer came with a delegation (crypto/delegation.ts) instead
   * of a grant: a read-only session that fetches by reference only, inside
   * the delegated range (p2p/copy); plain READs are refused.
   */
  delegation?: DelegationClaims;
}

/** Serves one named CALL; throws a QuicmapError to answer with an error. The value is sent as msgpack. */
export type CallHandler = (args: unknown, ctx: CallContext) => Promise<unknown>;

/** Per-connection bookkeeping for admission and the memory budget. */
/** Send a reply; `release` (optional) runs once its buffers may be reused (never, if nothing can say so). */
type ReplySender = (frames: Uint8Array[], release?: () => void) => Promise<void>;

interface ConnState {
  authed: boolean;
  ticket: AdmissionTicket;
  streams: number;
  /** Sends waiting on the transport (the peer not reading shows here) and when one last completed. */
  pendingSends: number;
  lastSend: number;
  /** Bytes held for this connection's requests in progress. */
  charged: number;
  holder: BudgetHolder;
  roomWaiters: Array<() => void>;
}

export interface RegionServerStats {
  connections: number;
  sessions: number;
  refused: number;
  bytesRead: number;
  bytesWritten: number;
  /** Write requests applied to the store (each request once, however often it was sent). */
  writesApplied: number;
  /** Sessions taken back by a new link. */
  resumes: number;
  /** Sessions their client ended with a goodbye (freed at once, not kept for resume). */
  goodbyes: number;
  /** Resumes refused (unknown, expired or someone else's session): the peer got a new one. */
  resumesRefused: number;
  /** Requests received again after a resume and dropped by id (answered from the log). */
  duplicates: number;
}

export class RegionServer {
  readonly regionId: Uint8Array;
  readonly limits: Limits;
  /**
   * WRITE payloads that arrive in pieces are gathered into these, READ replies
   * are read into them (recycled: no allocation and GC per request).
   */
  private readonly payloads = new BufferPool(32 * 1024 * 1024);
  readonly stats: RegionServerStats = { connections: 0, sessions: 0, refused: 0, bytesRead: 0, bytesWritten: 0, writesApplied: 0, resumes: 0, resumesRefused: 0, duplicates: 0, goodbyes: 0 };
  private readonly sessions: SessionTable<LiveSession>;
  private readonly live = new Set<LiveSession>();
  private readonly store: ReadWriterAt;
  private readonly identity: Identity;
  private readonly log: (m: string) => void;
  private readonly connections = new Set<Connection>();
  private readonly listeners = new Set<Listener>();
  private signed: { manifest: Uint8Array; manifestSig: Uint8Array; size: number } | undefined;
  private readonly opts: RegionServerOptions;
  private readonly handlers = new Map<string, CallHandler>();
  /** Calls a delegated session may make (the by-reference fetch path); it may make no others. */
  private readonly delegatedCalls = new Set<string>();
  private sessionSeq = 0;
  private readonly clock: Clock;
  private readonly gate: AdmissionGate;
  readonly budget: ByteBudget;
  private closed = false;

  constructor(opts: RegionServerOptions) {
    this.opts = opts;
    this.store = opts.store;
    this.identity = opts.identity;
    this.regionId = opts.regionId;
    this.limits = { ...DEFAULT_LIMITS, ...opts.limits };
    this.log = opts.log ?? (() => {});
    this.clock = opts.clock ?? systemClock;
    const maxActive = opts.maxConnections ?? 256;
    const maxPending = opts.maxPending ?? 64;
    this.gate = new AdmissionGate({
      maxPending,
      maxPendingPerSource: Math.min(opts.maxPendingPerSource ?? 8, maxPending),
      maxActive,
      maxActivePerSource: Math.min(opts.maxConnectionsPerSource ?? 64, maxActive),
    });
    this.budget = new ByteBudget({ limit: opts.memoryBudget ?? 256 * 1024 * 1024, reserve: this.limits.maxFrame * 2, stallMs: opts.stallMs ?? 2000 });
    this.sessions = new SessionTable<LiveSession>({
      maxSessions: opts.maxSessions ?? 256,
      maxPerPeer: opts.maxSessionsPerPeer ?? 8,
      ttlMs: opts.sessionTtlMs ?? 60_000,
      onDrop: (live, why) => this.dropSession(live, why === 'expired' ? 'suspended session expired' : 'suspended session evicted for a newer one'),
    });
  }

  /** Sessions kept for resume (live and suspended). */
  get sessionCount(): number {
    return this.sessions.size;
  }

  private dropSession(live: LiveSession, reason: string): void {
    if (live.creds) this.sessions.close(live.creds.sessionId);
    this.live.delete(live);
    live.dispose(reason);
    this.log(`session ${live.number}: ${reason}`);
  }

  private async manifest(): Promise<{ manifest: Uint8Array; manifestSig: Uint8Array; size: number }> {
    if (!this.signed) {
      const size = await this.store.size();
      const caps = this.store.caps;
      const signed = await signManifest(this.identity, {
        regionId: this.regionId,
        size,
        chunkSize: this.opts.chunkSize ?? Math.max(64 * 1024, caps.preferredBlockSize),
        generation: this.opts.generation ?? Date.now(),
        readOnly: caps.readOnly,
        canTrim: caps.canTrim,
        fastZero: caps.fastZero,
        multiConn: caps.multiConn,
        preferredBlockSize: caps.preferredBlockSize,
      });
      this.signed = { ...signed, size };
    }
    return this.signed;
  }

  /** Accept connections from `listener` until it or this server closes. */
  /** Serve the named call `method` (change feeds, migration control, hash lists). */
  handle(method: string, handler: CallHandler, opts: { delegated?: boolean } = {}): void {
    this.handlers.set(method, handler);
    if (opts.delegated) this.delegatedCalls.add(method);
  }

  async serveListener(listener: Listener): Promise<void> {
    this.listeners.add(listener);
    try {
      for (;;) {
        const conn = await listener.accept();
        if (!conn) return;
        if (this.closed) {
          await conn.close();
          return;
        }
        void this.serveConnection(conn);
      }
    } finally {
      this.listeners.delete(listener);
    }
  }

  /** Serve every stream the peer opens on `conn` until it closes. Never throws. */
  async serveConnection(conn: Connection): Promise<void> {
    const peer = base32Encode(conn.remotePublicKey);
    const source = sourceOfHostPort(conn.remoteAddress);
    const ticket = this.gate.admit(source, () => {
      this.log(`peer ${peer} from ${source} evicted: it sent no HELLO yet and a newer connection needed its slot`);
      void conn.close().catch(() => {});
    });
    if (!ticket) {
      this.log(`peer ${peer} turned away: ${this.gate.held(source).active} sessions from ${source} already (${this.gate.activeConnections} in total)`);
      await conn.close().catch(() => {});
      return;
    }
    this.connections.add(conn);
    this.stats.connections++;
    this.log(`peer ${peer} connected from ${conn.remoteAddress}`);
    // A peer that never gets a session going (no stream, no HELLO) does not keep a slot.
    const state: ConnState = {
      authed: false,
      ticket,
      streams: 0,
      pendingSends: 0,
      lastSend: Date.now(),
      charged: 0,
      roomWaiters: [],
      holder: this.budget.holder({
        shed: () => {
          this.log(`peer ${peer} dropped: it holds ${state.holder.held} bytes and has not read its replies for ${this.budget.stallMs} ms while the server is at its memory budget`);
          void conn.close().catch(() => {});
        },
        stalled: (now, stallMs) => state.pendingSends > 0 && now - state.lastSend >= stallMs,
      }),
    };
    const helloMs = this.opts.helloTimeoutMs ?? 10_000;
    const cancelHello = this.clock.schedule(this.clock.now() + helloMs, () => {
      if (state.authed) return;
      this.log(`peer ${peer} sent no valid HELLO within ${helloMs} ms; dropping it`);
      void conn.close().catch(() => {});
    });
    try {
      for (;;) {
        let stream: ByteStream | null;
        try {
          stream = await conn.acceptStream();
        } catch {
          return;
        }
        if (!stream) return;
        if (state.streams >= (this.opts.maxStreamsPerConnection ?? 4)) {
          stream.reset(new QuicmapError('EBUSY', 'too many streams on this connection'));
          continue;
        }
        state.streams++;
        void this.serveStream(conn, stream, peer, state).finally(() => state.streams--);
      }
    } finally {
      cancelHello();
      ticket.release();
      state.holder.release();
      state.roomWaiters.splice(0).forEach((f) => f());
      this.connections.delete(conn);
      this.log(`peer ${peer} disconnected`);
    }
  }

  private async serveStream(conn: Connection, stream: ByteStream, peer: string, state: ConnState): Promise<void> {
    const session = new ServerSession({ limits: this.limits, caps: this.capsOffered(), gather: (n) => this.payloads.take(n) });
    let ctx: CallContext = { session: ++this.sessionSeq, peer: conn.remotePublicKey, readOnly: true, maxReply: 0 };
    // A resumable session (set at HELLO) and this stream's attachment to it.
    let live: LiveSession | undefined;
    let gen = 0;
    let slots = new SlotWaker();
    let dead = false;
    const writer = new FrameWriter(stream);
    const send = async (frames: Uint8Array[]) => {
      if (frames.length === 0 || dead) return;
      if (state.pendingSends++ === 0) state.lastSend = Date.now();
      try {
        await writer.write(frames);
      } catch {
        dead = true;
      } finally {
        state.pendingSends--;
        state.lastSend = Date.now();
      }
    };
    // Replies go through the session's log when it is resumable (kept until acknowledged, replayed after a resume).
    // `release`: the reply's buffers may be reused once the client acknowledged it (resumable
    // sessions only: without the log nothing says when the transport is done with them).
    const reply = async (frames: Uint8Array[], release?: () => void) => {
      if (live) {
        const l = live;
        l.reply(frames, this.clock.now(), release);
        if (l.log.overflowing) this.dropSession(l, `client left more than ${l.log.window} replies unacknowledged`);
      } else await send(frames);
    };
    const sender: SessionSender = {
      send,
      drop: (why) => {
        if (dead) return;
        this.log(`peer ${peer}: ${why}`);
        dead = true;
        stream.reset();
        slots.wake();
      },
    };
    // Set when the stream was ended on purpose (refusal, protocol error) with
    // closeWrite: resetting it then could discard the error frame in flight.
    let graceful = false;
    // The client said goodbye: when this stream ends its session ends too (not kept for a resume).
    let bye = false;
    const finish = () => {
      dead = true;
      session.close();
      if (!graceful) stream.reset();
      if (bye && live && !live.isDisposed) {
        if (live.detach(gen)) this.dropSession(live, 'ended by its client');
      } else if (live && live.detach(gen) && live.creds && !live.isDisposed) {
        const now = this.clock.now();
        this.sessions.suspend(live.creds.sessionId, now);
        this.clock.schedule(now + this.sessions.ttl + 1, () => this.sessions.handleTimeout(this.clock.now()));
      }
    };
    try {
      while (!dead) {
        // Backpressure: at the in-flight limit, stop reading until a request completes.
        while (session.isServing && session.inFlightCount >= session.limits.maxInFlight && !dead) await slots.wait();
        // The server-wide budget: wait for room (peers that stall get shed meanwhile).
        while (session.isServing && !dead && !state.holder.released && !state.holder.mayTake()) await this.room(state);
        let chunk: Uint8Array | null;
        try {
          chunk = await stream.read();
        } catch {
          break;
        }
        if (chunk === null || dead) break;
        for (const ev of session.receive(chunk)) {
          switch (ev.kind) {
            case 'hello': {
              const a = await this.authorize(conn, session, ev.hello, peer, send, sender);
              if (a.live) {
                live = a.live;
                gen = a.gen;
                slots = live.slots;
                ctx = { session: live.number, peer: conn.remotePublicKey, readOnly: a.readOnly, maxReply: session.limits.maxFrame };
              } else {
                ctx.readOnly = a.readOnly;
                ctx.maxReply = session.limits.maxFrame;
              }
              if (a.delegation) ctx.delegation = a.delegation;
              if (session.isServing) {
                // The first valid HELLO moves the connection from the pending pool to a session slot.
                if (!state.authed && !state.ticket.promote()) {
                  this.log(`peer ${peer} turned away: too many sessions from its address (or in total)`);
                  void conn.close().catch(() => {});
                  dead = true;
                }
                state.authed = true;
              } else {
                await stream.closeWrite().catch(() => {});
                // Give the refusal a moment to reach the peer before tearing down.
                this.later(500, () => void conn.close().catch(() => {}));
                graceful = true;
                dead = true;
              }
              break;
            }
            case 'send':
              await reply(ev.frames);
              break;
            case 'ack':
              // An ack of replies never sent is a broken peer: the ProtocolError ends this stream (catch below).
              live?.ack(ev.received, this.clock.now(), gen);
              break;
            case 'duplicate':
              this.stats.duplicates++;
              break;
            case 'request': {
              if (ev.request.op === 'call' && ev.request.method === SESSION_BYE) {
                // Answered here, in order: the session is freed once the client, having read this, closes the stream.
                if (!bye) this.stats.goodbyes++;
                bye = true;
                await reply(session.replyParts(ev.request.id, packReplyParts({ bye: true })));
                break;
              }
              // Each request needs room in the server-wide budget before it may hold bytes.
              while (!dead && !state.holder.released && !state.holder.mayTake()) await this.room(state);
              const wake = slots;
              void this.execute(session, ev.request, reply, ctx, state).then(() => wake.wake());
              break;
            }
            case 'close':
              this.log(`peer ${peer}: ${ev.error.message}; dropping the session`);
              await send(ev.frames);
              await stream.closeWrite().catch(() => {});
              // A peer that broke the protocol loses the connection, after its error frame had a moment to leave.
              this.later(200, () => void conn.close().catch(() => {}));
              graceful = true;
              dead = true;
              if (live) this.dropSession(live, 'protocol error');
              break;
          }
          if (dead) break;
        }
      }
    } catch (e) {
      // Nothing a peer sends may take the sharer down: log, drop this session, serve on.
      this.log(`peer ${peer}: session failed: ${(e as Error).message}`);
      if (live) this.dropSession(live, 'session failed');
    } finally {
      finish();
      slots.wake();
    }
  }

  /** Replies held for resume, not yet acknowledged (all sessions). */
  get repliesHeld(): number {
    let n = 0;
    for (const l of this.live) n += l.log.unackedCount;
    return n;
  }

  /**
   * A resumable session for this HELLO, when both sides offered `resume`:
   * the one it names if key, id and token match and it has not expired, or
   * a new one (the refusal's typed reason goes back in WELCOME).
   */
  private sessionFor(conn: Connection, hello: HelloBody, sender: SessionSender, peer: string, maxInFlight: number): { live: LiveSession; gen: number; grant: SessionGrant } | undefined {
    const now = this.clock.now();
    let refused: SessionGrant['refused'];
    if (hello.resume) {
      try {
        const live = this.sessions.resume(conn.remotePublicKey, hello.resume.session, hello.resume.token, now);
        if (hello.resume.received > live.log.lastSequence) {
          // The rightful peer, but it claims replies never sent: its state is not this session's. End it.
          this.dropSession(live, 'resume claimed replies never sent');
          throw new QuicmapError('EPROTO', `resume claims reply ${hello.resume.received} of ${live.log.lastSequence}`);
        }
        const gen = live.attach(sender, true);
        this.stats.resumes++;
        this.log(`peer ${peer} resumed session ${live.number} (${live.log.unackedCount} replies to replay, ${live.txn.inFlight.size} requests in progress)`);
        return { live, gen, grant: { session: live.creds!.sessionId, token: live.creds!.token, resumed: true, received: live.txn.seen, window: live.log.window } };
      } catch (e) {
        this.stats.resumesRefused++;
        refused = { code: e instanceof QuicmapError ? e.code : 'EACCES', message: (e as Error).message };
        this.log(`peer ${peer}: resume refused (${refused.message}); new session`);
      }
    }
    const live = new LiveSession(++this.sessionSeq, 4 * maxInFlight + 16, now);
    try {
      live.creds = this.sessions.open(conn.remotePublicKey, live, now);
    } catch (e) {
      // At the session bound: serve this link without resume rather than refuse it.
      this.log(`peer ${peer}: no resumable session (${(e as Error).message})`);
      return undefined;
    }
    this.live.add(live);
    live.holder = this.budget.holder({
      shed: () => this.dropSession(live, `dropped: its client has not acknowledged ${live.log.unackedBytes} bytes of replies while the server is at its memory budget`),
      stalled: (t, stallMs) => live.log.unackedCount > 0 && t - live.lastAckAt >= stallMs,
    });
    const gen = live.attach(sender, false);
    return { live, gen, grant: { session: live.creds.sessionId, token: live.creds.token, resumed: false, received: 0, window: live.log.window, ...(refused ? { refused } : {}) } };
  }

  private later(ms: number, fn: () => void): void {
    this.clock.schedule(this.clock.now() + ms, fn);
  }

  /** Resolves when the server-wide budget may have room for this connection again (or it closed). */
  private room(state: ConnState): Promise<void> {
    return new Promise<void>((r) => {
      state.roomWaiters.push(r);
      state.holder.whenRoom(() => state.roomWaiters.splice(0).forEach((f) => f()));
    });
  }

  private capsOffered(): Capability[] {
    const caps: Capability[] = ['zero', 'fua', 'ping', 'call', 'large-call'];
    if (this.opts.resumable !== false) caps.push('resume');
    if (this.store.caps.canTrim) caps.push('trim');
    return caps;
  }

  /** Check the grant; answer WELCOME or the refusal. Returns whether the session is read-only, its resumable state, and the delegation it came with (if it did). */
  private async authorize(
    conn: Connection,
    session: ServerSession,
    hello: HelloBody,
    peer: string,
    send: (f: Uint8Array[]) => Promise<void>,
    sender: SessionSender,
  ): Promise<{ readOnly: boolean; live?: LiveSession; gen: number; delegation?: DelegationClaims }> {
    let delegation: DelegationClaims | undefined;
    let readOnly: boolean;
    try {
      if (isDelegation(hello.grant)) {
        const expect = { sharer: this.identity.publicKey, regionId: this.regionId, peer: conn.remotePublicKey, regionSize: await this.store.size() };
        delegation = (await verifyDelegationFor(hello.grant, expect)).delegation;
        readOnly = true;
      } else {
        const claims = await verifyGrantFor(hello.grant, { sharer: this.identity.publicKey, regionId: this.regionId, peer: conn.remotePublicKey });
        readOnly = claims.rights === 'ro' || this.store.caps.readOnly;
      }
    } catch (e) {
      this.stats.refused++;
      const code = e instanceof QuicmapError ? e.code : 'EACCES';
      const message = (e as Error).message;
      this.log(`peer ${peer} refused: ${message}`);
      await send(session.refuse(code, message));
      return { readOnly: true, gen: 0 };
    }
    const m = await this.manifest();
    this.stats.sessions++;
    this.log(
      `peer ${peer} (${hello.agent || 'unknown agent'}) opened region ${regionIdText(this.regionId)} ${delegation ? `by delegation from ${base32Encode(delegation.delegator)}` : readOnly ? 'read-only' : 'read-write'}`,
    );
    const maxInFlight = Math.min(this.limits.maxInFlight, hello.limits.maxInFlight);
    const resumable = session.commonCaps(hello).has('resume') ? this.sessionFor(conn, hello, sender, peer, maxInFlight) : undefined;
    await send(session.accept(hello, { size: m.size, readOnly, manifest: m.manifest, manifestSig: m.manifestSig, ...(resumable ? { session: resumable.grant } : {}) }, resumable?.live.txn));
    return { readOnly, gen: resumable?.gen ?? 0, ...(resumable ? { live: resumable.live } : {}), ...(delegation ? { delegation } : {}) };
  }

  private async execute(session: ServerSession, req: ServerRequest, send: ReplySender, ctx: CallContext, state: ConnState): Promise<void> {
    const s = this.store;
    // Bytes this request holds until its reply has been sent: the read buffer, or the write payload.
    const held = req.op === 'read' ? req.length : req.op === 'write' ? req.data.length : req.op === 'call' ? (req.bytes ?? 0) : 0;
    state.charged += held;
    state.holder.set(state.charged);
    try {
      await this.run(session, req, send, s, ctx);
    } finally {
      state.charged -= held;
      state.holder.set(state.charged);
    }
  }

  private async run(session: ServerSession, req: ServerRequest, send: ReplySender, s: ReadWriterAt, ctx: CallContext): Promise<void> {
    try {
      switch (req.op) {
        case 'read': {
          if (ctx.delegation) throw new QuicmapError('EACCES', 'a delegated session fetches by reference only');
          // Not zero-filled: readAt fills every byte (or throws, and nothing is sent). From the
          // pool, back into it once the client acknowledged the reply (no allocation and GC per read).
          const pooled = this.payloads.take(req.length);
          const buf = pooled.subarray(0, req.length);
          try {
            await s.readAt(buf, req.offset);
          } catch (e) {
            this.payloads.give(pooled);
            throw e;
          }
          this.stats.bytesRead += req.length;
          await send(session.reply(req.id, buf), () => this.payloads.give(pooled));
          return;
        }
        case 'write':
          this.stats.writesApplied++;
          await s.writeAt(req.data, req.offset, { fua: req.fua });
          // The store has the bytes now (as the NBD server does with its gathered payloads).
          if (req.gathered) this.payloads.give(req.gathered as Buffer);
          this.stats.bytesWritten += req.data.length;
          break;
        case 'flush':
          await s.flush();
          break;
        case 'trim':
          await s.trim(req.offset, req.length, { fua: req.fua });
          break;
        case 'zero':
          await s.writeZeroes(req.offset, req.length, { fua: req.fua, noHole: req.noHole });
          break;
        case 'call': {
          const handler = this.handlers.get(req.method);
          if (!handler) throw new QuicmapError('ENOTSUP', `this sharer has no "${req.method}" call`);
          if (ctx.delegation && !this.delegatedCalls.has(req.method)) throw new QuicmapError('EACCES', `a delegated session may not call "${req.method}"`);
          const value = await handler(req.args, ctx);
          await send(session.replyParts(req.id, packReplyParts(value)));
          return;
        }
      }
      if (req.op === 'write' || req.op === 'trim' || req.op === 'zero') {
        const length = req.op === 'write' ? req.data.length : req.length;
        this.opts.onWrite?.(req.offset, length, ctx.session);
      }
      await send(session.reply(req.id));
    } catch (e) {
      if (errorCode(e) === 'EIO') this.log(`store error on ${req.op}: ${(e as Error).message}`);
      await send(session.replyError(req.id, e));
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const l of [...this.listeners]) await l.close().catch(() => {});
    for (const live of [...this.live]) this.dropSession(live, 'server closing');
    await Promise.all([...this.connections].map((c) => c.close().catch(() => {})));
  }
}
