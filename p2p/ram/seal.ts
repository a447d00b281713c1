/**
 * Sealing of RAM chunks for storage peers (sans-IO, no state but keys).
 *
 * Keys: derived per region from the node's identity seed with HKDF-SHA256
 * (salt: the region id), one for the AEAD and one for chunk ids. They never
 * leave the node; the peers see only ciphertext and ids.
 *
 * AEAD: AES-256-GCM (measured faster than ChaCha20-Poly1305 per core on
 * these machines: bench/RESULTS.md, "ram"), one message per 4 KiB segment
 * of a chunk, each with its own tag. A cold 4 KiB read then opens the one
 * segment it needs (sealed-chunk.ts opens the others when they are read)
 * instead of the whole 64 KiB chunk, which was most of what a cold read
 * cost beyond an unencrypted one.
 *
 * Nonce = chunk index (u32) || segment (u16) || version (u48): versions
 * come from one counter per region that never repeats, so a (key, nonce)
 * pair is never used twice, even for a save that is retried. Associated
 * data binds the region id, the chunk index, the version, the chunk's
 * length and the segment, so a peer returning another chunk, another
 * region's chunk, an older version of this one, a shorter one or its
 * segments in another order fails authentication.
 *
 * Chunk ids: HMAC-SHA256(id key, index)[0..16): stable per chunk (a new
 * version overwrites the old one on the peer) but revealing no index.
 *
 * Blob on the peer: version (u64 BE) || ciphertext || a tag (16) per
 * segment. The stated version is only a hint for the report (stale vs
 * tampered); opening always uses the version the node expects.
 *
 * The segments are sealed and opened by native/src/gcm_pages.cc on Node's
 * OpenSSL where the addon has it (node:crypto costs ~4.5 us per message
 * before any byte, which 16 messages a chunk would pay), else by
 * node:crypto with the same bytes (test/ram/seal.test.ts holds the two
 * to each other).
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync } from 'node:crypto';
import { QuicmapError } from '../../base/errors.ts';
import { loadNative, type NativeGcmPages } from '../../native/index.ts';

/** Bytes of plaintext under one tag. */
export const SEGMENT = 4096;
const TAG = 16;
const AAD_TAG = Buffer.from('quicmap ram chunk v2');
/** Versions are 48 bits in the nonce. */
export const MAX_VERSION = 2 ** 48 - 1;

/** Segments of a plaintext of `length` bytes. */
export function segmentsOf(length: number): number {
  return Math.ceil(length / SEGMENT);
}

/** The blob's size for a plaintext of `length` bytes. */
export function sealedSize(length: number): number {
  return 8 + length + TAG * segmentsOf(length);
}

/** The plaintext length of a blob of `size` bytes, or -1 when no plaintext seals to that size. */
export function plainSize(size: number): number {
  const x = size - 8;
  if (x <= 0) return -1;
  const n = Math.ceil(x / (SEGMENT + TAG));
  const length = x - TAG * n;
  return length > 0 && segmentsOf(length) === n ? length : -1;
}

export type Problem = 'stale' | 'tampered' | 'malformed';

export type OpenResult = { ok: true; data: Uint8Array } | { ok: false; problem: Problem; claimed: number };

/** The segment cipher: native (gcm_pages.cc) or node:crypto, same bytes. */
interface PageCipher {
  seal(index: number, version: number, aad: Uint8Array, plain: Uint8Array, ct: Uint8Array, tags: Uint8Array): void;
  open(index: number, version: number, aad: Uint8Array, data: Uint8Array, tags: Uint8Array, first: number, count: number, done: Uint8Array): number;
}

export class ChunkSealer {
  readonly regionId: Uint8Array;
  /** 'native' or 'node:crypto': which implementation seals (bench and status say it). */
  readonly engine: 'native' | 'node:crypto';
  private readonly cipher: PageCipher;
  private readonly idKey: Buffer;

