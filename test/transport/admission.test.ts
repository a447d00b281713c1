/**
 * Fair admission on the transport listeners (issue 8): idle sockets held
 * open by one source used to take every pending-handshake slot of the TCP
 * listener (64 × 5 s), so no new peer got in. Now a newcomer evicts the
 * oldest pending handshake of the fullest source; here 100 idle sockets are
 * held while a real peer dials, handshakes and echoes.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect, type Socket } from 'node:net';
import { TcpTransport } from '../../transports/tcp.ts';
import { QuicTransport } from '../../transports/quic.ts';
import { Ngtcp2Transport } from '../../transports/ngtcp2.ts';
import { QuicNgtcp2Transport } from '../../transports/quic-ngtcp2.ts';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import type { Connection, Transport } from '../../transports/transport.ts';
import type { Identity } from '../../crypto/identity.ts';
import { generateIdentity } from '../../crypto/identity.ts';
import { Scope, needCondition, withTimeout } from '../helpers/env.ts';
import { readAll, serveEcho } from './conformance.ts';
import { parseHostPort } from '../../transports/util.ts';

const test = suite('transport/admission');

function idle(address: string): Promise<Socket> {
  const { host, port } = parseHostPort(address);
  return new Promise((resolve, reject) => {
    const s = connect(port, host);
    s.on('error', () => {});
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

test('tcp: 100 idle connections from one address do not lock a new peer out', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'idle flood', async () => {
      const aId = await generateIdentity();
      const a = new TcpTransport(aId, { handshakeTimeoutMs: 30_000 });
      const bId = await generateIdentity();
      const b = new TcpTransport(bId);
      s.defer(() => a.close());
      s.defer(() => b.close());
      const l = await a.listen('127.0.0.1:0');
      void (async () => {
        for (let c; (c = await l.accept()); ) void serveEcho(c);
      })();
      const held: Socket[] = [];
      s.defer(() => held.forEach((x) => x.destroy()));
      for (let i = 0; i < 100; i++) held.push(await idle(l.address));
      await new Promise((r) => setTimeout(r, 200));
      for (let round = 0; round < 3; round++) {
        const conn = await b.dial(l.address, aId.publicKey, { timeoutMs: 15_000 });
        const st = await conn.openStream();
        await st.write(Buffer.from('hello'));
        await st.closeWrite();
        assert.is((await readAll(st)).toString(), 'hello');
        await conn.close();
      }
      const closed = await Promise.all(held.map((x) => new Promise<boolean>((r) => {
        if (x.destroyed) return r(true);
        x.once('close', () => r(true));
        setTimeout(() => r(false), 1000);
      })));
      assert.ok(closed.filter(Boolean).length >= 90, 'the idle sockets were evicted to make room');
    });
  } finally {
    await s.close();
  }
});

const quicKinds: Array<{ name: string; make: (id: Identity, o?: { maxConnectionsPerSource?: number }) => Transport; why?: string }> = [
  { name: 'quic (library)', make: (id, o) => new QuicTransport(id, o) },
  { name: 'quic (ngtcp2, the default)', make: (id, o) => new QuicNgtcp2Transport(id, o), why: QuicNgtcp2Transport.unavailableReason() },
  { name: 'ngtcp2 (native streams)', make: (id, o) => new Ngtcp2Transport(id, o), why: Ngtcp2Transport.unavailableReason() },
];

for (const kind of quicKinds) {
const register = needCondition(test, !kind.why, kind.why ?? '');
register(`${kind.name}: connections past the handshake are capped per source address; a slot frees when one closes`, async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, `${kind.name} cap`, async () => {
      const aId = await generateIdentity();
      const a = kind.make(aId, { maxConnectionsPerSource: 3 });
      const b = kind.make(await generateIdentity());
      s.defer(() => a.close());
      s.defer(() => b.close());
      const l = await a.listen('127.0.0.1:0');
      const accepted: Connection[] = [];
      void (async () => {
        for (let c; (c = await l.accept()); ) accepted.push(c);
      })();
      // Past the cap the listener aborts the connection: the dialer may see
      // its dial succeed and the connection die, or (QUIC on a carrier
      // stream, which the listener must accept first) the dial itself fail.
      const dialed: Connection[] = [];
      for (let i = 0; i < 5; i++) {
        try {
          dialed.push(await b.dial(l.address, aId.publicKey));
        } catch (e) {
          assert.ok(i >= 3, `dial ${i} within the cap failed: ${(e as Error).message}`);
        }
      }
      await new Promise((r) => setTimeout(r, 500));
      assert.is(accepted.length, 3, 'three accepted, the rest aborted');
      await accepted[0]!.close();
      await new Promise((r) => setTimeout(r, 300));
      await b.dial(l.address, aId.publicKey);
      await withTimeout(5000, 'a fourth is accepted once a slot is free', async () => {
        while (accepted.length < 4) await new Promise((r) => setTimeout(r, 50));
      });
    });
  } finally {
    await s.close();
  }
});
}

/**
 * Handshakes in progress, the slots an attacker takes for free: real client
 * Initials (captured from dials to a socket of ours, so each has its own
 * connection id) replayed from other loopback addresses fill every pending
 * slot of an ngtcp2 listener and never finish. A newcomer must still get in:
 * it evicts the oldest handshake of the source holding the most (before,
 * Initials past the cap were dropped and the real peer timed out).
 */
