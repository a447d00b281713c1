/**
 * QUIC hole punching coordinated by a real relay, on loopback (no NAT: the
 * coordination, the addresses and the safety rules; test/swarm/nat.test.ts
 * has the NATs). The relay observes each side's QUIC socket over UDP and
 * answers on the control connection; the target punches from its listening
 * socket towards the dialer's observed address and accepts the dialer's QUIC
 * connection from exactly that socket. A peer without a circuit to the
 * target gets no punch (nothing is sent for it), and the relay never answers
 * a datagram.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createSocket, type Socket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { generateIdentity } from '../../crypto/identity.ts';
import { RelayServer } from '../../p2p/relay/server.ts';
import { RelayTransport } from '../../p2p/relay/transport.ts';
import { RelayRefusal } from '../../p2p/relay/messages.ts';
import { RelayControl } from '../../p2p/relay/control-client.ts';
import { parseRelayAddress } from '../../p2p/relay/address.ts';
import { QuicNgtcp2Transport } from '../../transports/quic-ngtcp2.ts';
import { punchDatagram, type PunchListener, type PunchSocket } from '../../transports/udp-punch.ts';
import type { Listener } from '../../transports/transport.ts';
import { STRICT_TOOLS, Scope, withTimeout } from '../helpers/env.ts';

const why = QuicNgtcp2Transport.unavailableReason();
const quicOpts = { idleTimeoutMs: 10_000, keepAliveMs: 2_000, handshakeTimeoutMs: 8_000 };

const caseOf = (name: string, fn: (s: Scope) => Promise<void>) =>
  test(name, async () => {
    const s = new Scope();
    try {
      await withTimeout(40_000, name, fn(s));
    } finally {
      await s.close();
    }
  });

async function world(s: Scope, setupTimeoutMs = 5_000) {
  const relay = await RelayServer.start({ identity: await generateIdentity(), listen: '127.0.0.1:0', setupTimeoutMs });
  s.defer(() => relay.close());
  const node = async () => {
    const id = await generateIdentity();
    const log: string[] = [];
    const relayT = new RelayTransport(id, { stepTimeoutMs: 5_000, log: (m) => log.push(m) });
    const quic = new QuicNgtcp2Transport(id, quicOpts);
    s.defer(async () => {
      await relayT.close();
      await quic.close();
    });
    return { id, log, relayT, quic };
  };
  const a = await node();
  const ql = (await a.quic.listen('127.0.0.1:0')) as Listener & PunchListener & { stats(): { punchOut: number; punchIn: number } };
  const punched: Array<{ address: string; peer: string }> = [];
  const rl = await a.relayT.listen(relay.relayAddress, {
    quicPunch: { socket: () => ql.punchSocket(), onPunch: (address, peer) => punched.push({ address, peer: Buffer.from(peer).toString('hex') }) },
  });
  void (async () => {
    while (await rl.accept().catch(() => null));
  })();
  return { relay, a, ql, punched, node, rl };
}

function udp(): Promise<Socket> {
  return new Promise((resolve) => {
    const u = createSocket('udp4');
    u.bind(0, '127.0.0.1', () => resolve(u));
  });
}

if (why && !STRICT_TOOLS) {
  console.log(`  SKIP relay/quic-punch (no ngtcp2 addon): ${why}`);
} else {
  caseOf('a QUIC punch: the relay observes both sockets, the target punches from its listener, the dial comes from the observed socket', async (s) => {
    const w = await world(s);
    const b = await w.node();
    // Datagrams to the relay's UDP port with no token it handed out: ignored, never answered.
    const spy = await udp();
    s.defer(() => void spy.close());
    let answered = 0;
    spy.on('message', () => answered++);
    const relayPort = Number(w.relay.address.split(':').pop());
    for (const d of [punchDatagram(randomBytes(16)), punchDatagram(), Buffer.from('hello relay')]) spy.send(d, relayPort, '127.0.0.1');

    await b.relayT.dial(w.relay.relayAddress, w.a.id.publicKey); // B reaches A through the relay first
    const socket = b.quic.dialerPunchSocket(4)!;
    const accepted = w.ql.accept();
    const r = await b.relayT.punchQuic(w.relay.relayAddress, w.a.id.publicKey, socket, (address) => b.quic.dial(address, w.a.id.publicKey));
    assert.is(r.address, w.ql.address, 'B was told the address of A\'s listening socket');
    assert.is(r.observed, `127.0.0.1:${socket.localPort}`, 'the relay saw B\'s dialing socket');
    assert.equal(w.punched, [{ address: r.observed, peer: Buffer.from(b.id.publicKey).toString('hex') }], 'A punched towards that address, for B');
    const inA = await withTimeout(10_000, 'accept', accepted);
    assert.ok(inA);
    assert.is(inA!.remoteAddress, r.observed, 'A accepted the connection from the socket that was observed');
    assert.equal(Buffer.from(inA!.remotePublicKey), Buffer.from(b.id.publicKey));
    // The connection carries data.
    const x = await r.conn.openStream();
    await x.write(Buffer.from('direct'));
    const y = await withTimeout(10_000, 'stream', inA!.acceptStream());
    assert.is(Buffer.from((await y!.read())!).toString(), 'direct');
    assert.is(w.relay.stats.udpObserved, 2, 'both sockets were observed, the spy\'s datagrams were not taken');
    assert.ok(w.ql.stats().punchOut >= 2, 'A punched from its listening socket');
    assert.is(answered, 0, 'the relay answered no datagram');
  });

  caseOf('no punch for a peer without a circuit to the target: declined, and nothing is sent towards it', async (s) => {
    const w = await world(s);
    const c = await w.node();
    const socket = c.quic.dialerPunchSocket(4)!;
    let dialled = false;
    const e = await c.relayT.punchQuic(w.relay.relayAddress, w.a.id.publicKey, socket, async (address) => {
      dialled = true;
      return c.quic.dial(address, w.a.id.publicKey);
    }).then(() => undefined, (x: unknown) => x);
    assert.ok(e instanceof RelayRefusal && e.refusal === 'PERMISSION_DENIED', String(e));
    assert.not.ok(dialled);
    assert.equal(w.punched, []);
    assert.is(w.ql.stats().punchOut, 0, 'A sent no datagram');
    assert.ok(w.a.log.some((m) => /has no circuit to us here: declined/.test(m)), w.a.log.join('\n'));
  });

  caseOf('an observation is taken only from the control connection\'s IP: a datagram with the token from elsewhere binds nothing', async (s) => {
    const w = await world(s, 1_500);
    const id = await generateIdentity();
    const control = await RelayControl.open(id, parseRelayAddress(w.relay.relayAddress), { timeoutMs: 5_000, log: () => {} });
    s.defer(() => control.close());
    // A "socket" that sends the token from 127.0.0.2 (as a spoofed source would) while the control connection is from 127.0.0.1.
    const other = await new Promise<Socket>((resolve) => {
      const u = createSocket('udp4');
      u.bind(0, '127.0.0.2', () => resolve(u));
    });
    s.defer(() => void other.close());
    const spoof: PunchSocket = { localPort: other.address().port, family: 4, send: (ip, port, d) => (other.send(d, port, ip), true) };
    const e = await control.observe(spoof, 5_000).then(() => undefined, (x: unknown) => x);
    assert.ok(e instanceof RelayRefusal && e.refusal === 'CONNECTION_FAILED', String(e));
    assert.is(w.relay.stats.udpObserved, 0);
    // The same control connection, from a socket on its own IP: observed.
    const real = await w.node();
    const seen = await control.observe(real.quic.dialerPunchSocket(4)!, 5_000);
    assert.equal(seen, { ip: '127.0.0.1', port: real.quic.dialerPunchSocket(4)!.localPort });
  });
}

test.run();
