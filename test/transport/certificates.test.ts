/**
 * Every certificate we build must be valid DER to OpenSSL. A random serial
 * number once came out with an illegal leading zero about one time in 256;
 * the WebTransport listener built on such a certificate never started, and
 * a conformance test hung in CI. 1500 of each kind make a 1-in-256 defect
 * show with probability > 99.7 %.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { X509Certificate } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import { createTlsCertificate } from '../../crypto/tls-certificate.ts';
import { createPeerCertificate, identityFromCertificate } from '../../crypto/peer-cert.ts';
import { generateIdentity } from '../../crypto/identity.ts';
import { withTimeout } from '../helpers/env.ts';

const test = suite('transport/certificates');
const N = 1500;

function refusedBy(certPem: string, keyPem: string): string | null {
  try {
    new X509Certificate(certPem);
    createSecureContext({ cert: certPem, key: keyPem });
    return null;
  } catch (e) {
    return (e as Error).message;
  }
}

test(`${N} WebTransport certificates all load into OpenSSL`, () =>
  withTimeout(60_000, 'tls certificates', async () => {
    const bad: string[] = [];
    for (let i = 0; i < N; i++) {
      const c = createTlsCertificate();
      const why = refusedBy(c.certPem, c.keyPem);
      if (why) bad.push(why);
    }
    assert.equal(bad, [], `refused: ${bad.slice(0, 3).join('; ')}`);
  }),
);

test(`${N} peer certificates all load into OpenSSL and prove their identity`, () =>
  withTimeout(60_000, 'peer certificates', async () => {
    const id = await generateIdentity();
    const bad: string[] = [];
    for (let i = 0; i < N; i++) {
      const c = createPeerCertificate(id);
      const why = refusedBy(c.certPem, c.keyPem);
      if (why) bad.push(why);
      else if (i % 100 === 0) assert.ok(Buffer.from(identityFromCertificate(new X509Certificate(c.certPem).raw)).equals(Buffer.from(id.publicKey)));
    }
    assert.equal(bad, [], `refused: ${bad.slice(0, 3).join('; ')}`);
  }),
);

test.run();
