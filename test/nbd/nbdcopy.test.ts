/**
 * Bulk data through real clients: an nbdcopy round trip of 64 MiB of random
 * data, and several clients at once (qemu-io writers + an nbdcopy reader).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { needTools, Scope, withTimeout } from '../helpers/env.ts';
import { pattern, readStore } from '../helpers/buffer-store.ts';
import { ok, qemuIo, startServer } from './fixture.ts';

const test = suite('nbd/nbdcopy');
const MiB = 1024 * 1024;

function firstDifference(a: Buffer, b: Buffer): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i += 4096) {
    if (!a.subarray(i, i + 4096).equals(b.subarray(i, i + 4096))) {
      for (let j = i; j < i + 4096; j++) if (a[j] !== b[j]) return j;
    }
  }
  return -1;
}

needTools(test, ['nbdcopy'])('nbdcopy: 64 MiB of random data to the export (TCP) and back (unix), byte for byte', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'nbdcopy round trip', async () => {
      const size = 64 * MiB + 12_345; // an unaligned tail too
      const store = new MemoryBackend(size);
      const fx = await startServer(s, [{ name: 'disk', store }]);
      const dir = s.tmpdir('quicmap-nbdcopy-');
      const src = join(dir, 'src.bin');
      const back = join(dir, 'back.bin');
      const data = randomBytes(size);
      writeFileSync(src, data);
      const up = await ok('nbdcopy', ['--flush', src, fx.tcp.uri('disk')], 45_000);
      assert.is(up.code, 0);
      // Straight from the store first: what the server wrote.
      const inStore = await readStore(store, 0, size);
      assert.is(firstDifference(inStore, data), -1, 'store holds exactly what was copied');
      await ok('nbdcopy', ['--no-extents', fx.unix.uri('disk'), back], 45_000);
      const got = readFileSync(back);
      assert.is(got.length, size);
      assert.is(firstDifference(got, data), -1, 'copied back byte for byte');
      assert.ok(fx.server.stats.bytesWritten >= size && fx.server.stats.bytesRead >= size, JSON.stringify(fx.server.stats));
    });
  } finally {
    await s.close();
  }
});

needTools(test, ['nbdcopy', 'qemu-io'])('4 qemu-io writers on disjoint unaligned ranges + an nbdcopy reader at once', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'concurrent clients', async () => {
      const size = 32 * MiB;
      const base = pattern(size, 77);
      const store = new MemoryBackend(size);
      await store.writeAt(base, 0);
      const fx = await startServer(s, [{ name: 'disk', store }]);
      const dir = s.tmpdir('quicmap-nbdconc-');
      const out = join(dir, 'read.bin');
      // Writer i owns [i*4 MiB + 1001, +3 MiB): 48 writes of 65537 bytes each, then reads them back.
      const region = (i: number) => ({ start: i * 4 * MiB + 1001, len: 48 * 65537 });
      const writer = (i: number) => {
        const { start } = region(i);
        const cmds: string[] = [];
        for (let k = 0; k < 48; k++) cmds.push(`write -P ${0x10 * (i + 1) + (k % 16)} ${start + k * 65537} 65537`);
        for (let k = 0; k < 48; k += 5) cmds.push(`read -P ${0x10 * (i + 1) + (k % 16)} ${start + k * 65537} 65537`);
        const ep = i % 2 === 0 ? fx.tcp : fx.unix;
        return qemuIo(ep.uri('disk'), cmds, 45_000);
      };
      const reader = ok('nbdcopy', ['--no-extents', '--connections=2', fx.tcp.uri('disk'), out], 45_000);
      await Promise.all([writer(0), writer(1), writer(2), writer(3), reader]);

      const now = await readStore(store, 0, size);
      const expected = Buffer.from(base);
      for (let i = 0; i < 4; i++) {
        const { start } = region(i);
        for (let k = 0; k < 48; k++) expected.fill(0x10 * (i + 1) + (k % 16), start + k * 65537, start + (k + 1) * 65537);
      }
      assert.is(firstDifference(now, expected), -1, 'every writer landed its bytes, nothing else changed');
      // The reader ran while writes happened: outside the writers' ranges it must see the base data.
      const seen = readFileSync(out);
      assert.is(seen.length, size);
      const untouched: Array<[number, number]> = [[0, 1001]];
      for (let i = 0; i < 4; i++) {
        const { start, len } = region(i);
        untouched.push([start + len, i < 3 ? region(i + 1).start : size]);
      }
      for (const [a, b] of untouched) assert.ok(seen.subarray(a, b).equals(base.subarray(a, b)), `reader saw base data in [${a}, ${b})`);
      // And inside them, each 64 KiB+1 block is either the old or the new bytes (never garbage).
      for (let i = 0; i < 4; i++) {
        const { start } = region(i);
        for (let k = 0; k < 48; k++) {
          const a = start + k * 65537;
          const blk = seen.subarray(a, a + 65537);
          const neu = expected.subarray(a, a + 65537);
          const old = base.subarray(a, a + 65537);
          // A read may straddle the moment of a write at chunk granularity, so compare byte-wise: each byte is old or new.
          let bad = -1;
          for (let j = 0; j < blk.length; j++) if (blk[j] !== neu[j] && blk[j] !== old[j]) { bad = j; break; }
          assert.is(bad, -1, `reader byte at ${a + bad} is neither old nor new`);
        }
      }
      // Verified once more through a client.
      await qemuIo(fx.unix.uri('disk'), [`read -P 0x40 ${region(3).start} 65537`, `read -P 0x1f ${region(0).start + 15 * 65537} 65537`]);
    });
  } finally {
    await s.close();
  }
});

test.run();
