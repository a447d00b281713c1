/**
 * One identity check: the ngtcp2 transport decides a peer's key with
 * crypto/peer-cert.ts (`identityFromCertificate` + `checkPeerKey`) on the
 * certificate the native layer hands over, and the native verify callback
 * (native/src/quic_identity.cc) checks the same certificate earlier, inside
 * the TLS handshake (see transports/ngtcp2.ts for why both exist). Here
 * both are fed the same certificates and must agree on every verdict and
 * every proven key: the certificates the native layer makes, the ones
 * crypto/peer-cert.ts makes for TCP, forgeries and damaged ones.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { X509Certificate, randomBytes } from 'node:crypto';
import { Ngtcp2Transport, type Ngtcp2Connection } from '../../transports/ngtcp2.ts';
import { loadNgtcp2 } from '../../native/quic.ts';
import { createPeerCertificate, identityFromCertificate } from '../../crypto/peer-cert.ts';
import { generateIdentity } from '../../crypto/identity.ts';
import { STRICT_TOOLS, Scope, withTimeout } from '../helpers/env.ts';
import { QuicmapError } from '../../base/errors.ts';

const test = suite('transport/ngtcp2-identity');
const why = Ngtcp2Transport.unavailableReason();

type Verdict = { ok: true; key: string } | { ok: false; why: string };

function js(der: Uint8Array): Verdict {
  try {
    return { ok: true, key: Buffer.from(identityFromCertificate(der)).toString('hex') };
  } catch (e) {
    assert.ok(e instanceof QuicmapError && e.code === 'EACCES', `peer-cert refuses with EACCES (${(e as Error).message})`);
    return { ok: false, why: (e as Error).message };
  }
}

function native(der: Uint8Array): Verdict {
  try {
    return { ok: true, key: Buffer.from(loadNgtcp2()!.verifyCertificate(der)).toString('hex') };
  } catch (e) {
    return { ok: false, why: (e as Error).message };
  }
}

function agree(name: string, der: Uint8Array, expectOk: boolean, expectKey?: Uint8Array): void {
  const a = js(der);
  const b = native(der);
  assert.is(a.ok, expectOk, `${name}: peer-cert.ts ${a.ok ? 'accepts' : `refuses (${(a as { why: string }).why})`}`);
  assert.is(b.ok, expectOk, `${name}: native ${b.ok ? 'accepts' : `refuses (${(b as { why: string }).why})`}`);
  if (a.ok && b.ok) {
    assert.is(a.key, b.key, `${name}: same proven key`);
    if (expectKey) assert.is(a.key, Buffer.from(expectKey).toString('hex'), `${name}: the identity's key`);
  }
}

const derOf = (pem: string): Uint8Array => new Uint8Array(new X509Certificate(pem).raw);

if (why && !STRICT_TOOLS) {
  console.log(`  SKIP transport/ngtcp2-identity: ${why}`);
} else if (why) {
  test('the ngtcp2 addon is available (QUICMAP_REQUIRE_TOOLS=1)', () => {
    throw new Error(`required: ${why}`);
  });
} else {
  test('the certificates the native layer makes: both accept, same key (taken from a real handshake)', async () => {
    const s = new Scope();
    try {
      await withTimeout(20_000, 'handshake', async () => {
        const aId = await generateIdentity();
        const bId = await generateIdentity();
        const a = new Ngtcp2Transport(aId);
        const b = new Ngtcp2Transport(bId);
        s.defer(() => a.close());
        s.defer(() => b.close());
        const l = await a.listen('127.0.0.1:0');
        const [c, p] = (await Promise.all([b.dial(l.address, aId.publicKey), l.accept()])) as [Ngtcp2Connection, Ngtcp2Connection];
        agree('listener certificate', c.peerCertificate, true, aId.publicKey);
        agree('dialer certificate', p.peerCertificate, true, bId.publicKey);
        // Damaged: a flipped bit in the signature, in the libp2p extension, a truncation.
        const der = c.peerCertificate;
        const sig = Uint8Array.from(der);
        sig[sig.length - 3]! ^= 0x01;
        agree('native certificate, signature bit flipped', sig, false);
        agree('native certificate, truncated', der.subarray(0, der.length - 10), false);
      });
    } finally {
      await s.close();
    }
  });

  test('the certificates crypto/peer-cert.ts makes (TCP): both accept, same key', async () => {
    const id = await generateIdentity();
    agree('peer-cert certificate', derOf(createPeerCertificate(id).certPem), true, id.publicKey);
  });

  test('forgeries and junk: both refuse', async () => {
    const id = await generateIdentity();
    const victim = await generateIdentity();
    agree('claims another key', derOf(createPeerCertificate(id, { claimKey: victim.publicKey }).certPem), false);
    agree('no libp2p extension', derOf(createPeerCertificate(id, { omitExtension: true }).certPem), false);
    const good = derOf(createPeerCertificate(id).certPem);
    // Flip one byte of the identity signature inside the extension (the 64 bytes before the outer signature part).
    const ext = Uint8Array.from(good);
    const at = Buffer.from(ext).indexOf(Buffer.from(id.publicKey));
    assert.ok(at > 0, 'the identity key is in the certificate');
    ext[at + 32 + 4]! ^= 0x40;
    agree('identity signature damaged', ext, false);
    agree('random bytes', randomBytes(300), false);
    agree('empty', new Uint8Array(0), false);
  });
}

test.run();
