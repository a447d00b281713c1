/**
 * UDP hole punching from the ngtcp2 endpoint's own socket
 * (transports/udp-punch.ts, native/src/quic.cc sendDatagram): punch
 * datagrams leave from the socket QUIC uses (so they open QUIC's NAT
 * mapping), only punch datagrams may be sent, at a bounded rate, and an
 * endpoint drops the punch datagrams it receives without answering them and
 * keeps working.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createSocket, type Socket } from 'node:dgram';
import { QuicNgtcp2Transport } from '../../transports/quic-ngtcp2.ts';
import { PUNCH_MAGIC, canPunchListener, punchDatagram, punchPayload } from '../../transports/udp-punch.ts';
import { generateIdentity } from '../../crypto/identity.ts';
import { STRICT_TOOLS, withTimeout } from '../helpers/env.ts';
import { QuicmapError } from '../../base/errors.ts';

const test = suite('transport/udp-punch');
const why = QuicNgtcp2Transport.unavailableReason();
const opts = { idleTimeoutMs: 10_000, keepAliveMs: 2_000, handshakeTimeoutMs: 8_000 };

function udp(): Promise<Socket> {
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    s.bind(0, '127.0.0.1', () => resolve(s));
  });
}

test('the datagram format: magic first, bounded payload', () => {
  const d = punchDatagram(Uint8Array.from([1, 2, 3]));
  assert.equal([...d.subarray(0, 8)], [...PUNCH_MAGIC]);
  assert.equal([...punchPayload(d)!], [1, 2, 3]);
  assert.is(punchPayload(Uint8Array.from([0x40, 1, 2, 3, 4, 5, 6, 7, 8])), undefined, 'a QUIC-looking packet is no punch datagram');
  assert.is(punchPayload(new Uint8Array(65)), undefined);
  assert.throws(() => punchDatagram(new Uint8Array(57)), (e: unknown) => e instanceof QuicmapError && e.code === 'EINVAL');
});

if (why && !STRICT_TOOLS) {
  console.log(`  SKIP transport/udp-punch (no ngtcp2 addon): ${why}`);
} else {
  test('a listener sends punch datagrams from its listening port, nothing else, at a bounded rate', async () => {
    const t = new QuicNgtcp2Transport(await generateIdentity(), opts);
    const sink = await udp();
    try {
      const l = await t.listen('127.0.0.1:0');
      assert.ok(canPunchListener(l));
      const ps = l.punchSocket()!;
      const listenPort = Number(l.address.split(':').pop());
      assert.is(ps.localPort, listenPort);
      const got = new Promise<{ msg: Buffer; port: number }>((r) => sink.once('message', (msg, rinfo) => r({ msg, port: rinfo.port })));
      assert.ok(ps.send('127.0.0.1', sink.address().port, punchDatagram(Uint8Array.from([9, 9]))));
      const first = await withTimeout(10_000, 'punch datagram', got);
      assert.is(first.port, listenPort, 'sent from the listening socket');
      assert.equal([...punchPayload(first.msg)!], [9, 9]);
      // Only punch datagrams: a QUIC-looking or oversized datagram is refused.
      assert.throws(() => ps.send('127.0.0.1', sink.address().port, Uint8Array.from([0xc0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8])));
      assert.throws(() => ps.send('127.0.0.1', sink.address().port, new Uint8Array(100)));
      // A burst: the rate limit (32 a second) stops it.
      let sent = 0;
      for (let i = 0; i < 200; i++) if (ps.send('127.0.0.1', sink.address().port, punchDatagram())) sent++;
      assert.ok(sent <= 40, `at most about a second's worth went out: ${sent}`);
      const st = (l as unknown as { stats(): { punchOut: number; punchLimited: number } }).stats();
      assert.is(st.punchOut, sent + 1);
      assert.ok(st.punchLimited >= 200 - sent);
    } finally {
      sink.close();
      await t.close();
    }
  });

  test('punch datagrams to an endpoint are dropped unanswered; the dial after them uses the punched socket', async () => {
    const a = new QuicNgtcp2Transport(await generateIdentity(), opts);
    const bId = await generateIdentity();
    const b = new QuicNgtcp2Transport(bId, opts);
    const spy = await udp();
    try {
      const l = await b.listen('127.0.0.1:0');
      const lport = Number(l.address.split(':').pop());
      const ps = a.dialerPunchSocket(4)!;
      // The listener punches towards the dialer's socket, the dialer towards the listener's.
      const lps = (l as unknown as { punchSocket(): { send(ip: string, port: number, d: Uint8Array): boolean } }).punchSocket();
      for (let i = 0; i < 5; i++) {
        assert.ok(lps.send('127.0.0.1', ps.localPort, punchDatagram()));
        assert.ok(ps.send('127.0.0.1', lport, punchDatagram()));
      }
      // A spy socket also punches the listener: it must get nothing back (no stateless reset, no version negotiation).
      let answered = 0;
      spy.on('message', () => answered++);
      for (let i = 0; i < 5; i++) spy.send(punchDatagram(new Uint8Array(56)), lport, '127.0.0.1');
      const accepted = l.accept();
      const c = await withTimeout(15_000, 'dial after punch', a.dial(`127.0.0.1:${lport}`, bId.publicKey));
      const s = await withTimeout(15_000, 'accept', accepted);
      assert.ok(s);
      assert.is(s!.remoteAddress, `127.0.0.1:${ps.localPort}`, 'the dial came from the socket that punched');
      const st = (l as unknown as { stats(): { punchIn: number; statelessResets: number } }).stats();
      assert.ok(st.punchIn >= 10, `the listener received and dropped the punch datagrams: ${st.punchIn}`);
      assert.is(st.statelessResets, 0);
      const ds = a.stats().ipv4!;
      assert.ok(ds.punchIn >= 5, `so did the dialer: ${ds.punchIn}`);
      // The connection works.
      const x = await c.openStream();
      await x.write(Buffer.from('hi'));
      const y = await withTimeout(15_000, 'stream', s!.acceptStream());
      assert.equal(Buffer.from((await y!.read())!).toString(), 'hi');
      assert.is(answered, 0, 'nothing answered the spy');
    } finally {
      spy.close();
      await a.close();
      await b.close();
    }
  });
}

test.run();
