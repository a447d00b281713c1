/**
 * RelayServer: `quicmap relay`. One TCP port, two kinds of connection,
 * told apart by their first 8 bytes:
 *
 * - control (starts with a TLS ClientHello: the secure channel): an authenticated
 *   connection from a peer (secure-socket.ts, the relay as responder), one
 *   stream of control messages: reserve / connect (messages.ts);
 * - circuit (starts with CIRCUIT_MAGIC + a token the relay issued): one end
 *   of a circuit; once both ends arrived the relay splices them, counting
 *   bytes against the circuit's quota, forwarding with backpressure —
 *   natively with splice(2) on a thread of its own (native-splice.ts) where
 *   the addon is available, else in JS.
 *
 * - a UDP socket on the same port number only observes: a peer about to
 *   punch over QUIC sends a token (given on its control connection) from
 *   its QUIC socket, and the relay tells it, on the control connection,
 *   the address that datagram came from (its NAT mapping), if it came from
 *   the control connection's IP. Nothing is ever sent over UDP, so the
 *   relay reflects no traffic.
 *
 * Every decision comes from the sans-IO RelayBook; refusals and closes are
 * sent to the peers concerned (typed, messages.ts) and logged here.
 * Bounded: connections still in setup (deadline each), control connections,
 * control message size, circuits (per peer and in all); a circuit buffers at
 * most one socket read per direction in JS (the source pauses until the
 * destination drains), or one pipe per direction natively.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { QuicmapError } from '../../base/errors.ts';
import type { Identity } from '../../crypto/identity.ts';
import type { Connection } from '../../transports/transport.ts';
import { formatHostPort, parseHostPort } from '../../transports/util.ts';
import { RelayBook, type Expiry, type RelayQuotas } from './book.ts';
import { ControlChannel } from './control-channel.ts';
import { CIRCUIT_MAGIC, TOKEN_BYTES, decodeClientMessage, type Refusal } from './messages.ts';
import { formatRelayAddress } from './address.ts';
import { secureSocket } from './secure-socket.ts';
import { punchPayload } from '../../transports/udp-punch.ts';
import { SocketReader, readerDeadline } from './socket-reader.ts';
import { handBack, nativeSpliceReason, socketFd, startNativeSplice, takeOver, type NativeSplice, type NativeSpliceEvent } from './native-splice.ts';

export interface RelayServerOptions {
  identity: Identity;
  /** "host:port"; port 0 picks a free one. */
  listen: string;
  quotas?: Partial<RelayQuotas>;
  /** Authenticated control connections at once. Default 1024. */
  maxControlConnections?: number;
  /** Connections in their first seconds (preamble / handshake) at once; more are dropped. Default 64. */
  maxPendingSetups?: number;
  /** Deadline for a new connection's preamble and handshake. Default 5 000 ms. */
  setupTimeoutMs?: number;
  log?: (message: string) => void;
}

interface CircuitEnds {
  id: number;
  from: Uint8Array;
  to: Uint8Array;
  tokens: [string, string];
  sockets: [Socket | undefined, Socket | undefined];
  leftovers: [Buffer[], Buffer[]];
  channels: [ControlChannel | undefined, ControlChannel | undefined];
  closed: boolean;
  /** Node no longer reads the sockets (spliceNative took them over). */
  takenOver: boolean;
  /** The native splice forwarding this circuit, until its 'closed' event. */
  native?: NativeSplice;
  /** Native bytes already counted in the book and in the relay's total. */
  nativeCounted: number;
  /** What endCircuit left to do with the sockets once the native splice has stopped. */
  afterNative?: () => void;
}

export interface RelayStats {
  reservations: number;
  circuits: number;
  circuitsOpened: number;
  refusals: Partial<Record<Refusal, number>>;
  /** Bytes forwarded through circuits, both directions. */
  bytesRelayed: number;
  /** UDP mappings observed for peers about to punch over QUIC. */
  udpObserved: number;
}

