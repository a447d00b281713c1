/**
 * Quota on storage peers under `quicmap ram`: a full peer's chunks go to another; with every peer full the write fails.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { needTools, needCondition, hasTool, Scope, withTimeout, killTree } from '../helpers/env.ts';
import { existsSync, mkdirSync } from 'node:fs';
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
      // The stores answer `quicmap status` too (default control sockets under $QUICMAP_HOME/run).
      const all = await quicmap(['status', '--json'], home);
      assert.is(all.code, 0, all.stderr);
      const stores = (JSON.parse(all.stdout) as Array<{ role: string; control: string; store: { address: string; used: number } }>).filter((x) => x.role === 'store');
      assert.is(stores.length, 2, all.stdout);
      const smallSt = stores.find((x) => x.store.address === small.address);
      assert.ok(smallSt && smallSt.store.used > 0 && smallSt.store.used <= MiB, all.stdout);
      assert.match(smallSt.control, /\/run\/store-\d+\.sock$/);
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


const fuseOk = existsSync('/dev/fuse') && process.getuid?.() === 0 && hasTool('nbdfuse') && hasTool('python3');
needCondition(test, fuseOk, 'needs root, /dev/fuse, nbdfuse and python3')('--mount DIR: the RAM region as an mmap-able file (nbdfuse); mmap writes read back', () =>
  withTimeout(120_000, 'ram --mount', async () => {
    const s = new Scope();
    try {
      const home = s.tmpdir('qm-ram-');
      const dir = join(home, 'mnt');
      mkdirSync(dir);
      const a = await startStore(s, home);
      const r = await startRam(s, home, [a.ticket], [...RAM, '--mount', dir]);
      const path = r.lines[1]!;
      assert.match(path, /region$/);
      const py = [
        'import mmap, os, sys',
        `fd = os.open(${JSON.stringify(path)}, os.O_RDWR)`,
        'm = mmap.mmap(fd, 8 << 20, mmap.MAP_SHARED)',
        'pat = bytes(range(256)) * 4096',
        'm[0:len(pat)] = pat',
        'm.flush(); m.close(); os.close(fd)',
        `fd = os.open(${JSON.stringify(path)}, os.O_RDONLY)`,
        'm = mmap.mmap(fd, 8 << 20, mmap.MAP_SHARED, mmap.PROT_READ)',
        'sys.exit(0 if m[0:len(pat)] == pat else 3)',
      ].join('\n');
      const res = await tool('python3', ['-c', py], 60_000);
      assert.is(res.code, 0, res.stderr);
      // What went through the mapping is on the storage peer, sealed.
      const st = await ramStatus(home, r);
      assert.ok(st.peers[0]!.used > 0 || st.cache.cachedChunks > 0);
      r.child.kill('SIGTERM');
      assert.is(await r.exited, 0, r.stderr());
    } finally {
      await s.close();
    }
  }),
);

test.run();
