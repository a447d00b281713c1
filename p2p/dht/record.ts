/**
 * The BEP44 mutable record a sharer publishes for a region (sans-IO): what
 * a mounter needs to reach the sharer without addresses in the ticket.
 *
 *   key  = the sharer's Ed25519 public key
 *   salt = the region id (16 bytes)
 *   v    = msgpack [1, regionId, size, chunkSize, version,
 *                   [[transport, address]...], [[relayAddress, relayKey]...]]
 *   seq  = grows on every change (the publisher uses a millisecond clock, so
 *          it also grows across restarts)
 *   sig  = Ed25519 over BEP44's signed form: bencode of {salt, seq, v}
 *          without the outer "d…e"
 *
 * `validateRecord` is the one place a record from the DHT is trusted: it
 * checks the signature itself (not relying on the DHT library), the key and
 * salt against the ticket, the sequence number against the highest one seen
 * (a replayed old record is ignored) and the manifest against the grant.
 */
import sodium from 'libsodium-wrappers';
import { Packr } from 'msgpackr';
import { QuicmapError } from '../../base/errors.ts';
import type { Identity } from '../../crypto/identity.ts';
import { isTransportName, type Endpoint } from '../../crypto/endpoint.ts';

const packr = new Packr({ useRecords: false, int64AsType: 'number', mapsAsObjects: true, moreTypes: false });

export const RECORD_VERSION = 1;
/** BEP44: `v` is at most 1000 bytes. */
export const MAX_RECORD_VALUE = 1000;

// The endpoint list is the one tickets carry (crypto/endpoint.ts): same type, same wire form.
export type { Endpoint } from '../../crypto/endpoint.ts';

export interface RelayRef {
  /** "host:port" of the relay. */
  address: string;
  /** The relay's Ed25519 public key (dialled expecting it). */
  key: Uint8Array;
}

export interface RegionRecord {
  regionId: Uint8Array;
  size: number;
  chunkSize: number;
  /** The region's generation (changes when the sharer restarts serving it). */
  version: number;
  endpoints: Endpoint[];
  relays: RelayRef[];
}

/** A record as it comes out of the DHT (bittorrent-dht's `get` result). */
export interface RawRecord {
  k: Uint8Array;
  v: Uint8Array;
  sig: Uint8Array;
  seq: number;
  salt?: Uint8Array;
}

export function encodeRecordValue(r: RegionRecord): Buffer {
  const v: Buffer = packr.pack([
    RECORD_VERSION,
    r.regionId,
    r.size,
    r.chunkSize,
    r.version,
    r.endpoints.map((e) => [e.transport, e.address]),
    r.relays.map((x) => [x.address, x.key]),
  ]);
  if (v.length > MAX_RECORD_VALUE) {
    throw new QuicmapError('EOVERFLOW', `DHT record of ${v.length} bytes exceeds BEP44's ${MAX_RECORD_VALUE} (too many endpoints or relays)`);
  }
  return v;
}

function isBytes(x: unknown, n?: number): x is Uint8Array {
  return x instanceof Uint8Array && (n === undefined || x.length === n);
}

