/**
 * The owner's signed chunk-hash list on the wire, so chunks from seeders
 * (nodes that are not the region's owner) can be verified.
 *
 *   call:  hashes {from, count}
 *   reply: {feed, version, from, count, hashes: bin (32 B SHA-256 each),
 *           known: bin (1 B each: 0 = changed while hashing, ask again),
 *           sig: bin (Ed25519 by the region's owner over
 *           "quicmap-chunk-hashes-v1\0" ‖ regionId ‖ feed u32 ‖ version f64 ‖
 *           from u32 ‖ count u32 ‖ SHA-256(hashes ‖ known))}
 *
 * Pages keep each reply under the negotiated frame. The owner hashes a
 * chunk once per change (its ChangeFeed says which changed); the mounter
 * marks a hash stale when the feed reports its chunk changed, and asks
 * again (HashListVerifier, SwarmSource).
 */
import { createHash } from 'node:crypto';
import sodium from 'libsodium-wrappers';
import { QuicmapError } from '../../base/errors.ts';
import type { Identity } from '../../crypto/identity.ts';
import type { ReadWriterAt } from '../../engine/rwat.ts';
import { HASH_BYTES, chunkHash, type HashListVerifier } from '../../engine/sync/hash-list.ts';
import type { ChangeFeed } from '../../engine/tracking/change-feed.ts';
import type { RegionServer } from '../remote/server.ts';

export const HASHES_CALL = 'hashes';
const DOMAIN = new TextEncoder().encode('quicmap-chunk-hashes-v1\0');

function signedBytes(regionId: Uint8Array, feed: number, version: number, from: number, count: number, hashes: Uint8Array, known: Uint8Array): Uint8Array {
  const digest = createHash('sha256').update(hashes).update(known).digest();
  const out = new Uint8Array(DOMAIN.length + 16 + 4 + 8 + 4 + 4 + 32);
  out.set(DOMAIN);
  let at = DOMAIN.length;
  out.set(regionId.subarray(0, 16), at);
  at += 16;
  const v = new DataView(out.buffer);
  v.setUint32(at, feed);
  v.setFloat64(at + 4, version);
  v.setUint32(at + 12, from);
  v.setUint32(at + 16, count);
  out.set(digest, at + 20);
  return out;
}

export interface HashServeOptions {
  identity: Identity;
  regionId: Uint8Array;
  store: ReadWriterAt;
  feed: ChangeFeed;
  size: number;
  chunkSize: number;
}

export function serveChunkHashes(server: RegionServer, o: HashServeOptions): void {
  const n = Math.ceil(o.size / o.chunkSize);
  // Allocated on the first request: most regions are never seeded, and a large device's list is big (40 B a chunk).
  let hashes: Uint8Array | undefined;
  let hashedAt: Float64Array | undefined;
  server.handle(HASHES_CALL, async (args, ctx) => {
    await sodium.ready;
    hashes ??= new Uint8Array(n * HASH_BYTES);
    hashedAt ??= new Float64Array(n).fill(-1);
    // Per call: concurrent calls (several mounters) must not share a read buffer.
    const buf = new Uint8Array(o.chunkSize);
    const a = (args ?? {}) as Record<string, unknown>;
    const from = Number(a.from ?? 0);
    const perPage = Math.max(1, Math.floor((ctx.maxReply - 512) / (HASH_BYTES + 1)));
    const count = Math.min(Number(a.count ?? perPage), perPage, n - from);
    if (!Number.isInteger(from) || from < 0 || from >= n || !Number.isInteger(count) || count <= 0) throw new QuicmapError('EINVAL', 'hashes: bad range');
    const version = o.feed.current;
    const known = new Uint8Array(count);
    for (let k = 0; k < count; k++) {
      const i = from + k;
      if (hashedAt[i]! < 0 || o.feed.lastChanged(i) > hashedAt[i]!) {
        const before = o.feed.current;
        const len = Math.min(o.chunkSize, o.size - i * o.chunkSize);
        const view = buf.subarray(0, len);
        await o.store.readAt(view, i * o.chunkSize);
        if (o.feed.lastChanged(i) > before) continue; // changed while we read it: not known
        hashes.set(chunkHash(view), i * HASH_BYTES);
        hashedAt[i] = before;
      }
      known[k] = 1;
    }
    const page = hashes.slice(from * HASH_BYTES, (from + count) * HASH_BYTES);
    const sig = sodium.crypto_sign_detached(signedBytes(o.regionId, o.feed.id, version, from, count, page, known), o.identity.secretKey);
    return { feed: o.feed.id, version, from, count, hashes: page, known, sig };
  });
}

export interface Caller {
  call(method: string, args: unknown): Promise<unknown>;
}

/** Fetch every page of the owner's list, check each signature against `owner`, and load the verifier. */
export async function loadHashList(region: Caller, verifier: HashListVerifier, owner: Uint8Array, regionId: Uint8Array): Promise<void> {
  await sodium.ready;
  let from = 0;
  while (from < verifier.chunks) {
    const epochs = new Uint32Array(Math.min(verifier.chunks - from, 1 << 20));
    for (let k = 0; k < epochs.length; k++) epochs[k] = verifier.epochOf(from + k);
    const r = (await region.call(HASHES_CALL, { from })) as Record<string, unknown> | null;
    const ok =
      r &&
      Number.isInteger(r.feed) &&
      typeof r.version === 'number' &&
      r.from === from &&
      Number.isInteger(r.count) &&
      (r.count as number) > 0 &&
      r.hashes instanceof Uint8Array &&
      r.known instanceof Uint8Array &&
      r.sig instanceof Uint8Array &&
      r.hashes.length === (r.count as number) * HASH_BYTES &&
      r.known.length === r.count;
    if (!ok) throw new QuicmapError('EPROTO', 'hashes: malformed reply');
    const count = r.count as number;
    const msg = signedBytes(regionId, r.feed as number, r.version as number, from, count, r.hashes as Uint8Array, r.known as Uint8Array);
    if ((r.sig as Uint8Array).length !== 64 || !sodium.crypto_sign_verify_detached(r.sig as Uint8Array, msg, owner)) {
      throw new QuicmapError('EACCES', 'the chunk-hash list is not signed by the region owner');
    }
    verifier.set(from, r.hashes as Uint8Array, r.known as Uint8Array, epochs.subarray(0, count));
    from += count;
  }
}