/** How long an observed UDP mapping stands for its control connection (NATs keep idle UDP mappings ~30 s or more). */
const OBSERVED_FRESH_MS = 25_000;

/** The host part of "host:port" / "[v6]:port", IPv4-mapped addresses unwrapped. */
const ipOf = (address: string) => address.replace(/:\d+$/, '').replace(/^\[|\]$/g, '').replace(/^::ffff:/, '');
/** Reservations are keyed by peer and service tag. */
const reservationKey = (peerHex: string, tag: Uint8Array) => (tag.length ? `${peerHex}/${Buffer.from(tag).toString('hex')}` : peerHex);
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const short = (b: Uint8Array) => hex(b).slice(0, 12);

export class RelayServer {
  readonly book: RelayBook;
  address = '';
  /** RELAY_ID@HOST:PORT, what `share --relay` takes. */
  relayAddress = '';
  readonly stats: RelayStats;
  /** Bytes forwarded and counted; natively spliced circuits add what they moved since their last event (see stats). */
  private bytesCounted = 0;
  /** Circuits a native splice forwards, until its 'closed' event (which may come after endCircuit). */
  private readonly natives = new Set<CircuitEnds>();
  private readonly server: Server;
  private readonly o: Required<Omit<RelayServerOptions, 'quotas'>>;
  private readonly pending = new Set<Socket>();
  private readonly controls = new Set<Connection>();
  /** Reserved peer (hex) -> its control channel. */
  private readonly reserved = new Map<string, ControlChannel>();
  private readonly byToken = new Map<string, { ends: CircuitEnds; side: 0 | 1 }>();
  private readonly circuits = new Map<number, CircuitEnds>();
  private timer: NodeJS.Timeout | undefined;
  /** Hole punches waiting for the target's answer: id -> the dialer's channel and request id. */
  private readonly punches = new Map<number, { channel: ControlChannel; rid: number; target: string; from: string; quic: boolean; timer: NodeJS.Timeout }>();
  /** The UDP socket that observes NAT mappings (QUIC hole punching); undefined if its port was taken. */
  private udp: UdpSocket | undefined;
  /** Observation tokens waiting for their datagram (one per control connection): token hex -> where to answer. */
  private readonly observing = new Map<string, { channel: ControlChannel; rid: number; ip: string; timer: NodeJS.Timeout }>();
  /** The UDP address last observed for each control connection. */
  private readonly observedUdp = new Map<ControlChannel, { ip: string; port: number; at: number }>();
  private nextPunch = 1;
  private closing: Promise<void> | undefined;

  private constructor(o: RelayServerOptions) {
    this.o = {
      identity: o.identity,
      listen: o.listen,
      maxControlConnections: o.maxControlConnections ?? 1024,
      maxPendingSetups: o.maxPendingSetups ?? 64,
      setupTimeoutMs: o.setupTimeoutMs ?? 5_000,
      log: o.log ?? (() => {}),
    };
    this.book = new RelayBook(o.quotas);
    const counted = () => this.bytesCounted;
    const live = () => {
      let n = 0;
      for (const ends of this.natives) if (ends.native) n += ends.native.bytes() - ends.nativeCounted;
      return n;
    };
    // bytesRelayed is read, never written: exact at any moment, natively spliced circuits included.
    this.stats = {
      reservations: 0,
      circuits: 0,
      circuitsOpened: 0,
      refusals: {},
      get bytesRelayed() {
        return counted() + live();
      },
      udpObserved: 0,
    };
    const why = nativeSpliceReason();
    if (why) this.o.log(`relay: circuits are forwarded in JS (${why})`);
    this.server = createServer({ noDelay: true });
    this.server.on('connection', (s) => void this.onSocket(s));
    this.server.on('error', (e) => this.o.log(`relay: accept error: ${e.message}`));
  }

