/**
 * HashTracker: push-side change detection by polled hashing (the thesis'
 * first strategy). Every poll hashes each chunk of a mapping and reports the
 * chunks whose hash changed since the previous poll. Needs no kernel help and
 * works on any memory (a MAP_SHARED file another process writes, a plain
 * Buffer), at the price of reading the whole region every poll (CPU-bound).
 *
 * Hash functions (measured by `npm run bench -- uffd`, see bench/RESULTS.md):
 * the default is `xxh64` (@node-rs/xxhash, native): by far the fastest
 * measured here (~7 GB/s at 64 KiB chunks, 4-5x sha256 with SHA-NI), and
 * safe for change detection — a change goes unreported only on an accidental
 * 64-bit collision (~5e-20 per changed chunk). No xxhash is collision-
 * resistant: when the writer is untrusted (it could craft writes that keep
 * the hash), use `sha256`. Also offered: `xxh128` (hash-wasm, WASM XXH3-128,
 * ~3.5 GB/s, for 128 bits), `xxh3-64`/`xxh3-128` (@node-rs/xxhash, whose XXH3
 * build measured slower than its XXH64), `sha1`, `md5`, `sha256`
 * (node:crypto) and `blake3` (hash-wasm).
 *
 * Do not poll a LazyRegion's mapping on the thread that serves its faults.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { QuicmapError } from '../../base/errors.ts';
import type { ChangeTracker } from './tracker.ts';

export type HashName = 'xxh64' | 'xxh3-64' | 'xxh3-128' | 'xxh128' | 'sha1' | 'md5' | 'sha256' | 'blake3';
export const HASH_NAMES: readonly HashName[] = ['xxh64', 'xxh3-64', 'xxh3-128', 'xxh128', 'sha1', 'md5', 'sha256', 'blake3'];
export const DEFAULT_HASH: HashName = 'xxh64';
export const DEFAULT_HASH_CHUNK = 64 * 1024;

/** A chunk digest: bigint for the xxhash family, a hex/binary string for the rest. */
type Digest = bigint | string;
export type ChunkHasher = (chunk: Uint8Array) => Digest;

interface XxhashModule {
  xxh64(input: Uint8Array, seed?: bigint | null): bigint;
  xxh3: { xxh64(input: Uint8Array, seed?: bigint | null): bigint; xxh128(input: Uint8Array, seed?: bigint | null): bigint };
}
interface HashWasmHasher {
  init(): HashWasmHasher;
  update(data: Uint8Array): HashWasmHasher;
  digest(enc: 'binary'): Uint8Array;
}

const require = createRequire(import.meta.url);

/** Build the hasher for `name` (async because the WASM ones compile first). */
export async function makeHasher(name: HashName): Promise<ChunkHasher> {
  switch (name) {
    case 'xxh3-128': {
      const x = require('@node-rs/xxhash') as XxhashModule;
      return (c) => x.xxh3.xxh128(c);
    }
    case 'xxh3-64': {
      const x = require('@node-rs/xxhash') as XxhashModule;
      return (c) => x.xxh3.xxh64(c);
    }
    case 'xxh64': {
      const x = require('@node-rs/xxhash') as XxhashModule;
      return (c) => x.xxh64(c);
    }
    case 'xxh128': {
      const { createXXHash128 } = (await import('hash-wasm')) as unknown as { createXXHash128(): Promise<HashWasmHasher> };
      const h = await createXXHash128();
      return (c) => Buffer.from(h.init().update(c).digest('binary')).toString('latin1');
    }
    case 'sha1':
    case 'md5':
    case 'sha256':
      return (c) => createHash(name).update(c).digest('base64');
    case 'blake3': {
      const { createBLAKE3 } = (await import('hash-wasm')) as unknown as { createBLAKE3(bits?: number): Promise<HashWasmHasher> };
      const h = await createBLAKE3(128);
      return (c) => Buffer.from(h.init().update(c).digest('binary')).toString('latin1');
    }
    default:
      throw new QuicmapError('EINVAL', `unknown hash "${String(name)}" (known: ${HASH_NAMES.join(', ')})`);
  }
}

export interface HashTrackerOptions {
  chunkSize?: number;
  hash?: HashName;
  /** Chunks hashed before yielding to the event loop in `poll` (default 256). */
  sliceChunks?: number;
}

export class HashTracker implements ChangeTracker {
  readonly chunkSize: number;
  readonly hash: HashName;
  readonly chunks: number;
  private readonly view: Uint8Array;
  private readonly sliceChunks: number;
  private hasher: ChunkHasher | undefined;
  private digests: Digest[] = [];
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<number[]> | undefined;
  /** Bytes hashed so far (for throughput figures). */
  hashedBytes = 0;

  private constructor(view: Uint8Array, opts: HashTrackerOptions) {
    this.view = view;
    this.chunkSize = opts.chunkSize ?? DEFAULT_HASH_CHUNK;
    if (!Number.isSafeInteger(this.chunkSize) || this.chunkSize <= 0) throw new QuicmapError('EINVAL', `bad chunk size ${this.chunkSize}`);
    this.hash = opts.hash ?? DEFAULT_HASH;
    this.sliceChunks = Math.max(1, opts.sliceChunks ?? 256);
    this.chunks = Math.ceil(view.length / this.chunkSize);
  }

  /** Start tracking `view`: its current contents are the baseline. */
  static async create(view: Uint8Array, opts: HashTrackerOptions = {}): Promise<HashTracker> {
    const t = new HashTracker(view, opts);
    t.hasher = await makeHasher(t.hash);
    t.digests = new Array<Digest>(t.chunks);
    for (let i = 0; i < t.chunks; i++) t.digests[i] = t.hashChunk(i);
    return t;
  }

  private hashChunk(i: number): Digest {
    const start = i * this.chunkSize;
    const chunk = this.view.subarray(start, Math.min(start + this.chunkSize, this.view.length));
    this.hashedBytes += chunk.length;
    return this.hasher!(chunk);
  }

  /** Re-hash chunk i; record it in `changed` if its digest moved. */
  private check(i: number, changed: number[]): void {
    const d = this.hashChunk(i);
    if (d !== this.digests[i]) {
      this.digests[i] = d;
      changed.push(i);
    }
  }

  /** Hash everything now (synchronously) and return the chunks changed since the last poll. */
  pollSync(): number[] {
    const changed: number[] = [];
    for (let i = 0; i < this.chunks; i++) this.check(i, changed);
    return changed;
  }

  /** Like pollSync, but yields to the event loop every `sliceChunks` chunks. Polls never overlap. */
  poll(): Promise<number[]> {
    if (this.polling) return this.polling;
    const run = async (): Promise<number[]> => {
      const changed: number[] = [];
      for (let i = 0; i < this.chunks; i++) {
        this.check(i, changed);
        if ((i + 1) % this.sliceChunks === 0) await new Promise<void>((r) => setImmediate(r));
      }
      return changed;
    };
    this.polling = run().finally(() => (this.polling = undefined));
    return this.polling;
  }

  changedChunks(): Promise<number[]> {
    return this.poll();
  }

  /** Poll every `intervalMs` and call `onChanges` with non-empty results. */
  start(intervalMs: number, onChanges: (chunks: number[]) => void, onError?: (err: unknown) => void): void {
    this.stop();
    const tick = (): void => {
      this.poll().then(
        (c) => {
          if (c.length) onChanges(c);
        },
        (e) => onError?.(e),
      ).finally(() => {
        if (this.timer) this.timer = setTimeout(tick, intervalMs);
      });
    };
    this.timer = setTimeout(tick, intervalMs);
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
