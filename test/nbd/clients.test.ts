/**
 * Real NBD clients (nbdinfo, qemu-img, qemu-io, nbdsh) against a real
 * NbdServer in this process, over TCP on 127.0.0.1 and over a unix socket.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { needTools, Scope, withTimeout } from '../helpers/env.ts';
import { BufferStore, RecordingStore, pattern, readStore } from '../helpers/buffer-store.ts';
import { nbdsh, ok, qemuIo, startServer } from './fixture.ts';

const test = suite('nbd/clients');
const MiB = 1024 * 1024;

interface InfoJson {
  protocol: string;
  exports: Array<Record<string, unknown>>;
}

needTools(test, ['nbdinfo'])('nbdinfo: two named exports at once, over TCP and unix; --json and --list', async () => {
  const s = new Scope();
  try {
    await withTimeout(30_000, 'nbdinfo', async () => {
      const fx = await startServer(s, [
        { name: 'disk', store: new MemoryBackend(64 * MiB), description: 'the main disk' },
        { name: 'ro image', store: new BufferStore(MiB + 512, { canTrim: false, multiConn: false }), readOnly: true },
      ]);
      const [a, b, c, d] = await Promise.all([
        ok('nbdinfo', ['--json', fx.tcp.uri('disk')]),
        ok('nbdinfo', ['--json', fx.unix.uri('ro image')]),
        ok('nbdinfo', ['--size', fx.unix.uri('disk')]),
        ok('nbdinfo', ['--list', '--json', fx.tcp.uri('')]),
      ]);
      const disk = (JSON.parse(a.stdout) as InfoJson).exports[0]!;
      assert.is(disk['export-name'], 'disk');
      assert.is(disk['export-size'], 64 * MiB);
      assert.is(disk['description'], 'the main disk');
      assert.is(disk['is_read_only'], false);
      for (const k of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_fast_zero', 'can_multi_conn']) assert.is(disk[k], true, k);
      assert.is(disk['can_df'], false);
      assert.is(disk['can_cache'], false);
      assert.is(disk['block_size_minimum'], 1);
      assert.is(disk['block_size_preferred'], 4096);
      assert.is(disk['block_size_maximum'], 32 * MiB);

      const ro = (JSON.parse(b.stdout) as InfoJson).exports[0]!;
      assert.is(ro['export-name'], 'ro image');
      assert.is(ro['export-size'], MiB + 512);
      assert.is(ro['is_read_only'], true);
      assert.is(ro['can_trim'], false);
      assert.is(ro['can_zero'], false);
      assert.is(ro['can_multi_conn'], false);
      assert.is(ro['description'], undefined);

      assert.is(c.stdout.trim(), String(64 * MiB));

      const list = JSON.parse(d.stdout) as InfoJson;
      assert.is(list.protocol, 'newstyle-fixed');
      assert.equal(list.exports.map((e) => [e['export-name'], e['export-size']]), [['disk', 64 * MiB], ['ro image', MiB + 512]]);
      assert.is(list.exports[0]!['description'], 'the main disk');

      // An unknown export is refused (ERR_UNKNOWN), and the server keeps serving.
      const bad = await ok('nbdinfo', ['--json', fx.tcp.uri('no-such')]).catch((e: Error) => e);
      assert.instance(bad, Error);
      assert.match((bad as Error).message, /no-such|unknown|not found|No such/i);
      assert.ok(fx.logs.every((l) => !/listener error/.test(l)), fx.logs.join('\n'));
    });
  } finally {
    await s.close();
  }
});

needTools(test, ['qemu-img', 'qemu-io'])('qemu-img info and qemu-io: unaligned pattern writes/reads, write -z, discard, flush, FUA', async () => {
  const s = new Scope();
  try {
    await withTimeout(40_000, 'qemu-io', async () => {
      const size = 8 * MiB + 4096 + 3; // not a multiple of 512 either
      const store = new RecordingStore(new MemoryBackend(size));
      const fx = await startServer(s, [{ name: 'q', store }]);
      const info = await ok('qemu-img', ['info', '--output=json', fx.tcp.uri('q')]);
      // qemu rounds sizes down to sectors for block devices; check both the value and our export size.
      const vsize = (JSON.parse(info.stdout) as { 'virtual-size': number })['virtual-size'];
      // qemu rounds the size to whole sectors (up, in qemu 7.2).
      assert.ok(Math.abs(vsize - size) < 512 && vsize % 512 === 0, `virtual-size ${vsize} for ${size}`);

      for (const ep of [fx.tcp, fx.unix]) {
        const uri = ep.uri('q');
        const seed = ep === fx.tcp ? 0x11 : 0x22;
        await qemuIo(uri, [
          `write -P ${seed} 1000 70000`,
          `write -P ${seed + 1} 131071 3`,
          `write -f -P ${seed + 2} 4194301 5000`,
          `read -P ${seed} 1000 70000`,
          `read -P ${seed + 1} 131071 3`,
          `read -P ${seed + 2} 4194301 5000`,
          `write -z 1500 100`,
          `read -P 0 1500 100`,
          `read -P ${seed} 1600 1000`,
          'flush',
        ]);
        // Verified again by reading the store directly.
        const got = await readStore(store, 0, 4194301 + 5000 + 10);
        const exp = Buffer.alloc(got.length);
        exp.fill(seed, 1000, 71000);
        exp.fill(0, 1500, 1600);
        exp.fill(seed + 1, 131071, 131074);
        exp.fill(seed + 2, 4194301, 4194301 + 5000);
        assert.ok(got.equals(exp), `store contents after qemu-io over ${ep.kind}`);
      }
      // What reached the store: a FUA write, a flush, a zero, for the ranges qemu-io asked.
      assert.ok(store.events.some((e) => e.op === 'write' && e.fua && e.offset === 4194301 && e.length === 5000), 'write -f arrives with FUA');
      assert.ok(store.events.some((e) => e.op === 'flush'), 'flush reaches the store');
      assert.ok(store.events.some((e) => e.op === 'zero' && e.offset === 1500 && e.length === 100), 'write -z arrives as WRITE_ZEROES');
      assert.not.ok(store.events.some((e) => e.op === 'write' && !e.fua && e.offset === 4194301), 'no non-FUA copy of the FUA write');

      // discard: contents become unspecified; the memory store drops them.
      const before = store.events.length;
      await qemuIo(fx.tcp.uri('q'), ['discard 131072 2097152', 'read -P 0 131072 2097152', 'read -P 0x23 131071 1']);
      assert.ok(store.events.slice(before).some((e) => e.op === 'trim' && e.offset === 131072 && e.length === 2097152), 'discard arrives as TRIM');
      // Bytes next to the discarded range are untouched (the last pass wrote 0x23 there).
      assert.ok((await readStore(store, 131071, 1)).equals(Buffer.from([0x23])));
    });
  } finally {
    await s.close();
  }
});

needTools(test, ['qemu-io'])('qemu-io: a discard larger than the maximum block size succeeds (TRIM carries no payload)', async () => {
  // proto.md: for commands without a payload (TRIM, WRITE_ZEROES) the client
  // MAY request more than the maximum block size and the server SHOULD NOT
  // fail unless it would cost more than a max-size request. qemu sends
  // discards up to 2 GiB regardless of the advertised maximum (mkfs discards
  // a whole device this way).
  const s = new Scope();
  try {
    await withTimeout(30_000, 'large discard', async () => {
      const store = new MemoryBackend(64 * MiB);
      await store.writeAt(pattern(MiB), 40 * MiB);
      const fx = await startServer(s, [{ name: 'big', store }], { maxPayload: 8 * MiB });
      await qemuIo(fx.tcp.uri('big'), ['discard 0 64M', 'read -P 0 40M 1M', 'write -z 0 64M']);
      assert.ok((await readStore(store, 40 * MiB, MiB)).equals(Buffer.alloc(MiB)));
    });
  } finally {
    await s.close();
  }
});

needTools(test, ['nbdsh'])('nbdsh: pread/pwrite, flush, zero, trim, is_read_only', async () => {
  const s = new Scope();
  try {
    await withTimeout(30_000, 'nbdsh', async () => {
      const rwStore = new RecordingStore(new MemoryBackend(4 * MiB));
      const roStore = new BufferStore(65536, { fill: pattern(65536, 9) });
      const fx = await startServer(s, [
        { name: 'rw', store: rwStore },
        { name: 'ro', store: roStore, readOnly: true },
      ]);
      // libnbd's Python API: pread(count, offset), pwrite(buf, offset, flags), zero(count, offset), trim(count, offset).
      const script = [
        'import json',
        'out = {}',
        'out["size"] = h.get_size()',
        'out["ro"] = h.is_read_only()',
        'out["can_trim"] = h.can_trim()',
        'h.pwrite(bytes(range(256)) * 3, 4093)',
        'h.pwrite(b"\\xaa" * 10, 100, nbd.CMD_FLAG_FUA)',
        'out["back"] = h.pread(768, 4093).hex()',
        'out["fua"] = h.pread(12, 99).hex()',
        'h.flush()',
        'h.zero(10, 4103)',
        'out["after_zero"] = h.pread(30, 4093).hex()',
        'h.trim(1048576, 1048576)',
        'try:',
        '    h.pread(20, 4 * 1048576 - 10)',
        '    out["oob"] = None',
        'except nbd.Error as e:',
        '    out["oob"] = e.errno',
        'print(json.dumps(out))',
      ].join('\n');
      const seq = Buffer.from(Array.from({ length: 768 }, (_, i) => i & 0xff));
      for (const ep of [fx.tcp, fx.unix]) {
        const r = await nbdsh(ep.uri('rw'), script);
        assert.is(r.code, 0, r.stderr);
        const out = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Record<string, unknown>;
        assert.is(out['size'], 4 * MiB);
        assert.is(out['ro'], false);
        assert.is(out['can_trim'], true);
        assert.ok(out['back'] === seq.toString('hex'), `pread after pwrite over ${ep.kind}`);
        assert.is(out['fua'], '00' + 'aa'.repeat(10) + '00');
        const az = Buffer.concat([seq.subarray(0, 10), Buffer.alloc(10), seq.subarray(20, 30)]);
        assert.is(out['after_zero'], az.toString('hex'));
        assert.is(out['oob'], 'EINVAL');
        assert.ok((await readStore(rwStore, 4093, 30)).equals(az), 'store agrees');
      }
      assert.ok(rwStore.events.some((e) => e.op === 'write' && e.fua && e.offset === 100 && e.length === 10), 'FUA flag reaches the store');
      assert.ok(rwStore.events.some((e) => e.op === 'flush'));
      assert.ok(rwStore.events.some((e) => e.op === 'trim' && e.offset === MiB && e.length === MiB));
      assert.ok(rwStore.events.some((e) => e.op === 'zero' && e.offset === 4103 && e.length === 10));

      const ro = await nbdsh(fx.unix.uri('ro'), [
        'import json',
        'r = {"ro": h.is_read_only(), "can_zero": h.can_zero(), "data": h.pread(32768, 1000).hex()}',
        'try:',
        '    h.pwrite(b"x", 0)',
        '    r["w"] = None',
        'except nbd.Error as e:',
        '    r["w"] = e.errno',
        'print(json.dumps(r))',
      ].join('\n'));
      assert.is(ro.code, 0, ro.stderr);
      const r = JSON.parse(ro.stdout.trim().split('\n').at(-1)!) as Record<string, unknown>;
      assert.is(r['ro'], true);
      assert.is(r['can_zero'], false);
      assert.ok(r['data'] === pattern(65536, 9).subarray(1000, 1000 + 32768).toString('hex'), 'read-only data');
      assert.is(r['w'], 'EPERM');
      assert.ok(roStore.bytes.equals(pattern(65536, 9)), 'read-only store untouched');
    });
  } finally {
    await s.close();
  }
});

test.run();
