/**
 * Capabilities: a grant is the sharer's signed statement "whoever holds this
 * may read (or read and write) region R, reachable at these addresses, until
 * time T". It is self-contained — the sharer keeps no table of issued grants;
 * it checks its own signature, the region id, the expiry and the rights each
 * time a peer presents one in HELLO.
 *
 * Encoding: the claims are a msgpack array (compact, field order fixed by
 * position), followed by the 64-byte Ed25519 signature over a domain tag and
 * those exact bytes. The signature covers the bytes as received, so there is
 * no canonicalisation to get wrong: change one bit and it no longer verifies.
 */
import sodium from 'libsodium-wrappers';
import { Packr } from 'msgpackr';
import { randomBytes } from 'node:crypto';
import { QuicmapError } from '../base/errors.ts';
import type { Identity } from './identity.ts';
import { base32Encode } from './identity.ts';
import { decodeEndpoints, encodeEndpoints, isTransportName, type Endpoint, type TransportName } from './endpoint.ts';

const packr = new Packr({ useRecords: false, int64AsType: 'number', mapsAsObjects: true, moreTypes: false });

/**
 * 2: the claims carry a list of endpoints (transport + address each), so a
 * mount can fall back from QUIC to WebTransport or TCP. 1 (one transport,
 * several addresses) is still read: it becomes that many endpoints.
 */
export const GRANT_VERSION = 2;
const SIGNATURE_SIZE = 64;
const DOMAIN = new TextEncoder().encode('quicmap-grant-v1\0');

export type Rights = 'ro' | 'rw';
export type { Endpoint, TransportName };

export interface GrantClaims {
  version: number;
  /** 16 random bytes naming the shared region. */
  regionId: Uint8Array;
  /** The sharer's Ed25519 public key: the grant's signer and the key to dial. */
  sharer: Uint8Array;
  /** Where the sharer listens, in the sharer's order (dialers put QUIC first: endpoint.ts). */
  endpoints: Endpoint[];
  rights: Rights;
  /** Unix seconds. */
  issuedAt: number;
  /** Unix seconds; 0 means no expiry. */
  expiresAt: number;
  /** When set, only the peer proving this public key may use the grant. */
  grantee?: Uint8Array;
}

export interface SignedGrant {
  claims: GrantClaims;
  /** claims encoding || signature: what travels in tickets and HELLO. */
  bytes: Uint8Array;
}

export function newRegionId(): Uint8Array {
  return new Uint8Array(randomBytes(16));
}

export function regionIdText(id: Uint8Array): string {
  return Buffer.from(id).toString('hex');
}

function signedMessage(claimBytes: Uint8Array): Uint8Array {
  const m = new Uint8Array(DOMAIN.length + claimBytes.length);
  m.set(DOMAIN, 0);
  m.set(claimBytes, DOMAIN.length);
  return m;
}

/** What signGrant takes: the claims, with `endpoints` or (the version 1 shape) one transport and its addresses. */
export type GrantInput = Omit<GrantClaims, 'version' | 'sharer' | 'issuedAt' | 'endpoints'> & { issuedAt?: number } & (
    | { endpoints: Endpoint[] }
    | { transport: TransportName; addresses: string[] }
  );

export async function signGrant(identity: Identity, input: GrantInput): Promise<SignedGrant> {
  await sodium.ready;
  if (input.regionId.length !== 16) throw new Error('a region id is 16 bytes');
  const { endpoints, claims } =
    'endpoints' in input
      ? (({ endpoints, ...claims }) => ({ endpoints, claims }))(input)
      : (({ transport, addresses, ...claims }) => ({ endpoints: addresses.map((address) => ({ transport, address })), claims }))(input);
  const full: GrantClaims = {
    ...claims,
    endpoints,
    version: GRANT_VERSION,
    sharer: identity.publicKey,
    issuedAt: claims.issuedAt ?? Math.floor(Date.now() / 1000),
  };
  const claimBytes: Uint8Array = packr.pack([
    full.version,
    full.regionId,
    full.sharer,
    encodeEndpoints(full.endpoints),
    full.rights === 'rw' ? 1 : 0,
    full.issuedAt,
    full.expiresAt,
    full.grantee ?? null,
  ]);
  const sig = sodium.crypto_sign_detached(signedMessage(claimBytes), identity.secretKey);
  const bytes = new Uint8Array(claimBytes.length + SIGNATURE_SIZE);
  bytes.set(claimBytes, 0);
  bytes.set(sig, claimBytes.length);
  return { claims: full, bytes };
}

function refuse(message: string): QuicmapError {
  return new QuicmapError('EACCES', message);
}

function isBytes(v: unknown, n: number): v is Uint8Array {
  return v instanceof Uint8Array && v.length === n;
}

/**
 * Decode a grant and check its signature against the key it names (and,
 * when `sharer` is given, that this is the expected sharer). Expiry is not
 * checked here: see `checkGrantTime`, so a caller can tell the two apart.
 */