  static async start(o: RelayServerOptions): Promise<RelayServer> {
    const r = new RelayServer(o);
    const { host, port } = parseHostPort(o.listen);
    await new Promise<void>((resolve, reject) => {
      const onError = (e: Error) => reject(new QuicmapError('EIO', `relay: cannot listen on ${o.listen}: ${e.message}`, { cause: e }));
      r.server.once('error', onError);
      r.server.listen({ host, port }, () => {
        r.server.off('error', onError);
        resolve();
      });
    });
    const a = r.server.address();
    r.address = a && typeof a === 'object' ? formatHostPort(a.address, a.port) : o.listen;
    r.relayAddress = formatRelayAddress({ key: o.identity.publicKey, address: r.address.replace(/^0\.0\.0\.0:/, '127.0.0.1:') });
    await r.openUdp(host, a && typeof a === 'object' ? a.port : port);
    return r;
  }

  /** The observing UDP socket on the TCP port's number; without it QUIC punches are refused, TCP ones still work. */
  private async openUdp(host: string, port: number): Promise<void> {
    const u = createSocket({ type: host.includes(':') ? 'udp6' : 'udp4', recvBufferSize: 256 * 1024 });
    const ok = await new Promise<boolean>((resolve) => {
      u.once('error', (e) => {
        this.o.log(`relay: no UDP observation on ${host}:${port} (${e.message}); QUIC hole punches are refused`);
        resolve(false);
      });
      u.bind({ address: host, port, exclusive: true }, () => resolve(true));
    });
    if (!ok) {
      u.close();
      return;
    }
    u.removeAllListeners('error');
    u.on('error', (e) => this.o.log(`relay: UDP: ${e.message}`));
    u.on('message', (msg, rinfo) => this.onObservation(msg, rinfo.address, rinfo.port));
    this.udp = u;
  }

  /** A datagram on the UDP port: an observation token we handed out, or nothing (ignored, never answered). */
  private onObservation(msg: Buffer, address: string, port: number): void {
    const token = punchPayload(msg);
    if (!token || token.length !== TOKEN_BYTES) return;
    const key = hex(token);
    const w = this.observing.get(key);
    const ip = address.replace(/^::ffff:/, '');
    // Only from the control connection's own IP: a token cannot bind someone else's address (a spoofed source) to a peer.
    if (!w || ip !== w.ip) return;
    this.observing.delete(key);
    clearTimeout(w.timer);
    this.observedUdp.set(w.channel, { ip, port, at: Date.now() });
    this.stats.udpObserved++;
    void w.channel.send({ t: 'observed', rid: w.rid, ip, port }).catch(() => {});
  }

  private observe(channel: ControlChannel, rid: number, token: Uint8Array, peer: Uint8Array, remote: string): void {
    if (!this.udp) {
      this.refuse('PERMISSION_DENIED', 'UDP observation: this relay has no UDP port', peer);
      void channel.send({ t: 'refused', rid, refusal: 'PERMISSION_DENIED', message: 'this relay does not observe UDP (its UDP port was taken)' }).catch(() => {});
      return;
    }
    // One observation in flight per control connection: a newer one replaces it.
    for (const [k, w] of this.observing) {
      if (w.channel !== channel) continue;
      clearTimeout(w.timer);
      this.observing.delete(k);
    }
    const key = hex(token);
    if (this.observing.has(key)) return; // a token someone else holds: let this one time out
    const timer = setTimeout(() => {
      this.observing.delete(key);
      void channel.send({ t: 'refused', rid, refusal: 'CONNECTION_FAILED', message: 'no UDP datagram with the token arrived' }).catch(() => {});
    }, this.o.setupTimeoutMs);
    timer.unref();
    this.observing.set(key, { channel, rid, ip: ipOf(remote), timer });
  }

