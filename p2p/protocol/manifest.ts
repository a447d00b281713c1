/**
 * The region manifest: what a client learns about a region in WELCOME —
 * size, chunk size, version (generation), what the store can do — signed by
 * the sharer's key so a client can tell it was not altered and, later, so it
 * can be relayed or published (DHT) and still be trusted.
 *
 * `generation` changes whenever the sharer process (re)starts serving the
 * region; a reconnecting client uses it to notice a restart, and the size to
 * notice the region is no longer the same one.
 */
import sodium from 'libsodium-wrappers';
import { Packr } from 'msgpackr';
import { ProtocolError } from '../../base/errors.ts';
import type { Identity } from '../../crypto/identity.ts';

const packr = new Packr({ useRecords: false, int64AsType: 'number', mapsAsObjects: true, moreTypes: false });
const DOMAIN = new TextEncoder().encode('quicmap-manifest-v1\0');

export interface Manifest {
  regionId: Uint8Array;
  sharer: Uint8Array;
  size: number;
  /** The region's natural transfer unit (pull/push granularity later). */
  chunkSize: number;
  generation: number;
  /** The store itself is read-only (independent of a grant's rights). */
  readOnly: boolean;
  canTrim: boolean;
  fastZero: boolean;
  multiConn: boolean;
  preferredBlockSize: number;
}

function message(bytes: Uint8Array): Uint8Array {
  const m = new Uint8Array(DOMAIN.length + bytes.length);
  m.set(DOMAIN);
  m.set(bytes, DOMAIN.length);
  return m;
}

export async function signManifest(identity: Identity, m: Omit<Manifest, 'sharer'>): Promise<{ manifest: Uint8Array; manifestSig: Uint8Array }> {
  await sodium.ready;
  const manifest: Uint8Array = packr.pack({ ...m, sharer: identity.publicKey });
  return { manifest, manifestSig: sodium.crypto_sign_detached(message(manifest), identity.secretKey) };
}

/** Check the signature against the expected sharer and decode; throws ProtocolError. */
export async function verifyManifest(manifest: Uint8Array, sig: Uint8Array, sharer: Uint8Array): Promise<Manifest> {
  await sodium.ready;
  if (sig.length !== 64 || !sodium.crypto_sign_verify_detached(sig, message(manifest), sharer)) {
    throw new ProtocolError('region manifest signature does not verify against the sharer key');
  }
  let o: Record<string, unknown>;
  try {
    o = packr.unpack(manifest) as Record<string, unknown>;
  } catch {
    throw new ProtocolError('region manifest is not valid msgpack');
  }
  const ok =
    o !== null &&
    typeof o === 'object' &&
    o.regionId instanceof Uint8Array &&
    o.regionId.length === 16 &&
    o.sharer instanceof Uint8Array &&
    sodium.memcmp(o.sharer, sharer) &&
    Number.isSafeInteger(o.size) &&
    (o.size as number) >= 0 &&
    Number.isSafeInteger(o.chunkSize) &&
    (o.chunkSize as number) > 0 &&
    Number.isSafeInteger(o.generation) &&
    typeof o.readOnly === 'boolean' &&
    typeof o.canTrim === 'boolean' &&
    typeof o.fastZero === 'boolean' &&
    typeof o.multiConn === 'boolean' &&
    Number.isSafeInteger(o.preferredBlockSize);
  if (!ok) throw new ProtocolError('region manifest has missing or ill-typed fields');
  return o as unknown as Manifest;
}
