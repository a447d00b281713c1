/**
 * `quicmap nbd` as a user runs it: the URI is the first stdout line, --json
 * is one parseable line, real clients are served, SIGTERM flushes and exits
 * cleanly (data in a file backend survives), bad flags fail with exit 2, and
 * --mount makes the region mmap-able: writes through mmap(MAP_SHARED) + msync
 * in another process are seen by a second NBD client.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Scope, hasTool, needTools, needCondition, run, withTimeout, SYSTEM_PATH } from '../helpers/env.ts';
import { QUICMAP, startCli } from '../helpers/cli.ts';
import { NbdClient } from '../../engine/nbd/client.ts';

const test = suite('cli/nbd');
const withClients = needTools(test, ['nbdinfo', 'qemu-io']);
const withFuse = needCondition(
  test,
  existsSync('/dev/fuse') && ['nbdfuse', 'fusermount3', 'python3'].every(hasTool),
  'needs /dev/fuse, nbdfuse, fusermount3 and python3 (apt-get install libnbd-bin fuse3)',
);

test('--help describes every option; unknown flags exit 2 with a hint', async () => {
  const help = await run(process.execPath, [QUICMAP, 'nbd', '--help'], { timeoutMs: 20_000 });
  assert.is(help.code, 0);
  for (const flag of ['--size', '--backend', '--listen', '--socket', '--name', '--read-only', '--mount', '--json']) assert.ok(help.stdout.includes(flag), `help mentions ${flag}`);
  const bad = await run(process.execPath, [QUICMAP, 'nbd', '--size', '1MiB', '--frobnicate'], { timeoutMs: 20_000 });
  assert.is(bad.code, 2);
  assert.match(bad.stderr, /frobnicate/);
  const badSize = await run(process.execPath, [QUICMAP, 'nbd', '--size', 'huge'], { timeoutMs: 20_000 });
  assert.is(badSize.code, 2);
  assert.match(badSize.stderr, /not a size/);
  const top = await run(process.execPath, [QUICMAP, '--help'], { timeoutMs: 20_000 });
  assert.is(top.code, 0);
  assert.match(top.stdout, /nbd/);
});

withClients('first stdout line is the URI; clients are served; SIGTERM flushes a file backend and exits 0', async () => {
  const s = new Scope();
  try {
    const img = join(s.tmpdir(), 'disk.img');
    const q = startCli(s, ['nbd', '--size', '8MiB', '--backend', `file:${img}`, '--listen', '127.0.0.1:0', '--name', 'disk']);
    const uri = await q.line();
    assert.match(uri, /^nbd:\/\/127\.0\.0\.1:\d+\/disk$/);
    const info = await run('nbdinfo', ['--json', uri], { env: { ...process.env, PATH: SYSTEM_PATH } });
    assert.is(info.code, 0, info.stderr);
    assert.is(JSON.parse(info.stdout).exports[0]['export-size'], 8 * 1024 * 1024);
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 12345 100000', uri]);
    assert.is(w.code, 0, w.stderr);
    q.child.kill('SIGTERM');
    assert.is(await withTimeout(15_000, 'exit after SIGTERM', q.exited), 0);
    assert.match(q.stderr(), /flushed and closed/);
    const bytes = readFileSync(img);
    assert.ok(bytes.subarray(12345, 12345 + 100000).every((b) => b === 0x5a), 'written bytes are in the file');
    assert.is(bytes[12344], 0);
  } finally {
    await s.close();
  }
});

test('--json prints one object; --read-only refuses writes with EPERM', async () => {
  const s = new Scope();
  try {
    const sock = join(s.tmpdir(), 'q.sock');
    const q = startCli(s, ['nbd', '--size', '1MiB', '--socket', sock, '--read-only', '--json']);
    const obj = JSON.parse(await q.line());
    assert.is(obj.size, 1024 * 1024);
    assert.is(obj.readOnly, true);
    assert.match(obj.uri, /^nbd\+unix:\/\/\/region\?socket=/);
    const c = await NbdClient.connect(obj.uri);
    try {
      assert.ok(c.caps.readOnly);
      await c.writeAt(new Uint8Array(10), 0).then(
        () => assert.unreachable('write succeeded on a read-only export'),
        (e) => assert.is(e.code, 'EPERM'),
      );
      const back = new Uint8Array(10);
      await c.readAt(back, 0);
    } finally {
      await c.close();
    }
    q.child.kill('SIGINT');
    assert.is(await withTimeout(15_000, 'exit after SIGINT', q.exited), 0);
  } finally {
    await s.close();
  }
});

const MMAP_WRITER = `
import mmap, os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDWR)
m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
for i in range(64):
    off = i * 65536 + 100
    m[off:off + 16] = bytes([i]) * 16
m.flush()  # msync(MS_SYNC)
print(len(m))
`;

withFuse('--mount: mmap(MAP_SHARED) writes + msync in another process are seen by a second NBD client; Ctrl-C unmounts', async () => {
  const s = new Scope();
  try {
    const dir = s.tmpdir();
    const mnt = join(dir, 'mnt');
    const q = startCli(s, ['nbd', '--size', '8MiB', '--listen', '127.0.0.1:0', '--mount', mnt]);
    s.defer(() => void run('fusermount3', ['-u', '-z', mnt], { timeoutMs: 5000 }).catch(() => {}));
    const uri = await q.line();
    const path = await q.line();
    assert.is(path, join(mnt, 'region'));
    const w = await run('python3', ['-c', MMAP_WRITER, path], { timeoutMs: 30_000 });
    assert.is(w.code, 0, w.stderr);
    assert.is(Number(w.stdout.trim()), 8 * 1024 * 1024);
    const c = await NbdClient.connect(uri);
    try {
      for (let i = 0; i < 64; i++) {
        const got = new Uint8Array(18);
        await c.readAt(got, i * 65536 + 99);
        assert.is(got[0], 0, `byte before write ${i}`);
        assert.ok(got.subarray(1, 17).every((b) => b === i), `mmap write ${i} visible to a second client`);
        assert.is(got[17], 0, `byte after write ${i}`);
      }
    } finally {
      await c.close();
    }
    assert.match(q.stderr(), /mounted through (nbdfuse|kernel-nbd)/);
    q.child.kill('SIGINT');
    assert.is(await withTimeout(20_000, 'exit after SIGINT', q.exited), 0);
    const mounts = readFileSync('/proc/mounts', 'utf8');
    assert.not.ok(mounts.includes(mnt), 'unmounted');
  } finally {
    await s.close();
  }
});

test.run();
