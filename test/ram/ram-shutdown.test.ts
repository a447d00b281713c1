/**
 * SIGTERM of a RAM node whose storage peers have all stopped answering
 * (frozen with SIGSTOP: their connections stay open, so every request to
 * them waits for its timeout): the node ends the region at once — its
 * contents are volatile, so nothing is waited for — and exits 0, instead of
 * waiting out 10 s request timeouts to save chunks no one could read again.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { needTools, Scope, withTimeout } from '../helpers/env.ts';
import { tool } from '../cli-share-mount/procs.ts';
import { RAM, files, ramStatus, startRam, startStore, waitStatus } from './procs.ts';

const test = suite('ram-shutdown');
const it = needTools(test, ['nbdcopy'], 'encrypted RAM tests use a real NBD client');

/** The RAM node's request timeout to a storage peer (p2p/ram/ram.ts): the old shutdown waited at least this long. */
const REQUEST_TIMEOUT_MS = 10_000;

it('SIGTERM with every storage peer unresponsive and chunks dirty: the region ends at once, exit 0', () =>
  withTimeout(120_000, 'shutdown', async () => {
    const s = new Scope();
    try {
      const home = s.tmpdir('qm-ram-');
      const a = await startStore(s, home);
      const b = await startStore(s, home);
      const r = await startRam(s, home, [a.ticket, b.ticket], [...RAM, '--replicas', '2']);
      // Writes the cache takes (acknowledged: nbdcopy without --flush), while the peers are frozen.
      a.child.kill('SIGSTOP');
      b.child.kill('SIGSTOP');
      const f = files(home, 512 * 1024, 'term');
      const w = await tool('nbdcopy', [f.src, r.uri], 60_000);
      assert.is(w.code, 0, w.stderr);
      const st = await waitStatus(home, r, 'dirty chunks in the cache', (x) => x.cache.cachedChunks > 0);
      assert.ok(st.peers.length === 2);
      const t0 = Date.now();
      r.child.kill('SIGTERM');
      const code = await r.exited;
      const took = Date.now() - t0;
      console.log(`    (exited ${code} ${took} ms after SIGTERM)`);
      assert.is(code, 0, r.stderr().slice(-2000));
      assert.match(r.stderr(), /region ended: \d+ cached chunks dropped \(\d+ not yet on a peer\)/);
      // Not a performance figure: the bound the old shutdown could not meet (it waited for each save's timeout).
      assert.ok(took < REQUEST_TIMEOUT_MS, `exit took ${took} ms`);
      void ramStatus;
    } finally {
      await s.close();
    }
  }),
);

it('SIGTERM with live peers: the chunks are deleted from them (their quota is freed)', () =>
  withTimeout(120_000, 'release', async () => {
    const s = new Scope();
    try {
      const home = s.tmpdir('qm-ram-');
      const a = await startStore(s, home, { backend: `dir:${home}/a` });
      const r = await startRam(s, home, [a.ticket], [...RAM, '--replicas', '1']);
      const f = files(home, 2 * 1024 * 1024, 'rel');
      const w = await tool('nbdcopy', ['--flush', f.src, r.uri], 60_000);
      assert.is(w.code, 0, w.stderr);
      const st = await ramStatus(home, r);
      assert.ok(st.peers[0]!.used > 0, JSON.stringify(st.peers[0]));
      r.child.kill('SIGTERM');
      assert.is(await r.exited, 0, r.stderr().slice(-2000));
      const m = /(\d+) chunk copies deleted from the peers/.exec(r.stderr());
      assert.ok(m && Number(m[1]) >= 32, r.stderr().slice(-1000));
      const { filesUnder } = await import('./procs.ts');
      assert.equal(filesUnder(`${home}/a`).filter((p) => !p.endsWith('.region-id')), [], 'the store holds none of them');
    } finally {
      await s.close();
    }
  }),
);

test.run();
