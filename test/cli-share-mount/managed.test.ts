/**
 * `quicmap mount --managed` as real processes, read and written by qemu-io:
 * the cache outlives the sharer, writes during a pull of the same chunks,
 * FLUSH durability at the sharer (SIGKILL right after the flush), and the
 * sharer's own writes (its --socket export) reaching a mounter's cache.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { needTools, Scope, withTimeout, killTree } from '../helpers/env.ts';
import { makeImage, readImage, start, tool, type Proc } from './procs.ts';

const test = suite('managed-mount');
const MiB = 1024 * 1024;

/** Everything the process printed on stdout since it started (after the first lines). */
function collect(p: Proc): () => string {
  let out = p.lines.join('\n') + '\n';
  p.child.stdout!.on('data', (d: string) => (out += d));
  return () => out;
}

async function waitFor(what: string, cond: () => boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function qemu(uri: string, ...cmds: string[]) {
  const r = await tool('qemu-io', ['-f', 'raw', uri, ...cmds.flatMap((c) => ['-c', c])]);
  assert.is(r.code, 0, r.stdout + r.stderr);
  assert.not.match(r.stdout, /Pattern verification failed|failed/, r.stdout);
  return r;
}

needTools(test, ['qemu-io'])('after a full pull the sharer is killed: reads are still served from the cache', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'cache outlives sharer', async () => {
      const dir = s.tmpdir();
      const img = join(dir, 'disk.img');
      makeImage(img, 16 * MiB, [{ at: 0, len: MiB, byte: 0x5a }, { at: 9 * MiB, len: 3 * MiB, byte: 0x17 }]);
      const share = await start(s, ['share', '--backend', `file:${img}`, '--listen', '127.0.0.1:0', '--transport', 'tcp'], join(dir, 'a'));
      const mount = await start(s, ['mount', share.first, '--managed', '--cache', `file:${join(dir, 'cache.img')}`, '--listen', '127.0.0.1:0', '--json'], join(dir, 'b'));
      const out = collect(mount);
      const uri = (JSON.parse(mount.first) as { uri: string }).uri;
      await waitFor('pull-complete', () => /"event":"pull-complete"/.test(out()));
      await killTree(share.child, 'SIGKILL');
      await qemu(uri, 'read -P 0x5a 0 1M', 'read -P 0x17 9M 3M', 'read -P 0 1M 8M', 'read -P 0 15M 1M');
    });
  } finally {
    await s.close();
  }
});

needTools(test, ['qemu-io'])('writes during a pull of the same chunks: nothing is lost or overwritten by the pull', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'writes during pull', async () => {
      const dir = s.tmpdir();
      const img = join(dir, 'disk.img');
      makeImage(img, 32 * MiB, [{ at: 0, len: 32 * MiB, byte: 0x33 }]);
      const share = await start(s, ['share', '--backend', `file:${img}`, '--listen', '127.0.0.1:0', '--transport', 'tcp'], join(dir, 'a'));
      // One worker, from the end: the pull is still running over the chunks written below.
      const mount = await start(s, ['mount', share.first, '--managed', '--pull-workers', '1', '--pull-order', 'reverse', '--push-interval', '50ms', '--listen', '127.0.0.1:0', '--json'], join(dir, 'b'));
      const out = collect(mount);
      const uri = (JSON.parse(mount.first) as { uri: string }).uri;
      // Whole chunks (64 KiB), partial chunks and a range crossing chunk edges, all over chunks still being pulled.
      await qemu(uri, 'write -P 0xa1 0 128k', 'write -P 0xa2 200k 10k', 'write -P 0xa3 30M 1M', `write -P 0xa4 ${31 * MiB + 100} 5000`, 'flush');
      await waitFor('pull-complete', () => /"event":"pull-complete"/.test(out()));
      await qemu(uri, 'read -P 0xa1 0 128k', 'read -P 0x33 128k 72k', 'read -P 0xa2 200k 10k', 'read -P 0x33 210k 1M', 'read -P 0xa3 30M 1M', `read -P 0xa4 ${31 * MiB + 100} 5000`, `read -P 0x33 ${31 * MiB + 5100} 1000`);
      assert.ok(readImage(img, 0, 128 * 1024).every((b) => b === 0xa1), 'whole-chunk write at the sharer');
      assert.ok(readImage(img, 200 * 1024, 10 * 1024).every((b) => b === 0xa2), 'partial write at the sharer');
      assert.ok(readImage(img, 210 * 1024, 10 * 1024).every((b) => b === 0x33), 'the rest of the partial chunk kept');
      assert.ok(readImage(img, 31 * MiB + 100, 5000).every((b) => b === 0xa4));
    });
  } finally {
    await s.close();
  }
});

