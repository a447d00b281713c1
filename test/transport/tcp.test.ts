import { suite } from 'uvu';
import { TcpTransport } from '../../transports/tcp.ts';
import { defineConformance } from './conformance.ts';
import { vanishingPeer } from './vanish.ts';
import * as assert from 'uvu/assert';
import { generateIdentity } from '../../crypto/identity.ts';
import { Scope, withTimeout } from '../helpers/env.ts';
import { background, readAll, serveEcho } from './conformance.ts';
import { randomBytes } from 'node:crypto';

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

test('uneven writes of many sizes on many streams arrive intact (batches split across TLS reads)', async () => {
  const s = new Scope();
  try {
    await withTimeout(20_000, 'many sizes', async () => {
      const serverId = await generateIdentity();
      const server = new TcpTransport(serverId);
      s.defer(() => server.close());
      const client = new TcpTransport(await generateIdentity());
      s.defer(() => client.close());
      const l = await server.listen('127.0.0.1:0');
      const [conn, peer] = await Promise.all([client.dial(l.address, serverId.publicKey), l.accept()]);
      void serveEcho(peer!);
      // Sizes that end records and reads at odd places, many streams at once so
      // records interleave and a read holds pieces of several of them.
      const sizes = [1, 15, 16, 17, 4095, 65_535, 65_536, 65_537, 262_143, 262_153, 300_001, 1_048_583, 3 * 1024 * 1024 + 7];
      await Promise.all(
        [...sizes, ...sizes].map(async (n) => {
          const data = randomBytes(n);
          const st = await conn.openStream();
          const got = background(readAll(st));
          // Written in uneven pieces so frames and records do not line up with the data.
          for (let off = 0, k = 0; off < n; k++) {
            const len = Math.min(n - off, [1, 999, 70_000, 250_000][k % 4]!);
            await st.write(data.subarray(off, off + len));
            off += len;
          }
          await st.closeWrite();
          const echoed = await got;
          assert.is(echoed.length, n);
          assert.ok(echoed.equals(data), `stream of ${n} bytes came back intact`);
        }),
      );
    });
  } finally {
    await s.close();
  }
});

test.run();
