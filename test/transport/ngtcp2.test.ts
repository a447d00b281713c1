import { suite } from 'uvu';
import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import * as assert from 'uvu/assert';
import { Ngtcp2Transport } from '../../transports/ngtcp2.ts';
import { muxOverByteStream } from '../../transports/carrier.ts';
import { QuicTransport } from '../../transports/quic.ts';
import { defineConformance, expectCode, readAll, serveEcho } from './conformance.ts';
import { vanishingPeer } from './vanish.ts';
import { generateIdentity } from '../../crypto/identity.ts';
import { Scope, STRICT_TOOLS, withTimeout } from '../helpers/env.ts';

const test = suite('transport/ngtcp2');
const why = Ngtcp2Transport.unavailableReason();

if (why && !STRICT_TOOLS) {
  console.log(`  SKIP transport/ngtcp2: ${why}`);
  test.skip('ngtcp2 transport', () => {});
} else if (why) {
  test('ngtcp2 transport is available (QUICMAP_REQUIRE_TOOLS=1)', () => {
    throw new Error(`required: ${why}`);
  });
} else {
  const opts = { idleTimeoutMs: 3000, keepAliveMs: 1000, handshakeTimeoutMs: 2000, streamWindow: 1024 * 1024, connectionWindow: 4 * 1024 * 1024, sendHighWater: 1024 * 1024 };
  defineConformance(test, {
    make: (id) => new Ngtcp2Transport(id, opts),
    listenAddress: '127.0.0.1:0',
    largeBytes: 32 * 1024 * 1024,
    backpressureLimit: 4 * 1024 * 1024,
  });

  test('a peer that vanishes mid-transfer makes pending reads reject', () =>
    vanishingPeer('ngtcp2', (id) => new Ngtcp2Transport(id, { idleTimeoutMs: 1500, keepAliveMs: 500 }), { idleTimeoutMs: 1500, keepAliveMs: 500 }, 4000),
  );

  const run = (name: string, fn: (s: Scope) => Promise<void>) =>
    test(name, async () => {
      const s = new Scope();
      try {
        await withTimeout(15_000, name, fn(s));
      } finally {
        await withTimeout(10_000, `${name} cleanup`, s.close());
      }
    });

  run('datagrams are larger than 1200 bytes on loopback', async (s) => {
    const serverId = await generateIdentity();
    const server = new Ngtcp2Transport(serverId, opts);
    s.defer(() => server.close());
    const client = new Ngtcp2Transport(await generateIdentity(), opts);
    s.defer(() => client.close());
    const l = await server.listen('127.0.0.1:0');
    const [conn, peer] = await Promise.all([client.dial(l.address, serverId.publicKey), l.accept()]);
    void serveEcho(peer!);
    const st = await conn.openStream();
    const msg = Buffer.alloc(1 << 20, 3);
    await st.write(msg);
    await st.closeWrite();
    assert.is((await readAll(st)).length, msg.length);
    const stats = client.stats().ipv4!;
    assert.ok(stats.maxDatagramOut > 1200, `largest datagram ${stats.maxDatagramOut} bytes`);
    assert.ok(stats.datagramsOut < msg.length / 1200, `${stats.datagramsOut} datagrams for 1 MiB`);
  });

  run('openStream fails with ETIMEDOUT at the peer stream limit, and recovers', async (s) => {
    const serverId = await generateIdentity();
    const server = new Ngtcp2Transport(serverId, { ...opts, maxStreams: 4 });
    s.defer(() => server.close());
    const client = new Ngtcp2Transport(await generateIdentity(), { ...opts, streamOpenTimeoutMs: 300 });
    s.defer(() => client.close());
    const l = await server.listen('127.0.0.1:0');
    const [conn, peer] = await Promise.all([client.dial(l.address, serverId.publicKey), l.accept()]);
    void serveEcho(peer!);
    const open = [];
    for (let i = 0; i < 4; i++) {
      const st = await conn.openStream();
      await st.write(Buffer.from('x'));
      open.push(st);
    }
    await expectCode(conn.openStream(), ['ETIMEDOUT'], '5th stream');
    await open[0]!.closeWrite();
    assert.is((await readAll(open[0]!)).toString(), 'x');
    let again;
    for (let i = 0; i < 20 && !again; i++) again = await conn.openStream().catch(() => undefined);
    assert.ok(again, 'a stream slot came back');
  });

  run('closing the dialer side ends the listener side (CONNECTION_CLOSE reaches the peer)', async (s) => {
    const serverId = await generateIdentity();
    const clientId = await generateIdentity();
    const server = new Ngtcp2Transport(serverId, opts);
    s.defer(() => server.close());
    const client = new Ngtcp2Transport(clientId, opts);
    s.defer(() => client.close());
    const l = await server.listen('127.0.0.1:0');
    const [conn, peer] = await Promise.all([client.dial(l.address, serverId.publicKey), l.accept()]);
    assert.ok(Buffer.from(peer!.remotePublicKey).equals(Buffer.from(clientId.publicKey)));
    await conn.close();
    await peer!.closed;
  });

  // QuicTransport runs its mux over one carrier stream per connection
  // (quic.ts); the ngtcp2 side joins it by running the same mux over one of
  // its streams (muxOverByteStream). QUIC, ALPN and certificates are the
  // libraries' own: that is the interoperation tested.
  run('interoperates with the @chainsafe/libp2p-quic transport (same ALPN and certificate scheme)', async (s) => {
    const serverId = await generateIdentity();
    const server = new QuicTransport(serverId, { idleTimeoutMs: 3000, keepAliveMs: 1000 });
    s.defer(() => server.close());
    const clientId = await generateIdentity();
    const client = new Ngtcp2Transport(clientId, opts);
    s.defer(() => client.close());
    const l = await server.listen('127.0.0.1:0');
    const [conn, peer] = await Promise.all([
      client.dial(l.address, serverId.publicKey, { timeoutMs: 4000 }).then(async (c) => muxOverByteStream(await c.openStream(), c.remotePublicKey, c.remoteAddress, true)),
      l.accept(),
    ]);
    s.defer(() => conn.close());
    assert.ok(Buffer.from(peer!.remotePublicKey).equals(Buffer.from(clientId.publicKey)), 'library sees our key');
    assert.ok(Buffer.from(conn.remotePublicKey).equals(Buffer.from(serverId.publicKey)), 'we see the library peer key');
    void serveEcho(peer!);
    const st = await conn.openStream();
    await st.write(Buffer.from('interop'));
    await st.closeWrite();
    assert.is((await readAll(st)).toString(), 'interop');
  });

  run('the @chainsafe/libp2p-quic transport dials an ngtcp2 listener', async (s) => {
    const serverId = await generateIdentity();
    const server = new Ngtcp2Transport(serverId, opts);
    s.defer(() => server.close());
    const clientId = await generateIdentity();
    const client = new QuicTransport(clientId, { idleTimeoutMs: 3000, keepAliveMs: 1000 });
    s.defer(() => client.close());
    const l = await server.listen('127.0.0.1:0');
    const [conn, raw] = await Promise.all([client.dial(l.address, serverId.publicKey, { timeoutMs: 4000 }), l.accept()]);
    // The library transport's carrier stream arrives as the connection's first stream.
    const carrier = (await raw!.acceptStream())!;
    const peer = muxOverByteStream(carrier, raw!.remotePublicKey, raw!.remoteAddress, false);
    s.defer(() => peer.close());
    assert.ok(Buffer.from(peer.remotePublicKey).equals(Buffer.from(clientId.publicKey)), 'we see the library peer key');
    assert.ok(Buffer.from(conn.remotePublicKey).equals(Buffer.from(serverId.publicKey)), 'the library sees ours');
    void serveEcho(peer);
    const st = await conn.openStream();
    const msg = Buffer.alloc(3 << 20, 7);
    await st.write(msg);
    await st.closeWrite();
    assert.ok((await readAll(st)).equals(msg));
  });

  run('junk datagrams neither crash the listener nor stop it serving', async (s) => {
    const serverId = await generateIdentity();
    const server = new Ngtcp2Transport(serverId, opts);
    s.defer(() => server.close());
    const l = await server.listen('127.0.0.1:0');
    const port = Number(l.address.slice(l.address.lastIndexOf(':') + 1));
    const sock = createSocket('udp4');
    s.defer(() => new Promise<void>((r) => sock.close(() => r())));
    // Random bytes, truncated long headers, a fake Initial with a bogus version, empty datagrams.
    const junk = [randomBytes(1200), randomBytes(20), Buffer.from([0xc0, 0, 0, 0, 1, 8]), Buffer.concat([Buffer.from([0xc0, 0xfa, 0xce, 0xb0, 0x0c]), randomBytes(1195)]), Buffer.alloc(0)];
    for (let i = 0; i < 200; i++) await new Promise<void>((r) => sock.send(junk[i % junk.length]!, port, '127.0.0.1', () => r()));
    const client = new Ngtcp2Transport(await generateIdentity(), opts);
    s.defer(() => client.close());
    const [conn, peer] = await Promise.all([client.dial(l.address, serverId.publicKey), l.accept()]);
    void serveEcho(peer!);
    const st = await conn.openStream();
    await st.write(Buffer.from('still serving'));
    await st.closeWrite();
    assert.is((await readAll(st)).toString(), 'still serving');
  });

  run('IPv6 loopback works', async (s) => {
    const serverId = await generateIdentity();
    const server = new Ngtcp2Transport(serverId, opts);
    s.defer(() => server.close());
    let l;
    try {
      l = await server.listen('[::1]:0');
    } catch {
      console.log('  (no IPv6 loopback here; skipped)');
      return;
    }
    const client = new Ngtcp2Transport(await generateIdentity(), opts);
    s.defer(() => client.close());
    const [conn, peer] = await Promise.all([client.dial(l.address, serverId.publicKey), l.accept()]);
    void serveEcho(peer!);
    const st = await conn.openStream();
    await st.write(Buffer.from('v6'));
    await st.closeWrite();
    assert.is((await readAll(st)).toString(), 'v6');
  });
}

test.run();
