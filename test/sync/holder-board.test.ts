/**
 * HolderBoard, the owner's side of reads answered by reference, without a
 * network (a VirtualClock for leases): offers in bitmap pages (a region of
 * more chunks than one call carries), what `locate` references and to
 * whom, freshness against the change feed, and every refusal (grant not
 * the holder's, not bound to the owner, wrong chunk size, bad pages, too
 * many holders), lease expiry and withdrawal.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { QuicmapError } from '../../base/errors.ts';
import { VirtualClock } from '../../base/clock.ts';
import { openDelegation } from '../../crypto/delegation.ts';
import { newRegionId, signGrant } from '../../crypto/grant.ts';
import { generateIdentity, type Identity } from '../../crypto/identity.ts';
import { ChangeFeed } from '../../engine/tracking/change-feed.ts';
import { idOf } from '../../p2p/copy/wire.ts';
import { machineOf, splitCacheId } from '../../p2p/protocol/cache-id.ts';
import { HELD_SLOT, HolderBoard, MAX_OFFER_PAGE } from '../../p2p/sync/held-chunks.ts';

const CHUNK = 64 * 1024;
const CHUNKS = 100_000; // more than one page of bitmap (65 536 chunks)
const SIZE = CHUNKS * CHUNK;

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return e instanceof QuicmapError ? e.code : String(e);
  }
}

async function grantFor(holder: Identity, owner: Identity, bound = true): Promise<Uint8Array> {
  return (await signGrant(holder, { regionId: newRegionId(), endpoints: [{ transport: 'tcp', address: '127.0.0.1:9' }], rights: 'ro', expiresAt: Math.floor(Date.now() / 1000) + 3600, ...(bound ? { grantee: owner.publicKey } : {}) })).bytes;
}

function page(from: number, bits: number[], bytes = MAX_OFFER_PAGE): Uint8Array {
  const p = new Uint8Array(bytes);
  for (const i of bits) p[(i - from) >> 3]! |= 1 << ((i - from) & 7);
  return p;
}

test('offers in pages, references to the holder, a delegation bound to the caller; fresh chunks only', async () => {
  const [owner, h1, caller] = await Promise.all([generateIdentity(), generateIdentity(), generateIdentity()]);
  const clock = new VirtualClock(1_000);
  const feed = new ChangeFeed(SIZE, CHUNK);
  const board = new HolderBoard({ identity: owner, size: SIZE, chunkSize: CHUNK, feed, clock });
  const grant = await grantFor(h1, owner);
  const ctx = { peer: h1.publicKey };
  assert.is((await board.offer(ctx, { grant, chunkSize: CHUNK, from: 0, have: page(0, [0, 1, 2]) })).accepted, 3);
  const second = 8 * MAX_OFFER_PAGE;
  const tail = Math.ceil(CHUNKS / 8) - MAX_OFFER_PAGE;
  assert.is((await board.offer(ctx, { grant, chunkSize: CHUNK, from: second, have: page(second, [second + 5, CHUNKS - 1], tail) })).accepted, 5, 'pages add up');

  const got = await board.locate(caller.publicKey, 0, 8, new Set());
  assert.equal(got.refs.map((r) => r.index), [0, 1, 2]);
  const id = splitCacheId(idOf(got.refs[0]!.id, 't'));
  assert.equal(id, { machine: machineOf(h1.publicKey), slot: HELD_SLOT, line: 0 });
  const d = await openDelegation(got.holders[0]!.delegation);
  assert.equal(d.delegator, owner.publicKey);
  assert.equal(d.delegate, caller.publicKey);
  assert.equal(d.grant, grant);
  assert.equal((await board.locate(caller.publicKey, second, 8, new Set())).refs.map((r) => r.index), [second + 5]);
  assert.equal((await board.locate(caller.publicKey, CHUNKS - 3, 8, new Set())).refs.map((r) => r.index), [CHUNKS - 1], 'the last chunk, nothing past it');

  // Never the caller itself, never an excluded holder.
  assert.is((await board.locate(h1.publicKey, 0, 8, new Set())).refs.length, 0);
  assert.is((await board.locate(caller.publicKey, 0, 8, new Set([Buffer.from(h1.publicKey).toString('hex')]))).refs.length, 0);

  // The owner changes chunk 1 after the offer: the holder's copy may be old.
  feed.record(CHUNK, 10);
  assert.equal((await board.locate(caller.publicKey, 0, 8, new Set())).refs.map((r) => r.index), [0, 2]);
  await board.offer(ctx, { grant, chunkSize: CHUNK, from: 0, have: page(0, [0, 1, 2]) });
  assert.equal((await board.locate(caller.publicKey, 0, 8, new Set())).refs.map((r) => r.index), [0, 1, 2], 'offered again after the change: fresh');

  // The lease: an offer not renewed is dropped.
  await clock.advance(31_000);
  assert.is((await board.locate(caller.publicKey, 0, 8, new Set())).refs.length, 0);
  assert.is(board.view().stats.expired, 1);
  await board.offer(ctx, { grant, chunkSize: CHUNK, from: 0, have: page(0, [4]) });
  assert.is(board.withdraw(h1.publicKey), true);
  assert.is(board.view().holders.length, 0);
});

test('two holders share the chunks out; refusals are typed', async () => {
  const [owner, h1, h2, stranger, caller] = await Promise.all([generateIdentity(), generateIdentity(), generateIdentity(), generateIdentity(), generateIdentity()]);
  const board = new HolderBoard({ identity: owner, size: SIZE, chunkSize: CHUNK, maxHolders: 2, clock: new VirtualClock() });
  const all = page(0, Array.from({ length: 64 }, (_, i) => i));
  const g1 = await grantFor(h1, owner);
  await board.offer({ peer: h1.publicKey }, { grant: g1, chunkSize: CHUNK, have: all });
  await board.offer({ peer: h2.publicKey }, { grant: await grantFor(h2, owner), chunkSize: CHUNK, have: all });
  const got = await board.locate(caller.publicKey, 0, 64, new Set());
  assert.is(got.refs.length, 64);
  assert.is(got.holders.length, 2);
  const per = [0, 0];
  for (const r of got.refs) per[r.holder]!++;
  assert.ok(per[0]! > 0 && per[1]! > 0, `both holders used: ${per}`);

  const offer = (peer: Identity, a: Record<string, unknown>) => codeOf(board.offer({ peer: peer.publicKey }, a));
  assert.is(await offer(stranger, { grant: g1, chunkSize: CHUNK, have: all }), 'EACCES', "another holder's grant");
  assert.is(await offer(stranger, { grant: await grantFor(stranger, owner, false), chunkSize: CHUNK, have: all }), 'EACCES', 'a grant not bound to the owner');
  assert.is(await offer(stranger, { grant: await grantFor(stranger, owner), chunkSize: CHUNK, have: all }), 'ENOSPC', 'past maxHolders');
  assert.is(await offer(h1, { grant: g1, chunkSize: CHUNK * 2, have: all }), 'EINVAL', 'another chunk size');
  assert.is(await offer(h1, { grant: g1, chunkSize: CHUNK, have: new Uint8Array(MAX_OFFER_PAGE + 1) }), 'EPROTO', 'a page too long');
  assert.is(await offer(h1, { grant: g1, chunkSize: CHUNK, from: 3, have: all }), 'EPROTO', 'a page not on a byte');
  assert.is(await offer(h1, { grant: g1, chunkSize: CHUNK, from: CHUNKS - 8, have: new Uint8Array(16) }), 'EPROTO', 'a page past the end');
  assert.is(await offer(h1, { grant: 'x', chunkSize: CHUNK, have: all }), 'EPROTO');
  assert.ok(board.view().stats.refused >= 8);
});

test.run();
