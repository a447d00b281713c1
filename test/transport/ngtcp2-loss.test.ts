/**
 * The ngtcp2 data path through a lossy link (lossy-link.ts: a loopback
 * forwarder that drops, duplicates and reorders datagrams by a seeded PRNG).
 *
 * The defect this guards (transports/README.md, "ngtcp2 under loss"): when
 * the dialer's Finished was lost or late, its first 1-RTT packets (the
 * carrier's SETTINGS, a request) reached the listener first and were
 * buffered by ngtcp2, then processed in the same read that completed the
 * handshake; the native layer announced their stream and data before the
 * connection itself, and JS dropped them. The dialer's stream was never seen:
 * the default `quic` listener closed the connection after its carrier
 * deadline ("connection closed by peer"), native streams stalled forever.
 * Holding the dialer's Handshake datagrams back makes that order certain.
 */
import { suite } from 'uvu';
import { randomBytes } from 'node:crypto';
import * as assert from 'uvu/assert';
import { Ngtcp2Transport } from '../../transports/ngtcp2.ts';
import { QuicNgtcp2Transport } from '../../transports/quic-ngtcp2.ts';
import type { Connection, Transport } from '../../transports/transport.ts';
import { generateIdentity, type Identity } from '../../crypto/identity.ts';
import { readAll, serveEcho } from './conformance.ts';
import { LossyLink, type LossyLinkOptions } from './lossy-link.ts';
import { Scope, STRICT_TOOLS, withTimeout } from '../helpers/env.ts';

const test = suite('transport/ngtcp2-loss');
const why = Ngtcp2Transport.unavailableReason();

type Make = (id: Identity) => Transport;
// Deadlines well above what the link costs, so only the defect can miss them.
const base = { idleTimeoutMs: 15_000, keepAliveMs: 2_000, handshakeTimeoutMs: 6_000, dialTimeoutMs: 10_000 };
const KINDS: [string, Make][] = [
  ['native streams', (id) => new Ngtcp2Transport(id, { ...base, maxUdpPayload: 1452 })],
  ['quic (carrier)', (id) => new QuicNgtcp2Transport(id, base)],
];

/** Whether `c` has ended, as a flag to assert on. */
function watchClosed(c: Connection): { ended: boolean } {
  const w = { ended: false };
  void c.closed.then(() => (w.ended = true), () => (w.ended = true));
  return w;
}

async function echo(c: Connection, bytes: number): Promise<void> {
  const st = await c.openStream();
  const msg = randomBytes(bytes);
  await st.write(msg);
  await st.closeWrite();
  const got = await readAll(st);
  assert.ok(got.equals(msg), `echo of ${bytes} bytes came back whole (${got.length})`);
}

/** A listener behind a lossy link echoing every stream; returns the address to dial. */
async function lossyServer(s: Scope, make: Make, link: LossyLinkOptions): Promise<{ id: Identity; address: string; link: LossyLink }> {
  const id = await generateIdentity();
  const server = make(id);
  s.defer(() => server.close());
  const l = await server.listen('127.0.0.1:0');
  const front = await LossyLink.open(l.address, link);
  s.defer(() => front.close());
  void (async () => {
    for (let c; (c = await l.accept().catch(() => null)); ) void serveEcho(c);
  })();
  return { id, address: front.address, link: front };
}

if (why && !STRICT_TOOLS) {
  console.log(`  SKIP transport/ngtcp2-loss: ${why}`);
  test.skip('ngtcp2 under loss', () => {});
} else if (why) {
  test('ngtcp2 transport is available (QUICMAP_REQUIRE_TOOLS=1)', () => {
    throw new Error(`required: ${why}`);
  });
} else {
  const run = (name: string, ms: number, fn: (s: Scope) => Promise<void>) =>
    test(name, async () => {
      const s = new Scope();
      try {
        await withTimeout(ms, name, fn(s));
      } finally {
        await withTimeout(10_000, `${name} cleanup`, s.close());
      }
    });

  for (const [kind, make] of KINDS) {
    run(`${kind}: streams sent before the listener has the dialer's Finished are not lost`, 12_000, async (s) => {
      const srv = await lossyServer(s, make, { loss: 0, seed: 1, delayHandshakeMs: 250 });
      const client = make(await generateIdentity());
      s.defer(() => client.close());
      for (let round = 0; round < 2; round++) {
        const c = await client.dial(srv.address, srv.id.publicKey);
        const w = watchClosed(c);
        // At once: these packets overtake the held Finished.
        await Promise.all(Array.from({ length: 4 }, () => echo(c, 700)));
        assert.not.ok(w.ended, 'the connection is still up');
        await c.close();
      }
      assert.ok(srv.link.counters.handshakesDelayed >= 2, `the link held the Finished back (${srv.link.counters.handshakesDelayed})`);
    });

    run(`${kind}: bulk and 16 concurrent request streams through 2 % loss, duplicates and reordering`, 20_000, async (s) => {
      const srv = await lossyServer(s, make, { loss: 0.02, duplicate: 0.01, reorder: 0.02, seed: 7 });
      const client = make(await generateIdentity());
      s.defer(() => client.close());
      for (let round = 0; round < 3; round++) {
        const c = await client.dial(srv.address, srv.id.publicKey);
        const w = watchClosed(c);
        const work: Promise<void>[] = [echo(c, 3 << 20)];
        for (let i = 0; i < 16; i++)
          work.push(
            (async () => {
              for (let k = 0; k < 10; k++) await echo(c, i === 0 ? 64 * 1024 : 256);
            })(),
          );
        await Promise.all(work);
        assert.not.ok(w.ended, 'the connection is still up');
        await c.close();
      }
      const k = srv.link.counters;
      assert.ok(k.dropped > 0 && k.reordered > 0, `the link dropped (${k.dropped}) and reordered (${k.reordered})`);
    });
  }
}

test.run();