  /** The fresh UDP mapping observed for a control connection. */
  private freshUdp(channel: ControlChannel | undefined): { ip: string; port: number } | undefined {
    const u = channel && this.observedUdp.get(channel);
    return u && Date.now() - u.at < OBSERVED_FRESH_MS ? u : undefined;
  }

  private refuse(refusal: Refusal, message: string, who: Uint8Array): void {
    this.stats.refusals[refusal] = (this.stats.refusals[refusal] ?? 0) + 1;
    this.o.log(`relay: refused ${short(who)}: ${refusal}: ${message}`);
  }

  private async onSocket(socket: Socket): Promise<void> {
    socket.on('error', () => {}); // surfaces through 'close'
    if (this.closing || this.pending.size >= this.o.maxPendingSetups) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    this.pending.add(socket);
    const remote = formatHostPort(socket.remoteAddress ?? '?', socket.remotePort ?? 0);
    const reader = new SocketReader(socket);
    try {
      const first = await readerDeadline(reader, this.o.setupTimeoutMs, `relay preamble from ${remote}`, () => reader.peek(CIRCUIT_MAGIC.length));
      if (first.equals(CIRCUIT_MAGIC)) {
        const pre = await readerDeadline(reader, this.o.setupTimeoutMs, `relay circuit from ${remote}`, () => reader.read(CIRCUIT_MAGIC.length + TOKEN_BYTES));
        this.pending.delete(socket);
        this.onCircuitSocket(socket, hex(pre.subarray(CIRCUIT_MAGIC.length)), reader.detach());
        return;
      }
      // A control connection opens with the secure channel's TLS ClientHello (a TLS handshake record).
      if (!isTlsHandshakeRecord(first)) throw new QuicmapError('EPROTO', 'not a quicmap relay client');
      if (this.controls.size >= this.o.maxControlConnections) throw new QuicmapError('EBUSY', 'too many control connections');
      const conn = await secureSocket(socket, this.o.identity, 'responder', { reader, timeoutMs: this.o.setupTimeoutMs, remoteAddress: remote });
      this.pending.delete(socket);
      void this.serveControl(conn);
    } catch (e) {
      this.pending.delete(socket);
      reader.detach();
      socket.destroy();
      if (!(e instanceof QuicmapError && e.code === 'EPROTO')) this.o.log(`relay: dropped ${remote}: ${(e as Error).message}`);
    }
  }

