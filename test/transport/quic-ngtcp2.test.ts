/**
 * The `quic` transport on ngtcp2 (transports/quic-ngtcp2.ts): the
 * conformance suite, a killed peer, what `quic` means (quic-choice.ts), the
 * library fallback on the same wire (conformance with one end on each
 * implementation), and stateless reset: a peer that lost its state (killed,
 * restarted on the same port with the same identity) ends our connection at
 * once instead of after the idle timeout.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { QuicNgtcp2Transport } from '../../transports/quic-ngtcp2.ts';
import { QuicTransport } from '../../transports/quic.ts';
import { createQuicTransport, quicImplementation } from '../../transports/quic-choice.ts';
import { openTransport } from '../../p2p/transports.ts';
import type { Transport } from '../../transports/transport.ts';
import type { Identity } from '../../crypto/identity.ts';
import { generateIdentity } from '../../crypto/identity.ts';
import { defineConformance, readAll, serveEcho } from './conformance.ts';
import { vanishingPeer } from './vanish.ts';
import { Scope, STRICT_TOOLS, withTimeout } from '../helpers/env.ts';
import { QuicmapError } from '../../base/errors.ts';

const test = suite('transport/quic-ngtcp2');
const why = QuicNgtcp2Transport.unavailableReason();
const child = fileURLToPath(new URL('./peer-child.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('../..', import.meta.url));

test('QUICMAP_QUIC picks the implementation; a typo is an error, not a silent choice', () => {
  assert.is(quicImplementation({ QUICMAP_QUIC: 'library' }).implementation, 'library');
  assert.is(quicImplementation({}).implementation, why ? 'library' : 'ngtcp2');
  assert.throws(() => quicImplementation({ QUICMAP_QUIC: 'quinn' }), (e: unknown) => e instanceof QuicmapError && e.code === 'EINVAL');
  if (why) assert.throws(() => quicImplementation({ QUICMAP_QUIC: 'ngtcp2' }), (e: unknown) => e instanceof QuicmapError && e.code === 'ENOTSUP');
  else assert.is(quicImplementation({ QUICMAP_QUIC: 'ngtcp2' }).implementation, 'ngtcp2');
});

if (why && !STRICT_TOOLS) {
  console.log(`  SKIP transport/quic-ngtcp2 (quic falls back to the library here): ${why}`);
} else if (why) {
  test('the ngtcp2 quic transport is available (QUICMAP_REQUIRE_TOOLS=1)', () => {
    throw new Error(`required: ${why}`);
  });
} else {
  const opts = { idleTimeoutMs: 5000, keepAliveMs: 1000, handshakeTimeoutMs: 5000, streamWindow: 1024 * 1024, connectionWindow: 4 * 1024 * 1024 };

  test('quic is the ngtcp2 transport by default, through the factory every command uses', async () => {
    const id = await generateIdentity();
    const t = await openTransport('quic', id);
    try {
      assert.ok(t instanceof QuicNgtcp2Transport, 'openTransport("quic") gives the ngtcp2 transport');
      assert.is(t.name, 'quic');
    } finally {
      await t.close();
    }
    const lib = await createQuicTransport(id, {}, 'library');
    try {
      assert.ok(lib instanceof QuicTransport, 'the library stays behind the same factory');
    } finally {
      await lib.close();
    }
  });

  defineConformance(test, {
    make: (id) => new QuicNgtcp2Transport(id, opts),
    listenAddress: '127.0.0.1:0',
    largeBytes: 32 * 1024 * 1024,
    backpressureLimit: 8 * 1024 * 1024,
  });

  test('a peer that vanishes mid-transfer makes pending reads reject', () =>
    vanishingPeer('quic-ngtcp2', (id) => new QuicNgtcp2Transport(id, { idleTimeoutMs: 1500, keepAliveMs: 500 }), { idleTimeoutMs: 1500, keepAliveMs: 500 }, 4000),
  );

  const run = (name: string, ms: number, fn: (s: Scope) => Promise<void>) =>
    test(name, async () => {
      const s = new Scope();
      try {
        await withTimeout(ms, name, fn(s));
      } finally {
        await withTimeout(10_000, `${name} cleanup`, s.close());
      }
    });

  // Both directions, several streams each way: the two implementations share the wire.
  for (const [srvName, cliName, srv, cli] of [
    ['library', 'ngtcp2', (id: Identity) => new QuicTransport(id, opts), (id: Identity) => new QuicNgtcp2Transport(id, opts)],
    ['ngtcp2', 'library', (id: Identity) => new QuicNgtcp2Transport(id, opts), (id: Identity) => new QuicTransport(id, opts)],
  ] as const) {
    run(`a ${cliName} dialer and a ${srvName} listener interoperate (streams both ways, identities both ways)`, 30_000, async (s) => {
      const serverId = await generateIdentity();
      const clientId = await generateIdentity();
      const server: Transport = srv(serverId);
      s.defer(() => server.close());
      const client: Transport = cli(clientId);
      s.defer(() => client.close());
      const l = await server.listen('127.0.0.1:0');
      const [conn, peer] = await Promise.all([client.dial(l.address, serverId.publicKey, { timeoutMs: 10_000 }), l.accept()]);
      assert.ok(Buffer.from(peer!.remotePublicKey).equals(Buffer.from(clientId.publicKey)), 'listener sees the dialer key');
      assert.ok(Buffer.from(conn.remotePublicKey).equals(Buffer.from(serverId.publicKey)), 'dialer sees the listener key');
      void serveEcho(peer!);
      void serveEcho(conn);
      const msgs = Array.from({ length: 8 }, (_, i) => randomBytes(100_000 * (i + 1)));
      await Promise.all(
        msgs.map(async (m, i) => {
          const st = await (i % 2 ? peer! : conn).openStream();
          await st.write(m);
          await st.closeWrite();
          assert.ok((await readAll(st)).equals(m), `stream ${i} echoed`);
        }),
      );
    });
  }

  run('a restarted peer (same identity, same port) ends our connection with a stateless reset, not the idle timeout', 60_000, async (s) => {
    const seed = randomBytes(32).toString('hex');
    // Generous timeouts: only a stateless reset can end the connection within the test's limit.
    const childOpts = { idleTimeoutMs: 120_000, keepAliveMs: 60_000, handshakeTimeoutMs: 10_000 };
    const start = async (at: string): Promise<{ address: string; publicKey: Buffer; kill: () => Promise<void> }> => {
      const proc = s.spawn(process.execPath, ['--import', 'tsx', child, 'quic-ngtcp2', JSON.stringify(childOpts), at, seed], { cwd: ROOT });
      const line = await new Promise<string>((resolve, reject) => {
        createInterface({ input: proc.stdout! }).once('line', resolve);
        proc.once('exit', (code) => reject(new Error(`peer exited early (${code})`)));
      });
      const j = JSON.parse(line) as { address: string; publicKey: string };
      return {
        address: j.address,
        publicKey: Buffer.from(j.publicKey, 'hex'),
        kill: () =>
          new Promise<void>((r) => {
            if (proc.exitCode !== null || proc.signalCode) return r();
            proc.once('exit', () => r());
            proc.kill('SIGKILL');
          }),
      };
    };
    const first = await start('127.0.0.1:0');
    const t = new QuicNgtcp2Transport(await generateIdentity(), childOpts);
    s.defer(() => t.close());
    const conn = await t.dial(first.address, first.publicKey);
    const st = await conn.openStream();
    await st.write(Buffer.from('go'));
    const got = await st.read(); // the child streams bytes once it hears from us
    assert.ok(got && got.length > 0, 'the first peer streams');
    await st.closeWrite().catch(() => {});
    await first.kill();
    const second = await start(first.address);
    assert.ok(second.publicKey.equals(first.publicKey), 'same identity');
    let ended = false;
    void conn.closed.then(() => (ended = true));
    // Traffic towards the new process: packets for a connection it never had.
    const poke = (async () => {
      while (!ended) {
        const x = await conn.openStream().catch(() => undefined);
        if (!x) return;
        await x.write(Buffer.alloc(4096, 1)).catch(() => {});
        await new Promise((r) => setTimeout(r, 200));
      }
    })();
    await conn.closed;
    await poke;
    // Said as what it was: not the "closed by peer" of a CONNECTION_CLOSE.
    const why = await st.read().then(
      () => 'no error',
      (e: Error) => e.message,
    );
    assert.match(why, /stateless reset/, `the reads fail naming the stateless reset (${why})`);
    // And the restarted peer serves a new connection.
    const again = await t.dial(second.address, second.publicKey);
    const st2 = await again.openStream();
    await st2.write(Buffer.from('go'));
    const got2 = await st2.read();
    assert.ok(got2 && got2.length > 0, 'the restarted peer serves');
  });
}

test.run();
