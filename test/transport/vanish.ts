/**
 * Shared test: a peer process is killed mid-transfer; the reader's pending
 * read must reject (no hang) and the connection must report closed.
 */
import * as assert from 'uvu/assert';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Transport } from '../../transports/transport.ts';
import { generateIdentity, type Identity } from '../../crypto/identity.ts';
import { Scope, killTree, withTimeout } from '../helpers/env.ts';
import { QuicmapError } from '../../base/errors.ts';

const child = fileURLToPath(new URL('./peer-child.ts', import.meta.url));

export async function vanishingPeer(kind: 'quic' | 'quic-ngtcp2' | 'tcp' | 'ngtcp2' | 'webtransport', make: (id: Identity) => Transport, childOpts: Record<string, number>, limitMs: number): Promise<void> {
  const s = new Scope();
  try {
    await withTimeout(limitMs + 15_000, `${kind} vanishing peer`, async () => {
      const proc = s.spawn(process.execPath, ['--import', 'tsx', child, kind, JSON.stringify(childOpts)], { cwd: fileURLToPath(new URL('../..', import.meta.url)) });
      const line = await new Promise<string>((resolve, reject) => {
        const rl = createInterface({ input: proc.stdout! });
        rl.once('line', resolve);
        proc.once('exit', (code) => reject(new Error(`peer exited early (${code})`)));
      });
      const { address, publicKey } = JSON.parse(line) as { address: string; publicKey: string };
      const t = make(await generateIdentity());
      s.defer(() => t.close());
      const conn = await t.dial(address, Buffer.from(publicKey, 'hex'));
      const st = await conn.openStream();
      await st.write(Buffer.from('go'));
      let got = 0;
      while (got < 4 * 1024 * 1024) {
        const c = await st.read();
        assert.ok(c, 'stream still open before the kill');
        got += c!.length;
      }
      // Mid-transfer: kill it, then keep reading; a read must fail, bounded in time.
      const killedAt = Date.now();
      await killTree(proc);
      let err: unknown;
      try {
        for (;;) {
          const c = await st.read();
          if (c === null) break;
        }
      } catch (e) {
        err = e;
      }
      const took = Date.now() - killedAt;
      assert.ok(err, 'reading from a vanished peer ended with an error, not a clean end');
      assert.ok(err instanceof QuicmapError, `typed error, got ${String(err)}`);
      assert.ok(took < limitMs, `read failed after ${took} ms (limit ${limitMs})`);
      await withTimeout(limitMs, 'connection closed', conn.closed);
      await assertRejects(conn.openStream().then((x) => x.write(Buffer.from('x'))));
    });
  } finally {
    await s.close();
  }
}

async function assertRejects(p: Promise<unknown>): Promise<void> {
  try {
    await p;
  } catch {
    return;
  }
  assert.unreachable('expected a rejection on a dead connection');
}