export async function openGrant(bytes: Uint8Array, sharer?: Uint8Array): Promise<GrantClaims> {
  await sodium.ready;
  if (bytes.length <= SIGNATURE_SIZE || bytes.length > 4096) throw refuse('grant is missing or malformed');
  const claimBytes = bytes.subarray(0, bytes.length - SIGNATURE_SIZE);
  const sig = bytes.subarray(bytes.length - SIGNATURE_SIZE);
  let a: unknown;
  try {
    a = packr.unpack(claimBytes);
  } catch {
    throw refuse('grant is damaged (cannot decode it)');
  }
  if (!Array.isArray(a) || a.length === 0) throw refuse('grant is damaged (unexpected layout)');
  const version: unknown = a[0];
  let fields: unknown[];
  let endpoints: Endpoint[] | undefined;
  if (version === 1 && a.length === 9) {
    // [1, region, sharer, transport, addresses, rights, issued, expires, grantee]
    const [, regionId, key, transport, addresses, ...rest] = a as unknown[];
    if (isTransportName(transport) && Array.isArray(addresses) && addresses.every((x) => typeof x === 'string')) {
      endpoints = decodeEndpoints(addresses.map((x: string) => [transport, x]));
    }
    fields = [regionId, key, ...rest];
  } else if (version === GRANT_VERSION && a.length === 8) {
    // [2, region, sharer, [[transport, address]...], rights, issued, expires, grantee]
    const [, regionId, key, list, ...rest] = a as unknown[];
    endpoints = decodeEndpoints(list);
    fields = [regionId, key, ...rest];
  } else if (typeof version === 'number' && version !== 1 && version !== GRANT_VERSION) {
    throw refuse(`grant version ${String(version)} is not supported (this build reads versions 1 and ${GRANT_VERSION}; is the sharer's quicmap newer?)`);
  } else throw refuse('grant is damaged (unexpected layout)');
  const [regionId, key, rights, issuedAt, expiresAt, grantee] = fields;
  if (
    !isBytes(regionId, 16) ||
    !isBytes(key, 32) ||
    !endpoints ||
    (rights !== 0 && rights !== 1) ||
    !Number.isSafeInteger(issuedAt) ||
    !Number.isSafeInteger(expiresAt) ||
    !(grantee === null || isBytes(grantee, 32))
  ) {
    throw refuse('grant is damaged (a field has the wrong type)');
  }
  if (!sodium.crypto_sign_verify_detached(sig, signedMessage(claimBytes), key)) {
    throw refuse('grant signature does not verify: the ticket was altered or not signed by its sharer');
  }
  if (sharer && !sodium.memcmp(sharer, key)) {
    throw refuse(`grant was issued by ${base32Encode(key)}, not by this sharer (${base32Encode(sharer)})`);
  }
  return {
    version: version as number,
    regionId,
    sharer: key,
    endpoints,
    rights: rights === 1 ? 'rw' : 'ro',
    issuedAt: issuedAt as number,
    expiresAt: expiresAt as number,
    ...(grantee ? { grantee } : {}),
  };
}

/** Refuse a grant outside its validity window. `skewSeconds` tolerates clocks that disagree a little. */
export function checkGrantTime(claims: GrantClaims, nowMs = Date.now(), skewSeconds = 300): void {
  const now = Math.floor(nowMs / 1000);
  if (claims.expiresAt !== 0 && now >= claims.expiresAt) {
    throw refuse(`grant expired at ${new Date(claims.expiresAt * 1000).toISOString()}`);
  }
  if (claims.issuedAt > now + skewSeconds) {
    throw refuse(`grant is issued in the future (${new Date(claims.issuedAt * 1000).toISOString()}); check the clocks`);
  }
}

/**
 * The sharer's full check of a presented grant: signed by me, for this
 * region, in time, and (if bound to a peer) presented by that peer.
 * Throws an EACCES QuicmapError with a message fit for the peer.
 */
export async function verifyGrantFor(
  bytes: Uint8Array,
  expect: { sharer: Uint8Array; regionId: Uint8Array; peer?: Uint8Array; nowMs?: number },
): Promise<GrantClaims> {
  if (bytes.length === 0) throw refuse('no grant presented: this region needs a ticket from its sharer');
  const claims = await openGrant(bytes, expect.sharer);
  if (!sodium.memcmp(claims.regionId, expect.regionId)) {
    throw refuse(`grant is for region ${regionIdText(claims.regionId)}, which this sharer does not serve (it serves ${regionIdText(expect.regionId)})`);
  }
  checkGrantTime(claims, expect.nowMs);
  if (claims.grantee && !(expect.peer && sodium.memcmp(claims.grantee, expect.peer))) {
    throw refuse(`grant is bound to peer ${base32Encode(claims.grantee)}; you are ${expect.peer ? base32Encode(expect.peer) : 'unknown'}`);
  }
  return claims;
}
