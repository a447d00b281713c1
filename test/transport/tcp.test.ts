import { suite } from 'uvu';
import { TcpTransport } from '../../transports/tcp.ts';
import { defineConformance } from './conformance.ts';
import { vanishingPeer } from './vanish.ts';
import * as assert from 'uvu/assert';
import { generateIdentity } from '../../crypto/identity.ts';
import { Scope, withTimeout } from '../helpers/env.ts';
import { background, readAll } from './conformance.ts';

const test = suite('transport/tcp');
defineConformance(test, {
  make: (id) => new TcpTransport(id, { idleTimeoutMs: 3000, keepAliveMs: 1000, handshakeTimeoutMs: 2000, streamWindow: 1024 * 1024 }),
  listenAddress: '127.0.0.1:0',
  largeBytes: 32 * 1024 * 1024,
  backpressureLimit: 4 * 1024 * 1024,
});
test('a peer that vanishes mid-transfer makes pending reads reject', () =>
  vanishingPeer('tcp', (id) => new TcpTransport(id, { idleTimeoutMs: 1500, keepAliveMs: 500 }), { idleTimeoutMs: 1500, keepAliveMs: 500 }, 3000),
);

test('the connection window bounds what many unread streams can buffer', async () => {
  const s = new Scope();
  try {
    await withTimeout(15_000, 'connection window', async () => {
      const serverId = await generateIdentity();
      const server = new TcpTransport(serverId, { streamWindow: 256 * 1024, connectionWindow: 1024 * 1024 });
      s.defer(() => server.close());
      const client = new TcpTransport(await generateIdentity());
      s.defer(() => client.close());
      const l = await server.listen('127.0.0.1:0');
      const [conn, peer] = await Promise.all([client.dial(l.address, serverId.publicKey), l.accept()]);
      // Let SETTINGS arrive before counting.
      const probe = await conn.openStream();
      await probe.write(Buffer.from('p'));
      await (await peer!.acceptStream())!.read();
      let accepted = 0;
      const chunk = Buffer.alloc(32 * 1024, 3);
      const writers = [];
      for (let i = 0; i < 40; i++) {
        const st = await conn.openStream();
        writers.push(
          background(
            (async () => {
              for (let k = 0; k < 16; k++) {
                await st.write(chunk);
                accepted += chunk.length;
              }
              await st.closeWrite();
            })(),
          ),
        );
      }
      await new Promise((r) => setTimeout(r, 500));
      // 40 streams x 256 KiB of stream windows, but only 1 MiB for the connection.
      assert.ok(accepted <= 1024 * 1024 + 64 * 1024, `accepted ${accepted} bytes with nobody reading`);
      assert.ok(accepted >= 512 * 1024, `accepted only ${accepted}`);
      // Reading everything releases the credit and every writer finishes.
      let total = 0;
      await Promise.all(
        Array.from({ length: 40 }, async () => {
          const st = (await peer!.acceptStream())!;
          const n = (await readAll(st)).length;
          total += n;
        }),
      );
      await Promise.all(writers);
      assert.is(total, 40 * 16 * chunk.length);
    });
  } finally {
    await s.close();
  }
});

test.run();
