/**
 * Many seeders: a managed mount pulls from the owner and three seeders,
 * one killed mid-pull and one lying (it serves wrong bytes in every chunk);
 * the mount completes with the owner's bytes, the liar is dropped, and a
 * forged hash list is refused.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { generateIdentity } from '../../crypto/identity.ts';
import { LoopbackNetwork, LoopbackTransport } from '../../transports/loopback.ts';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { HashListVerifier } from '../../engine/sync/hash-list.ts';
import { shareRegion } from '../../p2p/share.ts';
import { mountTicket } from '../../p2p/mount.ts';
import { openManaged } from '../../p2p/sync/managed.ts';
import { loadHashList } from '../../p2p/sync/hash-calls.ts';
import { serveHaveMap } from '../../p2p/sync/have-calls.ts';
import { buildStack } from '../../engine/stack.ts';
import { withTimeout } from '../helpers/env.ts';
import { assertBytes } from '../engine/model.ts';

const CS = 64 * 1024;
const SIZE = 256 * CS;

test('three seeders, one killed mid-pull, one lying: the mount completes with the owner\'s bytes and drops the liar', () =>
  withTimeout(30_000, 'swarm', async () => {
    const net = new LoopbackNetwork();
    const owner = await generateIdentity();
    const me = await generateIdentity();
    const content = new Uint8Array(SIZE);
    for (let i = 0; i < SIZE; i++) content[i] = (i * 7 + (i >> 16)) & 0xff;
    const share = async (name: string, bytes: Uint8Array) => {
      const id = await generateIdentity();
      const store = new MemoryBackend(SIZE);
      await store.writeAt(bytes, 0);
      return { name, shared: await shareRegion({ identity: id, store, transport: new LoopbackTransport(id, { network: net }), listen: `${name}:0` }) };
    };
    const ownerStore = new MemoryBackend(SIZE);
    await ownerStore.writeAt(content, 0);
    const ownerShared = await shareRegion({ identity: owner, store: ownerStore, transport: new LoopbackTransport(owner, { network: net }), listen: 'owner:0' });
    const lie = content.slice();
    for (let c = 0; c < SIZE / CS; c++) lie[c * CS + 100] ^= 0xff;
    const seeders = [await share('good', content), await share('doomed', content), await share('liar', lie)];
    const mount = (ticket: string) => mountTicket({ identity: me, ticket, transport: new LoopbackTransport(me, { network: net }) });
    const m = await mount(ownerShared.ticket);
    const seederMounts = await Promise.all(seeders.map(async (s) => ({ name: s.name, mounted: await mount(s.shared.ticket) })));
    const logs: string[] = [];
    const mm = await openManaged(m.region, {
      pullWorkers: 8,
      seeders: seederMounts.map((s) => ({ name: s.name, region: s.mounted.region })),
      log: (l) => logs.push(l),
    });
    // Kill one seeder once the pull is under way.
    while (mm.synced.progress().local < 40) await new Promise((r) => setTimeout(r, 1));
    await seeders[1]!.shared.close();
    await mm.synced.whenComplete();
    const all = new Uint8Array(SIZE);
    await mm.store.readAt(all, 0);
    assertBytes(all, content, 'mount after the swarm pull');
    const peers = mm.peers()!;
    const by = (n: string) => peers.find((p) => p.name === n)!;
    assert.ok(by('liar').banned, 'the liar is dropped');
    assert.ok(by('liar').badChunks >= 3);
    assert.is(by('liar').fetched, 0, 'nothing from the liar was used');
    assert.ok(by('good').fetched > 0, 'the honest seeder served chunks');
    assert.ok(logs.some((l) => /seeder liar dropped/.test(l)), logs.join('\n'));
    await mm.close();
    for (const s of seederMounts) await s.mounted.close();
    await m.close();
    for (const s of seeders) await s.shared.close();
    await ownerShared.close();
  }),
);

test('a partial seeder (a managed mount that read 10 chunks) is asked only for chunks its map has: it never fetches from the owner for the puller', () =>
  withTimeout(30_000, 'partial seeder', async () => {
    const net = new LoopbackNetwork();
    const owner = await generateIdentity();
    const sId = await generateIdentity();
    const me = await generateIdentity();
    const N = 64;
    const content = new Uint8Array(N * CS);
    for (let i = 0; i < content.length; i++) content[i] = (i * 5 + (i >> 16)) & 0xff;
    const ownerStore = new MemoryBackend(N * CS);
    await ownerStore.writeAt(content, 0);
    const ownerShared = await shareRegion({ identity: owner, store: ownerStore, transport: new LoopbackTransport(owner, { network: net }), listen: 'owner:0' });
    // The seeder: a managed mount with no background pull that read chunks 0..9, seeding its copy as mount --seed-listen does.
    const sMount = await mountTicket({ identity: sId, ticket: ownerShared.ticket, transport: new LoopbackTransport(sId, { network: net }) });
    const sManaged = await openManaged(sMount.region, { pullWorkers: 0 });
    await sManaged.store.readAt(new Uint8Array(10 * CS), 0);
    const view = await buildStack({ backend: sManaged.store, ownsBackend: false, readOnly: true, maxRequest: 16 * 1024 * 1024 });
    const seed = await shareRegion({ identity: sId, store: view, transport: new LoopbackTransport(sId, { network: net }), listen: 'seed:0', readOnly: true });
    const states = sManaged.synced.states;
    serveHaveMap(seed.server, states.count, (i) => states.isLocal(i) && !states.isDirty(i));
    const demandBefore = sManaged.synced.progress().demandFetches;
    const m = await mountTicket({ identity: me, ticket: ownerShared.ticket, transport: new LoopbackTransport(me, { network: net }) });
    const sm = await mountTicket({ identity: me, ticket: seed.ticket, transport: new LoopbackTransport(me, { network: net }) });
    const mm = await openManaged(m.region, { pullWorkers: 8, seeders: [{ name: 'partial', region: sm.region }] });
    await mm.synced.whenComplete();
    const all = new Uint8Array(N * CS);
    await mm.store.readAt(all, 0);
    assertBytes(all, content, 'the mount has the owner\'s bytes');
    const p = mm.peers()!.find((x) => x.name === 'partial')!;
    assert.ok(p.fetched > 0, 'the seeder served the chunks it holds');
    assert.ok(p.fetched <= 10, `the seeder was asked for ${p.fetched} chunks; it holds 10`);
    assert.is(p.held, 10);
    assert.is(sManaged.synced.progress().demandFetches, demandBefore, 'the seeder fetched nothing from the owner on the puller\'s behalf');
    await mm.close();
    await m.close();
    await sm.close();
    await seed.close();
    await sManaged.close();
    await sMount.close();
    await ownerShared.close();
  }),
);

test('a hash list signed by another key is refused', () =>
  withTimeout(10_000, 'forged list', async () => {
    const net = new LoopbackNetwork();
    const owner = await generateIdentity();
    const other = await generateIdentity();
    const me = await generateIdentity();
    const shared = await shareRegion({ identity: owner, store: new MemoryBackend(4 * CS), transport: new LoopbackTransport(owner, { network: net }), listen: 'o:0' });
    const m = await mountTicket({ identity: me, ticket: shared.ticket, transport: new LoopbackTransport(me, { network: net }) });
    const v = new HashListVerifier(4);
    await loadHashList(m.region, v, owner.publicKey, m.region.manifest.regionId);
    assert.is(v.knownCount, 4);
    try {
      await loadHashList(m.region, new HashListVerifier(4), other.publicKey, m.region.manifest.regionId);
      assert.unreachable('accepted a list not signed by the expected owner');
    } catch (e) {
      assert.match((e as Error).message, /not signed by the region owner/);
    }
    await m.close();
    await shared.close();
  }),
);

test.run();
