/**
 * Live migration with a real application: a writer process does random
 * writes at a fixed rate against the source's local NBD export (`quicmap
 * share --socket`), `quicmap migrate` moves the region here, the source's
 * --on-suspend SIGSTOPs the writer, the target's --on-resume points it at
 * the target and SIGCONTs it. Afterwards the target's region must equal
 * what the write log says, byte for byte. Also: the failure cases.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { NbdClient } from '../../engine/nbd/client.ts';
import { Scope, withTimeout, killTree } from '../helpers/env.ts';
import { ROOT, env, start, quicmap } from '../cli-share-mount/procs.ts';

const test = suite('migrate');
const MiB = 1024 * 1024;

function replay(log: string, size: number): Uint8Array {
  const img = new Uint8Array(size);
  let last = 0;
  for (const line of log.split('\n')) {
    if (!line) continue;
    const [seq, off, len, byte] = line.split(' ').map(Number) as [number, number, number, number];
    assert.is(seq, last + 1, 'the log has no gaps');
    last = seq;
    img.fill(byte, off, off + len);
  }
  return img;
}

async function readAll(uri: string, size: number): Promise<Uint8Array> {
  const c = await NbdClient.connect(uri);
  const out = new Uint8Array(size);
  for (let at = 0; at < size; at += MiB) await c.readAt(out.subarray(at, Math.min(size, at + MiB)), at);
  await c.close();
  return out;
}

async function waitFor(what: string, cond: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

for (const postCopy of [false, true]) {
  test(`a writer at 200 writes/s migrates with the region${postCopy ? ' (post-copy)' : ''}: the target equals the write log byte for byte`, async () => {
    const s = new Scope();
    try {
      await withTimeout(90_000, 'migration', async () => {
        const dir = s.tmpdir();
        const size = 8 * MiB;
        const ctl = join(dir, 'ctl');
        const log = join(dir, 'writes.log');
        writeFileSync(log, '');
        const srcSock = join(dir, 'src.sock');
        const dstSock = join(dir, 'dst.sock');
        writeFileSync(ctl, `nbd+unix:///region?socket=${srcSock}\n`);
        const pidFile = join(dir, 'writer.pid');
        const share = await start(
          s,
          ['share', '--size', '8MiB', '--listen', '127.0.0.1:0', '--transport', 'tcp', '--socket', srcSock, '--on-suspend', `kill -STOP $(cat ${pidFile})`],
          join(dir, 'a'),
          2,
        );
        assert.is(share.lines[1], `nbd+unix:///region?socket=${srcSock}`, 'the local export URI is the second line');
        const writer = s.spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'test/migrate/writer.ts'), ctl, log, String(size), '200', '7'], { env: env(dir), cwd: ROOT });
        let wErr = '';
        writer.stderr!.setEncoding('utf8').on('data', (d: string) => (wErr += d));
        writeFileSync(pidFile, String(writer.pid));
        await waitFor('the writer to write', () => readFileSync(log, 'utf8').split('\n').length > 50);
        const args = ['migrate', share.first, '--socket', dstSock, '--json', '--on-resume', `echo "$QUICMAP_NBD_URI" > ${ctl} && kill -CONT $(cat ${pidFile})`, '--max-downtime', '200ms'];
        if (postCopy) args.push('--post-copy', '--finalize', 'now');
        const mig = await start(s, args, join(dir, 'b'));
        assert.is(mig.first, `nbd+unix:///region?socket=${dstSock}`);
        let out = '';
        mig.child.stdout!.on('data', (d: string) => (out += d));
        await waitFor("the migration result", () => /^\{"downtimeMs"/m.test(out), 60_000);
        const result = JSON.parse(out.trim().split('\n').filter((l) => l.includes('"downtimeMs"') && !l.includes('"event"')).pop()!) as Record<string, number>;
        assert.ok(result.downtimeMs >= 0 && result.totalMs >= result.downtimeMs, JSON.stringify(result));
        assert.ok(result.bytes > 0 && result.rounds >= 1, JSON.stringify(result));
        // Where the downtime went, and the auto-converge throttle (the source's share has one: supported).
        const r2 = result as unknown as { stopMs: Record<string, number>; throttle: { supported: boolean; pct: number } };
        assert.ok(['suspend', 'finalSync', 'finalPull', 'handover', 'resume'].every((k) => r2.stopMs[k]! >= 0), JSON.stringify(result));
        assert.is(r2.throttle.supported, true, JSON.stringify(result));
        await waitFor('the writer to write to the target', () => wErr.includes(`writing to nbd+unix:///region?socket=${dstSock}`));
        const atResume = readFileSync(log, 'utf8').split('\n').length;
        await waitFor('more writes at the target', () => readFileSync(log, 'utf8').split('\n').length > atResume + 50);
        writer.kill('SIGTERM');
        await new Promise((r) => writer.once('exit', r));
        const expected = replay(readFileSync(log, 'utf8'), size);
        const got = await readAll(`nbd+unix:///region?socket=${dstSock}`, size);
        let diff = -1;
        for (let i = 0; i < size; i++) if (got[i] !== expected[i]) { diff = i; break; }
        assert.is(diff, -1, `target differs from the write log at byte ${diff}\nwriter:\n${wErr.slice(-2000)}\nmigrate:\n${mig.stderr().slice(-3000)}`);
        // The source is a read-only seeder now, and a second finalize is refused clearly.
        const again = await quicmap(['migrate', share.first, '--socket', join(dir, 'x.sock'), '--finalize', 'now'], join(dir, 'c'));
        assert.is(again.code, 1, again.stderr);
        assert.match(again.stderr, /already migrated: ownership moved to [a-z2-7]{52}/);
        assert.match(share.stderr(), /handed over/);
        await killTree(mig.child, 'SIGTERM');
      });
    } finally {
      await s.close();
    }
  });
}

test('source dies during pre-copy: the target says so and exits non-zero; target dies during pre-copy: the source keeps serving', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'failures', async () => {
      const dir = s.tmpdir();
      const share = await start(s, ['share', '--size', '64MiB', '--listen', '127.0.0.1:0', '--transport', 'tcp', '--socket', join(dir, 'src.sock')], join(dir, 'a'), 2);
      // Target killed mid pre-copy: the source is unaffected (its export still takes writes).
      const t1 = await start(s, ['migrate', share.first, '--socket', join(dir, 't1.sock'), '--finalize', 'after:60s', '--pull-workers', '1'], join(dir, 'b'));
      await new Promise((r) => setTimeout(r, 300));
      await killTree(t1.child, 'SIGKILL');
      const c = await NbdClient.connect(share.lines[1]!);
      await c.writeAt(new Uint8Array(10).fill(1), 0);
      await c.flush();
      await c.close();
      // Source killed mid pre-copy: the target fails with a clear message.
      const t2 = await start(s, ['migrate', share.first, '--socket', join(dir, 't2.sock'), '--finalize', 'after:60s', '--pull-workers', '1'], join(dir, 'b2'));
      await new Promise((r) => setTimeout(r, 300));
      await killTree(share.child, 'SIGKILL');
      const code = await t2.exited;
      assert.is(code, 1, t2.stderr());
      assert.match(t2.stderr(), /source is unreachable during pre-copy.*the source still owns the region/);
    });
  } finally {
    await s.close();
  }
});

test('either side dies during finalize: ownership stays at exactly one node and the survivor says which', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'finalize failures', async () => {
      const dir = s.tmpdir();
      const pidFile = join(dir, 'target.pid');
      const srcSock = join(dir, 'src.sock');
      // The target dies right after asking to finalize (its on-suspend hook kills it): the
      // source waits for a commit, then is the owner again and takes writes.
      const share = await start(
        s,
        ['share', '--size', '4MiB', '--listen', '127.0.0.1:0', '--transport', 'tcp', '--socket', srcSock, '--handover-timeout', '1s', '--on-suspend', `kill -9 $(cat ${pidFile})`],
        join(dir, 'a'),
        2,
      );
      const t = await start(s, ['migrate', share.first, '--socket', join(dir, 't.sock'), '--finalize', 'now'], join(dir, 'b'));
      writeFileSync(pidFile, String(t.child.pid));
      await t.exited;
      await waitFor('the source to take ownership back', () => /this node is the owner again/.test(share.stderr()));
      const c = await NbdClient.connect(share.lines[1]!);
      await c.writeAt(new Uint8Array(10).fill(9), 0);
      await c.flush();
      await c.close();
      // The source dies while suspending (its hook kills it): the target does not resume and says the source owns the region.
      const share2 = await start(s, ['share', '--size', '4MiB', '--listen', '127.0.0.1:0', '--transport', 'tcp', '--on-suspend', 'kill -9 $PPID'], join(dir, 'c'));
      const t2 = await start(s, ['migrate', share2.first, '--socket', join(dir, 't2.sock'), '--finalize', 'now'], join(dir, 'd'));
      assert.is(await t2.exited, 1, t2.stderr());
      assert.match(t2.stderr(), /the source owns the region|the source still owns the region/);
      assert.not.match(t2.stderr(), /migrate: resumed/);
    });
  } finally {
    await s.close();
  }
});

test('a migrated source with a file backend records the handover: restarted, it shares read-only', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'handover record', async () => {
      const dir = s.tmpdir();
      const img = join(dir, 'src.img');
      writeFileSync(img, Buffer.alloc(2 * MiB, 0x42));
      const args = ['share', '--backend', `file:${img}`, '--listen', '127.0.0.1:0', '--transport', 'tcp', '--socket', join(dir, 'src.sock')];
      const share = await start(s, args, join(dir, 'a'), 2);
      const mig = await start(s, ['migrate', share.first, '--socket', join(dir, 't.sock'), '--finalize', 'now', '--json'], join(dir, 'b'));
      let out = '';
      mig.child.stdout!.on('data', (d: string) => (out += d));
      await waitFor('the migration result', () => /^\{"downtimeMs"/m.test(out));
      assert.match(readFileSync(`${img}.quicmap-migrated`, 'utf8'), /^[a-z2-7]{52}\n$/);
      await killTree(share.child, 'SIGKILL');
      const again = await start(s, args.map((a) => (a.endsWith('src.sock') ? join(dir, 'src2.sock') : a)), join(dir, 'a'), 2);
      assert.match(again.stderr(), /was migrated to [a-z2-7]{52}/);
      const c = await NbdClient.connect(again.lines[1]!);
      try {
        await c.writeAt(new Uint8Array(1), 0);
        assert.unreachable('a migrated source took a write');
      } catch (e) {
        assert.match((e as Error).message, /read-only|not permitted|EPERM/i);
      } finally {
        await c.close().catch(() => {});
      }
    });
  } finally {
    await s.close();
  }
});

test.run();
