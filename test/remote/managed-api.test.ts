/** Managed mounts over the loopback transport: openManaged on a RemoteRegion, the sharer's change feed, push and flush. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { generateIdentity } from '../../crypto/identity.ts';
import { LoopbackNetwork, LoopbackTransport } from '../../transports/loopback.ts';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { FeedLayer } from '../../engine/layers/feed.ts';
import { shareRegion } from '../../p2p/share.ts';
import { mountTicket } from '../../p2p/mount.ts';
import { openManaged } from '../../p2p/sync/managed.ts';
import { withTimeout } from '../helpers/env.ts';
import { assertBytes } from '../engine/model.ts';

const CS = 64 * 1024;
const SIZE = 32 * CS;

async function setup() {
  const net = new LoopbackNetwork();
  const a = await generateIdentity();
  const b = await generateIdentity();
  const c = await generateIdentity();
  const store = new MemoryBackend(SIZE);
  const init = new Uint8Array(SIZE);
  for (let i = 0; i < SIZE; i++) init[i] = (i * 13 + 1) & 0xff;
  await store.writeAt(init, 0);
  const shared = await shareRegion({ identity: a, store, transport: new LoopbackTransport(a, { network: net }), listen: 'sharer:0' });
  const mount = (id = b) => mountTicket({ identity: id, ticket: shared.ticket, transport: new LoopbackTransport(id, { network: net }) });
  return { net, a, b, c, store, init, shared, mount, local: new FeedLayer(store, shared.feed) };
}

const read = async (s: { readAt(b: Uint8Array, o: number): Promise<void> }, off: number, len: number) => {
  const b = new Uint8Array(len);
  await s.readAt(b, off);
  return b;
};

async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('a managed mount pulls the whole region in the background, then serves reads with no request to the sharer', () =>
  withTimeout(20_000, 'managed pull', async () => {
    const { init, shared, mount } = await setup();
    const m = await mount();
    const mm = await openManaged(m.region, { pullWorkers: 3 });
    await mm.synced.whenComplete();
    const before = m.region.stats.requests;
    assertBytes(await read(mm.store, 0, SIZE), init, 'full read');
    assertBytes(await read(mm.store, 12345, 100), init.subarray(12345, 12445), 'unaligned read');
    assert.is(m.region.stats.requests - before, 0, 'no request crossed the network');
    const p = mm.synced.progress();
    assert.is(p.complete, true);
    assert.is(p.pulledBytes, SIZE);
    await mm.close();
    await m.close();
    await shared.close();
  }),
);

test("the sharer's own writes (FeedLayer) and another mounter's writes invalidate cached chunks; the mounter reads the new bytes", () =>
  withTimeout(20_000, 'invalidate', async () => {
    const { shared, mount, local, c } = await setup();
    const m = await mount();
    const mm = await openManaged(m.region, { pullWorkers: 2 });
    await mm.synced.whenComplete();
    await local.writeAt(new Uint8Array(100).fill(0xab), 5 * CS + 10);
    await until('the sharer write to show', async () => (await read(mm.store, 5 * CS + 10, 1))[0] === 0xab);
    const other = await mount(c);
    await other.region.writeAt(new Uint8Array(CS).fill(0x5c), 9 * CS);
    await until("the other mounter's write to show", async () => (await read(mm.store, 9 * CS, 1))[0] === 0x5c);
    assert.ok(mm.synced.progress().invalidations >= 2);
    await mm.synced.whenComplete(); // re-pulled
    await mm.close();
    await other.close();
    await m.close();
    await shared.close();
  }),
);

test('writes of a managed mount are pushed in the background; flush makes them durable at the sharer; its own pushes do not invalidate its cache', () =>
  withTimeout(20_000, 'push', async () => {
    const { store, shared, mount } = await setup();
    const m = await mount();
    const mm = await openManaged(m.region, { pullWorkers: 0, pushIntervalMs: 60_000 });
    await mm.store.writeAt(new Uint8Array(10).fill(0x42), 3 * CS + 7); // partial: fetches chunk 3 first
    await mm.store.writeAt(new Uint8Array(CS).fill(0x43), 4 * CS); // whole: no fetch
    assert.is((await read(store, 3 * CS + 7, 1))[0] !== 0x42, true, 'not pushed before the interval or a flush');
    await mm.store.flush();
    assert.is((await read(store, 3 * CS + 7, 1))[0], 0x42);
    assert.is((await read(store, 4 * CS, 1))[0], 0x43);
    await new Promise((r) => setTimeout(r, 100));
    assert.is(mm.synced.progress().invalidations, 0, 'own pushes are not reported back');
    assert.is(mm.synced.progress().demandFetches, 1, 'only the partial write fetched');
    await mm.close();
    await m.close();
    await shared.close();
  }),
);

test.run();
