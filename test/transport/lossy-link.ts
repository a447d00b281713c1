/**
 * A lossy UDP link on loopback for QUIC tests: a forwarder between dialers
 * and one listener that drops, duplicates and reorders datagrams by a
 * seeded PRNG, so a run is the same sequence of decisions every time (what
 * the endpoints' timers make of it still varies). Each dialer address gets
 * its own upstream socket, so the listener sees one source per dialer, as
 * through a NAT-free WAN path.
 */
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { rng } from '../engine/model.ts';

export interface LossyLinkOptions {
  /** Probability that a datagram is dropped (each direction). */
  loss: number;
  /** Probability that a datagram is sent twice. Default 0. */
  duplicate?: number;
  /** Probability that a datagram is held back and sent after the next one. Default 0. */
  reorder?: number;
  /**
   * Hold every dialer datagram that carries a QUIC Handshake packet (the
   * client's Finished, and its retransmissions) this long, letting the
   * dialer's first 1-RTT packets overtake it. Default 0.
   */
  delayHandshakeMs?: number;
  /** One-way delay of every datagram (order kept), in ms. Default 0. */
  delayMs?: number;
  /** PRNG seed. */
  seed: number;
}

export interface LinkCounters {
  forwarded: number;
  dropped: number;
  duplicated: number;
  reordered: number;
  /** Dialer datagrams held back by `delayHandshakeMs`. */
  handshakesDelayed: number;
}

export class LossyLink {
  readonly counters: LinkCounters = { forwarded: 0, dropped: 0, duplicated: 0, reordered: 0, handshakesDelayed: 0 };
  private readonly front: Socket;
  private readonly upstream = new Map<string, Socket>();
  private readonly held = new Map<Socket, { buf: Buffer; port: number; address: string }>();
  private readonly rnd: () => number;
  private readonly o: Required<LossyLinkOptions>;
  private readonly target: { address: string; port: number };
  private closed = false;

  private constructor(front: Socket, target: { address: string; port: number }, o: LossyLinkOptions) {
    this.front = front;
    this.target = target;
    this.o = { duplicate: 0, reorder: 0, delayHandshakeMs: 0, delayMs: 0, ...o };
    this.rnd = rng(o.seed);
    front.on('message', (m, from) => this.fromDialer(m, from));
  }

  /** A link in front of the listener at `target` ("127.0.0.1:port"); dial `address`. */
  static async open(target: string, o: LossyLinkOptions): Promise<LossyLink> {
    const i = target.lastIndexOf(':');
    const front = await bound();
    return new LossyLink(front, { address: target.slice(0, i), port: Number(target.slice(i + 1)) }, o);
  }

  get address(): string {
    return `127.0.0.1:${this.front.address().port}`;
  }

  private fromDialer(m: Buffer, from: RemoteInfo): void {
    const key = `${from.address}:${from.port}`;
    let up = this.upstream.get(key);
    if (!up) {
      const s = createSocket('udp4');
      s.on('message', (r) => this.forward(this.front, r, from.port, from.address));
      s.on('error', () => {});
      s.bind(0, '127.0.0.1', () => setBuffers(s));
      this.upstream.set(key, s);
      up = s;
    }
    if (this.o.delayHandshakeMs > 0 && carriesHandshake(m)) {
      this.counters.handshakesDelayed++;
      const via = up;
      setTimeout(() => this.forward(via, m, this.target.port, this.target.address), this.o.delayHandshakeMs).unref();
      return;
    }
    this.forward(up, m, this.target.port, this.target.address);
  }

  private forward(via: Socket, m: Buffer, port: number, address: string): void {
    if (this.closed) return;
    if (this.rnd() < this.o.loss) {
      this.counters.dropped++;
      return;
    }
    const held = this.held.get(via);
    if (!held && this.rnd() < this.o.reorder) {
      this.counters.reordered++;
      this.held.set(via, { buf: m, port, address });
      // Nothing may follow it: then it goes out late rather than never.
      setTimeout(() => {
        const h = this.held.get(via);
        if (h?.buf === m && !this.closed) {
          this.held.delete(via);
          this.counters.forwarded++;
          via.send(m, port, address);
        }
      }, 5).unref();
      return;
    }
    const send = (b: Buffer, p: number, a: string) => {
      this.counters.forwarded++;
      if (this.o.delayMs > 0) setTimeout(() => this.closed || via.send(b, p, a), this.o.delayMs).unref();
      else via.send(b, p, a);
    };
    send(m, port, address);
    if (this.rnd() < this.o.duplicate) {
      this.counters.duplicated++;
      send(m, port, address);
    }
    if (held) {
      this.held.delete(via);
      send(held.buf, held.port, held.address);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    const all = [this.front, ...this.upstream.values()];
    this.upstream.clear();
    await Promise.all(all.map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
}

/** Whether a datagram's coalesced long-header packets include a Handshake packet (RFC 9000 17.2). */
export function carriesHandshake(d: Uint8Array): boolean {
  let p = 0;
  while (p < d.length && d[p]! & 0x80) {
    const type = (d[p]! >> 4) & 0x03; // 0 Initial, 1 0-RTT, 2 Handshake, 3 Retry
    if (type === 2) return true;
    if (type === 3) return false;
    p += 5; // first byte, version
    if (p >= d.length) return false;
    p += 1 + d[p]!; // DCID
    if (p >= d.length) return false;
    p += 1 + d[p]!; // SCID
    if (type === 0) {
      const [tokenLen, n] = varint(d, p);
      p += n + tokenLen;
    }
    const [len, n] = varint(d, p);
    p += n + len;
  }
  return false;
}

function varint(d: Uint8Array, p: number): [number, number] {
  if (p >= d.length) return [d.length, 1];
  const n = 1 << (d[p]! >> 6);
  let v = d[p]! & 0x3f;
  for (let i = 1; i < n; i++) v = v * 256 + (d[p + i] ?? 0);
  return [v, n];
}

function setBuffers(s: Socket): void {
  try {
    s.setRecvBufferSize(8 << 20);
    s.setSendBufferSize(8 << 20);
  } catch {
    // not allowed here: smaller kernel buffers only add (uncounted) loss
  }
}

function bound(): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createSocket('udp4');
    s.once('error', reject);
    s.bind(0, '127.0.0.1', () => {
      setBuffers(s);
      s.off('error', reject);
      s.on('error', () => {});
      resolve(s);
    });
  });
}
