/**
 * RelayTransport: the relay client as a Transport (`name: 'relay'`).
 * Addresses are relay addresses, "RELAY_ID@HOST:PORT".
 *
 * - `listen(relay)` reserves a slot on the relay and keeps it: renewed at
 *   half its lifetime, re-made after the control connection drops (a relay
 *   restart) with backoff. Each circuit the relay announces is joined and
 *   secured end to end as the responder; `accept()` yields it.
 * - `dial(relay, peerKey)` asks the relay for a circuit to the peer, joins
 *   it and runs the handshake as the initiator expecting `peerKey`: the
 *   relay cannot pose as the peer.
 *
 * - `punch(relay, peerKey)` / `punchQuic(relay, peerKey, socket, dial)`:
 *   a direct path to a peer we reach through `relay`, by a hole punch the
 *   relay coordinates (TCP simultaneous open; or UDP punch datagrams from
 *   the QUIC sockets of both sides, then a QUIC dial from the dialer's).
 *
 * A circuit the relay closes with a reason (byte or time quota) closes its
 * connection with that typed RelayRefusal, logged on this side as well.
 */
import { isIP, type Socket } from 'node:net';
import { AsyncQueue } from '../../base/async-queue.ts';
import { ClosedError, QuicmapError } from '../../base/errors.ts';
import type { Identity } from '../../crypto/identity.ts';
import type { Connection, Listener, Transport } from '../../transports/transport.ts';
import type { MuxSession } from '../../transports/mux.ts';
import { formatRelayAddress, parseRelayAddress, type RelayAddress } from './address.ts';
import { RelayControl, connectSocket } from './control-client.ts';
import { CIRCUIT_MAGIC, type RelayRefusal } from './messages.ts';
import { secureSocket } from './secure-socket.ts';
import { freePort, simultaneousOpen } from './hole-punch.ts';
import { punchDatagram, type PunchSocket } from '../../transports/udp-punch.ts';
import { formatHostPort } from '../../transports/util.ts';

export interface RelayTransportOptions {
  /** Deadline for each step (TCP connect, handshake, a relay answer). Default 5 000 ms. */
  stepTimeoutMs?: number;
  /** Circuits being set up at once on a listener; more wait. Default 16. */
  maxPendingCircuits?: number;
  log?: (message: string) => void;
}

const short = (b: Uint8Array) => Buffer.from(b).toString('hex').slice(0, 12);
const sameKey = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));

/** What a reservation needs to take part in QUIC hole punches: the socket of the service's QUIC listener. */
export interface RelayListenOptions {
  quicPunch?: {
    socket: () => PunchSocket | undefined;
    /** A punch towards `address` ("ip:port") for `peer` starts: a QUIC connection from there is that punch's. */
    onPunch?: (address: string, peer: Uint8Array) => void;
  };
}

/** Punch datagrams the target of a QUIC punch sends: a few at once, the rest spread over about two seconds. */
const TARGET_PUNCHES = 10;
const TARGET_FIRST = 2;
/** Punch datagrams the dialer sends before it dials (its QUIC Initial opens its own NAT anyway). */
const DIALER_PUNCHES = 2;

async function joinCircuit(relay: RelayAddress, token: Uint8Array, ms: number): Promise<Socket> {
  const socket = await connectSocket(relay.address, ms);
  socket.write(Buffer.concat([CIRCUIT_MAGIC, token]));
  return socket;
}

class RelayListener implements Listener {
  readonly address: string;
  readonly queue = new AsyncQueue<Connection>((c) => void c.close());
  private control: RelayControl | undefined;
  private renewTimer: NodeJS.Timeout | undefined;
  private closedFlag = false;
  private setups = 0;
  private readonly accepted = new Set<Connection>();
  /** Reservation expiry (ms since epoch), 0 while not reserved: for status. */
  expiresAt = 0;
  private readonly o: Required<RelayTransportOptions>;

  private readonly identity: Identity;
  private readonly relay: RelayAddress;
  private readonly onClose: (l: RelayListener) => void;
  private readonly listenOpts: RelayListenOptions;
  constructor(
    identity: Identity,
    relay: RelayAddress,
    o: Required<RelayTransportOptions>,
    onClose: (l: RelayListener) => void,
    listenOpts: RelayListenOptions = {},
  ) {
    this.identity = identity;
    this.relay = relay;
    this.onClose = onClose;
    this.o = o;
    this.listenOpts = listenOpts;
    this.address = formatRelayAddress(relay);
  }

  /** First reservation: its refusal is the caller's error. */
  async start(): Promise<void> {
    await this.connect();
    void this.supervise();
  }

