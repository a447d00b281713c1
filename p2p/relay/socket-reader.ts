/**
 * Reads fixed-size messages from a socket before a link or a splice takes
 * it over (relay preambles, handshake messages), then hands back the bytes
 * that came after them. A deadline, the peer closing or a socket error fail
 * the pending read.
 */
import type { Socket } from 'node:net';
import { QuicmapError } from '../../base/errors.ts';
import { ByteAccumulator } from '../../transports/byte-accumulator.ts';

export class SocketReader {
  private readonly acc = new ByteAccumulator();
  private want: { n: number; peek: boolean; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private error: Error | undefined;
  private readonly onData = (b: Buffer) => {
    this.acc.push(b);
    this.check();
  };
  private readonly onEnd = () => this.fail(new QuicmapError('EPROTO', 'peer closed the connection before it was set up'));
  private readonly onError = (e: Error) => this.fail(new QuicmapError('EIO', `socket error during setup: ${e.message}`, { cause: e }));
  private readonly socket: Socket;

  constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onError);
  }

  get buffered(): number {
    return this.acc.length;
  }

  read(n: number): Promise<Buffer> {
    return this.wait(n, false);
  }

  /** The next `n` bytes, left in place for the next read. */
  peek(n: number): Promise<Buffer> {
    return this.wait(n, true);
  }

  private wait(n: number, peek: boolean): Promise<Buffer> {
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      this.want = { n, peek, resolve, reject };
      this.check();
    });
  }

  private check(): void {
    const w = this.want;
    if (w && this.acc.length >= w.n) {
      this.want = undefined;
      const b = Buffer.from(this.acc.take(w.n));
      if (w.peek) {
        const rest = this.acc.drain();
        this.acc.push(b);
        for (const r of rest) this.acc.push(r);
      }
      w.resolve(b);
    }
  }

  fail(e: Error): void {
    if (this.error) return;
    this.error = e;
    const w = this.want;
    this.want = undefined;
    w?.reject(e);
  }

  /** Stop reading (the socket is left paused) and return the bytes not consumed. */
  detach(): Buffer[] {
    this.socket.pause();
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    this.socket.off('error', this.onError);
    return this.acc.drain();
  }
}

/** Run `work` under a deadline; on expiry the reader fails with ETIMEDOUT. */
export async function readerDeadline<T>(reader: SocketReader, ms: number, what: string, work: () => Promise<T>): Promise<T> {
  const timer = setTimeout(() => reader.fail(new QuicmapError('ETIMEDOUT', `${what}: not done within ${ms} ms`)), ms);
  try {
    return await work();
  } finally {
    clearTimeout(timer);
  }
}