needTools(test, ['qemu-io', 'nbdsh'])('FLUSH on a managed mount is durable at the sharer: SIGKILL right after it, the data is in the file on restart', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'flush durability', async () => {
      const dir = s.tmpdir();
      const img = join(dir, 'disk.img');
      makeImage(img, 8 * MiB, []);
      const shareArgs = ['share', '--backend', `file:${img}`, '--listen', '127.0.0.1:0', '--transport', 'tcp'];
      const share = await start(s, shareArgs, join(dir, 'a'));
      // A push interval far beyond the test: only FLUSH can get the bytes to the sharer in time.
      const mount = await start(s, ['mount', share.first, '--managed', '--pull-workers', '0', '--push-interval', '10m', '--listen', '127.0.0.1:0'], join(dir, 'b'));
      // nbdsh does not flush on close (qemu-io does): a write without FLUSH stays at the mount.
      const w = await tool('nbdsh', ['-u', mount.first, '-c', `h.pwrite(b"\\x9c" * ${300 * 1024}, ${MiB})`]);
      assert.is(w.code, 0, w.stderr);
      await new Promise((r) => setTimeout(r, 200));
      assert.ok(readImage(img, MiB, 300 * 1024).every((b) => b === 0), 'not pushed yet without a flush');
      await qemu(mount.first, 'write -P 0x9d 3M 64k', 'flush');
      await killTree(share.child, 'SIGKILL');
      assert.ok(readImage(img, MiB, 300 * 1024).every((b) => b === 0x9c), 'the earlier write is at the sharer');
      assert.ok(readImage(img, 3 * MiB, 64 * 1024).every((b) => b === 0x9d), 'the flushed write is at the sharer');
      // A restarted sharer on the same file serves it (same region id: the mount reconnects).
      const again = await start(s, shareArgs, join(dir, 'a'));
      const direct = await start(s, ['mount', again.first, '--listen', '127.0.0.1:0'], join(dir, 'c'));
      await qemu(direct.first, 'read -P 0x9c 1M 300k', 'read -P 0x9d 3M 64k');
    });
  } finally {
    await s.close();
  }
});

needTools(test, ['qemu-io'])("the sharer's own writes through its --socket export invalidate a mounter's cached chunks", async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'sharer writes', async () => {
      const dir = s.tmpdir();
      const sock = join(dir, 'src.sock');
      const share = await start(s, ['share', '--size', '8MiB', '--listen', '127.0.0.1:0', '--transport', 'tcp', '--socket', sock], join(dir, 'a'), 2);
      const local = share.lines[1]!;
      assert.is(local, `nbd+unix:///region?socket=${sock}`);
      const mount = await start(s, ['mount', share.first, '--managed', '--listen', '127.0.0.1:0', '--json'], join(dir, 'b'));
      const out = collect(mount);
      const uri = (JSON.parse(mount.first) as { uri: string }).uri;
      await waitFor('pull-complete', () => /"event":"pull-complete"/.test(out()));
      await qemu(uri, 'read -P 0 2M 64k');
      await qemu(local, 'write -P 0x4e 2M 64k', 'flush');
      let seen = false;
      for (let i = 0; i < 100 && !seen; i++) {
        const r = await tool('qemu-io', ['-f', 'raw', uri, '-c', 'read -P 0x4e 2M 64k']);
        seen = r.code === 0 && !/Pattern verification failed/.test(r.stdout);
        if (!seen) await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(seen, 'the mounter reads the sharer write');
      void readFileSync;
    });
  } finally {
    await s.close();
  }
});

needTools(test, ['qemu-io'])('--record-trace logs the first-touch order; --pull-order trace:FILE replays it', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'trace', async () => {
      const dir = s.tmpdir();
      const img = join(dir, 'disk.img');
      makeImage(img, 16 * MiB, [{ at: 5 * MiB, len: 64 * 1024, byte: 0x21 }]);
      const trace = join(dir, 'boot.trace');
      const share = await start(s, ['share', '--backend', `file:${img}`, '--listen', '127.0.0.1:0', '--transport', 'tcp'], join(dir, 'a'));
      const rec = await start(s, ['mount', share.first, '--managed', '--pull-workers', '0', '--record-trace', trace, '--listen', '127.0.0.1:0'], join(dir, 'b'));
      await qemu(rec.first, 'read -P 0x21 5M 64k', 'read 1M 4k', 'read 9M 100k', 'read 5M 4k');
      await killTree(rec.child, 'SIGTERM');
      const lines = readFileSync(trace, 'utf8').trim().split('\n');
      assert.match(lines[0]!, /^# quicmap access trace v1 chunk-size=65536 chunks=256$/);
      assert.equal(lines.slice(1).map(Number), [80, 16, 144, 145]);
      const replay = await start(s, ['mount', share.first, '--managed', '--pull-workers', '1', '--pull-order', `trace:${trace}`, '--listen', '127.0.0.1:0', '--json'], join(dir, 'c'));
      const out = collect(replay);
      await waitFor('pull-complete', () => /"event":"pull-complete"/.test(out()));
      assert.match(replay.stderr(), new RegExp(`pull order: trace:${trace.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
      const bad = await start(s, ['mount', share.first, '--managed', '--pull-order', 'sideways', '--listen', '127.0.0.1:0'], join(dir, 'd')).catch((e: Error) => e);
      assert.ok(bad instanceof Error && /--pull-order: unknown pull order "sideways"/.test(bad.message), String(bad));
    });
  } finally {
    await s.close();
  }
});

test.run();
