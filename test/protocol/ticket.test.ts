import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { generateIdentity } from '../../crypto/identity.ts';
import sodium from 'libsodium-wrappers';
import { Packr } from 'msgpackr';
import { base32Encode } from '../../crypto/identity.ts';
import { GRANT_VERSION, newRegionId, signGrant, verifyGrantFor } from '../../crypto/grant.ts';
import { dialOrder, endpointText } from '../../crypto/endpoint.ts';
import { encodeTicket, parseTicket, TICKET_PREFIX } from '../../crypto/ticket.ts';
import { QuicmapError } from '../../base/errors.ts';

const code = (c: string) => (e: unknown) => e instanceof QuicmapError && e.code === c;

async function fixture(extra: { expiresAt?: number; rights?: 'ro' | 'rw'; grantee?: Uint8Array } = {}) {
  const sharer = await generateIdentity();
  const regionId = newRegionId();
  const grant = await signGrant(sharer, { regionId, transport: 'quic', addresses: ['127.0.0.1:4433'], rights: extra.rights ?? 'rw', expiresAt: extra.expiresAt ?? 0, ...(extra.grantee ? { grantee: extra.grantee } : {}) });
  return { sharer, regionId, grant, ticket: encodeTicket(grant) };
}

async function rejects(p: Promise<unknown>, check: (e: unknown) => boolean, what: string) {
  try {
    await p;
  } catch (e) {
    assert.ok(check(e), `${what}: unexpected ${(e as Error).message}`);
    return e as Error;
  }
  assert.unreachable(`${what}: did not reject`);
  throw new Error('unreachable');
}

test('a ticket is one copyable word and parses back to its claims', async () => {
  const { ticket, sharer, regionId } = await fixture({ rights: 'ro' });
  assert.ok(ticket.startsWith(TICKET_PREFIX));
  assert.ok(/^[a-z0-9]+$/.test(ticket), 'lower-case base32 only');
  assert.ok(ticket.length < 400, `length ${ticket.length}`);
  const t = await parseTicket(`  ${ticket}\n`);
  assert.equal(Array.from(t.claims.sharer), Array.from(sharer.publicKey));
  assert.equal(Array.from(t.claims.regionId), Array.from(regionId));
  assert.is(t.claims.rights, 'ro');
  assert.equal(t.claims.endpoints, [{ transport: 'quic', address: '127.0.0.1:4433' }]);
  assert.is(t.claims.version, GRANT_VERSION);
});

test('a ticket lists several endpoints; a mount dials QUIC first, then the rest in the ticket order', async () => {
  const sharer = await generateIdentity();
  const endpoints = [
    { transport: 'tcp' as const, address: '127.0.0.1:1' },
    { transport: 'webtransport' as const, address: '[::1]:2' },
    { transport: 'quic' as const, address: '127.0.0.1:3' },
  ];
  const grant = await signGrant(sharer, { regionId: newRegionId(), endpoints, rights: 'rw', expiresAt: 0 });
  const t = await parseTicket(encodeTicket(grant));
  assert.equal(t.claims.endpoints, endpoints);
  assert.equal(dialOrder(t.claims.endpoints).map(endpointText), ['quic://127.0.0.1:3', 'tcp://127.0.0.1:1', 'webtransport://[::1]:2']);
});

test('version 1 tickets (one transport, several addresses) still read, as endpoints', async () => {
  await sodium.ready;
  const sharer = await generateIdentity();
  const regionId = newRegionId();
  // The version 1 layout, signed as version 1 sharers did.
  const claims = new Packr({ useRecords: false, int64AsType: 'number', mapsAsObjects: true, moreTypes: false }).pack([1, regionId, sharer.publicKey, 'tcp', ['127.0.0.1:7', '[::1]:7'], 0, Math.floor(Date.now() / 1000), 0, null]);
  const sig = sodium.crypto_sign_detached(Buffer.concat([Buffer.from('quicmap-grant-v1\0'), claims]), sharer.secretKey);
  const t = await parseTicket(TICKET_PREFIX + base32Encode(Buffer.concat([claims, sig])));
  assert.is(t.claims.version, 1);
  assert.is(t.claims.rights, 'ro');
  assert.equal(t.claims.endpoints, [
    { transport: 'tcp', address: '127.0.0.1:7' },
    { transport: 'tcp', address: '[::1]:7' },
  ]);
  // A version this build does not know is refused with a message naming it.
  const v9 = new Packr({ useRecords: false }).pack([9, regionId, sharer.publicKey, [], 0, 0, 0, null]);
  const sig9 = sodium.crypto_sign_detached(Buffer.concat([Buffer.from('quicmap-grant-v1\0'), v9]), sharer.secretKey);
  try {
    await parseTicket(TICKET_PREFIX + base32Encode(Buffer.concat([v9, sig9])));
    assert.unreachable('version 9 accepted');
  } catch (e) {
    assert.match((e as Error).message, /grant version 9 is not supported/);
  }
});

