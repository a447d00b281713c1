/** Unit tests of the transports' crypto: the certificate key binding (TCP and QUIC), and the record AEAD and SIGMA-I handshake (relayed channels). */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { X509Certificate, randomBytes } from 'node:crypto';
import { checkPeerKey, createPeerCertificate, identityFromCertificate } from '../../crypto/peer-cert.ts';
import { RecordOpener, RecordSealer } from '../../crypto/aead.ts';
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

test('records round-trip, in parts, with associated data', () => {
  const key = randomBytes(32);
  const s = new RecordSealer(key);
  const o = new RecordOpener(key);
  for (let i = 0; i < 50; i++) {
    const a = randomBytes(i * 37);
    const b = randomBytes(1000);
    const aad = Buffer.from([i]);
    assert.ok(o.open(join(s.seal([a, b], aad)), aad).equals(Buffer.concat([a, b])));
  }
});

test('tampered ciphertext, tag or associated data is refused with EPROTO', () => {
  const key = randomBytes(32);
  for (const where of ['ct', 'tag', 'aad']) {
    const s = new RecordSealer(key);
    const o = new RecordOpener(key);
    const rec = join(s.seal([Buffer.from('hello world')], Buffer.from([1])));
    if (where === 'ct') rec[0]! ^= 1;
    if (where === 'tag') rec[rec.length - 1]! ^= 0x80;
    assert.is(code(() => o.open(rec, Buffer.from([where === 'aad' ? 2 : 1]))), 'EPROTO', where);
  }
});

test('replayed and reordered records are refused', () => {
  const key = randomBytes(32);
  const s = new RecordSealer(key);
  const r1 = join(s.seal([Buffer.from('one')]));
  const r2 = join(s.seal([Buffer.from('two')]));
  const o = new RecordOpener(key);
  assert.is(code(() => o.open(r2)), 'EPROTO', 'reordered');
  const o2 = new RecordOpener(key);
  o2.open(r1);
  assert.is(code(() => o2.open(r1)), 'EPROTO', 'replayed');
});

test('both ends update the key at the same record', () => {
  const key = randomBytes(32);
  const s = new RecordSealer(key, 3, 1000);
  const o = new RecordOpener(key, 3, 1000);
  const plain = new RecordSealer(key); // never rekeys: its 4th record must not open
  const recs: Buffer[] = [];
  for (let i = 0; i < 10; i++) {
    const m = randomBytes(i === 5 ? 1200 : 10); // a big record triggers the byte limit too
    const r = join(s.seal([m]));
    recs.push(join(plain.seal([m])));
    assert.ok(o.open(r).equals(m), `record ${i}`);
  }
  const o3 = new RecordOpener(key, 3, 1000);
  for (let i = 0; i < 3; i++) o3.open(recs[i]!);
  assert.is(code(() => o3.open(recs[3]!)), 'EPROTO', 'old key after the update');
});

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
