/**
 * Structured replies and base:allocation block status with real clients:
 * nbdinfo --map and qemu-img map see the sparse memory region's holes,
 * nbdcopy skips them (its output file stays sparse and byte-exact), and
 * qemu-io reads through structured READ replies. Plus the reply encoders'
 * exact bytes.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { NbdClient } from '../../engine/nbd/client.ts';
import { blockStatusReply, errorReply, okReply, readReplyHeaderSize, writeReadReplyHeader } from '../../engine/nbd/replies.ts';
import { Scope, needTools, withTimeout } from '../helpers/env.ts';
import { startServer, tool, qemuIo } from './fixture.ts';

const test = suite('nbd/block-status');
const withTools = needTools(test, ['nbdinfo', 'qemu-img', 'qemu-io', 'nbdcopy']);
const MiB = 1024 * 1024;

test('reply encoders: simple and structured layouts', () => {
  const h = { handleHi: 0x01020304, handleLo: 0x05060708 };
  assert.is(okReply(h, false).toString('hex'), '67446698' + '00000000' + '0102030405060708');
  assert.is(okReply(h, true).toString('hex'), '668e33ef' + '0001' + '0000' + '0102030405060708' + '00000000');
  assert.is(errorReply(h, false, 22).toString('hex'), '67446698' + '00000016' + '0102030405060708');
  const e = errorReply(h, true, 22, 'bad');
  assert.is(e.toString('hex'), '668e33ef' + '0001' + '8001' + '0102030405060708' + '00000009' + '00000016' + '0003' + Buffer.from('bad').toString('hex'));
  const r = Buffer.alloc(readReplyHeaderSize(true) + 4);
  writeReadReplyHeader(r, h, true, 2 ** 33 + 5, 4);
  assert.is(r.subarray(0, 28).toString('hex'), '668e33ef' + '0001' + '0001' + '0102030405060708' + '0000000c' + '0000000200000005');
  const b = blockStatusReply(h, 1, [{ length: 4096, flags: 3 }, { length: 512, flags: 0 }]);
  assert.is(b.subarray(16).toString('hex'), '00000014' + '00000001' + '00001000' + '00000003' + '00000200' + '00000000');
});

withTools('nbdinfo --map, qemu-img map and nbdcopy see and skip the holes of a sparse region', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'block status', async () => {
      const store = new MemoryBackend(64 * MiB); // 256 KiB chunks
      const fx = await startServer(s, [{ name: 'sparse', store }]);
      const uri = fx.unix.uri('sparse');
      const c = await NbdClient.connect(uri);
      await c.writeAt(Buffer.alloc(300 * 1024, 0x11), 0);
      await c.writeAt(Buffer.alloc(MiB, 0x22), 10 * MiB);
      await c.close();

      const map = await tool('nbdinfo', ['--map', '--json', uri]);
      assert.is(map.code, 0, map.stderr);
      const extents = (JSON.parse(map.stdout) as Array<{ offset: number; length: number; type: number }>).map((e) => [e.offset, e.length, e.type]);
      assert.equal(extents, [
        [0, 512 * 1024, 0],
        [512 * 1024, 10 * MiB - 512 * 1024, 3],
        [10 * MiB, MiB, 0],
        [11 * MiB, 53 * MiB, 3],
      ]);

      const qmap = await tool('qemu-img', ['map', '-f', 'raw', '--output=json', fx.tcp.uri('sparse')]);
      assert.is(qmap.code, 0, qmap.stderr);
      const data = (JSON.parse(qmap.stdout) as Array<{ start: number; length: number; data: boolean }>).filter((e) => e.data).map((e) => [e.start, e.length]);
      assert.equal(data, [[0, 512 * 1024], [10 * MiB, MiB]]);

      const out = join(fx.dir, 'copy.img');
      const cp = await tool('nbdcopy', [uri, out], 60_000);
      assert.is(cp.code, 0, cp.stderr);
      const bytes = readFileSync(out);
      assert.is(bytes.length, 64 * MiB);
      assert.ok(bytes.subarray(0, 300 * 1024).every((b) => b === 0x11) && bytes.subarray(10 * MiB, 11 * MiB).every((b) => b === 0x22));
      assert.ok(bytes.subarray(300 * 1024, 10 * MiB).every((b) => b === 0) && bytes.subarray(11 * MiB).every((b) => b === 0));
      assert.ok(statSync(out).blocks * 512 < 8 * MiB, `copy is sparse: ${statSync(out).blocks * 512} bytes allocated`);

      // qemu negotiates structured replies: READs come back as OFFSET_DATA chunks.
      await qemuIo(fx.tcp.uri('sparse'), ['read -P 0x22 10M 1M', 'read -P 0 20M 64k', 'write -P 0x33 12345 7000', 'read -P 0x33 12345 7000']);
      // After a trim the range is a hole again.
      await qemuIo(fx.tcp.uri('sparse'), ['discard 10M 1M']);
      const after = await tool('nbdinfo', ['--map', '--json', uri]);
      const holeAt10 = (JSON.parse(after.stdout) as Array<{ offset: number; length: number; type: number }>).some((e) => e.offset <= 10 * MiB && e.offset + e.length >= 11 * MiB && e.type === 3);
      assert.ok(holeAt10, 'trimmed range reported as a hole');
    });
  } finally {
    await s.close();
  }
});

test.run();
