/**
 * Encrypted remote RAM as plain memory: a LazyRegion (userfaultfd) whose
 * source is `quicmap ram`'s stack (PagedStore over SealedPages over two
 * storage peers on loopback TCP, in this process). A worker thread reads the
 * mapping (faults are served from the sealed peers); writes through the
 * mapping are tracked by write-protect and written back, sealed.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { generateIdentity } from '../../crypto/identity.ts';
import { LazyRegion } from '../../engine/mmap/lazy-region.ts';
import { openChunkStore } from '../../p2p/ram/store.ts';
import { openRemoteRam } from '../../p2p/ram/ram.ts';
import { needCondition, Scope, withTimeout } from '../helpers/env.ts';
import { fillPattern, patternByte, RegionWorker, UFFD_REASON, UFFD_WP_OK } from '../native/helpers.ts';

const test = suite('ram-lazy');
const it = needCondition(test, UFFD_WP_OK, UFFD_REASON || 'userfaultfd write-protect not offered by this kernel');
const MiB = 1024 * 1024;
const CHUNK = 64 * 1024;

it('a LazyRegion over sealed remote RAM: faults filled from the peers, tracked writes written back sealed', () =>
  withTimeout(90_000, 'lazy ram', async () => {
    const s = new Scope();
    try {
      const [i1, i2, me] = await Promise.all([generateIdentity(), generateIdentity(), generateIdentity()]);
      const stores = [
        await openChunkStore({ identity: i1, listen: '127.0.0.1:0', transport: 'tcp', quota: 64 * MiB }),
        await openChunkStore({ identity: i2, listen: '127.0.0.1:0', transport: 'tcp', quota: 64 * MiB }),
      ];
      for (const st of stores) s.defer(() => st.close());
      const size = 4 * MiB;
      const ram = await openRemoteRam({ identity: me, size, tickets: stores.map((x) => x.ticket), replicas: 2, cacheBytes: MiB, writeBackMs: 0 });
      s.defer(() => ram.close());
      const data = new Uint8Array(size);
      fillPattern(data, CHUNK);
      await ram.store.writeAt(data, 0);
      await ram.store.flush();
      assert.ok(ram.store.pagedStats.cachedChunks <= 16);
      const region = await LazyRegion.open(ram.store, { granule: CHUNK, trackWrites: true });
      s.defer(() => region.close());
      const worker = new RegionWorker();
      s.defer(() => worker.close());
      const r = await worker.request<{ ok: boolean; data?: Uint8Array }>({ op: 'readAll', id: region.mappingId, length: region.length });
      const seen = new Uint8Array(r.data!);
      for (let i = 0; i < size; i += 997) if (seen[i] !== patternByte(i, CHUNK)) assert.unreachable(`byte ${i} of the mapping differs`);
      assert.is(region.stats().fills, size / CHUNK);
      // Writes through the mapping: tracked, then pushed to the sealed store.
      const offsets = [5, CHUNK * 3 + 9, size - 1];
      await worker.request({ op: 'write', id: region.mappingId, length: region.length, offsets, values: [1, 2, 3] });
      const dirty = await region.writeBack(); // the tracked chunks, sealed and pushed (writeBack flushes)
      assert.equal(dirty, [0, 3, size / CHUNK - 1]);
      const b = new Uint8Array(1);
      for (const [k, off] of offsets.entries()) {
        await ram.store.readAt(b, off);
        assert.is(b[0], k + 1, `written byte at ${off} reached the sealed store`);
      }
      // Every chunk on both peers.
      for (const st of stores) assert.ok(st.vault.stats().chunks >= size / CHUNK);
      assert.is(ram.pages.replication().chunks, size / CHUNK);
    } finally {
      await s.close();
    }
  }),
);

test.run();
