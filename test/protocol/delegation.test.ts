/** crypto/delegation.ts: a read grant narrowed to a range, a window and one peer; forged, widened, replayed-elsewhere ones refused. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Packr } from 'msgpackr';
import { generateIdentity } from '../../crypto/identity.ts';
import { newRegionId, signGrant } from '../../crypto/grant.ts';
import { delegationCovers, isDelegation, openDelegation, signDelegation, verifyDelegationFor } from '../../crypto/delegation.ts';
import { QuicmapError } from '../../base/errors.ts';

const packr = new Packr({ useRecords: false, int64AsType: 'number', mapsAsObjects: true, moreTypes: false });

async function fixture(grant: { expiresAt?: number; grantee?: 'c' | 'other' } = {}) {
  const [a, c, b, other] = await Promise.all([generateIdentity(), generateIdentity(), generateIdentity(), generateIdentity()]);
  const regionId = newRegionId();
  const g = await signGrant(a, {
    regionId,
    endpoints: [{ transport: 'quic', address: '10.0.0.1:4433' }],
    rights: 'ro',
    expiresAt: grant.expiresAt ?? 0,
    ...(grant.grantee ? { grantee: grant.grantee === 'c' ? c.publicKey : other.publicKey } : {}),
  });
  const expect = { sharer: a.publicKey, regionId, peer: b.publicKey, regionSize: 1 << 30 };
  return { a, b, c, other, regionId, grant: g.bytes, expect };
}

async function refused(p: Promise<unknown>, re: RegExp): Promise<void> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof QuicmapError && e.code === 'EACCES', `expected EACCES, got ${(e as Error).message}`);
    assert.match((e as Error).message, re);
    return;
  }
  assert.unreachable('was not refused');
}

/** Re-encode a delegation with one claim changed, keeping the old signature (what a widening peer would try). */
function tamper(bytes: Uint8Array, index: number, value: unknown): Uint8Array {
  const claims = packr.unpack(bytes.subarray(4, bytes.length - 64)) as unknown[];
  claims[index] = value;
  const body: Uint8Array = packr.pack(claims);
  const out = new Uint8Array(4 + body.length + 64);
  out.set(bytes.subarray(0, 4));
  out.set(body, 4);
  out.set(bytes.subarray(bytes.length - 64), 4 + body.length);
  return out;
}

test('a delegation derived from a read grant verifies for its delegate, range and window', async () => {
  const f = await fixture();
  const d = await signDelegation(f.c, { grant: f.grant, delegate: f.b.publicKey, offset: 4096, length: 1 << 20, validFor: 600 });
  assert.ok(isDelegation(d));
  assert.ok(d.length < 1024, `${d.length} bytes`);
  const { delegation, grant } = await verifyDelegationFor(d, f.expect);
  assert.is(delegation.offset, 4096);
  assert.is(delegation.length, 1 << 20);
  assert.is(grant.rights, 'ro');
  assert.equal([...delegation.delegator], [...f.c.publicKey]);
  assert.ok(delegationCovers(delegation, 4096, 1 << 20));
  assert.not.ok(delegationCovers(delegation, 4095, 10), 'before the range');
  assert.not.ok(delegationCovers(delegation, 4096, (1 << 20) + 1), 'past the range');
  // A grant is never taken for a delegation.
  assert.not.ok(isDelegation(f.grant));
});

test('a widened range, a moved delegate or a longer window breaks the signature', async () => {
  const f = await fixture();
  const d = await signDelegation(f.c, { grant: f.grant, delegate: f.b.publicKey, offset: 0, length: 65536, validFor: 60 });
  await refused(verifyDelegationFor(tamper(d, 5, 1 << 30), f.expect), /signature does not verify/);
  await refused(verifyDelegationFor(tamper(d, 4, 0x100000), f.expect), /signature does not verify/);
  await refused(verifyDelegationFor(tamper(d, 7, Math.floor(Date.now() / 1000) + 86000), f.expect), /signature does not verify/);
  await refused(verifyDelegationFor(tamper(d, 3, f.other.publicKey), { ...f.expect, peer: f.other.publicKey }), /signature does not verify/);
  const flipped = Uint8Array.from(d);
  flipped[flipped.length - 1]! ^= 1;
  await refused(verifyDelegationFor(flipped, f.expect), /signature does not verify/);
});