  private async connect(): Promise<void> {
    const control = await RelayControl.open(this.identity, this.relay, { timeoutMs: this.o.stepTimeoutMs, log: this.o.log });
    try {
      control.onIncoming = (m) => void this.onIncoming(control, m.id, m.token, m.from);
      control.onPunch = (m) => void (m.quic ? this.onQuicPunch(control, m.id, m.from, m.ip, m.port) : this.onPunch(control, m.id, m.from, m.ip, m.port));
      const r = await control.reserve(this.o.stepTimeoutMs, this.relay.tag);
      this.control = control;
      this.scheduleRenew(r.expiresAt);
      this.o.log(`relay ${this.relay.address}: reserved until ${new Date(r.expiresAt).toISOString()} (circuits up to ${r.limits.bytes || 'unlimited'} bytes, ${r.limits.durationMs || 'unlimited'} ms)`);
    } catch (e) {
      await control.close();
      if ((e as RelayRefusal).refusal) this.o.log(`relay ${this.relay.address}: ${(e as Error).message}`);
      throw e;
    }
  }

  private scheduleRenew(expiresAt: number): void {
    this.expiresAt = expiresAt;
    clearTimeout(this.renewTimer);
    const ms = Math.max(1_000, (expiresAt - Date.now()) / 2);
    this.renewTimer = setTimeout(() => void this.renew(), ms);
    this.renewTimer.unref();
  }

  private async renew(): Promise<void> {
    const c = this.control;
    if (!c || this.closedFlag) return;
    try {
      this.scheduleRenew((await c.reserve(this.o.stepTimeoutMs, this.relay.tag)).expiresAt);
    } catch (e) {
      this.o.log(`relay ${this.relay.address}: renewing the reservation failed: ${(e as Error).message}`);
      void c.close(); // supervise() reconnects
    }
  }

  /** Keep a reservation while open: after the control connection drops, reconnect with backoff. */
  private async supervise(): Promise<void> {
    let backoff = 200;
    while (!this.closedFlag) {
      if (this.control) {
        await this.control.closed;
        this.control = undefined;
        this.expiresAt = 0;
        if (this.closedFlag) return;
        this.o.log(`relay ${this.relay.address}: control connection lost; reserving again`);
      }
      await new Promise((r) => setTimeout(r, backoff).unref());
      if (this.closedFlag) return;
      try {
        await this.connect();
        backoff = 200;
      } catch (e) {
        backoff = Math.min(backoff * 2, 5_000);
        this.o.log(`relay ${this.relay.address}: reservation failed (retrying in ${backoff} ms): ${(e as Error).message}`);
      }
    }
  }

  private async onIncoming(control: RelayControl, id: number, token: Uint8Array, from: Uint8Array): Promise<void> {
    if (this.closedFlag || this.setups >= this.o.maxPendingCircuits) return; // the relay expires the circuit
    this.setups++;
    let socket: Socket | undefined;
    try {
      socket = await joinCircuit(this.relay, token, this.o.stepTimeoutMs);
      const conn = await secureSocket(socket, this.identity, 'responder', {
        timeoutMs: this.o.stepTimeoutMs,
        remoteAddress: `${this.address}#${id}`,
      });
      this.watch(control, id, conn);
      this.accepted.add(conn);
      void conn.closed.then(() => this.accepted.delete(conn));
      this.o.log(`relay ${this.relay.address}: circuit ${id} from ${short(conn.remotePublicKey)}${Buffer.from(conn.remotePublicKey).equals(Buffer.from(from)) ? '' : ` (relay said ${short(from)})`}`);
      if (!this.queue.push(conn)) await conn.close();
    } catch (e) {
      socket?.destroy();
      this.o.log(`relay ${this.relay.address}: circuit ${id} failed: ${(e as Error).message}`);
    } finally {
      this.setups--;
    }
  }

  /** Our side of a hole punch a peer asked for: answer with our port, connect to it at once, secure it as the responder. */
  private async onPunch(control: RelayControl, id: number, from: Uint8Array, ip: string, port: number): Promise<void> {
    if (this.closedFlag || this.setups >= this.o.maxPendingCircuits) {
      void control.answerPunch(id, 0).catch(() => {});
      return;
    }
    this.setups++;
    try {
      const localPort = await freePort();
      await control.answerPunch(id, localPort);
      const socket = await simultaneousOpen({ localPort, remoteIp: ip, remotePort: port });
      const conn = await secureSocket(socket, this.identity, 'responder', { expectedKey: from, timeoutMs: this.o.stepTimeoutMs, remoteAddress: `${ip}:${port}` }).catch((e) => {
        socket.destroy();
        throw e;
      });
      this.accepted.add(conn);
      void conn.closed.then(() => this.accepted.delete(conn));
      this.o.log(`hole punch: direct TCP connection with ${short(from)} at ${ip}:${port}`);
      if (!this.queue.push(conn)) await conn.close();
    } catch (e) {
      this.o.log(`hole punch with ${short(from)} failed: ${(e as Error).message}`);
    } finally {
      this.setups--;
    }
  }

