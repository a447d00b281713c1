/**
 * Bytes received from a socket and not parsed yet, kept as the chunks they
 * came in (no copy until a message spans chunks).
 */
export class ByteAccumulator {
  private chunks: Buffer[] = [];
  private head = 0; // offset into chunks[0]
  private total = 0;

  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** Big-endian u32 at `offset` from the start, without consuming; caller checks length. */
  peekU32(offset = 0): number {
    let v = 0;
    for (let i = 0; i < 4; i++) v = v * 256 + this.byteAt(offset + i);
    return v;
  }

  private byteAt(pos: number): number {
    let p = pos + this.head;
    for (const c of this.chunks) {
      if (p < c.length) return c[p]!;
      p -= c.length;
    }
    throw new RangeError('peek past the end');
  }

  /** Remove and return the first n bytes (a view when they sit in one chunk). */
  take(n: number): Buffer {
    if (n > this.total) throw new RangeError('take past the end');
    this.total -= n;
    const first = this.chunks[0];
    if (first && first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.head += n;
      if (this.head === first.length) {
        this.chunks.shift();
        this.head = 0;
      }
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length - this.head, n - off);
      c.copy(out, off, this.head, this.head + k);
      off += k;
      this.head += k;
      if (this.head === c.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    return out;
  }

  /** Everything left, emptying the accumulator. */
  drain(): Buffer[] {
    const out = this.chunks.map((c, i) => (i === 0 ? c.subarray(this.head) : c));
    this.chunks = [];
    this.head = 0;
    this.total = 0;
    return out;
  }
}
