/**
 * Authenticated key exchange for binding identities inside another session
 * (e.g. WebTransport; TCP and QUIC use TLS 1.3 with crypto/peer-cert.ts). A SIGMA-I pattern over ephemeral X25519 with Ed25519 identities:
 *
 *   1. I -> R   MAGIC, e_I
 *   2. R -> I   e_R, AEAD_kR( s_R, sig_R(ROLE_R || h2 || s_R) )
 *   3. I -> R   AEAD_kI( s_I, sig_I(ROLE_I || h3 || s_I) )
 *
 * h is a running SHA-256 transcript hash over every byte sent so far (h2
 * covers MAGIC, e_I and e_R; h3 also covers message 2). kR and kI come from
 * HKDF(X25519(e_I, e_R), salt = h2). Each side signs the transcript, so a
 * signature cannot be lifted into another session, and encrypts its identity
 * under a key only the holder of the other ephemeral can derive, which binds
 * the identity to this exchange (SIGMA's MAC) and hides it from passive
 * observers. The initiator learns and checks the responder's key before it
 * reveals its own, and aborts with EACCES if it is not the one it dialed.
 *
 * Traffic keys: HKDF(dh, salt = h4, "i2r" / "r2i"), h4 covering message 3.
 * Messages have fixed sizes, so no length framing is needed: HELLO_BYTES,
 * RESPONSE_BYTES, FINISH_BYTES.
 *
 * This module is sans-IO: it turns bytes into bytes and keys; the transport
 * moves them and applies timeouts.
 */
import sodium from 'libsodium-wrappers';
import { createCipheriv, createDecipheriv, createHash, hkdfSync, timingSafeEqual } from 'node:crypto';
import type { Identity } from './identity.ts';
import { QuicmapError } from '../base/errors.ts';

/** Protocol name and version; a peer speaking anything else is refused at the first message. */
export const MAGIC = Buffer.from('QMTCP\x00\x00\x01', 'latin1');
const ROLE_R = Buffer.from('quicmap handshake v1 responder', 'latin1');
const ROLE_I = Buffer.from('quicmap handshake v1 initiator', 'latin1');
const TAG = 16;
const ID_BLOB = 32 + 64; // static public key + signature

export const HELLO_BYTES = MAGIC.length + 32;
export const RESPONSE_BYTES = 32 + ID_BLOB + TAG;
export const FINISH_BYTES = ID_BLOB + TAG;

export interface SessionKeys {
  /** Key for records we send. */
  sendKey: Uint8Array;
  /** Key for records we receive. */
  recvKey: Uint8Array;
  /** The Ed25519 key the peer proved. */
  remotePublicKey: Uint8Array;
  /** Final transcript hash: a session id both ends agree on (channel binding). */
  sessionHash: Uint8Array;
}

function sha256(...parts: Uint8Array[]): Buffer {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
}

function hkdf(ikm: Uint8Array, salt: Uint8Array, info: string): Buffer {
  return Buffer.from(hkdfSync('sha256', ikm, salt, info, 32));
}

// Each handshake key encrypts exactly one message, so a zero nonce is safe.
const ZERO_NONCE = Buffer.alloc(12);

