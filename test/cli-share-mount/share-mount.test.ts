/**
 * `quicmap share` in one process, `quicmap mount` in another, real NBD
 * clients (qemu-io, nbdcopy) against the mount's export — over QUIC and TCP
 * (and WebTransport for the data path).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { closeSync, openSync, readSync, writeSync, ftruncateSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { needTools, needCondition, hasTool, Scope, withTimeout, killTree } from '../helpers/env.ts';
import { existsSync } from 'node:fs';
import { start, quicmap, tool } from './procs.ts';

const test = suite('cli-share-mount');
const MiB = 1024 * 1024;
const TRANSPORTS = ['tcp', 'quic'] as const;

/** A log line may still be in the pipe when the action it reports has finished: wait a little for it. */
async function logged(text: () => string, re: RegExp, what: string): Promise<void> {
  const until = Date.now() + 3000;
  while (!re.test(text()) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  assert.match(text(), re, what);
}

function makeImage(path: string, size: number, fill: { at: number; len: number; byte: number }[]): void {
  const fd = openSync(path, 'w+');
  try {
    ftruncateSync(fd, size);
    for (const f of fill) writeSync(fd, Buffer.alloc(f.len, f.byte), 0, f.len, f.at);
  } finally {
    closeSync(fd);
  }
}

function readImage(path: string, at: number, len: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(len);
    readSync(fd, b, 0, len, at);
    return b;
  } finally {
    closeSync(fd);
  }
}

for (const transport of [...TRANSPORTS, 'webtransport'] as const) {
  needTools(test, ['qemu-io', 'nbdcopy'])(`${transport}: NBD clients read the sharer's data through the mount, and writes reach the sharer`, async () => {
    const s = new Scope();
    try {
      await withTimeout(60_000, 'share/mount', async () => {
        const dir = s.tmpdir();
        const img = join(dir, 'disk.img');
        makeImage(img, 64 * MiB, [{ at: 0, len: MiB, byte: 0x5a }, { at: 40 * MiB, len: 3 * MiB, byte: 0x17 }]);
        const share = await start(s, ['share', '--backend', `file:${img}`, '--listen', '127.0.0.1:0', '--transport', transport], join(dir, 'a'));
        assert.match(share.first, /^qm1[a-z2-7]+$/, 'the ticket is the first stdout line');
        const mount = await start(s, ['mount', share.first, '--listen', '127.0.0.1:0'], join(dir, 'b'));
        assert.match(mount.first, /^nbd:\/\/127\.0\.0\.1:\d+\/region$/, 'the NBD URI is the first stdout line');
        const uri = mount.first;

        const r1 = await tool('qemu-io', ['-f', 'raw', uri, '-c', 'read -P 0x5a 0 1M', '-c', 'read -P 0x17 40M 3M', '-c', 'read -P 0 1M 1M']);
        assert.is(r1.code, 0, r1.stdout + r1.stderr);
        assert.not.match(r1.stdout, /Pattern verification failed/);

        const r2 = await tool('qemu-io', ['-f', 'raw', uri, '-c', 'write -P 0xc3 8M 2M', '-c', 'flush']);
        assert.is(r2.code, 0, r2.stdout + r2.stderr);
        assert.ok(readImage(img, 8 * MiB, 2 * MiB).every((b) => b === 0xc3), "the write reached the sharer's file");

        const copy = join(dir, 'copy.img');
        const r3 = await tool('nbdcopy', ['--no-extents', uri, copy]);
        assert.is(r3.code, 0, r3.stderr);
        assert.ok(Buffer.compare(readFileSync(copy), readFileSync(img)) === 0, "nbdcopy of the mount equals the sharer's file");

        await logged(share.stderr, /opened region [0-9a-f]{32} read-write/, 'the sharer logs the peer');
        await logged(share.stderr, /sharer [a-z2-7]{52} serves region/, 'the sharer logs its id');
      });
    } finally {
      await s.close();
    }
  });
}

