/** Unit tests of the transports' crypto: the certificate key binding (TCP, QUIC, relayed channels) and the SIGMA-I handshake (WebTransport's identity binding). */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { X509Certificate, randomBytes } from 'node:crypto';
import { checkPeerKey, createPeerCertificate, identityFromCertificate } from '../../crypto/peer-cert.ts';
import { FINISH_BYTES, HandshakeInitiator, HandshakeResponder, handshakeReady } from '../../crypto/handshake.ts';
import { generateIdentity } from '../../crypto/identity.ts';
import { QuicmapError } from '../../base/errors.ts';
import { Scope, withTimeout } from '../helpers/env.ts';

const suiteTest = suite('transport/crypto');
/** Same discipline as the network tests: a time limit and a Scope, even for pure code. */
function test(name: string, fn: () => unknown): void {
  suiteTest(name, async () => {
    const s = new Scope();
    try {
      await withTimeout(10_000, name, async () => {
        await fn();
      });
    } finally {
      await s.close();
    }
  });
}

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return e instanceof QuicmapError ? e.code : `untyped: ${String(e)}`;
  }
  return 'no error';
}

const join = (parts: Uint8Array[]) => Buffer.concat(parts);

test('peer certificate: the bound identity is recovered; forgeries are EACCES', async () => {
  const id = await generateIdentity();
  const der = (pem: string) => new X509Certificate(pem).raw;
  const good = der(createPeerCertificate(id).certPem);
  assert.ok(Buffer.from(identityFromCertificate(good)).equals(Buffer.from(id.publicKey)));
  // Claiming another key than the one that signed the binding.
  const other = await generateIdentity();
  assert.is(code(() => identityFromCertificate(der(createPeerCertificate(id, { claimKey: other.publicKey }).certPem))), 'EACCES', 'claimed key');
  assert.is(code(() => identityFromCertificate(der(createPeerCertificate(id, { omitExtension: true }).certPem))), 'EACCES', 'no extension');
  // Any flipped byte: bad DER, bad self-signature or bad binding, never accepted.
  for (let i = 0; i < good.length; i += 7) {
    const bad = Buffer.from(good);
    bad[i]! ^= 0x01;
    const c = code(() => identityFromCertificate(bad));
    assert.ok(c === 'EACCES', `byte ${i}: ${c}`);
  }
  assert.is(code(() => identityFromCertificate(randomBytes(300))), 'EACCES', 'garbage');
});

test('checkPeerKey: expected key must match; the accepting side takes any proven key', async () => {
  const a = (await generateIdentity()).publicKey;
  const b = (await generateIdentity()).publicKey;
  assert.ok(checkPeerKey(a, a, 't') === a);
  assert.ok(checkPeerKey(a, null, 't') === a);
  assert.is(code(() => checkPeerKey(a, b, 't')), 'EACCES');
  assert.is(code(() => checkPeerKey(undefined, null, 't')), 'EACCES');
});

test('handshake: both sides prove their keys and agree on traffic keys', async () => {
  await handshakeReady();
  const a = await generateIdentity();
  const b = await generateIdentity();
  const i = new HandshakeInitiator(a, b.publicKey);
  const r = new HandshakeResponder(b);
  const m2 = r.respond(i.start());
  const { message, keys: ki } = i.finish(m2);
  const kr = r.finish(message);
  assert.ok(Buffer.from(ki.remotePublicKey).equals(Buffer.from(b.publicKey)));
  assert.ok(Buffer.from(kr.remotePublicKey).equals(Buffer.from(a.publicKey)));
  assert.ok(Buffer.from(ki.sendKey).equals(Buffer.from(kr.recvKey)));
  assert.ok(Buffer.from(ki.recvKey).equals(Buffer.from(kr.sendKey)));
  assert.not.ok(Buffer.from(ki.sendKey).equals(Buffer.from(ki.recvKey)));
  assert.ok(Buffer.from(ki.sessionHash).equals(Buffer.from(kr.sessionHash)));
});

test('handshake: wrong expected key is EACCES before the initiator reveals itself', async () => {
  await handshakeReady();
  const a = await generateIdentity();
  const b = await generateIdentity();
  const c = await generateIdentity();
  const i = new HandshakeInitiator(a, c.publicKey);
  const r = new HandshakeResponder(b);
  assert.is(code(() => i.finish(r.respond(i.start()))), 'EACCES');
});

test('handshake: garbage, tampering and a relayed finish are refused', async () => {
  await handshakeReady();
  const a = await generateIdentity();
  const b = await generateIdentity();
  assert.is(code(() => new HandshakeResponder(b).respond(randomBytes(40))), 'EPROTO', 'junk hello');
  assert.is(code(() => new HandshakeResponder(b).respond(randomBytes(3))), 'EPROTO', 'short hello');
  // Tampered response.
  {
    const i = new HandshakeInitiator(a, b.publicKey);
    const m2 = new HandshakeResponder(b).respond(i.start());
    m2[60]! ^= 1;
    assert.is(code(() => i.finish(m2)), 'EPROTO', 'tampered response');
  }
  // A finish from another session (replay) does not authenticate here.
  {
    const i1 = new HandshakeInitiator(a, b.publicKey);
    const r1 = new HandshakeResponder(b);
    const { message } = i1.finish(r1.respond(i1.start()));
    const i2 = new HandshakeInitiator(a, b.publicKey);
    const r2 = new HandshakeResponder(b);
    r2.respond(i2.start());
    assert.is(code(() => r2.finish(message)), 'EPROTO', 'replayed finish');
    assert.is(code(() => new HandshakeResponder(b).finish(Buffer.alloc(FINISH_BYTES))) !== 'no error', true);
  }
  // Low-order ephemeral key (all zero) is refused.
  {
    const hello = Buffer.concat([Buffer.from('QMTCP\x00\x00\x01', 'latin1'), Buffer.alloc(32)]);
    assert.is(code(() => new HandshakeResponder(b).respond(hello)), 'EPROTO', 'zero ephemeral');
  }
});

suiteTest.run();