test('every single-character change to a ticket is refused', async () => {
  const { ticket } = await fixture();
  const alphabet = 'abcdefghijklmnopqrstuvwxyz234567';
  let refused = 0;
  for (let i = TICKET_PREFIX.length; i < ticket.length - 1; i++) {
    const c = ticket[i]!;
    const other = alphabet[(alphabet.indexOf(c) + 1) % 32]!;
    const bad = ticket.slice(0, i) + other + ticket.slice(i + 1);
    try {
      await parseTicket(bad);
    } catch (e) {
      assert.ok(e instanceof QuicmapError && (e.code === 'EACCES' || e.code === 'EINVAL'));
      refused++;
      continue;
    }
    assert.unreachable(`tampered at ${i} accepted`);
  }
  assert.ok(refused > 200);
});

test('missing, foreign and damaged tickets get clear errors', async () => {
  const e1 = await rejects(parseTicket(''), code('EINVAL'), 'empty');
  assert.match(e1.message, /no ticket/);
  const e2 = await rejects(parseTicket('hello'), code('EINVAL'), 'foreign');
  assert.match(e2.message, /should start with "qm1"/);
  const e3 = await rejects(parseTicket('qm1!!!!'), code('EINVAL'), 'bad chars');
  assert.match(e3.message, /base32/);
  const { ticket } = await fixture();
  const e4 = await rejects(parseTicket(ticket.slice(0, -20)), code('EACCES'), 'truncated');
  assert.match(e4.message, /ticket refused/);
});

test('an expired ticket is refused, by the client and by the sharer', async () => {
  const past = Math.floor(Date.now() / 1000) - 10;
  const { ticket, grant, sharer, regionId } = await fixture({ expiresAt: past });
  const e = await rejects(parseTicket(ticket), code('EACCES'), 'client');
  assert.match(e.message, /expired/);
  await rejects(verifyGrantFor(grant.bytes, { sharer: sharer.publicKey, regionId }), code('EACCES'), 'sharer');
});

test('the sharer refuses grants for other regions, other sharers, other peers', async () => {
  const { grant, sharer } = await fixture();
  const other = await generateIdentity();
  const e1 = await rejects(verifyGrantFor(grant.bytes, { sharer: sharer.publicKey, regionId: newRegionId() }), code('EACCES'), 'region');
  assert.match(e1.message, /does not serve/);
  const e2 = await rejects(verifyGrantFor(grant.bytes, { sharer: other.publicKey, regionId: grant.claims.regionId }), code('EACCES'), 'sharer');
  assert.match(e2.message, /not by this sharer/);
  const e3 = await rejects(verifyGrantFor(new Uint8Array(0), { sharer: sharer.publicKey, regionId: grant.claims.regionId }), code('EACCES'), 'none');
  assert.match(e3.message, /no grant/);
  const peer = await generateIdentity();
  const bound = await fixture({ grantee: peer.publicKey });
  const ok = await verifyGrantFor(bound.grant.bytes, { sharer: bound.sharer.publicKey, regionId: bound.regionId, peer: peer.publicKey });
  assert.is(ok.rights, 'rw');
  const e4 = await rejects(verifyGrantFor(bound.grant.bytes, { sharer: bound.sharer.publicKey, regionId: bound.regionId, peer: other.publicKey }), code('EACCES'), 'grantee');
  assert.match(e4.message, /bound to peer/);
});

test.run();
