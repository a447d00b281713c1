/**
 * Test support for stores: a seeded PRNG and a random-operation checker that
 * runs unaligned reads, writes, trims and zeroes against a store and a plain
 * Uint8Array model side by side, comparing byte for byte.
 */
import type { ReadWriterAt } from '../../engine/rwat.ts';

/** mulberry32: small, fast, deterministic. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomBytes(rand: () => number, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (rand() * 255 + 1) | 0; // never 0, so zeros stand out
  return b;
}

/** Throws naming the first differing byte (uvu's array diff is too slow for MiBs). */
export function assertBytes(actual: Uint8Array, expected: Uint8Array, what: string): void {
  if (actual.length !== expected.length) throw new Error(`${what}: length ${actual.length} != ${expected.length}`);
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) {
      throw new Error(`${what}: first difference at byte ${i}: got ${actual[i]}, want ${expected[i]}`);
    }
  }
}

export interface FuzzOptions {
  seed: number;
  ops: number;
  /** Alignment unit whose boundaries the offsets should often hit (a chunk size). */
  unit: number;
  /** How trim behaves: 'zero' (reads back zeros) or 'either' (each byte old or zero). */
  trim: 'zero' | 'either';
  /** Largest single request. */
  maxLen?: number;
}

/**
 * Random ops against `store` and a model; returns the model. The store must
 * start as all zeros (or as `initial`).
 */
export async function fuzzStore(store: ReadWriterAt, o: FuzzOptions, initial?: Uint8Array): Promise<Uint8Array> {
  const size = await store.size();
  const model = initial ?? new Uint8Array(size);
  const rand = rng(o.seed);
  const maxLen = Math.min(o.maxLen ?? o.unit * 3, size);
  const pickRange = (): [number, number] => {
    // Offsets: random, or on / just around a unit boundary.
    let off: number;
    const r = rand();
    if (r < 0.3) {
      const b = Math.floor(rand() * Math.ceil(size / o.unit)) * o.unit;
      off = Math.max(0, Math.min(size - 1, b + Math.floor(rand() * 7) - 3));
    } else off = Math.floor(rand() * size);
    let len: number;
    const k = rand();
    if (k < 0.3) len = 1 + Math.floor(rand() * 64);
    else if (k < 0.5) len = o.unit;
    else len = 1 + Math.floor(rand() * maxLen);
    len = Math.min(len, size - off);
    return [off, len];
  };
  for (let i = 0; i < o.ops; i++) {
    const op = rand();
    const [off, len] = pickRange();
    const what = `op ${i} seed ${o.seed}`;
    if (op < 0.35) {
      const data = randomBytes(rand, len);
      await store.writeAt(data, off, rand() < 0.1 ? { fua: true } : undefined);
      model.set(data, off);
    } else if (op < 0.65) {
      const buf = new Uint8Array(len).fill(0xee);
      await store.readAt(buf, off);
      assertBytes(buf, model.subarray(off, off + len), `${what}: read [${off}, +${len})`);
    } else if (op < 0.75) {
      await store.writeZeroes(off, len, rand() < 0.2 ? { noHole: true } : undefined);
      model.fill(0, off, off + len);
    } else if (op < 0.85) {
      await store.trim(off, len);
      const buf = new Uint8Array(len);
      await store.readAt(buf, off);
      if (o.trim === 'zero') {
        model.fill(0, off, off + len);
        assertBytes(buf, model.subarray(off, off + len), `${what}: read after trim [${off}, +${len})`);
      } else {
        for (let j = 0; j < len; j++) {
          if (buf[j] !== 0 && buf[j] !== model[off + j]) {
            throw new Error(`${what}: after trim byte ${off + j} is ${buf[j]}: neither old ${model[off + j]} nor 0`);
          }
        }
        model.set(buf, off);
      }
    } else if (op < 0.9) {
      await store.flush();
    } else {
      // A batch of concurrent writes to disjoint stripes.
      const k = 2 + Math.floor(rand() * 6);
      const stripe = Math.floor(size / k);
      const jobs: Promise<void>[] = [];
      for (let s = 0; s < k; s++) {
        const len2 = 1 + Math.floor(rand() * Math.min(stripe, maxLen));
        const off2 = s * stripe + Math.floor(rand() * (stripe - len2 + 1));
        const data = randomBytes(rand, len2);
        model.set(data, off2);
        jobs.push(store.writeAt(data, off2));
      }
      await Promise.all(jobs);
    }
  }
  const all = new Uint8Array(size);
  await store.readAt(all, 0);
  assertBytes(all, model, `seed ${o.seed}: final full read`);
  return model;
}

/** Expect `p` to reject with an instance of `cls` carrying `code`. */
export async function rejectsWith(p: Promise<unknown> | (() => Promise<unknown>), cls: Function, code?: string): Promise<Error> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (err) {
    if (!(err instanceof cls)) throw new Error(`expected ${cls.name}, got ${(err as Error)?.constructor?.name}: ${(err as Error)?.message}`);
    if (code !== undefined && (err as { code?: string }).code !== code) {
      throw new Error(`expected code ${code}, got ${(err as { code?: string }).code}`);
    }
    return err as Error;
  }
  throw new Error(`expected ${cls.name}, but it resolved`);
}
