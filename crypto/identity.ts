/**
 * A node's Ed25519 identity. The 32-byte seed is the secret stored on disk;
 * both libsodium and libp2p (the QUIC certificate) derive the same key pair
 * from it. The id is the public key in base32 (lower case, no padding): short
 * enough to copy, safe in URLs and file names.
 */
import sodium from 'libsodium-wrappers';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { DamagedFileError } from '../base/errors.ts';
import { makeDirsSync } from '../base/make-dirs.ts';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';

export interface Identity {
  /** 32-byte Ed25519 seed: the only secret. */
  readonly seed: Uint8Array;
  /** 32-byte Ed25519 public key. */
  readonly publicKey: Uint8Array;
  /** 64-byte libsodium secret key (seed || public key). */
  readonly secretKey: Uint8Array;
  /** base32 of the public key. */
  readonly id: string;
}

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';

export function base32Encode(bytes: Uint8Array): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31];
  return out;
}

export function base32Decode(text: string): Uint8Array {
  const out: number[] = [];
  let bits = 0;
  let value = 0;
  for (const ch of text.toLowerCase()) {
    const v = ALPHABET.indexOf(ch);
    if (v < 0) throw new Error(`not base32: "${ch}"`);
    value = (value << 5) | v;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 255);
      bits -= 8;
    }
  }
  return Uint8Array.from(out);
}

export async function identityFromSeed(seed: Uint8Array): Promise<Identity> {
  if (seed.length !== 32) throw new Error('an identity seed is 32 bytes');
  await sodium.ready;
  const kp = sodium.crypto_sign_seed_keypair(seed);
  return { seed: Uint8Array.from(seed), publicKey: kp.publicKey, secretKey: kp.privateKey, id: base32Encode(kp.publicKey) };
}

export async function generateIdentity(): Promise<Identity> {
  return identityFromSeed(randomBytes(32));
}

/** Where the identity lives unless told otherwise: $QUICMAP_HOME/identity or ~/.config/quicmap/identity. */
export function defaultIdentityPath(): string {
  const home = process.env.QUICMAP_HOME ?? join(homedir(), '.config', 'quicmap');
  return join(home, 'identity');
}

/**
 * Load the identity at `path`, creating it (mode 0600, parent 0700) on first
 * use. The file holds the seed as hex on one line.
 */
export async function loadOrCreateIdentity(path = defaultIdentityPath()): Promise<Identity> {
  try {
    const hex = readFileSync(path, 'utf8').trim();
    if (!/^[0-9a-f]{64}$/i.test(hex)) throw new DamagedFileError(path, 'not a quicmap identity file (expected 64 hex digits on one line)');
    return identityFromSeed(Buffer.from(hex, 'hex'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const identity = await generateIdentity();
  makeDirsSync(dirname(path), 0o700);
  writeFileSync(path, `${Buffer.from(identity.seed).toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
  chmodSync(path, 0o600);
  return identity;
}