const ngWhy = QuicNgtcp2Transport.unavailableReason();
needCondition(test, !ngWhy, ngWhy ?? '')('quic (ngtcp2): stalled handshakes flooded from three sources do not lock a new peer out', async () => {
  const s = new Scope();
  try {
    await withTimeout(90_000, 'handshake flood', async () => {
      const udp = (host: string): Promise<UdpSocket> =>
        new Promise((resolve, reject) => {
          const u = createSocket('udp4');
          u.once('error', reject);
          u.bind(0, host, () => resolve(u));
          s.defer(() => new Promise<void>((r) => u.close(() => r())));
        });
      // 1. Capture one Initial per dial.
      const sink = await udp('127.0.0.1');
      const initials = new Map<string, Buffer>();
      sink.on('message', (m) => {
        if (!(m[0]! & 0x80) || m.length < 6) return;
        const dcid = m.subarray(6, 6 + m[5]!).toString('hex');
        if (!initials.has(dcid)) initials.set(dcid, m);
      });
      const capturer = new Ngtcp2Transport(await generateIdentity(), { handshakeTimeoutMs: 5000 });
      s.defer(() => capturer.close());
      const want = 30;
      // One dial at a time: each Initial is a ~64 KiB datagram on loopback, more at once overflow the sink's buffer.
      const dials: Promise<unknown>[] = [];
      const captureBy = Date.now() + 30_000;
      while (initials.size < want && Date.now() < captureBy) {
        const had = initials.size;
        dials.push(capturer.dial(`127.0.0.1:${sink.address().port}`, new Uint8Array(32), { timeoutMs: 3000 }).catch(() => {}));
        for (let i = 0; i < 100 && initials.size === had; i++) await new Promise((r) => setTimeout(r, 20));
      }
      await capturer.close();
      await Promise.all(dials);
      assert.ok(initials.size >= want, `captured ${initials.size} Initials`);
      // 2. A listener with 12 pending slots (4 per source) and a long handshake deadline.
      const aId = await generateIdentity();
      const a = new QuicNgtcp2Transport(aId, { maxPendingHandshakes: 12, maxPendingPerSource: 4, handshakeTimeoutMs: 60_000 });
      s.defer(() => a.close());
      const l = await a.listen('127.0.0.1:0');
      const port = Number(l.address.slice(l.address.lastIndexOf(':') + 1));
      void (async () => {
        for (let c; (c = await l.accept()); ) void serveEcho(c);
      })();
      const stats = () => (l as unknown as { stats(): { evicted: number } }).stats();
      // 3. Three flooding sources, ten stalled handshakes each.
      const floods = await Promise.all(['127.0.0.2', '127.0.0.3', '127.0.0.4'].map(udp));
      const list = [...initials.values()];
      for (let i = 0; i < list.length; i++) await new Promise<void>((r) => floods[i % 3]!.send(list[i]!, port, '127.0.0.1', () => r()));
      const fillBy = Date.now() + 20_000;
      while (stats().evicted < list.length - 12 && Date.now() < fillBy) await new Promise((r) => setTimeout(r, 50));
      assert.ok(stats().evicted >= list.length - 12, `the flood filled the table (evicted ${stats().evicted})`);
      // 4. Real peers still get in, again and again.
      const b = new QuicNgtcp2Transport(await generateIdentity());
      s.defer(() => b.close());
      for (let round = 0; round < 3; round++) {
        const conn = await b.dial(l.address, aId.publicKey, { timeoutMs: 15_000 });
        const st = await conn.openStream();
        await st.write(Buffer.from('hello'));
        await st.closeWrite();
        assert.is((await readAll(st)).toString(), 'hello');
        await conn.close();
      }
      assert.ok(stats().evicted >= list.length - 12 + 1, `a flooded handshake made room for the peer (evicted ${stats().evicted})`);
    });
  } finally {
    await s.close();
  }
});

test.run();