test('a forged delegation (signed by someone claiming to be the delegator) is refused', async () => {
  const f = await fixture();
  const mine = await signDelegation(f.other, { grant: f.grant, delegate: f.b.publicKey, offset: 0, length: 4096, validFor: 60 });
  // Claims C as the delegator, signature by `other`.
  await refused(verifyDelegationFor(tamper(mine, 2, f.c.publicKey), f.expect), /signature does not verify/);
  // Not a delegation at all.
  await refused(openDelegation(new Uint8Array([0x51, 0x4d, 0x44, 0x31, 1, 2, 3])), /malformed/);
});

test('bound to the delegate: another peer presenting it is refused', async () => {
  const f = await fixture();
  const d = await signDelegation(f.c, { grant: f.grant, delegate: f.b.publicKey, offset: 0, length: 4096, validFor: 60 });
  await refused(verifyDelegationFor(d, { ...f.expect, peer: f.other.publicKey }), /bound to peer/);
});

test('time window: expired, not yet valid, and never past the grant', async () => {
  const f = await fixture();
  const now = Date.now();
  const d = await signDelegation(f.c, { grant: f.grant, delegate: f.b.publicKey, offset: 0, length: 4096, validFor: 60 });
  await refused(verifyDelegationFor(d, { ...f.expect, nowMs: now + 61_000 }), /expired/);
  const later = await signDelegation(f.c, { grant: f.grant, delegate: f.b.publicKey, offset: 0, length: 4096, validFor: 60, notBefore: Math.floor(now / 1000) + 3600 });
  await refused(verifyDelegationFor(later, f.expect), /not valid before/);
  const g = await fixture({ expiresAt: Math.floor(now / 1000) + 30 });
  const capped = await signDelegation(g.c, { grant: g.grant, delegate: g.b.publicKey, offset: 0, length: 4096, validFor: 3600 });
  const o = await openDelegation(capped);
  assert.ok(o.notAfter <= Math.floor(now / 1000) + 30, 'window ends with the grant');
  await refused(verifyDelegationFor(capped, { ...g.expect, nowMs: now + 31_000 }), /grant it derives from|expired/);
});

test('the grant inside must be the source sharer\'s, for its region, and delegable by the signer', async () => {
  const f = await fixture();
  const d = await signDelegation(f.c, { grant: f.grant, delegate: f.b.publicKey, offset: 0, length: 4096, validFor: 60 });
  await refused(verifyDelegationFor(d, { ...f.expect, regionId: newRegionId() }), /grant it derives from.*region/);
  await refused(verifyDelegationFor(d, { ...f.expect, sharer: f.other.publicKey }), /grant it derives from/);
  // A grant bound to C can be delegated by C, not by anyone else.
  const bound = await fixture({ grantee: 'c' });
  await verifyDelegationFor(await signDelegation(bound.c, { grant: bound.grant, delegate: bound.b.publicKey, offset: 0, length: 4096, validFor: 60 }), bound.expect);
  const stolen = await fixture({ grantee: 'other' });
  await refused(signDelegation(stolen.c, { grant: stolen.grant, delegate: stolen.b.publicKey, offset: 0, length: 4096, validFor: 60 }), /bound to another peer/);
});

test('a range outside the region is refused', async () => {
  const f = await fixture();
  const d = await signDelegation(f.c, { grant: f.grant, delegate: f.b.publicKey, offset: (1 << 30) - 100, length: 4096, validFor: 60 });
  await refused(verifyDelegationFor(d, f.expect), /outside the region/);
});

test.run();
