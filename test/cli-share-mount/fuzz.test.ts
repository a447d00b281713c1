/**
 * Malformed frames from an authenticated peer (half of them after a valid
 * HELLO) against a `quicmap share` process: it drops the session and keeps
 * serving a real mount; over QUIC and TCP.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { needTools, Scope, withTimeout } from '../helpers/env.ts';
import { logged, start, tool } from './procs.ts';

const test = suite('cli-share-mount/fuzz');
const TRANSPORTS = ['tcp', 'quic'] as const;

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

test.run();