  constructor(secret: Uint8Array, regionId: Uint8Array, opts: { engine?: 'native' | 'node:crypto' } = {}) {
    if (regionId.length !== 16) throw new QuicmapError('EINVAL', 'a region id is 16 bytes');
    this.regionId = regionId;
    const encKey = Buffer.from(hkdfSync('sha256', secret, regionId, 'quicmap ram seal key v2', 32));
    this.idKey = Buffer.from(hkdfSync('sha256', secret, regionId, 'quicmap ram chunk ids v1', 32));
    const native = opts.engine === 'node:crypto' ? undefined : nativeCipher(encKey);
    if (opts.engine === 'native' && !native) throw new QuicmapError('ENOTSUP', 'the native segment cipher is not available here (native/README.md, "Sealed pages")');
    this.cipher = native ?? new NodeCipher(encKey);
    this.engine = native ? 'native' : 'node:crypto';
  }

  /** The opaque id a chunk is stored under on every peer. */
  chunkId(index: number): Uint8Array {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(index);
    return new Uint8Array(createHmac('sha256', this.idKey).update(b).digest().subarray(0, 16));
  }

  seal(index: number, version: number, plaintext: Uint8Array): Uint8Array {
    if (!Number.isSafeInteger(version) || version < 1 || version > MAX_VERSION) throw new QuicmapError('EOVERFLOW', `version ${version} does not fit the nonce`);
    const length = plaintext.length;
    const out = Buffer.allocUnsafe(sealedSize(length));
    out.writeBigUInt64BE(BigInt(version), 0);
    this.cipher.seal(index, version, this.aad(index, version, length), plaintext, out.subarray(8, 8 + length), out.subarray(8 + length));
    return out;
  }

  /** Open the whole blob into a new buffer (the blob is left as it is). */
  open(index: number, version: number, blob: Uint8Array): OpenResult {
    const c = this.chunk(index, version, Uint8Array.prototype.slice.call(blob));
    if (!c.ok) return c;
    const problem = c.chunk.open(0, c.chunk.data.length);
    return problem ? { ok: false, problem, claimed: c.chunk.claimed } : { ok: true, data: c.chunk.data };
  }

  /**
   * The blob as a chunk to open segment by segment, in place: it takes the
   * blob over (its ciphertext turns into plaintext as segments are opened).
   * Only the length is checked here; no segment is opened yet.
   */
  chunk(index: number, version: number, blob: Uint8Array): { ok: true; chunk: OpenableChunk } | { ok: false; problem: Problem; claimed: number } {
    const length = plainSize(blob.length);
    if (length < 0) return { ok: false, problem: 'malformed', claimed: -1 };
    const b = Buffer.from(blob.buffer, blob.byteOffset, blob.length);
    const claimed = Number(b.readBigUInt64BE(0));
    return { ok: true, chunk: new OpenableChunk(this.cipher, index, version, this.aad(index, version, length), b, length, claimed) };
  }

  private aad(index: number, version: number, length: number): Buffer {
    const a = Buffer.alloc(AAD_TAG.length + 16 + 16);
    AAD_TAG.copy(a, 0);
    a.set(this.regionId, AAD_TAG.length);
    a.writeUInt32BE(index, AAD_TAG.length + 16);
    a.writeBigUInt64BE(BigInt(version), AAD_TAG.length + 20);
    a.writeUInt32BE(length, AAD_TAG.length + 28);
    return a;
  }
}

/**
 * One fetched blob, opened segment by segment into its own bytes: `data`
 * holds plaintext in the segments `done` marks and ciphertext elsewhere.
 * A segment is marked done only after its tag checked.
 */
export class OpenableChunk {
  readonly index: number;
  readonly version: number;
  /** The version the blob states (unauthenticated: for the report only). */
  readonly claimed: number;
  readonly data: Uint8Array;
  readonly done: Uint8Array;
  private readonly cipher: PageCipher;
  private readonly aad: Uint8Array;
  private readonly tags: Uint8Array;
  private left: number;

  constructor(cipher: PageCipher, index: number, version: number, aad: Uint8Array, blob: Buffer, length: number, claimed: number) {
    this.cipher = cipher;
    this.index = index;
    this.version = version;
    this.aad = aad;
    this.claimed = claimed;
    this.data = new Uint8Array(blob.buffer, blob.byteOffset + 8, length);
    this.tags = new Uint8Array(blob.buffer, blob.byteOffset + 8 + length, TAG * segmentsOf(length));
    this.done = new Uint8Array(segmentsOf(length));
    this.left = this.done.length;
  }