for (const transport of TRANSPORTS) {
needTools(test, ['qemu-io'])(`${transport}: missing, foreign, tampered, wrong-key, wrong-region, expired tickets and read-only violations are refused clearly`, async () => {
  const s = new Scope();
  try {
    await withTimeout(150_000, 'refusals', async () => {
      const dir = s.tmpdir();
      const homeA = join(dir, 'a');
      const share = await start(s, ['share', '--size', '16MiB', '--listen', '127.0.0.1:0', '--transport', transport, '--json'], homeA);
      const info = JSON.parse(share.first) as { ticket: string; address: string; sharer: string };
      const homeB = join(dir, 'b');

      let r = await quicmap(['mount'], homeB);
      assert.is(r.code, 2);
      assert.match(r.stderr, /missing TICKET/);

      r = await quicmap(['mount', 'https://example.com/not-a-ticket'], homeB);
      assert.is(r.code, 1);
      assert.match(r.stderr, /not a quicmap ticket/);

      const t = info.ticket;
      const i = Math.floor(t.length / 2);
      const tampered = t.slice(0, i) + (t[i] === 'a' ? 'b' : 'a') + t.slice(i + 1);
      r = await quicmap(['mount', tampered], homeB);
      assert.is(r.code, 1);
      assert.match(r.stderr, /ticket refused/);

      // A well-formed ticket signed by someone else, naming the sharer's address.
      const { generateIdentity, loadOrCreateIdentity } = await import('../../crypto/identity.ts');
      const { signGrant, newRegionId } = await import('../../crypto/grant.ts');
      const { encodeTicket } = await import('../../crypto/ticket.ts');
      const stranger = await generateIdentity();
      const forged = encodeTicket(await signGrant(stranger, { regionId: newRegionId(), transport, addresses: [info.address], rights: 'rw', expiresAt: 0 }));
      r = await quicmap(['mount', forged], homeB);
      assert.is(r.code, 1);
      assert.match(r.stderr, /not the sharer named in the ticket/);

      // Signed by the sharer, for a region it does not serve: the sharer refuses it.
      const sharerId = await loadOrCreateIdentity(join(homeA, 'identity'));
      assert.is(sharerId.id, info.sharer);
      const otherRegion = encodeTicket(await signGrant(sharerId, { regionId: newRegionId(), transport, addresses: [info.address], rights: 'rw', expiresAt: 0 }));
      r = await quicmap(['mount', otherRegion], homeB);
      assert.is(r.code, 1);
      assert.match(r.stderr, /sharer refused: grant is for region/);
      await logged(share.stderr, /refused: grant is for region/, 'the sharer logs the refusal');

      const expiring = encodeTicket(await signGrant(sharerId, { regionId: newRegionId(), transport, addresses: [info.address], rights: 'rw', expiresAt: Math.floor(Date.now() / 1000) - 5 }));
      r = await quicmap(['mount', expiring], homeB);
      assert.is(r.code, 1);
      assert.match(r.stderr, /expired/);

      // A ticket bound to one peer: another node (another key) is refused; that peer gets in.
      const peerB = await loadOrCreateIdentity(join(homeB, 'identity'));
      const bound = await start(s, ['share', '--size', '1MiB', '--listen', '127.0.0.1:0', '--transport', transport, '--grantee', peerB.id], join(dir, 'd'));
      r = await quicmap(['mount', bound.first, '--listen', '127.0.0.1:0'], join(dir, 'e'));
      assert.is(r.code, 1);
      assert.match(r.stderr, /sharer refused: grant is bound to peer/);
      const okB = await start(s, ['mount', bound.first, '--listen', '127.0.0.1:0'], homeB);
      assert.match(okB.first, /^nbd:/);

      // Read-only share: reads work, writes are refused, the region is unchanged.
      const ro = await start(s, ['share', '--size', '16MiB', '--listen', '127.0.0.1:0', '--transport', transport, '--read-only'], join(dir, 'c'));
      const m = await start(s, ['mount', ro.first, '--listen', '127.0.0.1:0'], homeB);
      const rd = await tool('qemu-io', ['-f', 'raw', '-r', m.first, '-c', 'read -P 0 0 64k']);
      assert.is(rd.code, 0, rd.stdout + rd.stderr);
      const wr = await tool('qemu-io', ['-f', 'raw', m.first, '-c', 'write -P 0x11 0 64k']);
      assert.ok(wr.code !== 0 || /error|denied|read-only/i.test(wr.stdout + wr.stderr), `write was not refused: ${wr.stdout}${wr.stderr}`);
      assert.not.match(wr.stdout, /wrote 65536/);
      const again = await tool('qemu-io', ['-f', 'raw', '-r', m.first, '-c', 'read -P 0 0 64k']);
      assert.is(again.code, 0, 'region unchanged');
      assert.not.match(again.stdout, /verification failed/);
    });
  } finally {
    await s.close();
  }
});
}

