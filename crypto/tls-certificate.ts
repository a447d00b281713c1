/**
 * A throw-away self-signed TLS certificate for listeners whose protocol
 * insists on TLS with a real X.509 certificate (WebTransport over HTTP/2)
 * but whose peers do not authenticate through it: the identity is proven
 * inside the session (crypto/handshake.ts) and bound to this TLS session by
 * its exporter, so the certificate only has to be well-formed.
 *
 * ECDSA P-256 with SHA-256, valid for at most 14 days: the shape browsers
 * accept for WebTransport `serverCertificateHashes`, so the same certificate
 * serves the HTTP/3 mode with browsers as peers. Built by x509.ts.
 */
import { createHash, generateKeyPairSync, sign } from 'node:crypto';
import { pem, selfSignedDer } from './x509.ts';

const ECDSA_WITH_SHA256 = '1.2.840.10045.4.3.2';
const DAY_MS = 86_400_000;

export interface TlsCertificate {
  certPem: string;
  keyPem: string;
  /** SHA-256 of the certificate's DER: what WebTransport `serverCertificateHashes` pins. */
  sha256: Uint8Array;
  notAfter: Date;
}

/** A fresh key and a self-signed certificate for it, valid from an hour ago for `validDays` (1–14). */
export function createTlsCertificate(opts: { commonName?: string; validDays?: number; nowMs?: number } = {}): TlsCertificate {
  const days = opts.validDays ?? 13;
  if (!(days >= 1 && days <= 14)) throw new RangeError('validDays must be 1..14');
  const now = opts.nowMs ?? Date.now();
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const notAfter = new Date(now + days * DAY_MS);
  const der = selfSignedDer({
    spkiDer: publicKey.export({ type: 'spki', format: 'der' }),
    algorithmOid: ECDSA_WITH_SHA256,
    sign: (tbs) => sign('sha256', tbs, privateKey), // DER ECDSA-Sig-Value, as X.509 wants
    commonName: opts.commonName ?? 'quicmap',
    notBefore: new Date(now - 3_600_000),
    notAfter,
  });
  return {
    certPem: pem('CERTIFICATE', der),
    keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    sha256: new Uint8Array(createHash('sha256').update(der).digest()),
    notAfter,
  };
}
