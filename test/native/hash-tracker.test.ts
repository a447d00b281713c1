import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { HASH_NAMES, HashTracker } from '../../engine/tracking/hash-tracker.ts';
import { withTimeout } from '../helpers/env.ts';

for (const hash of HASH_NAMES) {
  test(`HashTracker (${hash}) finds every change and nothing else`, async () => {
    await withTimeout(30_000, `hash tracker ${hash}`, async () => {
      const chunk = 4096;
      const mem = new Uint8Array(2 * 1024 * 1024 + 100); // partial last chunk
      for (let i = 0; i < mem.length; i++) mem[i] = (i * 7) & 0xff;
      const t = await HashTracker.create(mem, { chunkSize: chunk, hash, sliceChunks: 64 });
      assert.equal(await t.poll(), [], 'no change yet');
      let seed = 99;
      const rnd = (n: number): number => {
        seed = (seed * 1103515245 + 12345) >>> 0;
        return seed % n;
      };
      for (let round = 0; round < 10; round++) {
        const expected = new Set<number>();
        for (let k = 0; k < 1 + rnd(50); k++) {
          const off = rnd(mem.length);
          const old = mem[off];
          mem[off] = (old + 1 + rnd(254)) & 0xff; // always a different value
          expected.add(Math.floor(off / chunk));
        }
        const got = round % 2 ? await t.poll() : t.pollSync();
        assert.equal(got, [...expected].sort((a, b) => a - b));
      }
      // Writing the same value back is not a change.
      mem[10] = mem[10];
      assert.equal(t.pollSync(), []);
      // A change in the partial last chunk.
      mem[mem.length - 1] ^= 0xff;
      assert.equal(t.pollSync(), [t.chunks - 1]);
    });
  });
}

test('HashTracker.start reports changes periodically and stops', async () => {
  await withTimeout(10_000, 'periodic', async () => {
    const mem = new Uint8Array(256 * 1024);
    const t = await HashTracker.create(mem, { chunkSize: 65536 });
    const seen: number[][] = [];
    t.start(10, (c) => seen.push(c));
    mem[70000] = 1;
    while (seen.length === 0) await new Promise((r) => setTimeout(r, 5));
    t.stop();
    assert.equal(seen[0], [1]);
  });
});

test.run();