  /**
   * Our side of a QUIC hole punch: only for a peer connected to us through
   * this relay right now, and only towards the UDP address the relay
   * observed for it. Have the relay observe our listener's socket, open our
   * NAT towards the peer with punch datagrams from that socket (bounded: a
   * few now, the rest spread out), answer; the peer then dials our QUIC
   * listener, which accepts it like any connection.
   */
  private async onQuicPunch(control: RelayControl, id: number, from: Uint8Array, ip: string, port: number): Promise<void> {
    const socket = this.listenOpts.quicPunch?.socket();
    const relayedPeer = [...this.accepted].some((c) => c.remoteAddress.includes('#') && sameKey(c.remotePublicKey, from));
    if (this.closedFlag || !socket || !relayedPeer || isIP(ip) !== socket.family || this.setups >= this.o.maxPendingCircuits) {
      if (!relayedPeer && socket) this.o.log(`hole punch (quic) asked for ${short(from)}, which has no circuit to us here: declined`);
      void control.answerPunch(id, 0).catch(() => {});
      return;
    }
    this.setups++;
    try {
      const me = await control.observe(socket, this.o.stepTimeoutMs);
      this.listenOpts.quicPunch?.onPunch?.(formatHostPort(ip, port), from);
      let sent = 0;
      const punch = () => {
        if (this.closedFlag || sent >= TARGET_PUNCHES) return;
        sent++;
        socket.send(ip, port, punchDatagram()); // false (rate limited): the next one may go
      };
      for (let i = 0; i < TARGET_FIRST; i++) punch();
      await control.answerPunch(id, me.port || 1);
      this.o.log(`hole punch (quic): punching ${ip}:${port} for ${short(from)} from udp port ${socket.localPort} (seen by the relay as ${me.ip}:${me.port})`);
      while (sent < TARGET_PUNCHES && !this.closedFlag) {
        await new Promise((r) => setTimeout(r, 100 + Math.random() * 150).unref());
        punch();
      }
    } catch (e) {
      void control.answerPunch(id, 0).catch(() => {});
      this.o.log(`hole punch (quic) with ${short(from)} failed: ${(e as Error).message}`);
    } finally {
      this.setups--;
    }
  }

  private watch(control: RelayControl, id: number, conn: MuxSession): void {
    control.onCircuitClosed.set(id, (e) => void conn.close(e));
    void conn.closed.then(() => control.onCircuitClosed.delete(id));
  }

  accept(): Promise<Connection | null> {
    return this.queue.shift();
  }

  async close(): Promise<void> {
    if (this.closedFlag) return;
    this.closedFlag = true;
    clearTimeout(this.renewTimer);
    this.queue.closeAndDrain();
    await this.control?.close();
    await Promise.all([...this.accepted].map((c) => c.close()));
    this.onClose(this);
  }
}

export class RelayTransport implements Transport {
  readonly name = 'relay' as const;
  private readonly o: Required<RelayTransportOptions>;
  private readonly controls = new Map<string, Promise<RelayControl>>();
  private readonly listeners = new Set<RelayListener>();
  private readonly connections = new Set<Connection>();
  private isClosed = false;

  private readonly identity: Identity;
  constructor(
    identity: Identity,
    opts: RelayTransportOptions = {},
  ) {
    this.identity = identity;
    this.o = { stepTimeoutMs: opts.stepTimeoutMs ?? 5_000, maxPendingCircuits: opts.maxPendingCircuits ?? 16, log: opts.log ?? (() => {}) };
  }

  async listen(address: string, opts: RelayListenOptions = {}): Promise<Listener> {
    if (this.isClosed) throw new ClosedError('transport');
    const l = new RelayListener(this.identity, parseRelayAddress(address), this.o, (x) => this.listeners.delete(x), opts);
    await l.start();
    this.listeners.add(l);
    return l;
  }

  /** One control connection per relay for dialing, opened on first use and again after it dropped. */
  private control(relay: RelayAddress): Promise<RelayControl> {
    const key = formatRelayAddress({ key: relay.key, address: relay.address });
    const have = this.controls.get(key);
    const fresh = () => {
      const p = RelayControl.open(this.identity, relay, { timeoutMs: this.o.stepTimeoutMs, log: this.o.log });
      this.controls.set(key, p);
      p.catch(() => this.controls.delete(key));
      return p;
    };
    if (!have) return fresh();
    return have.then((c) => (c.isClosed ? fresh() : c), fresh);
  }