  private async serveControl(conn: Connection): Promise<void> {
    this.controls.add(conn);
    const peer = conn.remotePublicKey;
    const peerHex = hex(peer);
    let channel: ControlChannel | undefined;
    /** Reservations (peer/tag keys) this control connection holds. */
    const held = new Set<string>();
    try {
      const stream = await Promise.race([
        conn.acceptStream(),
        new Promise<null>((r) => setTimeout(() => r(null), this.o.setupTimeoutMs).unref()),
      ]);
      if (!stream) return;
      channel = new ControlChannel(stream);
      for (;;) {
        const body = await channel.next();
        if (body === null) return;
        const m = decodeClientMessage(body);
        const now = Date.now();
        if (m.t === 'reserve') {
          const key = reservationKey(peerHex, m.tag);
          const v = this.book.reserve(peerHex, now, key);
          if (!v.ok) {
            this.refuse(v.refusal, v.message, peer);
            await channel.send({ t: 'refused', rid: m.rid, refusal: v.refusal, message: v.message });
            continue;
          }
          if (!this.reserved.has(key)) this.o.log(`relay: reservation for ${short(peer)}${m.tag.length ? ` (service ${hex(m.tag).slice(0, 12)})` : ''} until ${new Date(v.expiresAt).toISOString()}`);
          this.reserved.set(key, channel);
          held.add(key);
          this.stats.reservations = this.book.reservationCount;
          await channel.send({ t: 'reserved', rid: m.rid, expiresAt: v.expiresAt, limits: this.book.limits });
        } else if (m.t === 'observe') {
          this.observe(channel, m.rid, m.token, peer, conn.remoteAddress);
        } else if (m.t === 'punch') {
          this.onPunch(channel, peer, conn.remoteAddress, m.rid, m.target, m.port, reservationKey(hex(m.target), m.tag), m.quic);
        } else if (m.t === 'punch-answer') {
          const p = this.punches.get(m.id);
          if (!p || !held.has(p.target)) continue;
          this.punches.delete(m.id);
          clearTimeout(p.timer);
          const udp = p.quic ? this.freshUdp(channel) : undefined;
          if (m.port === 0) void p.channel.send({ t: 'refused', rid: p.rid, refusal: 'PERMISSION_DENIED', message: 'the peer declined the hole punch' }).catch(() => {});
          else if (p.quic && !udp) void p.channel.send({ t: 'refused', rid: p.rid, refusal: 'CONNECTION_FAILED', message: 'the peer\'s UDP address was not observed' }).catch(() => {});
          else if (udp) void p.channel.send({ t: 'punch-go', rid: p.rid, ip: udp.ip, port: udp.port }).catch(() => {});
          else void p.channel.send({ t: 'punch-go', rid: p.rid, ip: ipOf(conn.remoteAddress), port: m.port }).catch(() => {});
        } else {
          const targetHex = hex(m.target);
          const key = reservationKey(targetHex, m.tag);
          const v = this.book.openCircuit(peerHex, targetHex, now, key);
          const targetChannel = this.reserved.get(key);
          if (!v.ok || !targetChannel) {
            const refusal = v.ok ? 'NO_RESERVATION' : v.refusal;
            const message = v.ok ? 'the target is not connected' : v.message;
            if (v.ok) this.book.closeCircuit(v.id);
            this.refuse(refusal, message, peer);
            await channel.send({ t: 'refused', rid: m.rid, refusal, message });
            continue;
          }
          const tokens: [string, string] = [randomBytes(TOKEN_BYTES).toString('hex'), randomBytes(TOKEN_BYTES).toString('hex')];
          const ends: CircuitEnds = { id: v.id, from: peer, to: m.target, tokens, sockets: [undefined, undefined], leftovers: [[], []], channels: [channel, targetChannel], closed: false, takenOver: false, nativeCounted: 0 };
          this.circuits.set(v.id, ends);
          this.byToken.set(tokens[0], { ends, side: 0 });
          this.byToken.set(tokens[1], { ends, side: 1 });
          this.stats.circuits = this.book.circuitCount;
          this.arm();
          void targetChannel.send({ t: 'incoming', id: v.id, token: Buffer.from(tokens[1], 'hex'), from: peer }).catch(() => this.endCircuit(ends, 'CONNECTION_FAILED', 'the target\'s control connection is gone'));
          await channel.send({ t: 'circuit', rid: m.rid, id: v.id, token: Buffer.from(tokens[0], 'hex'), limits: this.book.limits });
        }
      }
    } catch (e) {
      this.o.log(`relay: control connection of ${short(peer)} ended: ${(e as Error).message}`);
    } finally {
      this.controls.delete(conn);
      if (channel) {
        this.observedUdp.delete(channel);
        for (const [k, w] of this.observing) {
          if (w.channel !== channel) continue;
          clearTimeout(w.timer);
          this.observing.delete(k);
        }
      }
      for (const key of held) {
        if (this.reserved.get(key) !== channel) continue;
        this.reserved.delete(key);
        this.book.release(key);
        this.stats.reservations = this.book.reservationCount;
        this.o.log(`relay: reservation of ${short(peer)} released (its control connection closed)`);
      }
      await conn.close().catch(() => {});
    }
  }

