/**
 * `quicmap mount` with tickets that must be refused — missing, foreign,
 * tampered, signed by a stranger, for another region, expired, bound to
 * another peer — and a read-only share refusing writes; over QUIC and TCP,
 * share and mount as real processes.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { needTools, Scope, withTimeout } from '../helpers/env.ts';
import { logged, quicmap, start, tool } from './procs.ts';

const test = suite('cli-share-mount/refusals');
const TRANSPORTS = ['tcp', 'quic'] as const;

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

test.run();