  /** Every segment is open. */
  get complete(): boolean {
    return this.left === 0;
  }

  /** Open the segments under [at, at + len): undefined when they all opened, else what is wrong (the first failure stops it). */
  open(at: number, len: number): Problem | undefined {
    if (this.left === 0 || len <= 0) return undefined;
    const first = Math.floor(at / SEGMENT);
    const count = Math.floor((at + len - 1) / SEGMENT) - first + 1;
    let before = 0;
    for (let s = first; s < first + count; s++) before += this.done[s]!;
    if (before === count) return undefined; // a hot read of a chunk opened in part: no call at all
    const failed = this.cipher.open(this.index, this.version, this.aad, this.data, this.tags, first, count, this.done);
    let after = 0;
    for (let s = first; s < first + count; s++) after += this.done[s]!;
    this.left -= after - before;
    if (failed < 0) return undefined;
    return this.claimed < this.version ? 'stale' : 'tampered';
  }

  /**
   * Take the segments not opened yet from another blob of the same chunk
   * and version (another replica), with their tags: afterwards `open` reads
   * them from there. Segments already open stay as they are.
   */
  adopt(other: OpenableChunk): void {
    for (let s = 0; s < this.done.length; s++) {
      if (this.done[s]) continue;
      const from = s * SEGMENT;
      const to = Math.min(from + SEGMENT, this.data.length);
      this.data.set(other.data.subarray(from, to), from);
      this.tags.set(other.tags.subarray(s * TAG, s * TAG + TAG), s * TAG);
    }
  }

  /** Count every segment as open (the caller has overwritten the whole chunk). */
  settle(): void {
    this.done.fill(1);
    this.left = 0;
  }
}

function nativeCipher(key: Buffer): PageCipher | undefined {
  let GcmPages: (new (key: Uint8Array, segmentSize: number) => NativeGcmPages) | undefined;
  try {
    const n = loadNative();
    if (!n.gcmPagesAvailable?.()) return undefined;
    GcmPages = n.GcmPages;
  } catch {
    return undefined;
  }
  return GcmPages ? new GcmPages(key, SEGMENT) : undefined;
}

/** The node:crypto twin of gcm_pages.cc: the same nonces, associated data and tags. */
class NodeCipher implements PageCipher {
  private readonly key: Buffer;
  constructor(key: Buffer) {
    this.key = key;
  }

  seal(index: number, version: number, aad: Uint8Array, plain: Uint8Array, ct: Uint8Array, tags: Uint8Array): void {
    for (let s = 0; s * SEGMENT < plain.length; s++) {
      const from = s * SEGMENT;
      const c = createCipheriv('aes-256-gcm', this.key, nonce(index, s, version), { authTagLength: TAG });
      c.setAAD(segmentAad(aad, s));
      const out = c.update(plain.subarray(from, Math.min(from + SEGMENT, plain.length)));
      c.final();
      ct.set(out, from);
      tags.set(c.getAuthTag(), s * TAG);
    }
  }

  open(index: number, version: number, aad: Uint8Array, data: Uint8Array, tags: Uint8Array, first: number, count: number, done: Uint8Array): number {
    for (let s = first; s < first + count; s++) {
      if (done[s]) continue;
      const from = s * SEGMENT;
      const d = createDecipheriv('aes-256-gcm', this.key, nonce(index, s, version), { authTagLength: TAG });
      d.setAAD(segmentAad(aad, s));
      d.setAuthTag(tags.subarray(s * TAG, s * TAG + TAG));
      let out: Buffer;
      try {
        out = d.update(data.subarray(from, Math.min(from + SEGMENT, data.length)));
        d.final();
      } catch {
        return s;
      }
      data.set(out, from);
      done[s] = 1;
    }
    return -1;
  }
}

function nonce(index: number, segment: number, version: number): Buffer {
  const n = Buffer.alloc(12);
  n.writeUInt32BE(index, 0);
  n.writeUInt16BE(segment, 4);
  n.writeUIntBE(version, 6, 6);
  return n;
}

function segmentAad(aad: Uint8Array, segment: number): Buffer {
  const a = Buffer.alloc(aad.length + 2);
  a.set(aad, 0);
  a.writeUInt16BE(segment, aad.length);
  return a;
}
