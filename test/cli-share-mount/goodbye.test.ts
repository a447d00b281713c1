/**
 * The session goodbye, with real processes: a `quicmap share` and a
 * `quicmap mount` over TCP. While the mount runs, the sharer keeps its
 * resumable session (`sessionsKept` in `quicmap status --json`); when the
 * mount ends cleanly (SIGTERM) it says goodbye and the sharer frees the
 * session at once (`goodbyes` 1, `sessionsKept` 0) instead of keeping it
 * for a resume for the 60 s TTL. A mount killed without a word (SIGKILL)
 * leaves its session kept: the goodbye is what frees it.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { closeSync, ftruncateSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { Scope, eventually, withTimeout } from '../helpers/env.ts';
import { start, quicmap } from './procs.ts';
import type { NodeStatus } from '../../p2p/node/status.ts';

const test = suite('cli-share-mount/goodbye');

async function region(control: string, home: string): Promise<NodeStatus['regions'][number]> {
  const r = await quicmap(['status', '--control', control, '--json'], home);
  assert.is(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as NodeStatus).regions[0]!;
}

test('a mount that ends cleanly frees its session at the sharer at once; one killed leaves it kept', async () => {
  const s = new Scope();
  try {
    await withTimeout(90_000, 'goodbye', async () => {
      const dir = s.tmpdir();
      const img = join(dir, 'disk.img');
      const fd = openSync(img, 'w+');
      ftruncateSync(fd, 4 << 20);
      closeSync(fd);
      const homeA = join(dir, 'a');
      const ctlA = join(dir, 'a.sock');
      const share = await start(s, ['share', '--backend', `file:${img}`, '--listen', '127.0.0.1:0', '--transport', 'tcp', '--control', ctlA], homeA);

      const m1 = await start(s, ['mount', share.first, '--listen', '127.0.0.1:0'], join(dir, 'b'));
      await eventually(20_000, () => 'the sharer keeps the mount session', async () => (await region(ctlA, homeA)).sessionsKept === 1);
      m1.child.kill('SIGTERM');
      assert.is(await m1.exited, 0, m1.stderr());
      // Well inside the 60 s TTL: freed by the goodbye, not by expiry.
      await eventually(10_000, () => 'the session is freed after the goodbye', async () => (await region(ctlA, homeA)).sessionsKept === 0);
      assert.is((await region(ctlA, homeA)).goodbyes, 1);

      const m2 = await start(s, ['mount', share.first, '--listen', '127.0.0.1:0'], join(dir, 'c'));
      await eventually(20_000, () => 'the sharer keeps the second session', async () => (await region(ctlA, homeA)).sessionsKept === 1);
      m2.child.kill('SIGKILL');
      await m2.exited;
      // The link is gone, but the session stays kept for a resume (no goodbye came).
      const after = await region(ctlA, homeA);
      assert.is(after.goodbyes, 1, 'no goodbye from a killed mount');
      assert.is(after.sessionsKept, 1, 'its session is kept for a resume until the TTL');
    });
  } finally {
    await s.close();
  }
});

test.run();
