/**
 * The one self-signed X.509 v3 builder behind both certificate kinds
 * (peer-cert.ts: the libp2p identity binding; tls-certificate.ts: a
 * throw-away ECDSA certificate for WebTransport's TLS). Built with the
 * @peculiar ASN.1 schemas (DER) and signed by the caller with node:crypto.
 *
 * Why one place: DER has rules a hand-rolled field easily breaks. The
 * serial number is the case that bit us — a random 16-byte INTEGER whose
 * first byte came out 0x00 with the next below 0x80 is "illegal padding"
 * to OpenSSL (about 1 certificate in 256), and a WebTransport listener
 * built on it never started.
 */
import { randomBytes } from 'node:crypto';
import { AsnConvert } from '@peculiar/asn1-schema';
import {
  AlgorithmIdentifier,
  AttributeTypeAndValue,
  AttributeValue,
  Certificate,
  Extensions,
  Name,
  RelativeDistinguishedName,
  SubjectPublicKeyInfo,
  TBSCertificate,
  Validity,
  Version,
  type Extension,
} from '@peculiar/asn1-x509';

const COMMON_NAME_OID = '2.5.4.3';

export interface SelfSignedSpec {
  /** The certificate key's SubjectPublicKeyInfo, DER. */
  spkiDer: Uint8Array;
  /** Signature algorithm OID (the same in the TBS and the outer certificate). */
  algorithmOid: string;
  /** Signs the DER of the TBSCertificate with the certificate key. */
  sign(tbsDer: Buffer): Uint8Array;
  commonName: string;
  notBefore: Date;
  notAfter: Date;
  extensions?: Extension[];
}

/** A random positive serial number of 16 bytes in minimal DER (RFC 5280 4.1.2.2: at most 20 bytes). */
export function randomSerial(): ArrayBuffer {
  const serial = randomBytes(16);
  // Top bit clear: positive. Second bit set: the first byte is never 0x00,
  // so DER needs no leading zero byte and OpenSSL sees no padding.
  serial[0] = (serial[0]! & 0x7f) | 0x40;
  return serial.buffer.slice(serial.byteOffset, serial.byteOffset + serial.length);
}

/** The DER of a self-signed certificate (issuer = subject = CN). */
export function selfSignedDer(spec: SelfSignedSpec): Buffer {
  const algorithm = new AlgorithmIdentifier({ algorithm: spec.algorithmOid });
  const name = new Name([
    new RelativeDistinguishedName([new AttributeTypeAndValue({ type: COMMON_NAME_OID, value: new AttributeValue({ utf8String: spec.commonName }) })]),
  ]);
  const tbs = new TBSCertificate({
    version: Version.v3,
    serialNumber: randomSerial(),
    signature: algorithm,
    issuer: name,
    validity: new Validity({ notBefore: spec.notBefore, notAfter: spec.notAfter }),
    subject: name,
    subjectPublicKeyInfo: AsnConvert.parse(spec.spkiDer, SubjectPublicKeyInfo),
    ...(spec.extensions ? { extensions: new Extensions(spec.extensions) } : {}),
  });
  const signature = spec.sign(Buffer.from(AsnConvert.serialize(tbs)));
  const cert = new Certificate({
    tbsCertificate: tbs,
    signatureAlgorithm: algorithm,
    signatureValue: signature.buffer.slice(signature.byteOffset, signature.byteOffset + signature.length) as ArrayBuffer,
  });
  return Buffer.from(AsnConvert.serialize(cert));
}

/** PEM armour, 64 characters a line. */
export function pem(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der).toString('base64').replace(/.{1,64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}-----END ${label}-----\n`;
}
