/**
 * Quota on storage peers under `quicmap ram`: a full peer's chunks go to another; with every peer full the write fails.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { needTools, Scope, withTimeout, killTree } from '../helpers/env.ts';
import { quicmap, tool } from '../cli-share-mount/procs.ts';
import { MiB, RAM, dirContains, files, filesUnder, memoryContains, nbdRead, nbdWrite, nbdsh, ramStatus, readsBack, rollback, startRam, startStore, waitStatus } from './procs.ts';

const test = suite('ram-quota');
const it = needTools(test, ['nbdcopy', 'nbdsh'], 'encrypted RAM tests use a real NBD client');

it('quota: a full peer refuses (quota exceeded) and the chunks go to the other; with every peer full the write fails', () =>
  withTimeout(150_000, 'quota', async () => {
    const s = new Scope();
    try {
      const home = s.tmpdir('qm-ram-');
      const small = await startStore(s, home, { quota: '1MiB' });
      const big = await startStore(s, home, { quota: '64MiB' });
      const r = await startRam(s, home, [small.ticket, big.ticket], [...RAM, '--replicas', '1']);
      const f = files(home, 8 * MiB, 'quota');
      await nbdWrite(f.src, r.uri);
      await readsBack(r.uri, f.back, f.data);
      const st = await ramStatus(home, r);
      assert.ok(st.peers[0]!.quotaRefusals > 0, JSON.stringify(st.peers));
      assert.ok(st.peers[0]!.used <= MiB);
      assert.match(r.stderr(), /quota exceeded/);
      // One peer only, and too small: the write (or its flush) fails, nothing claims success.
      const tiny = await startStore(s, home, { quota: '1MiB' });
      const r2 = await startRam(s, home, [tiny.ticket], RAM);
      const w = await nbdsh(r2.uri, 'import os\nfor i in range(64): h.pwrite(os.urandom(65536), i * 65536)\nh.flush()');
      assert.is.not(w.code, 0, 'a write past every quota succeeded');
      assert.match(r2.stderr(), /no storage peer took it/);
    } finally {
      await s.close();
    }
  }),
);


test.run();