  /** Forward a hole-punch request to a reserved peer with the requester's observed address; its answer goes back with the target's. */
  private onPunch(channel: ControlChannel, peer: Uint8Array, remote: string, rid: number, target: Uint8Array, port: number, key: string, quic: boolean): void {
    const targetChannel = this.reserved.get(key);
    if (!targetChannel || !this.book.hasReservation(key, Date.now())) {
      this.refuse('NO_RESERVATION', 'hole punch: the target holds no reservation', peer);
      void channel.send({ t: 'refused', rid, refusal: 'NO_RESERVATION', message: 'the target holds no reservation on this relay' }).catch(() => {});
      return;
    }
    const fromHex = hex(peer);
    let mine = 0;
    for (const p of this.punches.values()) if (p.from === fromHex) mine++;
    if (this.punches.size >= 256 || mine >= 4) {
      void channel.send({ t: 'refused', rid, refusal: 'RESOURCE_LIMIT_EXCEEDED', message: 'too many hole punches in progress' }).catch(() => {});
      return;
    }
    // Over QUIC the dialer's UDP mapping must have been observed (observe) on this control connection.
    const udp = quic ? this.freshUdp(channel) : undefined;
    if (quic && !udp) {
      void channel.send({ t: 'refused', rid, refusal: 'CONNECTION_FAILED', message: 'observe your UDP address first (QUIC hole punch)' }).catch(() => {});
      return;
    }
    const id = this.nextPunch++;
    // The target observes its own UDP mapping before it answers: give it two setup deadlines.
    const timer = setTimeout(() => {
      this.punches.delete(id);
      void channel.send({ t: 'refused', rid, refusal: 'CONNECTION_FAILED', message: 'the target did not answer the hole punch' }).catch(() => {});
    }, this.o.setupTimeoutMs * (quic ? 2 : 1));
    timer.unref();
    this.punches.set(id, { channel, rid, target: key, from: fromHex, quic, timer });
    this.o.log(`relay: hole punch ${id}${quic ? ' (quic)' : ''}: ${short(peer)} (${udp ? `udp ${udp.ip}:${udp.port}` : remote}) -> ${short(target)}`);
    void targetChannel.send({ t: 'punch', id, from: peer, ip: udp?.ip ?? ipOf(remote), port: udp?.port ?? port, quic }).catch(() => {});
  }

  private onCircuitSocket(socket: Socket, token: string, leftover: Buffer[]): void {
    const entry = this.byToken.get(token);
    if (!entry || entry.ends.closed || entry.ends.sockets[entry.side]) {
      socket.destroy();
      return;
    }
    this.byToken.delete(token);
    const { ends, side } = entry;
    ends.sockets[side] = socket;
    ends.leftovers[side] = leftover;
    socket.on('close', () => this.endCircuit(ends, undefined, 'an end closed'));
    if (ends.sockets[0] && ends.sockets[1]) this.splice(ends);
  }

  private splice(ends: CircuitEnds): void {
    const [a, b] = ends.sockets as [Socket, Socket];
    this.book.spliced(ends.id, Date.now());
    this.stats.circuitsOpened++;
    this.arm();
    this.o.log(`relay: circuit ${ends.id} open: ${short(ends.from)} -> ${short(ends.to)}`);
    if (this.spliceNative(ends)) return;
    const forward = (src: Socket, dst: Socket, early: Buffer[]) => {
      const push = (chunk: Buffer): boolean => {
        if (ends.closed) return false;
        const v = this.book.carry(ends.id, chunk.length);
        if (!v.ok) {
          this.endCircuit(ends, v.refusal, v.message);
          return false;
        }
        this.bytesCounted += chunk.length;
        if (!dst.write(chunk)) {
          src.pause();
          dst.once('drain', () => src.resume());
        }
        return true;
      };
      for (const c of early) if (!push(c)) return;
      src.on('data', push);
      src.on('end', () => dst.end());
      src.resume();
    };
    forward(a, b, ends.leftovers[0]);
    forward(b, a, ends.leftovers[1]);
    ends.leftovers = [[], []];
  }

