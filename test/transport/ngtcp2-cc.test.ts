/**
 * The ngtcp2 transport's congestion-control option: every controller
 * ngtcp2 0.12 offers carries a connection both ways (the lab in
 * bench/wan measures how they differ; no test asserts speed), the default
 * is the one the lab chose, and a name ngtcp2 does not know is refused
 * instead of silently becoming another controller.
 */
import { suite } from 'uvu';
import { randomBytes } from 'node:crypto';
import * as assert from 'uvu/assert';
import { NGTCP2_DEFAULTS, Ngtcp2Transport, type Ngtcp2TransportOptions } from '../../transports/ngtcp2.ts';
import { expectCode, readAll, serveEcho } from './conformance.ts';
import { generateIdentity } from '../../crypto/identity.ts';
import { Scope, STRICT_TOOLS, withTimeout } from '../helpers/env.ts';

const test = suite('transport/ngtcp2-cc');
const why = Ngtcp2Transport.unavailableReason();

if (why && !STRICT_TOOLS) {
  console.log(`  SKIP transport/ngtcp2-cc: ${why}`);
  test.skip('ngtcp2 congestion control', () => {});
} else if (why) {
  test('ngtcp2 transport is available (QUICMAP_REQUIRE_TOOLS=1)', () => {
    throw new Error(`required: ${why}`);
  });
} else {
  const CCS: Array<NonNullable<Ngtcp2TransportOptions['cc']>> = ['bbr', 'cubic', 'reno', 'bbr2'];

  test('the default controller is BBR', () => {
    assert.is(NGTCP2_DEFAULTS.cc, 'bbr');
  });

  for (const cc of CCS) {
    test(`${cc}: a 2 MiB echo over one connection`, async () => {
      const s = new Scope();
      try {
        await withTimeout(30_000, cc, async () => {
          const serverId = await generateIdentity();
          const server = new Ngtcp2Transport(serverId, { cc });
          s.defer(() => server.close());
          const client = new Ngtcp2Transport(await generateIdentity(), { cc });
          s.defer(() => client.close());
          const l = await server.listen('127.0.0.1:0');
          const [conn, peer] = await Promise.all([client.dial(l.address, serverId.publicKey), l.accept()]);
          void serveEcho(peer!);
          const st = await conn.openStream();
          const msg = randomBytes(2 << 20);
          const back = readAll(st);
          await st.write(msg);
          await st.closeWrite();
          assert.ok((await back).equals(msg), 'the echo is the bytes sent');
        });
      } finally {
        await withTimeout(10_000, `${cc} cleanup`, s.close());
      }
    });
  }

  test('an unknown controller is refused with EINVAL', async () => {
    const id = await generateIdentity();
    await expectCode((async () => new Ngtcp2Transport(id, { cc: 'vegas' as 'bbr' }))(), ['EINVAL'], 'cc "vegas"');
  });
}

test.run();