  async dial(address: string, expectedPublicKey: Uint8Array, opts: { timeoutMs?: number } = {}): Promise<Connection> {
    if (this.isClosed) throw new ClosedError('transport');
    const relay = parseRelayAddress(address);
    const ms = opts.timeoutMs ?? this.o.stepTimeoutMs;
    const control = await this.control(relay);
    const circuit = await control.connect(expectedPublicKey, ms, relay.tag);
    const socket = await joinCircuit(relay, circuit.token, ms);
    let conn: MuxSession;
    try {
      conn = await secureSocket(socket, this.identity, 'initiator', { expectedKey: expectedPublicKey, timeoutMs: ms, remoteAddress: `${address}#${circuit.id}` });
    } catch (e) {
      socket.destroy();
      if (e instanceof QuicmapError && e.code === 'EACCES') {
        throw new QuicmapError('EACCES', `the peer behind relay ${relay.address} is not ${short(expectedPublicKey)}: ${e.message}`);
      }
      throw e;
    }
    control.onCircuitClosed.set(circuit.id, (e) => void conn.close(e));
    this.connections.add(conn);
    void conn.closed.then(() => {
      this.connections.delete(conn);
      control.onCircuitClosed.delete(circuit.id);
    });
    this.o.log(`relay ${relay.address}: circuit ${circuit.id} to ${short(expectedPublicKey)} open`);
    return conn;
  }

  /**
   * Hole punch to `target` through `relay`'s coordination: a direct TCP
   * connection (simultaneous open), secured end to end as the initiator
   * expecting `target`'s key. The target must hold a reservation there.
   */
  async punch(address: string, target: Uint8Array, opts: { timeoutMs?: number } = {}): Promise<Connection> {
    if (this.isClosed) throw new ClosedError('transport');
    const relay = parseRelayAddress(address);
    const control = await this.control(relay);
    const localPort = await freePort();
    const go = await control.punch(target, localPort, opts.timeoutMs ?? this.o.stepTimeoutMs, relay.tag);
    const socket = await simultaneousOpen({ localPort, remoteIp: go.ip, remotePort: go.port });
    let conn: MuxSession;
    try {
      conn = await secureSocket(socket, this.identity, 'initiator', { expectedKey: target, timeoutMs: this.o.stepTimeoutMs, remoteAddress: `${go.ip}:${go.port}` });
    } catch (e) {
      socket.destroy();
      throw e;
    }
    this.connections.add(conn);
    void conn.closed.then(() => this.connections.delete(conn));
    this.o.log(`hole punch: direct TCP connection to ${short(target)} at ${go.ip}:${go.port}`);
    return conn;
  }

  /**
   * Hole punch over QUIC to `target` through `relay`'s coordination. The
   * relay observes `socket` (the one `dial` sends from), tells the target
   * our mapping and us the target's; the target punches towards us, we send
   * a couple of punch datagrams towards it and `dial` it at that address
   * (the caller's QUIC dial, from the same socket; the key is checked there).
   */
  async punchQuic<C>(address: string, target: Uint8Array, socket: PunchSocket, dial: (address: string) => Promise<C>, opts: { timeoutMs?: number } = {}): Promise<{ conn: C; address: string; observed: string }> {
    if (this.isClosed) throw new ClosedError('transport');
    const relay = parseRelayAddress(address);
    const ms = opts.timeoutMs ?? this.o.stepTimeoutMs;
    const control = await this.control(relay);
    const me = await control.observe(socket, ms);
    // The target observes its own socket before it answers: up to two steps.
    const go = await control.punch(target, 0, 2 * ms + 1_000, relay.tag, true);
    for (let i = 0; i < DIALER_PUNCHES; i++) socket.send(go.ip, go.port, punchDatagram());
    const at = formatHostPort(go.ip, go.port);
    const conn = await dial(at);
    this.o.log(`hole punch: direct QUIC connection to ${short(target)} at ${at} (from udp port ${socket.localPort}, seen by the relay as ${me.ip}:${me.port})`);
    return { conn, address: at, observed: formatHostPort(me.ip, me.port) };
  }

  /** Reservation state per relay listener (for status). */
  reservations(): Array<{ relay: string; expiresAt: number }> {
    return [...this.listeners].map((l) => ({ relay: l.address, expiresAt: l.expiresAt }));
  }

  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    await Promise.all([...this.listeners].map((l) => l.close()));
    await Promise.all([...this.connections].map((c) => c.close()));
    await Promise.all([...this.controls.values()].map((p) => p.then((c) => c.close(), () => {})));
  }
}
