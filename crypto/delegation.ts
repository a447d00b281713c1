/**
 * Delegated capabilities: "I, the holder of this read grant on region R,
 * let peer P read the bytes [offset, offset+length) of R — by reference,
 * between these two times". Third-party copy (p2p/copy) uses it: the
 * orchestrator C holds a read grant on the source A; the destination B
 * fetches from A directly, presenting a delegation that C signed.
 *
 * The capability is derived from C's grant, not a new grant by A: it carries
 * the grant's bytes, so A checks its own signature on the grant (region,
 * expiry, grantee — a grant bound to a peer can only be delegated by that
 * peer) and then the delegator's signature on the narrowing. It can only
 * narrow: read-only whatever the grant says, a range, a window that ends no
 * later than the grant. It is bound to the delegate's key (the transport
 * proves the key; a copied capability is useless to anyone else).
 *
 * Encoding: "QMD1" ‖ msgpack [1, grant, delegator(32), delegate(32),
 * offset, length, notBefore, notAfter, nonce(16)] ‖ Ed25519 signature by
 * the delegator over a domain tag and the msgpack bytes. The magic cannot
 * begin a grant (those are msgpack arrays), so both travel in HELLO's grant
 * field and the sharer tells them apart by their first bytes.
 */
import sodium from 'libsodium-wrappers';
import { Packr } from 'msgpackr';
import { randomBytes } from 'node:crypto';
import { QuicmapError } from '../base/errors.ts';
import { base32Encode, type Identity } from './identity.ts';
import { openGrant, verifyGrantFor, type GrantClaims } from './grant.ts';

const packr = new Packr({ useRecords: false, int64AsType: 'number', mapsAsObjects: true, moreTypes: false });
const MAGIC = new Uint8Array([0x51, 0x4d, 0x44, 0x31]); // "QMD1"
const DOMAIN = new TextEncoder().encode('quicmap-delegation-v1\0');
const SIGNATURE_SIZE = 64;
export const DELEGATION_VERSION = 1;
/** What a HELLO's grant field holds at most (p2p/protocol/messages.ts). */
export const MAX_DELEGATION_BYTES = 4096;
/** Longest window a delegation may span: a copy that needs longer asks again. */
export const MAX_DELEGATION_WINDOW_S = 24 * 3600;

export interface DelegationClaims {
  version: number;
  /** The delegator's grant on the source region, as the source's sharer signed it. */
  grant: Uint8Array;
  /** Who signed the delegation (the grant's holder). */
  delegator: Uint8Array;
  /** The only peer that may use it. */
  delegate: Uint8Array;
  /** The bytes of the source region it covers. */
  offset: number;
  length: number;
  /** Unix seconds: valid from notBefore (inclusive) until notAfter (exclusive). */
  notBefore: number;
  notAfter: number;
  /** 16 random bytes: tells two delegations of the same range apart. */
  nonce: Uint8Array;
}

export interface DelegationInput {
  grant: Uint8Array;
  delegate: Uint8Array;
  offset: number;
  length: number;
  /** Seconds the delegation is valid from now (at most 24 h, and never past the grant's expiry). */
  validFor: number;
  /** Unix seconds; default now. */
  notBefore?: number;
}

export function isDelegation(bytes: Uint8Array): boolean {
  return bytes.length > MAGIC.length && MAGIC.every((b, i) => bytes[i] === b);
}

function refuse(message: string): QuicmapError {
  return new QuicmapError('EACCES', `delegation refused: ${message}`);
}

function signedMessage(claimBytes: Uint8Array): Uint8Array {
  const m = new Uint8Array(DOMAIN.length + claimBytes.length);
  m.set(DOMAIN);
  m.set(claimBytes, DOMAIN.length);
  return m;
}

function isBytes(v: unknown, n: number): v is Uint8Array {
  return v instanceof Uint8Array && v.length === n;
}

/** Sign a delegation of part of `grant` (which `identity` holds) to `delegate`. */
export async function signDelegation(identity: Identity, d: DelegationInput): Promise<Uint8Array> {
  await sodium.ready;
  const grant = await openGrant(d.grant);
  if (grant.grantee && !sodium.memcmp(grant.grantee, identity.publicKey)) throw refuse('the grant is bound to another peer: only that peer may delegate it');
  if (!Number.isSafeInteger(d.offset) || d.offset < 0 || !Number.isSafeInteger(d.length) || d.length <= 0) throw new QuicmapError('EINVAL', `delegation range [${d.offset}, +${d.length}) is not a range`);
  const notBefore = d.notBefore ?? Math.floor(Date.now() / 1000);
  let notAfter = notBefore + Math.min(Math.ceil(d.validFor), MAX_DELEGATION_WINDOW_S);
  if (grant.expiresAt !== 0) notAfter = Math.min(notAfter, grant.expiresAt);
  if (notAfter <= notBefore) throw refuse('the grant has expired');
  const claimBytes: Uint8Array = packr.pack([DELEGATION_VERSION, d.grant, identity.publicKey, d.delegate, d.offset, d.length, notBefore, notAfter, new Uint8Array(randomBytes(16))]);
  const sig = sodium.crypto_sign_detached(signedMessage(claimBytes), identity.secretKey);
  const out = new Uint8Array(MAGIC.length + claimBytes.length + SIGNATURE_SIZE);
  out.set(MAGIC);
  out.set(claimBytes, MAGIC.length);
  out.set(sig, MAGIC.length + claimBytes.length);
  if (out.length > MAX_DELEGATION_BYTES) throw new QuicmapError('EINVAL', `delegation of ${out.length} bytes is above ${MAX_DELEGATION_BYTES}`);
  return out;
}