  /**
   * Hand the circuit to a native splice: what Node had read already (the
   * preamble's leftovers, its buffer) is counted and sent first by the
   * native thread, then the kernel moves the rest. False (nothing touched)
   * when native splicing is unavailable or a socket has no descriptor.
   */
  private spliceNative(ends: CircuitEnds): boolean {
    if (nativeSpliceReason()) return false;
    const [a, b] = ends.sockets as [Socket, Socket];
    const fa = socketFd(a);
    const fb = socketFd(b);
    if (fa === undefined || fb === undefined) return false;
    // From here to startNativeSplice: one tick, so libuv reads nothing more from either socket.
    const heads: [Buffer[], Buffer[]] = [[...ends.leftovers[0], ...takeOver(a)], [...ends.leftovers[1], ...takeOver(b)]];
    ends.takenOver = true;
    ends.leftovers = [[], []];
    for (const [side, chunks] of heads.entries()) {
      for (const [i, c] of chunks.entries()) {
        const v = this.book.carry(ends.id, c.length);
        if (v.ok) {
          this.bytesCounted += c.length;
          continue;
        }
        // Over the cap already: deliver what fitted (as the JS path would), then refuse.
        const dst = ends.sockets[1 - side]!;
        for (const done of chunks.slice(0, i)) dst.write(done);
        if (side === 1) for (const done of heads[0]) b.write(done);
        this.endCircuit(ends, v.refusal, v.message);
        return true;
      }
    }
    const cap = this.book.quotas.circuitBytes;
    const used = this.book.circuit(ends.id)?.bytes ?? 0;
    try {
      ends.native = startNativeSplice(
        { a: fa, b: fb, capBytes: cap > 0 ? Math.max(0, cap - used) : undefined, headAB: Buffer.concat(heads[0]), headBA: Buffer.concat(heads[1]), name: `circuit ${ends.id}`, pipeSize: pipeSizeFor(this.natives.size) },
        (e) => this.onNative(ends, e),
      );
      this.natives.add(ends);
    } catch (e) {
      // Nothing reads the sockets any more: the circuit cannot go on in JS either.
      this.o.log(`relay: circuit ${ends.id}: native splice failed: ${(e as Error).message}`);
      this.endCircuit(ends, 'CONNECTION_FAILED', 'the relay could not forward the circuit');
    }
    return true;
  }

  /** Bring the book and the total up to the native splice's count. */
  private countNative(ends: CircuitEnds, total: number): void {
    const delta = total - ends.nativeCounted;
    if (delta <= 0) return;
    ends.nativeCounted = total;
    this.bytesCounted += delta;
    // The native budget is the book's remaining quota, so this stays within it (closed circuits are gone from the book).
    this.book.carry(ends.id, delta);
  }

  private onNative(ends: CircuitEnds, e: NativeSpliceEvent): void {
    if (e.kind === 'progress') {
      this.countNative(ends, e.counts.bytesAB + e.counts.bytesBA);
      return;
    }
    const c = e.closed;
    this.countNative(ends, c.bytesAB + c.bytesBA);
    ends.native = undefined;
    this.natives.delete(ends);
    if (c.reason === 'cap') {
      const v = this.book.byteLimit(ends.id);
      this.endCircuit(ends, v.refusal, v.message);
    } else if (c.reason === 'end') {
      this.endCircuit(ends, undefined, 'both ends closed', true);
    } else if (c.reason === 'error') {
      this.endCircuit(ends, undefined, `an end failed (${c.side === 'a' ? 'dialer' : 'target'}: ${c.error})`);
    }
    const after = ends.afterNative;
    ends.afterNative = undefined;
    after?.();
  }

