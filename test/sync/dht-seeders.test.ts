/**
 * Seeders found through a private DHT on loopback (never a public router):
 * a sharer; mount A, managed, pulls the region and seeds its copy (board
 * item + BEP5 announce); mount B, managed, finds A through the DHT alone
 * (no --seeder ticket), pulls most bytes from it (per-peer byte counts),
 * and completes from A after the sharer is gone. A's serving is held by a
 * gate until the sharer is closed, so "the sharer went away mid-pull" is a
 * fact of the test, not a race.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { generateIdentity } from '../../crypto/identity.ts';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { PassThroughLayer } from '../../engine/layers/pass-through.ts';
import type { ReadWriterAt } from '../../engine/rwat.ts';
import { DhtClient } from '../../p2p/dht/client.ts';
import { recordReady } from '../../p2p/dht/record.ts';
import { openSeedValue, sealSeedValue, seedBoard } from '../../p2p/dht/seeder-record.ts';
import { QuicmapNode } from '../../p2p/node/node.ts';
import { shareRegion } from '../../p2p/share.ts';
import { SeedPublisher, SeederFinder, type FoundSeeder } from '../../p2p/sync/dht-seeders.ts';
import { openManaged, type ManagedMount } from '../../p2p/sync/managed.ts';
import { Scope, withTimeout } from '../helpers/env.ts';

const MiB = 1024 * 1024;

/** Reads wait until the test opens the gate. */
class GatedView extends PassThroughLayer {
  private open!: () => void;
  private readonly gate = new Promise<void>((r) => (this.open = r));
  reads = 0;
  release(): void {
    this.open();
  }
  override async readAt(buf: Uint8Array, offset: number): Promise<void> {
    await this.gate;
    this.reads++;
    return this.inner.readAt(buf, offset);
  }
  describe(): string {
    return 'gated';
  }
}

async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('board items: sealed for the region, unreadable with another region key', async () => {
  await recordReady();
  const sharer = (await generateIdentity()).publicKey;
  const region = new Uint8Array(16).fill(7);
  const board = seedBoard(sharer, region);
  assert.equal(seedBoard(sharer, region).publicKey, board.publicKey, 'the board key is derived, the same for every holder');
  const v = sealSeedValue(board, 'qm1example');
  assert.is(openSeedValue(board, v), 'qm1example');
  assert.throws(() => openSeedValue(seedBoard(sharer, new Uint8Array(16).fill(8)), v), /not sealed for this region/);
  const tampered = Uint8Array.from(v);
  tampered[tampered.length - 1]! ^= 1;
  assert.throws(() => openSeedValue(board, tampered), /not sealed/);
});

test('a managed mount finds a seeder through the DHT, pulls mostly from it, and completes from it after the sharer is gone', async () => {
  const s = new Scope();
  try {
    await withTimeout(90_000, 'dht seeders', async () => {
      const boot = await DhtClient.open({ bootstrap: 'none' });
      s.defer(() => boot.destroy());
      const node = async (role: string) => {
        const n = await QuicmapNode.open({ identity: await generateIdentity(), dht: { bootstrap: [boot.address] }, role });
        s.defer(() => n.close());
        return n;
      };
      const size = 24 * MiB;
      const data = new Uint8Array(size);
      for (let i = 0; i < size; i += 512) data[i] = ((i >> 9) * 7 + 1) & 0xff;
      const store = new MemoryBackend(size);
      await store.writeAt(data, 0);
      const sharer = await node('share');
      const share = await sharer.share({ store, listen: '127.0.0.1:0', transport: 'tcp' });
      const region = share.shared.regionId;
      const owner = sharer.identity.publicKey;

      // Mount A pulls all of it, then seeds through a gated view.
      const a = await node('mount-a');
      const ma = await a.mount({ ticket: share.ticket });
      const mmA = await openManaged(ma.mounted.region, { swarm: true, pullWorkers: 4 });
      s.defer(() => mmA.close());
      await until('A complete', () => mmA.synced.progress().complete);
      const view = new GatedView(mmA.store as ReadWriterAt);
      const seed = await shareRegion({ identity: a.identity, store: view, transport: 'tcp', listen: '127.0.0.1:0', readOnly: true });
      s.defer(() => seed.close());
      const pub = new SeedPublisher({ dht: a.dht!, sharer: owner, regionId: region, ticket: seed.ticket, address: seed.address, ready: () => mmA.synced.progress().local > 0, intervalMs: 2_000 });
      s.defer(() => pub.stop());
      await pub.start();
      await until('A announced', () => pub.published > 0);

      // Mount B finds A through the DHT alone.
      const b = await node('mount-b');
      const mb = await b.mount({ ticket: share.ticket, region: { waitForLinkMs: 1_000 } });
      let mmB: ManagedMount | undefined;
      const pending: FoundSeeder[] = [];
      const finder = new SeederFinder({
        dht: b.dht!,
        identity: b.identity,
        sharer: owner,
        regionId: region,
        size,
        intervalMs: 1_000,
        onSeeder: (f) => {
          if (mmB) return mmB.addSeeder(f.name, f.mounted.region);
          pending.push(f);
        },
      });
      s.defer(() => finder.stop());
      await until('B finds the seeder', async () => (await finder.lookOnce(), pending.length > 0));
      assert.is(pending[0]!.address, seed.address);
      let completeEvents = 0;
      mmB = await openManaged(mb.mounted.region, {
        seeders: pending.map((f) => ({ name: f.name, region: f.mounted.region })),
        pullWorkers: 4,
        onEvent: (e) => void (e.type === 'pull-complete' && completeEvents++),
      });
      s.defer(() => mmB!.close());
      finder.start();
      // B's pulls to A are held; the sharer goes away now.
      await sharer.close();
      assert.is(mmB.synced.progress().complete, false, 'B was not complete when the sharer went away');
      view.release();
      await until('B complete', () => completeEvents > 0 && mmB!.synced.progress().complete, 60_000);
      const back = new Uint8Array(size);
      await mmB.store.readAt(back, 0);
      assert.ok(Buffer.from(back).equals(Buffer.from(data)), "B's copy is the sharer's bytes");
      const peers = mmB.peers()!;
      const fromOwner = peers.find((p) => p.owner)!.bytes;
      const fromSeeder = peers.find((p) => !p.owner)!.bytes;
      assert.ok(fromSeeder > size / 2, `most bytes from the seeder: ${fromSeeder} of ${size} (owner ${fromOwner})`);
      assert.ok(fromSeeder > fromOwner);
      assert.ok(view.reads > 0, 'the seeder served through its view');
    });
  } finally {
    await s.close();
  }
});

test.run();
