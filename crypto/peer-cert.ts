/**
 * Peer identity in TLS certificates, the libp2p TLS key binding
 * (libp2p specs, tls/tls.md), shared by both transports:
 *
 * - each endpoint presents one self-signed X.509 certificate whose key is
 *   NOT its identity key (here: a fresh Ed25519 key per transport);
 * - the certificate carries extension 1.3.6.1.4.1.53594.1.1 holding
 *   `SignedKey ::= SEQUENCE { publicKey OCTET STRING, signature OCTET STRING }`:
 *   the libp2p protobuf encoding of the identity key, and the identity key's
 *   signature over "libp2p-tls-handshake:" ‖ the certificate's
 *   SubjectPublicKeyInfo (DER).
 *
 * So a certificate proves an identity only if it is validly self-signed, in
 * its validity period, and the binding signature verifies under the key in
 * the extension. TLS itself then proves the peer holds the certificate key
 * (CertificateVerify over the transcript). The QUIC layer (rustls, inside
 * @chainsafe/libp2p-quic) checks the same binding and reports the key as a
 * peer id; TCP (node:tls) checks it here. Both end in `checkPeerKey`.
 */
import { X509Certificate, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import { Certificate, Extension } from '@peculiar/asn1-x509';
import * as asn1js from 'asn1js';
import type { Identity } from './identity.ts';
import { pem, selfSignedDer } from './x509.ts';
import { QuicmapError } from '../base/errors.ts';

export const LIBP2P_EXTENSION_OID = '1.3.6.1.4.1.53594.1.1';
const ED25519_OID = '1.3.101.112';
const SIGNING_PREFIX = Buffer.from('libp2p-tls-handshake:', 'utf8');
/** libp2p protobuf PublicKey { Type: Ed25519 (1), Data: 32 bytes }. */
const ED25519_PROTO_PREFIX = Buffer.from([0x08, 0x01, 0x12, 0x20]);

export interface PeerCertificate {
  /** PEM of the certificate's own (non-identity) private key. */
  readonly keyPem: string;
  /** PEM of the self-signed certificate carrying the identity binding. */
  readonly certPem: string;
}

function ed25519KeyObject(raw: Uint8Array): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(raw).toString('base64url') }, format: 'jwk' });
}

function identityPrivateKey(identity: Identity): KeyObject {
  // The PKCS#8 form of an Ed25519 seed: fixed prefix ‖ 32-byte seed (RFC 8410).
  const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), identity.seed]);
  return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
}

/** Test hooks: build certificates that must be refused. */
export interface CertificateForgery {
  /** Put this key in the extension while `identity` signs (a stolen or made-up identity). */
  claimKey?: Uint8Array;
  /** Leave the libp2p extension out. */
  omitExtension?: boolean;
}

function signedKeyExtension(identity: Identity, spkiDer: Buffer, claimKey: Uint8Array): Extension {
  const signature = sign(null, Buffer.concat([SIGNING_PREFIX, spkiDer]), identityPrivateKey(identity));
  const signedKey = new asn1js.Sequence({
    value: [
      new asn1js.OctetString({ valueHex: Buffer.concat([ED25519_PROTO_PREFIX, claimKey]) }),
      new asn1js.OctetString({ valueHex: signature }),
    ],
  });
  return new Extension({ extnID: LIBP2P_EXTENSION_OID, critical: true, extnValue: new OctetString(signedKey.toBER(false)) });
}

/** A fresh certificate key and a self-signed certificate binding `identity` to it. */
export function createPeerCertificate(identity: Identity, forgery: CertificateForgery = {}): PeerCertificate {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const spkiDer = publicKey.export({ type: 'spki', format: 'der' });
  const der = selfSignedDer({
    spkiDer,
    algorithmOid: ED25519_OID,
    sign: (tbs) => sign(null, tbs, privateKey),
    commonName: 'quicmap',
    // As rust-libp2p: valid from long ago to far ahead, so clocks never matter.
    notBefore: new Date(Date.UTC(1975, 0, 1)),
    notAfter: new Date(Date.UTC(4096, 0, 1)),
    extensions: forgery.omitExtension ? [] : [signedKeyExtension(identity, spkiDer, forgery.claimKey ?? identity.publicKey)],
  });
  return { keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), certPem: pem('CERTIFICATE', der) };
}

function refuse(why: string): never {
  throw new QuicmapError('EACCES', `peer certificate refused: ${why}`);
}

/**
 * The Ed25519 identity a peer's certificate (DER) proves, or EACCES. Checks
 * the self-signature, the validity period and the libp2p key binding.
 */
export function identityFromCertificate(der: Uint8Array): Uint8Array {
  try {
    return checkCertificate(der);
  } catch (e) {
    // OpenSSL and the ASN.1 parser throw plain errors on malformed parts (e.g. a broken key).
    if (e instanceof QuicmapError) throw e;
    refuse(`malformed (${(e as Error).message})`);
  }
}

function checkCertificate(der: Uint8Array): Uint8Array {
  let x509: X509Certificate;
  let cert: Certificate;
  try {
    x509 = new X509Certificate(der);
    cert = AsnConvert.parse(der, Certificate);
  } catch (e) {
    refuse(`not an X.509 certificate (${(e as Error).message})`);
  }
  if (!x509.verify(x509.publicKey)) refuse('bad self-signature');
  const now = Date.now();
  if (now < Date.parse(x509.validFrom) || now > Date.parse(x509.validTo)) refuse('outside its validity period');
  const exts = (cert.tbsCertificate.extensions ?? []).filter((e) => e.extnID === LIBP2P_EXTENSION_OID);
  if (exts.length !== 1) refuse('no libp2p public key extension');
  const parsed = asn1js.fromBER(exts[0]!.extnValue.buffer);
  const seq = parsed.result;
  if (parsed.offset === -1 || !(seq instanceof asn1js.Sequence) || seq.valueBlock.value.length !== 2) refuse('malformed libp2p extension');
  const [pk, sig] = seq.valueBlock.value;
  if (!(pk instanceof asn1js.OctetString) || !(sig instanceof asn1js.OctetString)) refuse('malformed libp2p extension');
  const proto = Buffer.from(pk.valueBlock.valueHexView);
  if (proto.length !== ED25519_PROTO_PREFIX.length + 32 || !proto.subarray(0, 4).equals(ED25519_PROTO_PREFIX)) refuse('identity key is not Ed25519');
  const key = Uint8Array.from(proto.subarray(4));
  const spkiDer = x509.publicKey.export({ type: 'spki', format: 'der' });
  let ok = false;
  try {
    ok = verify(null, Buffer.concat([SIGNING_PREFIX, spkiDer]), ed25519KeyObject(key), Buffer.from(sig.valueBlock.valueHexView));
  } catch {
    ok = false;
  }
  if (!ok) refuse('identity signature does not verify');
  return key;
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}

/**
 * The one identity check of every transport: `proven` is the key the peer
 * proved (undefined: none), `expected` the key the dialer asked for (null on
 * the accepting side, which takes any proven key). Returns the proven key or
 * throws EACCES.
 */
export function checkPeerKey(proven: Uint8Array | undefined, expected: Uint8Array | null, where: string): Uint8Array {
  if (!proven || proven.length !== 32) throw new QuicmapError('EACCES', `${where}: peer proved no Ed25519 identity`);
  if (expected && !equal(proven, expected)) throw new QuicmapError('EACCES', `${where}: peer proved a different identity than expected`);
  return proven;
}