function sealOnce(key: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Buffer {
  const c = createCipheriv('chacha20-poly1305', key, ZERO_NONCE, { authTagLength: TAG });
  c.setAAD(aad, { plaintextLength: plaintext.length });
  return Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
}

function openOnce(key: Uint8Array, sealed: Uint8Array, aad: Uint8Array): Buffer {
  const ctLen = sealed.length - TAG;
  const d = createDecipheriv('chacha20-poly1305', key, ZERO_NONCE, { authTagLength: TAG });
  d.setAAD(aad, { plaintextLength: ctLen });
  d.setAuthTag(sealed.subarray(ctLen));
  const pt = d.update(sealed.subarray(0, ctLen));
  try {
    d.final();
  } catch (e) {
    throw new QuicmapError('EPROTO', 'handshake message failed authentication', { cause: e });
  }
  return pt;
}

function dh(secret: Uint8Array, pub: Uint8Array): Uint8Array {
  try {
    // libsodium refuses low-order points (all-zero output) by throwing.
    return sodium.crypto_scalarmult(secret, pub);
  } catch (e) {
    throw new QuicmapError('EPROTO', 'handshake: invalid ephemeral key', { cause: e });
  }
}

function signedIdentity(me: Identity, role: Uint8Array, h: Uint8Array): Uint8Array {
  const sig = sodium.crypto_sign_detached(Buffer.concat([role, h, me.publicKey]), me.secretKey);
  return Buffer.concat([me.publicKey, sig]);
}

function verifyIdentity(blob: Uint8Array, role: Uint8Array, h: Uint8Array): Uint8Array {
  const key = blob.subarray(0, 32);
  const sig = blob.subarray(32, ID_BLOB);
  let ok = false;
  try {
    ok = sodium.crypto_sign_verify_detached(sig, Buffer.concat([role, h, key]), key);
  } catch {
    ok = false;
  }
  if (!ok) throw new QuicmapError('EACCES', 'handshake: peer signature does not verify');
  return Uint8Array.from(key);
}

function trafficKeys(shared: Uint8Array, h: Uint8Array): { i2r: Buffer; r2i: Buffer } {
  return { i2r: hkdf(shared, h, 'quicmap v1 i2r'), r2i: hkdf(shared, h, 'quicmap v1 r2i') };
}

/** libsodium must be initialised before the synchronous steps below run. */
export async function handshakeReady(): Promise<void> {
  await sodium.ready;
}

/** The dialing side. */
export class HandshakeInitiator {
  private readonly eph = sodium.crypto_box_keypair();
  private hello: Buffer | undefined;

  private readonly me: Identity;
  private readonly expectedKey: Uint8Array;
  constructor(
    me: Identity,
    expectedKey: Uint8Array,
  ) {
    this.me = me;
    this.expectedKey = expectedKey;
  }

  /** Message 1. */
  start(): Buffer {
    this.hello = Buffer.concat([MAGIC, this.eph.publicKey]);
    return this.hello;
  }

  /**
   * Takes message 2, returns message 3 and the session keys. Throws EACCES
   * if the responder proved a key other than the expected one (message 3 is
   * then never sent, so our identity stays unrevealed), EPROTO on garbage.
   */
  finish(response: Uint8Array): { message: Buffer; keys: SessionKeys } {
    if (!this.hello) throw new Error('start() first');
    if (response.length !== RESPONSE_BYTES) throw new QuicmapError('EPROTO', 'handshake: bad response length');
    const eR = response.subarray(0, 32);
    const shared = dh(this.eph.privateKey, eR);
    const h2 = sha256(this.hello, eR);
    const kR = hkdf(shared, h2, 'quicmap v1 hs responder');
    const kI = hkdf(shared, h2, 'quicmap v1 hs initiator');
    const blob = openOnce(kR, response.subarray(32), h2);
    const remote = verifyIdentity(blob, ROLE_R, h2);
    if (remote.length !== this.expectedKey.length || !timingSafeEqual(remote, this.expectedKey)) {
      throw new QuicmapError('EACCES', 'handshake: peer is not the expected identity');
    }
    const h3 = sha256(h2, response.subarray(32));
    const message = sealOnce(kI, signedIdentity(this.me, ROLE_I, h3), h3);
    const h4 = sha256(h3, message);
    const t = trafficKeys(shared, h4);
    return { message, keys: { sendKey: t.i2r, recvKey: t.r2i, remotePublicKey: remote, sessionHash: h4 } };
  }
}

/** The listening side. */
export class HandshakeResponder {
  private readonly eph = sodium.crypto_box_keypair();
  private state: { shared: Uint8Array; h3: Buffer; kI: Buffer } | undefined;

  private readonly me: Identity;
  constructor(me: Identity) {
    this.me = me;
  }

  /** Takes message 1, returns message 2. Throws EPROTO if it is not our protocol. */
  respond(hello: Uint8Array): Buffer {
    if (hello.length !== HELLO_BYTES || !timingSafeEqual(hello.subarray(0, MAGIC.length), MAGIC)) {
      throw new QuicmapError('EPROTO', 'handshake: not a quicmap v1 hello');
    }
    const eI = hello.subarray(MAGIC.length);
    const shared = dh(this.eph.privateKey, eI);
    const h2 = sha256(hello, this.eph.publicKey);
    const kR = hkdf(shared, h2, 'quicmap v1 hs responder');
    const kI = hkdf(shared, h2, 'quicmap v1 hs initiator');
    const sealed = sealOnce(kR, signedIdentity(this.me, ROLE_R, h2), h2);
    this.state = { shared, h3: sha256(h2, sealed), kI };
    return Buffer.concat([this.eph.publicKey, sealed]);
  }

  /** Takes message 3 and returns the session keys; throws EACCES/EPROTO if it does not prove an identity. */
  finish(message: Uint8Array): SessionKeys {
    if (!this.state) throw new Error('respond() first');
    if (message.length !== FINISH_BYTES) throw new QuicmapError('EPROTO', 'handshake: bad finish length');
    const { shared, h3, kI } = this.state;
    this.state = undefined;
    const blob = openOnce(kI, message, h3);
    const remote = verifyIdentity(blob, ROLE_I, h3);
    const h4 = sha256(h3, message);
    const t = trafficKeys(shared, h4);
    return { sendKey: t.r2i, recvKey: t.i2r, remotePublicKey: remote, sessionHash: h4 };
  }
}
