/**
 * `quicmap store` + `quicmap ram` as real processes (nbdcopy as the client): the storage peers never hold plaintext (their memory and dir: backend scanned), and the commands' usage errors.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { needTools, Scope, withTimeout, killTree } from '../helpers/env.ts';
import { quicmap, tool } from '../cli-share-mount/procs.ts';
import { MiB, RAM, dirContains, files, filesUnder, memoryContains, nbdRead, nbdWrite, ramStatus, readsBack, rollback, startRam, startStore, waitStatus } from './procs.ts';

const test = suite('ram-privacy');
const it = needTools(test, ['nbdcopy'], 'encrypted RAM tests use a real NBD client');

it('the storage peers hold only ciphertext: neither their memory nor their dir: backend shows the pattern', () =>
  withTimeout(150_000, 'plaintext scan', async () => {
    const s = new Scope();
    try {
      const home = s.tmpdir('qm-ram-');
      const a = await startStore(s, home);
      const b = await startStore(s, home, { backend: `dir:${join(home, 'b')}` });
      const r = await startRam(s, home, [a.ticket, b.ticket], RAM);
      const f = files(home, 8 * MiB, 'scan');
      await nbdWrite(f.src, r.uri);
      await readsBack(r.uri, f.back, f.data);
      const st = await ramStatus(home, r);
      assert.is(st.replication.chunks, 128);
      assert.ok(st.peers.every((p) => p.used >= 8 * MiB), JSON.stringify(st.peers));
      // The scanner works: the RAM node itself holds the hot plaintext.
      assert.ok(memoryContains(r.child.pid!, f.marker), 'the scan does not find the pattern in the RAM node (scanner broken?)');
      assert.not.ok(memoryContains(a.child.pid!, f.marker), 'plaintext in the memory store peer');
      assert.not.ok(memoryContains(b.child.pid!, f.marker), 'plaintext in the dir store peer');
      assert.ok(filesUnder(join(home, 'b')).length >= 128);
      assert.not.ok(dirContains(join(home, 'b'), f.marker), 'plaintext in the dir backend');
    } finally {
      await s.close();
    }
  }),
);


test('usage errors name the command and the flag', async () => {
  const s = new Scope();
  try {
    const home = s.tmpdir('qm-ram-');
    const cases: Array<[string[], RegExp]> = [
      [['store', '--listen', '127.0.0.1:0'], /^quicmap store: --quota SIZE is required/],
      [['store', '--listen', '127.0.0.1:0', '--quota', 'lots'], /--quota/],
      [['store', '--listen', '127.0.0.1:0', '--quota', '1MiB', '--backend', 'file:/x'], /--backend must be memory or dir:PATH/],
      [['ram', '--size', '8MiB'], /--store TICKET is required/],
      [['ram', '--size', '8MiB', '--store', 'qm1a,qm1b', '--replicas', '3'], /--replicas 3 needs at least 3 --store tickets/],
      [['ram', '--size', '8MiB', '--store', 'qm1a', '--cache', '64KiB'], /--cache must hold at least 4 chunks/],
      [['ram', '--size', '100000', '--store', 'qm1a'], /--size must be a positive multiple of the chunk size/],
    ];
    for (const [args, re] of cases) {
      const r = await quicmap(args, home);
      assert.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re);
      assert.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    }
    const bad = await quicmap(['ram', '--size', '8MiB', '--store', 'qm1notaticket'], home);
    assert.is(bad.code, 1, bad.stderr);
    assert.match(bad.stderr, /storage peer 1 \(of 1\)/);
  } finally {
    await s.close();
  }
});


test.run();