for (const transport of TRANSPORTS) {
  needTools(test, ['qemu-io'])(`${transport}: malformed frames from an authenticated peer never take the sharer down`, async () => {
    const s = new Scope();
    try {
      await withTimeout(60_000, 'fuzz', async () => {
        const dir = s.tmpdir();
        const share = await start(s, ['share', '--size', '16MiB', '--listen', '127.0.0.1:0', '--transport', transport], join(dir, 'a'));
        const { parseTicket } = await import('../../crypto/ticket.ts');
        const { generateIdentity } = await import('../../crypto/identity.ts');
        const { openTransport } = await import('../../p2p/transports.ts');
        const { encodeHello } = await import('../../p2p/protocol/messages.ts');
        const t = await parseTicket(share.first);
        const me = await generateIdentity();
        const tr = await openTransport(transport, me);
        s.defer(() => tr.close());
        let seed = 99;
        const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
        const junk = (n: number) => Uint8Array.from({ length: n }, () => Math.floor(rnd() * 256));
        for (let round = 0; round < 30; round++) {
          const conn = await tr.dial(t.claims.endpoints[0]!.address, t.claims.sharer);
          const st = await conn.openStream();
          const parts: Uint8Array[] = [];
          // Half the rounds get past HELLO first (a valid grant), then junk.
          if (round % 2) parts.push(...encodeHello({ minVersion: 1, maxVersion: 1, limits: { maxFrame: 1 << 20, maxInFlight: 8 }, caps: [], grant: t.grant, agent: 'fuzz' }));
          parts.push(junk(1 + Math.floor(rnd() * 4000)));
          await st.write(parts).catch(() => {});
          // The sharer answers (refusal or error) and drops us, or we give up.
          await Promise.race([(async () => { while ((await st.read().catch(() => null)) !== null); })(), new Promise((r) => setTimeout(r, 300))]);
          await conn.close().catch(() => {});
        }
        assert.is(share.child.exitCode, null, 'the sharer is still running');
        const mount = await start(s, ['mount', share.first, '--listen', '127.0.0.1:0'], join(dir, 'b'));
        const r = await tool('qemu-io', ['-f', 'raw', mount.first, '-c', 'write -P 0x42 0 64k', '-c', 'read -P 0x42 0 64k']);
        assert.is(r.code, 0, r.stdout + r.stderr);
        assert.not.match(r.stdout, /failed/);
        await logged(share.stderr, /dropping the session/, 'share log');
      });
    } finally {
      await s.close();
    }
  });
}

test('share and mount have --help and are listed in the top-level help', async () => {
  const s = new Scope();
  try {
    const home = s.tmpdir();
    for (const cmd of ['share', 'mount']) {
      const r = await quicmap([cmd, '--help'], home);
      assert.is(r.code, 0);
      assert.match(r.stdout, new RegExp(`^Usage: quicmap ${cmd}`));
      assert.match(r.stdout, /--identity PATH/);
      assert.match(r.stdout, /--json/);
    }
    const top = await quicmap(['--help'], home);
    assert.match(top.stdout, /\n  share\s+share a region/);
    assert.match(top.stdout, /\n  mount\s+mount a peer/);
    const bad = await quicmap(['share', '--size', '1M', '--transport', 'udp'], home);
    assert.is(bad.code, 2);
    assert.match(bad.stderr, /--transport must be quic, webtransport or tcp, not "udp"/);
  } finally {
    await s.close();
  }
});

const fuseOk = existsSync('/dev/fuse') && process.getuid?.() === 0 && hasTool('nbdfuse') && hasTool('python3');
needCondition(test, fuseOk, 'needs root, /dev/fuse, nbdfuse and python3')('quic: mount --mount DIR makes the remote region mmap-able; mmap writes reach the sharer', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'mmap mount', async () => {
      const dir = s.tmpdir();
      const img = join(dir, 'disk.img');
      makeImage(img, 16 * MiB, [{ at: MiB, len: 4096, byte: 0x61 }]);
      const share = await start(s, ['share', '--backend', `file:${img}`, '--listen', '127.0.0.1:0', '--transport', 'quic'], join(dir, 'a'));
      const mnt = join(dir, 'mnt');
      const mount = await start(s, ['mount', share.first, '--socket', join(dir, 'nbd.sock'), '--mount', mnt], join(dir, 'b'), 2);
      assert.match(mount.lines[0]!, /^nbd\+unix:/);
      const path = mount.lines[1]!;
      assert.ok(path.startsWith(mnt), path);
      const py = `
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 2 * 1024 * 1024, mmap.MAP_SHARED)
assert m[1048576:1048576 + 4096] == b'a' * 4096, 'sharer data visible through mmap'
m[0:11] = b'hello, peer'
m.flush()
print('ok')
`;
      const r = await tool('python3', ['-c', py, path]);
      assert.is(r.code, 0, r.stdout + r.stderr);
      assert.is(readImage(img, 0, 11).toString(), 'hello, peer');
      // SIGTERM unmounts and exits cleanly.
      mount.child.kill('SIGTERM');
      assert.is(await withTimeout(15_000, 'mount exit', mount.exited), 0);
    });
  } finally {
    await s.close();
  }
});

test.run();
