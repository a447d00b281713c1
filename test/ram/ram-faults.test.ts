/**
 * Faults of storage peers under `quicmap ram`: a flipped byte in a stored chunk, a killed peer with K = 2 (re-replication).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { needTools, Scope, withTimeout, killTree } from '../helpers/env.ts';
import { quicmap, tool } from '../cli-share-mount/procs.ts';
import { MiB, RAM, dirContains, files, filesUnder, memoryContains, nbdRead, nbdWrite, ramStatus, readsBack, rollback, startRam, startStore, waitStatus } from './procs.ts';

const test = suite('ram-faults');
const it = needTools(test, ['nbdcopy'], 'encrypted RAM tests use a real NBD client');

it('tampering: a flipped byte in a stored chunk is detected and repaired from the other replica', () =>
  withTimeout(150_000, 'tamper', async () => {
    const s = new Scope();
    try {
      const home = s.tmpdir('qm-ram-');
      const a = await startStore(s, home, { backend: `dir:${join(home, 'a')}` });
      const b = await startStore(s, home, { backend: `dir:${join(home, 'b')}` });
      const r = await startRam(s, home, [a.ticket, b.ticket], RAM);
      const f = files(home, 8 * MiB, 'tamper');
      await nbdWrite(f.src, r.uri);
      const victims = filesUnder(join(home, 'a')).slice(0, 3);
      for (const v of victims) {
        const bytes = readFileSync(v);
        bytes[100]! ^= 0x01;
        writeFileSync(v, bytes);
      }
      // Two full reads: each chunk's replicas are read in turn, so both copies of every chunk are checked.
      await readsBack(r.uri, f.back, f.data);
      await readsBack(r.uri, f.back, f.data);
      const st = await waitStatus(home, r, 'the altered chunks found and repaired', (x) => x.peers[0]!.tampered >= 3 && x.peers[0]!.repaired >= 3);
      assert.is(st.peers[1]!.tampered, 0);
      assert.match(r.stderr(), /altered \(authentication failed\)/);
    } finally {
      await s.close();
    }
  }),
);


it('replica loss: with K = 2 a killed peer costs no read, and its chunks are copied to the third peer', () =>
  withTimeout(150_000, 'replica loss', async () => {
    const s = new Scope();
    try {
      const home = s.tmpdir('qm-ram-');
      const stores = [await startStore(s, home), await startStore(s, home), await startStore(s, home)];
      const r = await startRam(s, home, stores.map((x) => x.ticket), [...RAM, '--replicas', '2']);
      const f = files(home, 8 * MiB, 'loss');
      await nbdWrite(f.src, r.uri);
      await killTree(stores[1]!.child);
      await readsBack(r.uri, f.back, f.data); // before the loss is even noticed
      const st = await waitStatus(home, r, 're-replication done', (x) => x.peers[1]!.state === 'lost' && x.replication.underReplicated === 0 && !x.replication.running);
      assert.ok(st.replication.copied > 0, JSON.stringify(st.replication));
      assert.is(st.replication.lost, 0);
      await readsBack(r.uri, f.back, f.data);
      const human = await quicmap(['status', '--control', r.control], home);
      assert.match(human.stdout, /"state":"lost"/);
    } finally {
      await s.close();
    }
  }),
);


test.run();
