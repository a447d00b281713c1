/**
 * The one handshake reader: exact-length reads from a socket during a
 * handshake (NBD option haggling, a transport's key exchange), then the
 * socket is handed over with whatever arrived after the last message, so
 * no byte is lost between the handshake and the data path.
 *
 * The socket ending or failing mid-handshake rejects the pending and any
 * later read with a typed error naming the peer (EPROTO for a close, EIO
 * for a socket error); `fail(err)` does the same from outside (a deadline).
 */
import type { Socket } from 'node:net';
import { QuicmapError } from './errors.ts';

export class HandshakeReader {
  private readonly socket: Socket;
  private readonly peer: string;
  private chunks: Buffer[] = [];
  private buffered = 0;
  private want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private error: Error | undefined;
  private readonly onData = (b: Buffer) => {
    this.chunks.push(b);
    this.buffered += b.length;
    this.check();
  };
  private readonly onEnd = () => this.fail(new QuicmapError('EPROTO', `${this.peer} closed the connection during the handshake`));
  private readonly onError = (e: Error) => this.fail(new QuicmapError('EIO', `socket error during the handshake with ${this.peer}: ${e.message}`, { cause: e }));

  /** `peer` names the other side in errors ("NBD server", "peer"). */
  constructor(socket: Socket, peer = 'peer') {
    this.socket = socket;
    this.peer = peer;
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onError);
  }

  /** Exactly `n` bytes (one read at a time). */
  read(n: number): Promise<Buffer> {
    if (this.want) return Promise.reject(new Error('HandshakeReader: one read at a time'));
    if (this.buffered >= n) return Promise.resolve(this.take(n));
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      this.want = { n, resolve, reject };
    });
  }

  /** Fail the pending and every later read. */
  fail(e: Error): void {
    if (this.error) return;
    this.error = e;
    const w = this.want;
    this.want = undefined;
    w?.reject(e);
  }

  /** Stop listening; returns the bytes that came after the handshake (the socket is left paused). */
  detach(): Buffer {
    // Paused first: with no 'data' listener a flowing socket would drop bytes.
    this.socket.pause();
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    this.socket.off('error', this.onError);
    const rest = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks = [];
    this.buffered = 0;
    return rest;
  }

  private check(): void {
    const w = this.want;
    if (w && this.buffered >= w.n) {
      this.want = undefined;
      w.resolve(this.take(w.n));
    }
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = Buffer.from(all.subarray(0, n));
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.buffered = rest.length;
    return out;
  }
}