function isCount(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

/** Throws EPROTO on anything that is not a well-formed version-1 record value. */
export function decodeRecordValue(v: Uint8Array): RegionRecord {
  let a: unknown;
  try {
    a = packr.unpack(v);
  } catch {
    throw new QuicmapError('EPROTO', 'DHT record value is not msgpack');
  }
  if (!Array.isArray(a) || a.length < 7 || a[0] !== RECORD_VERSION) throw new QuicmapError('EPROTO', 'DHT record value has an unknown layout');
  const [, regionId, size, chunkSize, version, endpoints, relays] = a as unknown[];
  if (!isBytes(regionId, 16) || !isCount(size) || !isCount(chunkSize) || !isCount(version) || !Array.isArray(endpoints) || !Array.isArray(relays)) {
    throw new QuicmapError('EPROTO', 'DHT record value has a malformed field');
  }
  const eps: Endpoint[] = [];
  for (const e of endpoints as unknown[]) {
    if (!Array.isArray(e) || !isTransportName(e[0]) || typeof e[1] !== 'string' || e[1].length > 300) {
      throw new QuicmapError('EPROTO', 'DHT record has a malformed endpoint');
    }
    eps.push({ transport: e[0], address: e[1] });
  }
  const rls: RelayRef[] = [];
  for (const x of relays as unknown[]) {
    if (!Array.isArray(x) || typeof x[0] !== 'string' || x[0].length > 300 || !isBytes(x[1], 32)) throw new QuicmapError('EPROTO', 'DHT record has a malformed relay');
    rls.push({ address: x[0], key: Uint8Array.from(x[1]) });
  }
  return { regionId: Uint8Array.from(regionId), size, chunkSize, version, endpoints: eps, relays: rls };
}

/** BEP44's signed form: bencode of { salt?, seq, v } without the outer "d" and "e". */
export function signedForm(seq: number, v: Uint8Array, salt?: Uint8Array): Buffer {
  const parts: Buffer[] = [];
  if (salt && salt.length > 0) parts.push(Buffer.from(`4:salt${salt.length}:`), Buffer.from(salt));
  parts.push(Buffer.from(`3:seqi${seq}e1:v${v.length}:`), Buffer.from(v));
  return Buffer.concat(parts);
}

export async function recordReady(): Promise<void> {
  await sodium.ready;
}

/** Sign a record value (call `recordReady` once first). */
export function signRecord(identity: Pick<Identity, 'secretKey'>, seq: number, v: Uint8Array, salt: Uint8Array): Buffer {
  return Buffer.from(sodium.crypto_sign_detached(signedForm(seq, v, salt), identity.secretKey));
}

/** Ed25519 check in the shape bittorrent-dht's `verify` option wants (call `recordReady` once first). */
export function verifyEd25519(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): boolean {
  if (signature.length !== 64 || publicKey.length !== 32) return false;
  try {
    return sodium.crypto_sign_verify_detached(signature, message, publicKey);
  } catch {
    return false;
  }
}

export interface RecordExpectation {
  /** The sharer key from the ticket. */
  sharer: Uint8Array;
  /** The region id from the ticket's grant. */
  regionId: Uint8Array;
  /** The highest seq accepted before for this record: anything lower is a replay. */
  minSeq?: number;
}

export type RecordVerdict = { ok: true; record: RegionRecord; seq: number } | { ok: false; reason: string };

function same(a: Uint8Array | undefined, b: Uint8Array): boolean {
  return a !== undefined && Buffer.from(a).equals(Buffer.from(b));
}

/** Decide whether a record from the DHT may be used (call `recordReady` once first). */
export function validateRecord(raw: RawRecord, expect: RecordExpectation): RecordVerdict {
  if (!same(raw.k, expect.sharer)) return { ok: false, reason: 'signed by another key than the ticket names' };
  if (!same(raw.salt, expect.regionId)) return { ok: false, reason: 'salted for another region' };
  if (!Number.isSafeInteger(raw.seq) || raw.seq < 0) return { ok: false, reason: 'malformed seq' };
  if (!verifyEd25519(raw.sig, signedForm(raw.seq, raw.v, raw.salt), raw.k)) return { ok: false, reason: 'bad signature' };
  if (expect.minSeq !== undefined && raw.seq < expect.minSeq) return { ok: false, reason: `old seq ${raw.seq} (already saw ${expect.minSeq})` };
  let record: RegionRecord;
  try {
    record = decodeRecordValue(raw.v);
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  }
  if (!same(record.regionId, expect.regionId)) return { ok: false, reason: 'its manifest names another region than the grant' };
  return { ok: true, record, seq: raw.seq };
}
