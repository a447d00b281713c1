/**
 * A peer's control connection to one relay: an authenticated connection
 * (secure-socket.ts, the relay's key checked), one control stream,
 * requests matched to replies by id, and the relay's unsolicited messages
 * (an incoming circuit, a circuit closed with its reason) handed to
 * whoever registered for them.
 */
import { connect, isIP } from 'node:net';
import { randomBytes } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import { QuicmapError } from '../../base/errors.ts';
import type { Identity } from '../../crypto/identity.ts';
import type { Connection } from '../../transports/transport.ts';
import { parseHostPort } from '../../transports/util.ts';
import type { RelayAddress } from './address.ts';
import { ControlChannel } from './control-channel.ts';
import { RelayRefusal, TOKEN_BYTES, decodeRelayMessage, type CircuitLimits, type RelayMessage } from './messages.ts';
import { punchDatagram, type PunchSocket } from '../../transports/udp-punch.ts';
import { secureSocket } from './secure-socket.ts';

type Reply = Extract<RelayMessage, { rid: number }>;

/** Open a TCP socket to `address` within `ms`. */
export function connectSocket(address: string, ms: number): Promise<import('node:net').Socket> {
  const { host, port } = parseHostPort(address);
  return new Promise((resolve, reject) => {
    const s = connect({ host, port, noDelay: true });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new QuicmapError('ETIMEDOUT', `relay ${address}: no TCP connection within ${ms} ms`));
    }, ms);
    s.once('connect', () => {
      clearTimeout(timer);
      s.on('error', () => {});
      resolve(s);
    });
    s.once('error', (e) => {
      clearTimeout(timer);
      reject(new QuicmapError('EIO', `relay ${address}: ${e.message}`, { cause: e }));
    });
  });
}

export class RelayControl {
  readonly relay: RelayAddress;
  private nextRid = 1;
  private readonly waiting = new Map<number, { resolve: (m: Reply) => void; reject: (e: Error) => void }>();
  onIncoming: ((m: Extract<RelayMessage, { t: 'incoming' }>) => void) | undefined;
  /** A peer asks to punch a hole to us (only listeners set this). */
  onPunch: ((m: Extract<RelayMessage, { t: 'punch' }>) => void) | undefined;
  /** Circuit id -> what to do when the relay closes it with a reason. */
  readonly onCircuitClosed = new Map<number, (e: RelayRefusal) => void>();
  readonly closed: Promise<void>;
  isClosed = false;
  private readonly conn: Connection;
  private readonly channel: ControlChannel;
  private readonly log: (m: string) => void;

  private constructor(relay: RelayAddress, conn: Connection, channel: ControlChannel, log: (m: string) => void) {
    this.relay = relay;
    this.conn = conn;
    this.channel = channel;
    this.log = log;
    this.closed = this.pump();
  }

  static async open(identity: Identity, relay: RelayAddress, o: { timeoutMs: number; log: (m: string) => void }): Promise<RelayControl> {
    const socket = await connectSocket(relay.address, o.timeoutMs);
    let conn: Connection;
    try {
      conn = await secureSocket(socket, identity, 'initiator', { expectedKey: relay.key, timeoutMs: o.timeoutMs, remoteAddress: relay.address });
    } catch (e) {
      socket.destroy();
      if (e instanceof QuicmapError && e.code === 'EACCES') throw new QuicmapError('EACCES', `the relay at ${relay.address} is not the relay named in its address: ${e.message}`);
      throw e;
    }
    const stream = await conn.openStream();
    return new RelayControl(relay, conn, new ControlChannel(stream), o.log);
  }

  private async pump(): Promise<void> {
    let why: Error = new QuicmapError('ESHUTDOWN', `relay ${this.relay.address}: control connection closed`);
    try {
      for (;;) {
        const body = await this.channel.next();
        if (body === null) break;
        const m = decodeRelayMessage(body);
        if (m.t === 'incoming') this.onIncoming?.(m);
        else if (m.t === 'punch') {
          if (this.onPunch) this.onPunch(m);
          else void this.channel.send({ t: 'punch-answer', id: m.id, port: 0 }).catch(() => {});
        }
        else if (m.t === 'closed') {
          const e = new RelayRefusal(m.refusal, m.message);
          this.log(`relay ${this.relay.address}: circuit ${m.id} closed by the relay: ${e.message}`);
          this.onCircuitClosed.get(m.id)?.(e);
          this.onCircuitClosed.delete(m.id);
        } else {
          const w = this.waiting.get(m.rid);
          this.waiting.delete(m.rid);
          w?.resolve(m);
        }
      }
    } catch (e) {
      why = e as Error;
    } finally {
      this.isClosed = true;
      for (const w of this.waiting.values()) w.reject(why);
      this.waiting.clear();
      await this.conn.close().catch(() => {});
    }
  }

