/**
 * Reusable large buffers for the NBD data path. Allocating a fresh 256 KiB
 * Buffer per READ reply and per gathered WRITE payload costs a malloc, V8
 * external-memory accounting and, above all, frequent GCs; recycling them
 * keeps the server's CPU on memcpy and syscalls.
 *
 * Buffers come in power-of-two capacity classes; `take(n)` returns a buffer
 * whose first n bytes the caller uses, `give` returns it once nothing refers
 * to it any more (for replies: in the socket write callback). Small sizes
 * go to Node's own pool instead. The pool keeps at most `maxPooledBytes`.
 */
const MIN_POOLED = 16 * 1024;

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private pooledBytes = 0;

  private readonly maxPooledBytes: number;
  constructor(maxPooledBytes: number = 64 * 1024 * 1024) {
    this.maxPooledBytes = maxPooledBytes;
  }

  /** A buffer of at least n bytes (its capacity may be larger: use subarray(0, n)). */
  take(n: number): Buffer {
    if (n < MIN_POOLED) return Buffer.allocUnsafe(n);
    const cap = capacityFor(n);
    const list = this.free.get(cap);
    const b = list?.pop();
    if (b) {
      this.pooledBytes -= cap;
      return b;
    }
    return Buffer.allocUnsafeSlow(cap);
  }

  /** Return a buffer obtained from take(); ignored if it is not pool-sized or the pool is full. */
  give(b: Buffer): void {
    const cap = b.length;
    if (cap < MIN_POOLED || cap !== capacityFor(cap) || b.byteOffset !== 0) return;
    if (this.pooledBytes + cap > this.maxPooledBytes) return;
    let list = this.free.get(cap);
    if (!list) this.free.set(cap, (list = []));
    list.push(b);
    this.pooledBytes += cap;
  }

  get bytesHeld(): number {
    return this.pooledBytes;
  }
}

function capacityFor(n: number): number {
  return 2 ** Math.ceil(Math.log2(n));
}