/** Decode a delegation and check the delegator's signature (nothing else). */
export async function openDelegation(bytes: Uint8Array): Promise<DelegationClaims> {
  await sodium.ready;
  if (!isDelegation(bytes) || bytes.length > MAX_DELEGATION_BYTES || bytes.length <= MAGIC.length + SIGNATURE_SIZE) throw refuse('not a delegation, or malformed');
  const claimBytes = bytes.subarray(MAGIC.length, bytes.length - SIGNATURE_SIZE);
  const sig = bytes.subarray(bytes.length - SIGNATURE_SIZE);
  let a: unknown;
  try {
    a = packr.unpack(claimBytes);
  } catch {
    throw refuse('damaged (cannot decode it)');
  }
  if (!Array.isArray(a) || a.length !== 9) throw refuse('damaged (unexpected layout)');
  const [version, grant, delegator, delegate, offset, length, notBefore, notAfter, nonce] = a as unknown[];
  if (version !== DELEGATION_VERSION) throw refuse(`version ${String(version)} is not supported (this build reads ${DELEGATION_VERSION})`);
  if (
    !(grant instanceof Uint8Array) ||
    !isBytes(delegator, 32) ||
    !isBytes(delegate, 32) ||
    !Number.isSafeInteger(offset) ||
    !Number.isSafeInteger(length) ||
    (offset as number) < 0 ||
    (length as number) <= 0 ||
    !Number.isSafeInteger(notBefore) ||
    !Number.isSafeInteger(notAfter) ||
    !isBytes(nonce, 16)
  ) {
    throw refuse('damaged (a field has the wrong type)');
  }
  if (!sodium.crypto_sign_verify_detached(sig, signedMessage(claimBytes), delegator)) {
    throw refuse('the signature does not verify: it was altered (a widened range?) or forged');
  }
  return { version, grant, delegator, delegate, offset: offset as number, length: length as number, notBefore: notBefore as number, notAfter: notAfter as number, nonce };
}

/**
 * The source sharer's full check: the delegator's signature, the grant
 * inside (signed by this sharer, for this region, in time, bound — if at
 * all — to the delegator), presented by the delegate, inside its window,
 * the range inside the region. Every refusal is an EACCES QuicmapError.
 */
export async function verifyDelegationFor(
  bytes: Uint8Array,
  expect: { sharer: Uint8Array; regionId: Uint8Array; peer: Uint8Array; regionSize?: number; nowMs?: number; skewSeconds?: number },
): Promise<{ delegation: DelegationClaims; grant: GrantClaims }> {
  const d = await openDelegation(bytes);
  let grant: GrantClaims;
  try {
    grant = await verifyGrantFor(d.grant, { sharer: expect.sharer, regionId: expect.regionId, peer: d.delegator, ...(expect.nowMs !== undefined ? { nowMs: expect.nowMs } : {}) });
  } catch (e) {
    throw refuse(`the grant it derives from: ${(e as Error).message}`);
  }
  if (!sodium.memcmp(d.delegate, expect.peer)) throw refuse(`it is bound to peer ${base32Encode(d.delegate)}; you are ${base32Encode(expect.peer)}`);
  const now = Math.floor((expect.nowMs ?? Date.now()) / 1000);
  const skew = expect.skewSeconds ?? 300;
  if (d.notAfter - d.notBefore > MAX_DELEGATION_WINDOW_S) throw refuse(`its window of ${d.notAfter - d.notBefore} s is above the ${MAX_DELEGATION_WINDOW_S} s allowed`);
  if (grant.expiresAt !== 0 && d.notAfter > grant.expiresAt) throw refuse('it outlives the grant it derives from');
  if (now >= d.notAfter) throw refuse(`it expired at ${new Date(d.notAfter * 1000).toISOString()}`);
  if (d.notBefore > now + skew) throw refuse(`it is not valid before ${new Date(d.notBefore * 1000).toISOString()}; check the clocks`);
  if (expect.regionSize !== undefined && d.offset + d.length > expect.regionSize) throw refuse(`its range [${d.offset}, +${d.length}) is outside the region of ${expect.regionSize} bytes`);
  return { delegation: d, grant };
}

/** True when [offset, offset+length) lies inside what `d` delegates. */
export function delegationCovers(d: Pick<DelegationClaims, 'offset' | 'length'>, offset: number, length: number): boolean {
  return offset >= d.offset && length >= 0 && offset + length <= d.offset + d.length;
}
