/**
 * `quicmap share` killed (SIGKILL) under a `quicmap mount` in the middle of
 * a long nbdcopy: the NBD client gets an I/O error, not a hang — after the
 * mount has waited resumeWaitMs for a link that could resume its session —
 * and the mount recovers when the sharer returns on the same address. (Its
 * own file: it waits out those deadlines, and share-mount.test.ts is long.)
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { needTools, Scope, withTimeout, killTree } from '../helpers/env.ts';
import { logged, makeImage, start, tool } from './procs.ts';

const test = suite('cli-share-mount/kill');
const MiB = 1024 * 1024;
const TRANSPORTS = ['tcp', 'quic'] as const;

for (const transport of TRANSPORTS) {
  needTools(test, ['qemu-io', 'nbdcopy'])(`${transport}: the sharer killed mid-read gives the NBD client an I/O error, not a hang; the mount recovers when it returns`, async () => {
    const s = new Scope();
    try {
      await withTimeout(90_000, 'kill/recover', async () => {
        const dir = s.tmpdir();
        const img = join(dir, 'disk.img');
        makeImage(img, 2048 * MiB, [{ at: 0, len: MiB, byte: 0x5a }]);
        const homeA = join(dir, 'a');
        const shareArgs = (listen: string) => ['share', '--backend', `file:${img}`, '--listen', listen, '--transport', transport, '--json'];
        const share = await start(s, shareArgs('127.0.0.1:0'), homeA);
        const info = JSON.parse(share.first) as { ticket: string; address: string; regionId: string };
        const mount = await start(s, ['mount', info.ticket, '--listen', '127.0.0.1:0'], join(dir, 'b'));
        const uri = mount.first;

        // A long read (2 GiB), then the sharer dies without any goodbye.
        const copy = tool('nbdcopy', ['--no-extents', uri, 'null:'], 60_000);
        await new Promise((r) => setTimeout(r, 700));
        await killTree(share.child, 'SIGKILL');
        const t0 = Date.now();
        const res = await copy;
        const took = Date.now() - t0;
        assert.ok(res.code !== 0, `nbdcopy should fail, got ${res.code}: ${res.stderr}`);
        // Liveness (3 s, QUIC sends no close) + resumeWaitMs (6 s) + slack on a loaded machine: an error, not a hang.
        assert.ok(took < 25_000, `the error took ${took} ms`);
        console.log(`    ${transport}: nbdcopy failed ${took} ms after the sharer was killed`);
        // While the sharer is gone, I/O fails fast too.
        const down = await tool('qemu-io', ['-f', 'raw', uri, '-c', 'read 0 4k'], 20_000);
        assert.match(down.stdout + down.stderr, /error|Input\/output/i, 'read while down fails');

        // The sharer comes back on the same address, same identity and file: same region id.
        const back = await start(s, shareArgs(info.address), homeA);
        assert.is((JSON.parse(back.first) as { regionId: string }).regionId, info.regionId);
        let ok = false;
        const deadline = Date.now() + 20_000;
        while (!ok && Date.now() < deadline) {
          const r = await tool('qemu-io', ['-f', 'raw', uri, '-c', 'read -P 0x5a 0 64k'], 20_000);
          ok = r.code === 0 && !/error|failed/i.test(r.stdout + r.stderr);
          if (!ok) await new Promise((res) => setTimeout(res, 300));
        }
        assert.ok(ok, `the mount did not recover; mount log:\n${mount.stderr()}`);
        await logged(mount.stderr, /reconnected to sharer/, 'mount log');
      });
    } finally {
      await s.close();
    }
  });
}

test.run();
