/**
 * A throw-away self-signed TLS certificate for listeners whose protocol
 * insists on TLS with a real X.509 certificate (WebTransport over HTTP/2)
 * but whose peers do not authenticate through it: the identity is proven
 * inside the session (crypto/handshake.ts) and bound to this TLS session by
 * its exporter, so the certificate only has to be well-formed.
 *
 * ECDSA P-256 with SHA-256, valid for at most 14 days: the shape browsers
 * accept for WebTransport `serverCertificateHashes`, so the same certificate
 * serves the HTTP/3 mode with browsers as peers. Built with the @peculiar
 * ASN.1 schemas (DER encoding) and signed with node:crypto; no openssl.
 */
import { createHash, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { AsnConvert } from '@peculiar/asn1-schema';
import {
  AlgorithmIdentifier,
  AttributeTypeAndValue,
  AttributeValue,
  Certificate,
  Name,
  RelativeDistinguishedName,
  SubjectPublicKeyInfo,
  TBSCertificate,
  Validity,
  Version,
} from '@peculiar/asn1-x509';

const ECDSA_WITH_SHA256 = '1.2.840.10045.4.3.2';
const COMMON_NAME = '2.5.4.3';
const DAY_MS = 86_400_000;

export interface TlsCertificate {
  certPem: string;
  keyPem: string;
  /** SHA-256 of the certificate's DER: what WebTransport `serverCertificateHashes` pins. */
  sha256: Uint8Array;
  notAfter: Date;
}

function pem(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}

/** A fresh key and a self-signed certificate for it, valid from an hour ago for `validDays` (1–14). */
export function createTlsCertificate(opts: { commonName?: string; validDays?: number; nowMs?: number } = {}): TlsCertificate {
  const days = opts.validDays ?? 13;
  if (!(days >= 1 && days <= 14)) throw new RangeError('validDays must be 1..14');
  const now = opts.nowMs ?? Date.now();
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const name = new Name([
    new RelativeDistinguishedName([
      new AttributeTypeAndValue({ type: COMMON_NAME, value: new AttributeValue({ utf8String: opts.commonName ?? 'quicmap' }) }),
    ]),
  ]);
  const algorithm = new AlgorithmIdentifier({ algorithm: ECDSA_WITH_SHA256 });
  const serial = randomBytes(16);
  serial[0]! &= 0x7f; // a positive INTEGER
  const notAfter = new Date(now + days * DAY_MS);
  const tbs = new TBSCertificate({
    version: Version.v3,
    serialNumber: serial.buffer.slice(serial.byteOffset, serial.byteOffset + serial.length),
    signature: algorithm,
    issuer: name,
    validity: new Validity({ notBefore: new Date(now - 3_600_000), notAfter }),
    subject: name,
    subjectPublicKeyInfo: AsnConvert.parse(publicKey.export({ type: 'spki', format: 'der' }), SubjectPublicKeyInfo),
  });
  const tbsDer = Buffer.from(AsnConvert.serialize(tbs));
  const signature = sign('sha256', tbsDer, privateKey); // DER ECDSA-Sig-Value, as X.509 wants
  const cert = new Certificate({
    tbsCertificate: tbs,
    signatureAlgorithm: algorithm,
    signatureValue: signature.buffer.slice(signature.byteOffset, signature.byteOffset + signature.length),
  });
  const der = new Uint8Array(AsnConvert.serialize(cert));
  return {
    certPem: pem('CERTIFICATE', der),
    keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    sha256: new Uint8Array(createHash('sha256').update(der).digest()),
    notAfter,
  };
}
