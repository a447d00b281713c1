/**
 * HaveMap: which chunks a seeder holds, as it last said (sans-IO). A
 * seeder that is a managed mount itself holds only what it pulled so far;
 * asked for a chunk it lacks, it would fetch it from the owner first (a
 * detour through it, and load on the owner all the same). The swarm asks a
 * seeder only for chunks its map has. Until a seeder has sent a map (or if
 * it cannot: an older node, a full copy) it may hold any chunk.
 *
 * Wire form: one bit per chunk, chunk i at byte i >> 3, bit i & 7 (LSB
 * first); `packHave` builds it.
 */
import { QuicmapError } from '../../base/errors.ts';

export class HaveMap {
  readonly chunks: number;
  private bits: Uint8Array | undefined;

  constructor(chunks: number) {
    this.chunks = chunks;
  }

  /** A map was received (false: the seeder may hold any chunk). */
  get known(): boolean {
    return this.bits !== undefined;
  }

  /** Replace the map with the seeder's latest. Throws EPROTO on a map of the wrong length. */
  set(bits: Uint8Array): void {
    if (bits.length !== Math.ceil(this.chunks / 8)) throw new QuicmapError('EPROTO', `have map of ${bits.length} bytes for ${this.chunks} chunks`);
    this.bits = bits.slice();
  }

  has(i: number): boolean {
    if (!this.bits) return true;
    return i >= 0 && i < this.chunks && (this.bits[i >> 3]! & (1 << (i & 7))) !== 0;
  }

  /** Chunks held (the whole region while unknown). */
  count(): number {
    if (!this.bits) return this.chunks;
    let n = 0;
    for (const b of this.bits) {
      let x = b;
      for (; x; n++) x &= x - 1;
    }
    return n;
  }
}

/** One bit per chunk of `chunks`, set where `holds(i)`. */
export function packHave(chunks: number, holds: (i: number) => boolean): Uint8Array {
  const out = new Uint8Array(Math.ceil(chunks / 8));
  for (let i = 0; i < chunks; i++) if (holds(i)) out[i >> 3]! |= 1 << (i & 7);
  return out;
}
