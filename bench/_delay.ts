/**
 * A userspace delay line (there is no netem here, FACTS.md): wraps a
 * Transport so every byte a dialled connection sends is handed to the real
 * stream `oneWayMs` later and every byte it receives is delivered
 * `oneWayMs` after it arrived — one round trip costs 2·oneWayMs more,
 * in order, without limiting bandwidth. For benchmarks only: it buffers
 * without bound.
 */
import type { ByteStream, Connection, Listener, Transport } from '../transports/transport.ts';

function later(ms: number): Promise<void> {
  return ms <= 0 ? Promise.resolve() : new Promise((r) => setTimeout(r, ms));
}

class DelayedStream implements ByteStream {
  private readonly inner: ByteStream;
  private readonly d: number;
  private sendChain: Promise<void> = Promise.resolve();
  private readonly arrived: Array<{ at: number; chunk: Uint8Array | null; err?: unknown }> = [];
  private waiter: (() => void) | undefined;

  constructor(inner: ByteStream, oneWayMs: number) {
    this.inner = inner;
    this.d = oneWayMs;
    void this.pump();
  }

  private async pump(): Promise<void> {
    for (;;) {
      let item: { at: number; chunk: Uint8Array | null; err?: unknown };
      try {
        const c = await this.inner.read();
        item = { at: performance.now() + this.d, chunk: c ? c.slice() : null };
      } catch (err) {
        item = { at: performance.now() + this.d, chunk: null, err };
      }
      this.arrived.push(item);
      this.waiter?.();
      if (item.chunk === null) return;
    }
  }

  async read(): Promise<Uint8Array | null> {
    while (this.arrived.length === 0) await new Promise<void>((r) => (this.waiter = r));
    const item = this.arrived.shift()!;
    await later(item.at - performance.now());
    if (item.err) throw item.err;
    return item.chunk;
  }

  write(data: Uint8Array | readonly Uint8Array[]): Promise<void> {
    const parts = (Array.isArray(data) ? data : [data]).map((p) => (p as Uint8Array).slice());
    const at = performance.now() + this.d;
    this.sendChain = this.sendChain.then(async () => {
      await later(at - performance.now());
      await this.inner.write(parts);
    });
    this.sendChain.catch(() => {});
    return Promise.resolve();
  }

  closeWrite(): Promise<void> {
    return this.sendChain.then(() => this.inner.closeWrite());
  }

  reset(reason?: Error): void {
    this.inner.reset(reason);
  }
}

class DelayedConnection implements Connection {
  readonly remotePublicKey: Uint8Array;
  readonly remoteAddress: string;
  readonly closed: Promise<void>;
  private readonly inner: Connection;
  private readonly d: number;
  constructor(inner: Connection, oneWayMs: number) {
    this.inner = inner;
    this.d = oneWayMs;
    this.remotePublicKey = inner.remotePublicKey;
    this.remoteAddress = inner.remoteAddress;
    this.closed = inner.closed;
  }
  async openStream(): Promise<ByteStream> {
    return new DelayedStream(await this.inner.openStream(), this.d);
  }
  async acceptStream(): Promise<ByteStream | null> {
    const s = await this.inner.acceptStream();
    return s ? new DelayedStream(s, this.d) : null;
  }
  close(reason?: Error): Promise<void> {
    return this.inner.close(reason);
  }
}

export function delayTransport(inner: Transport, rttMs: number): Transport {
  const oneWay = rttMs / 2;
  return {
    name: inner.name,
    listen: (a: string): Promise<Listener> => inner.listen(a),
    async dial(address, key, opts) {
      const c = await inner.dial(address, key, opts);
      return rttMs > 0 ? new DelayedConnection(c, oneWay) : c;
    },
    close: () => inner.close(),
  };
}