  private request(
    m:
      | { t: 'reserve'; tag: Uint8Array }
      | { t: 'connect'; target: Uint8Array; tag: Uint8Array }
      | { t: 'punch'; target: Uint8Array; port: number; tag: Uint8Array; quic: boolean }
      | { t: 'observe'; token: Uint8Array },
    timeoutMs: number,
  ): Promise<Reply> {
    if (this.isClosed) return Promise.reject(new QuicmapError('ESHUTDOWN', `relay ${this.relay.address}: control connection closed`));
    const rid = this.nextRid++;
    return new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(rid);
        reject(new QuicmapError('ETIMEDOUT', `relay ${this.relay.address}: no answer to ${m.t} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(rid, {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.channel.send({ ...m, rid } as never).catch((e: Error) => this.waiting.get(rid)?.reject(e));
    });
  }

  /** Reserve (or renew) a slot; throws a RelayRefusal if the relay says no. */
  async reserve(timeoutMs: number, tag: Uint8Array = new Uint8Array(0)): Promise<{ expiresAt: number; limits: CircuitLimits }> {
    const r = await this.request({ t: 'reserve', tag }, timeoutMs);
    if (r.t === 'refused') throw new RelayRefusal(r.refusal, r.message);
    if (r.t !== 'reserved') throw new QuicmapError('EPROTO', `relay: unexpected answer "${r.t}" to reserve`);
    return { expiresAt: r.expiresAt, limits: r.limits };
  }

  /** Ask for a circuit to `target`; throws a RelayRefusal if the relay says no. */
  async connect(target: Uint8Array, timeoutMs: number, tag: Uint8Array = new Uint8Array(0)): Promise<{ id: number; token: Uint8Array; limits: CircuitLimits }> {
    const r = await this.request({ t: 'connect', target, tag }, timeoutMs);
    if (r.t === 'refused') throw new RelayRefusal(r.refusal, r.message);
    if (r.t !== 'circuit') throw new QuicmapError('EPROTO', `relay: unexpected answer "${r.t}" to connect`);
    return { id: r.id, token: r.token, limits: r.limits };
  }

  /**
   * Ask the relay to coordinate a hole punch to `target`; resolves to where
   * the target will connect from (TCP) or the target's observed UDP address
   * (`quic`: observe() first, on this control connection).
   */
  async punch(target: Uint8Array, port: number, timeoutMs: number, tag: Uint8Array = new Uint8Array(0), quic = false): Promise<{ ip: string; port: number }> {
    const r = await this.request({ t: 'punch', target, port, tag, quic }, timeoutMs);
    if (r.t === 'refused') throw new RelayRefusal(r.refusal, r.message);
    if (r.t !== 'punch-go') throw new QuicmapError('EPROTO', `relay: unexpected answer "${r.t}" to punch`);
    return { ip: r.ip, port: r.port };
  }

  /**
   * Have the relay observe `socket`'s NAT mapping: a token goes over this
   * (authenticated) control connection and, in punch datagrams, from the
   * socket to the relay's UDP port (same number as its TCP port), a few
   * times while no answer came (bounded: at most 12, 150 ms apart, the first just after the request). The
   * relay answers here with the address the datagram came from, and keeps
   * it for this control connection's next QUIC hole punch.
   */
  async observe(socket: PunchSocket, timeoutMs: number): Promise<{ ip: string; port: number }> {
    const { host, port } = parseHostPort(this.relay.address);
    const ip = isIP(host) ? host : (await lookup(host, { family: socket.family })).address;
    const token = randomBytes(TOKEN_BYTES);
    const datagram = punchDatagram(token);
    let sent = 0;
    const probe = () => {
      if (sent++ < 12) socket.send(ip, port, datagram);
    };
    // The request first (the relay must know the token), then the datagrams.
    const answer = this.request({ t: 'observe', token }, timeoutMs);
    const first = setTimeout(probe, 20);
    const timer = setInterval(probe, 150);
    try {
      const r = await answer;
      if (r.t === 'refused') throw new RelayRefusal(r.refusal, r.message);
      if (r.t !== 'observed') throw new QuicmapError('EPROTO', `relay: unexpected answer "${r.t}" to observe`);
      return { ip: r.ip, port: r.port };
    } finally {
      clearTimeout(first);
      clearInterval(timer);
    }
  }

  /** Answer a hole-punch request: the local port we will connect from (0: declined). */
  answerPunch(id: number, port: number): Promise<void> {
    return this.channel.send({ t: 'punch-answer', id, port });
  }

  close(): Promise<void> {
    this.channel.close();
    void this.conn.close().catch(() => {});
    return this.closed;
  }
}