  /**
   * Close a circuit; with a refusal, tell both peers why (typed) and log it.
   * `shut`: both directions were shut down already (the native splice's
   * normal end), so the sockets can go at once.
   */
  private endCircuit(ends: CircuitEnds, refusal: Refusal | undefined, message: string, shut = false): void {
    if (ends.closed) return;
    ends.closed = true;
    // The book's count of a natively spliced circuit, exact up to now (its log line says it).
    if (ends.native) this.countNative(ends, ends.native.bytes());
    const entry = this.book.closeCircuit(ends.id);
    this.circuits.delete(ends.id);
    for (const t of ends.tokens) this.byToken.delete(t);
    this.stats.circuits = this.book.circuitCount;
    if (refusal) {
      this.refuse(refusal, message, ends.from);
      for (const ch of ends.channels) void ch?.send({ t: 'closed', id: ends.id, refusal, message }).catch(() => {});
    } else {
      this.o.log(`relay: circuit ${ends.id} closed (${message}; ${entry?.bytes ?? 0} bytes)`);
    }
    const finish = () => {
      if (refusal) {
        // Give the 'closed' notices a head start on the FIN, so peers see the reason first.
        setTimeout(() => {
          for (const s of ends.sockets) s?.destroy();
        }, 50).unref();
        return;
      }
      for (const s of ends.sockets) {
        if (!s || s.destroyed) continue;
        if (shut) {
          s.destroy();
          continue;
        }
        // A normal end: what was already forwarded still reaches the other side, then FIN.
        if (ends.takenOver) handBack(s);
        s.end();
        setTimeout(() => s.destroy(), 5_000).unref();
      }
    };
    if (ends.native) {
      // The native thread shares the sockets: it stops (soon) before JS touches them.
      ends.afterNative = finish;
      ends.native.stop();
      return;
    }
    finish();
  }

  private arm(): void {
    clearTimeout(this.timer);
    const t = this.book.nextTimeout();
    if (t === undefined || this.closing) return;
    this.timer = setTimeout(() => this.onTimer(), Math.min(Math.max(0, t - Date.now()), 2 ** 31 - 1));
    this.timer.unref();
  }

  private onTimer(): void {
    for (const x of this.book.handleTimeout(Date.now())) this.applyExpiry(x);
    this.stats.reservations = this.book.reservationCount;
    this.arm();
  }

  private applyExpiry(x: Expiry): void {
    if (x.kind === 'reservation') {
      this.reserved.delete(x.peer);
      this.o.log(`relay: reservation of ${x.peer.slice(0, 12)} expired`);
      return;
    }
    const ends = this.circuits.get(x.id);
    // The book already dropped it (closeCircuit in endCircuit is then a no-op).
    if (ends) this.endCircuit(ends, x.refusal, x.message);
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      clearTimeout(this.timer);
      for (const p of this.punches.values()) clearTimeout(p.timer);
      for (const w of this.observing.values()) clearTimeout(w.timer);
      this.udp?.close();
      for (const s of this.pending) s.destroy();
      for (const ends of [...this.circuits.values()]) this.endCircuit(ends, undefined, 'relay shutting down');
      const closed = new Promise<void>((r) => this.server.close(() => r()));
      await Promise.all([...this.controls].map((c) => c.close().catch(() => {})));
      await Promise.race([closed, new Promise((r) => setTimeout(r, 2000).unref())]);
    })();
    return this.closing;
  }
}

/** The first bytes of a TLS handshake record (content type 22, version 3.x): a ClientHello. */
function isTlsHandshakeRecord(b: Buffer): boolean {
  return b.length >= 3 && b[0] === 0x16 && b[1] === 0x03 && b[2]! <= 0x04;
}

/**
 * The pipe size of a new natively spliced circuit (two pipes each): 1 MiB
 * (fastest on loopback, native/README.md) for the first 128 circuits, 64 KiB
 * beyond, so the pipes of a relay at its default 512 circuits hold at most
 * 128 x 2 MiB + 384 x 128 KiB = 304 MiB of kernel memory (a pipe fills only
 * while its destination is slower than its source).
 */
function pipeSizeFor(open: number): number {
  return open < 128 ? 1 << 20 : 64 << 10;
}
