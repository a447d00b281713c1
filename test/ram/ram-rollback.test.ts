/**
 * Rollback of a storage peer (restarted from an old copy of its dir: backend) under `quicmap ram`: detected, served from another replica and repaired with K = 2; with K = 1 the read fails with the typed error.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { needTools, Scope, withTimeout, killTree } from '../helpers/env.ts';
import { quicmap, tool } from '../cli-share-mount/procs.ts';
import { MiB, RAM, dirContains, files, filesUnder, memoryContains, nbdRead, nbdWrite, nbdsh, ramStatus, readsBack, rollback, startRam, startStore, waitStatus } from './procs.ts';

const test = suite('ram-rollback');
const it = needTools(test, ['nbdcopy', 'nbdsh'], 'encrypted RAM tests use a real NBD client');

it('rollback with K = 2: the restarted peer\'s stale chunks are detected, served from the other replica and repaired', () =>
  withTimeout(150_000, 'rollback K=2', async () => {
    const s = new Scope();
    try {
      const home = s.tmpdir('qm-ram-');
      const { r, v2 } = await rollback(s, home, 2);
      await readsBack(r.uri, v2.back, v2.data);
      const st = await waitStatus(home, r, 'the stale chunks found and repaired', (x) => x.peers[0]!.stale > 0 && x.peers[0]!.repaired >= x.peers[0]!.stale - x.peers[0]!.repaired);
      assert.match(r.stderr(), /stale \(version \d+, expected \d+\)/);
      // Repaired: a second full read (every chunk evicted meanwhile, the other holder's turn) still gives the new data.
      await readsBack(r.uri, v2.back, v2.data);
      assert.ok(st.peers[0]!.repaired > 0);
    } finally {
      await s.close();
    }
  }),
);


it('rollback with K = 1: the read fails (EIO, the stale version named), it never returns the old data', () =>
  withTimeout(150_000, 'rollback K=1', async () => {
    const s = new Scope();
    try {
      const home = s.tmpdir('qm-ram-');
      const { r, v2 } = await rollback(s, home, 1);
      // (nbdsh, not nbdcopy: nbdcopy 1.14 does not exit after a failed read.)
      const res = await nbdsh(r.uri, 'h.pread(65536, 0)');
      assert.is.not(res.code, 0, 'a read from a rolled-back only replica succeeded');
      assert.match(res.stderr, /Input\/output error/);
      await waitStatus(home, r, 'the stale chunks counted', (x) => x.peers[0]!.stale > 0);
      assert.match(r.stderr(), /no storage peer returned its current version: \S+: stale \(version \d+, expected \d+\)/);
    } finally {
      await s.close();
    }
  }),
);


test.run();
