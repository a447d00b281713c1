/**
 * `quicmap share` in one process, `quicmap mount` in another, real NBD
 * clients (qemu-io, nbdcopy) against the mount's export — over QUIC and TCP
 * (and WebTransport for the data path). Refused tickets: refusals.test.ts;
 * malformed frames: fuzz.test.ts (their own files, to keep each file short).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { needTools, needCondition, hasTool, Scope, withTimeout } from '../helpers/env.ts';
import { logged, makeImage, quicmap, readImage, start, tool } from './procs.ts';

const test = suite('cli-share-mount');
const MiB = 1024 * 1024;
const TRANSPORTS = ['tcp', 'quic'] as const;

for (const transport of [...TRANSPORTS, 'webtransport'] as const) {
  needTools(test, ['qemu-io', 'nbdcopy'])(`${transport}: NBD clients read the sharer's data through the mount, and writes reach the sharer`, async () => {
    const s = new Scope();
    try {
      await withTimeout(60_000, 'share/mount', async () => {
        const dir = s.tmpdir();
        const img = join(dir, 'disk.img');
        makeImage(img, 64 * MiB, [{ at: 0, len: MiB, byte: 0x5a }, { at: 40 * MiB, len: 3 * MiB, byte: 0x17 }]);
        const share = await start(s, ['share', '--backend', `file:${img}`, '--listen', '127.0.0.1:0', '--transport', transport], join(dir, 'a'));
        assert.match(share.first, /^qm1[a-z2-7]+$/, 'the ticket is the first stdout line');
        const mount = await start(s, ['mount', share.first, '--listen', '127.0.0.1:0'], join(dir, 'b'));
        assert.match(mount.first, /^nbd:\/\/127\.0\.0\.1:\d+\/region$/, 'the NBD URI is the first stdout line');
        const uri = mount.first;

        const r1 = await tool('qemu-io', ['-f', 'raw', uri, '-c', 'read -P 0x5a 0 1M', '-c', 'read -P 0x17 40M 3M', '-c', 'read -P 0 1M 1M']);
        assert.is(r1.code, 0, r1.stdout + r1.stderr);
        assert.not.match(r1.stdout, /Pattern verification failed/);

        const r2 = await tool('qemu-io', ['-f', 'raw', uri, '-c', 'write -P 0xc3 8M 2M', '-c', 'flush']);
        assert.is(r2.code, 0, r2.stdout + r2.stderr);
        assert.ok(readImage(img, 8 * MiB, 2 * MiB).every((b) => b === 0xc3), "the write reached the sharer's file");

        const copy = join(dir, 'copy.img');
        const r3 = await tool('nbdcopy', ['--no-extents', uri, copy]);
        assert.is(r3.code, 0, r3.stderr);
        assert.ok(Buffer.compare(readFileSync(copy), readFileSync(img)) === 0, "nbdcopy of the mount equals the sharer's file");

        await logged(share.stderr, /opened region [0-9a-f]{32} read-write/, 'the sharer logs the peer');
        await logged(share.stderr, /sharer [a-z2-7]{52} serves region/, 'the sharer logs its id');
      });
    } finally {
      await s.close();
    }
  });
}

test('share and mount have --help and are listed in the top-level help', async () => {
  const s = new Scope();
  try {
    const home = s.tmpdir();
    for (const cmd of ['share', 'mount']) {
      const r = await quicmap([cmd, '--help'], home);
      assert.is(r.code, 0);
      assert.match(r.stdout, new RegExp(`^Usage: quicmap ${cmd}`));
      assert.match(r.stdout, /--identity PATH/);
      assert.match(r.stdout, /--json/);
    }
    const top = await quicmap(['--help'], home);
    assert.match(top.stdout, /\n  share\s+share a region/);
    assert.match(top.stdout, /\n  mount\s+mount a peer/);
    const bad = await quicmap(['share', '--size', '1M', '--transport', 'udp'], home);
    assert.is(bad.code, 2);
    assert.match(bad.stderr, /--transport must be quic, webtransport or tcp, not "udp"/);
  } finally {
    await s.close();
  }
});

const fuseOk = existsSync('/dev/fuse') && process.getuid?.() === 0 && hasTool('nbdfuse') && hasTool('python3');
needCondition(test, fuseOk, 'needs root, /dev/fuse, nbdfuse and python3')('quic: mount --mount DIR makes the remote region mmap-able; mmap writes reach the sharer', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'mmap mount', async () => {
      const dir = s.tmpdir();
      const img = join(dir, 'disk.img');
      makeImage(img, 16 * MiB, [{ at: MiB, len: 4096, byte: 0x61 }]);
      const share = await start(s, ['share', '--backend', `file:${img}`, '--listen', '127.0.0.1:0', '--transport', 'quic'], join(dir, 'a'));
      const mnt = join(dir, 'mnt');
      const mount = await start(s, ['mount', share.first, '--socket', join(dir, 'nbd.sock'), '--mount', mnt], join(dir, 'b'), 2);
      assert.match(mount.lines[0]!, /^nbd\+unix:/);
      const path = mount.lines[1]!;
      assert.ok(path.startsWith(mnt), path);
      const py = `
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 2 * 1024 * 1024, mmap.MAP_SHARED)
assert m[1048576:1048576 + 4096] == b'a' * 4096, 'sharer data visible through mmap'
m[0:11] = b'hello, peer'
m.flush()
print('ok')
`;
      const r = await tool('python3', ['-c', py, path]);
      assert.is(r.code, 0, r.stdout + r.stderr);
      assert.is(readImage(img, 0, 11).toString(), 'hello, peer');
      // SIGTERM unmounts and exits cleanly.
      mount.child.kill('SIGTERM');
      assert.is(await withTimeout(15_000, 'mount exit', mount.exited), 0);
    });
  } finally {
    await s.close();
  }
});

test.run();
