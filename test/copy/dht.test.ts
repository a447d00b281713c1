/**
 * `quicmap copy` between tickets without addresses, with real processes on
 * a private DHT on loopback (never a public router): `quicmap dht`, two
 * `quicmap share --dht` (their tickets hold no address; their signed DHT
 * records say where they are), and `quicmap copy --dht`, which finds both
 * sharers through the records and tells the destination where the source
 * is. The bytes arrive, by reference (under 1 % through the orchestrator).
 * Without --dht the copy is refused with one line naming the flag.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseTicket } from '../../crypto/ticket.ts';
import { Scope, SYSTEM_PATH, run, withTimeout } from '../helpers/env.ts';
import { QUICMAP, startCli } from '../helpers/cli.ts';

const SIZE = 8 << 20;

test('copy --dht: address-less source and destination found through their DHT records; bytes by reference', async () => {
  const s = new Scope();
  try {
    await withTimeout(90_000, 'copy --dht', async () => {
      const home = s.tmpdir();
      const env = { ...process.env, PATH: SYSTEM_PATH, QUICMAP_HOME: home };
      const data = randomBytes(SIZE);
      writeFileSync(join(home, 'src.img'), data);
      writeFileSync(join(home, 'dst.img'), Buffer.alloc(SIZE));
      const dht = await startCli(s, ['dht', '--listen', '127.0.0.1:0', '--query-timeout', '250ms'], env).line();
      const share = (name: string, extra: string[]) =>
        startCli(s, ['share', '--backend', `file:${join(home, `${name}.img`)}`, '--listen', '127.0.0.1:0', '--transport', 'tcp', '--dht', dht, '--dht-listen', '127.0.0.1:0', '--identity', join(home, `${name}.id`), '--control', join(home, `${name}.sock`), ...extra], env).line(30_000);
      const [src, dst] = await Promise.all([share('src', ['--read-only']), share('dst', [])]);
      assert.equal((await parseTicket(src)).claims.endpoints, [], 'the source ticket holds no address');
      assert.equal((await parseTicket(dst)).claims.endpoints, [], 'the destination ticket holds no address');

      const noDht = await run(process.execPath, [QUICMAP, 'copy', src, dst, '--identity', join(home, 'c.id')], { env, timeoutMs: 30_000 });
      assert.is(noDht.code, 1, noDht.stderr);
      assert.match(noDht.stderr.trim(), /^quicmap copy: .*holds no address.*--dht/);
      assert.is(noDht.stderr.trim().split('\n').length, 1);

      const r = await run(process.execPath, [QUICMAP, 'copy', src, dst, '--dht', dht, '--dht-listen', '127.0.0.1:0', '--json', '--identity', join(home, 'c.id')], { env, timeoutMs: 60_000 });
      assert.is(r.code, 0, r.stderr);
      const j = JSON.parse(r.stdout.trim().split('\n').pop()!) as { bytes: number; throughC: number; inlineBytes: number; sourceRefs: number | null };
      assert.is(j.bytes, SIZE);
      assert.is(j.inlineBytes, 0);
      assert.ok(j.throughC < 0.01 * SIZE, `bytes through the orchestrator: ${j.throughC}`);
      assert.is(j.sourceRefs, 0);
      assert.ok(readFileSync(join(home, 'dst.img')).equals(data), 'the destination holds the source bytes');
      assert.match(r.stderr, /sharer is at tcp:\/\/127\.0\.0\.1:\d+ \(DHT record\)/);
    });
  } finally {
    await s.close();
  }
});

test.run();
