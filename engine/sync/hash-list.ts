/**
 * HashListVerifier: the owner's chunk-hash list (SHA-256 per chunk), as
 * delivered and signature-checked by p2p/, turned into the ChunkVerifier a
 * SwarmSource asks. A hash is valid from the moment it is set until the
 * owner reports a change to its chunk; stale chunks come from the owner
 * until the list is refreshed. SHA-256, not xxhash: a seeder is untrusted
 * and could craft bytes that keep a non-cryptographic hash.
 */
import { createHash } from 'node:crypto';
import type { ChunkVerifier, Verdict } from './swarm-source.ts';

export const HASH_BYTES = 32;

export function chunkHash(data: Uint8Array): Uint8Array {
  return createHash('sha256').update(data).digest();
}

export class HashListVerifier implements ChunkVerifier {
  readonly chunks: number;
  private readonly hashes: Uint8Array;
  private readonly valid: Uint8Array;
  /** Bumped on every invalidation: a refresh taken before it must not mark a chunk valid again. */
  private readonly epochs: Uint32Array;

  constructor(chunks: number) {
    this.chunks = chunks;
    this.hashes = new Uint8Array(chunks * HASH_BYTES);
    this.valid = new Uint8Array(chunks);
    this.epochs = new Uint32Array(chunks);
  }

  /** A snapshot of the epochs, taken before asking the owner for a page of hashes. */
  epochOf(i: number): number {
    return this.epochs[i]!;
  }

  /** Hashes for chunks [from, from + n) from a verified page; `epochs` as taken before the request. */
  set(from: number, hashes: Uint8Array, known: Uint8Array, epochs?: Uint32Array): void {
    const n = Math.min(known.length, this.chunks - from);
    for (let k = 0; k < n; k++) {
      const i = from + k;
      if (epochs && epochs[k] !== this.epochs[i]) continue; // changed while the page was in flight
      if (!known[k]) continue;
      this.hashes.set(hashes.subarray(k * HASH_BYTES, (k + 1) * HASH_BYTES), i * HASH_BYTES);
      this.valid[i] = 1;
    }
  }

  known(i: number): boolean {
    return this.valid[i] === 1;
  }

  get knownCount(): number {
    let n = 0;
    for (let i = 0; i < this.chunks; i++) n += this.valid[i]!;
    return n;
  }

  check(i: number, data: Uint8Array): Verdict {
    if (!this.valid[i]) return 'unknown';
    const h = chunkHash(data);
    const want = this.hashes.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES);
    for (let k = 0; k < HASH_BYTES; k++) if (h[k] !== want[k]) return 'bad';
    return 'ok';
  }

  invalidate(chunks: readonly number[] | 'all'): void {
    const one = (i: number) => {
      if (i < 0 || i >= this.chunks) return;
      this.valid[i] = 0;
      this.epochs[i] = (this.epochs[i]! + 1) >>> 0;
    };
    if (chunks === 'all') for (let i = 0; i < this.chunks; i++) one(i);
    else for (const i of chunks) one(i);
  }
}
