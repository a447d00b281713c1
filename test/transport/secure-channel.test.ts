/**
 * The TLS channel over something that is not a socket: a stream of another
 * connection (what a relay carries), wrapped with byteStreamDuplex. End to
 * end identity checks and a multiplexed connection on top.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { randomBytes } from 'node:crypto';
import { LoopbackNetwork, LoopbackTransport } from '../../transports/loopback.ts';
import { createServer, connect, type Socket } from 'node:net';
import { byteStreamDuplex, secureDuplex } from '../../transports/secure-channel.ts';
import { isRefusal } from '../../p2p/remote/link.ts';
import { secureConnection } from '../../transports/tcp.ts';
import { generateIdentity } from '../../crypto/identity.ts';
import { Scope, withTimeout } from '../helpers/env.ts';
import { expectCode, readAll, serveEcho } from './conformance.ts';
import type { ByteStream } from '../../transports/transport.ts';

const test = suite('transport/secure-channel');

function run(name: string, fn: (s: Scope) => Promise<void>) {
  test(name, async () => {
    const s = new Scope();
    try {
      await withTimeout(15_000, name, fn(s));
    } finally {
      await withTimeout(10_000, `${name} cleanup`, s.close());
    }
  });
}

/** Two ends of one stream of a loopback connection: the "relayed" pipe. */
async function relayedPipe(s: Scope): Promise<[ByteStream, Promise<ByteStream | null>]> {
  const network = new LoopbackNetwork();
  const relayA = new LoopbackTransport(await generateIdentity(), { network });
  const relayB = new LoopbackTransport(await generateIdentity(), { network });
  s.defer(() => relayA.close());
  s.defer(() => relayB.close());
  const l = await relayB.listen('relay:0');
  const [ca, cb] = await Promise.all([relayA.dial(l.address, relayB.identity.publicKey), l.accept()]);
  const sa = await ca.openStream();
  // Loopback, like QUIC, may announce a stream only once it carries bytes; TLS's ClientHello does that.
  return [sa, cb!.acceptStream()];
}

run('TLS over a relayed stream: both ends proven, streams multiplexed end to end', async (s) => {
  const [pa, pbP] = await relayedPipe(s);
  const alice = await generateIdentity();
  const bob = await generateIdentity();
  const dial = secureConnection(byteStreamDuplex(pa), alice, bob.publicKey, 'client', 'relay:alice');
  const pb = (await pbP)!;
  const [ca, cb] = await Promise.all([dial, secureConnection(byteStreamDuplex(pb), bob, null, 'server', 'relay:bob')]);
  s.defer(() => ca.close());
  s.defer(() => cb.close());
  assert.ok(Buffer.from(ca.remotePublicKey).equals(Buffer.from(bob.publicKey)));
  assert.ok(Buffer.from(cb.remotePublicKey).equals(Buffer.from(alice.publicKey)));
  void serveEcho(cb);
  await Promise.all(
    [1, 70_000, 1_000_003].map(async (n) => {
      const st = await ca.openStream();
      const msg = randomBytes(n);
      await st.write(msg);
      await st.closeWrite();
      assert.ok((await readAll(st)).equals(msg), `${n} bytes echoed`);
    }),
  );
});

run('TLS over a relayed stream: the wrong expected key is EACCES', async (s) => {
  const [pa, pbP] = await relayedPipe(s);
  const alice = await generateIdentity();
  const bob = await generateIdentity();
  const stranger = await generateIdentity();
  const dial = secureConnection(byteStreamDuplex(pa), alice, stranger.publicKey, 'client', 'relay:alice');
  const pb = (await pbP)!;
  const accept = secureConnection(byteStreamDuplex(pb), bob, null, 'server', 'relay:bob');
  await expectCode(dial, ['EACCES'], 'dial through the relay with a wrong key');
  await expectCode(accept, ['EPROTO', 'EACCES', 'ESHUTDOWN', 'EIO'], 'the accepting side sees the dialer give up');
});

// A far end that goes away mid-handshake (a sharer restarting, a relay
// dropping a circuit whose other end never joined) is a lost connection to
// redial, not EPROTO: a mount takes EPROTO as a refusal and stops for good.
run('a peer that disconnects during the TLS handshake is ESHUTDOWN on both sides, never a refusal', async (s) => {
  const me = await generateIdentity();
  const sockets = new Set<Socket>();
  const listen = async (onConn: (c: Socket) => void) => {
    const server = createServer((c) => {
      sockets.add(c);
      onConn(c);
    });
    s.defer(() => new Promise<void>((r) => {
      for (const x of sockets) x.destroy();
      server.close(() => r());
    }));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const sock = connect((server.address() as { port: number }).port, '127.0.0.1');
    sockets.add(sock);
    sock.on('error', () => {});
    await new Promise((r) => sock.once('connect', r));
    return sock;
  };
  for (const how of ['destroy', 'end', 'after the ClientHello'] as const) {
    const sock = await listen((c) => {
      c.on('error', () => {});
      if (how === 'destroy') c.destroy();
      else if (how === 'end') c.end();
      else c.once('data', () => c.end());
    });
    const e = await expectCode(secureDuplex(sock, me, me.publicKey, 'client', { timeoutMs: 10_000 }), ['ESHUTDOWN'], `client, server ${how}`);
    assert.ok(!isRefusal(e.code));
  }
  // The accepting side, when the dialer goes away.
  for (const how of ['end', 'destroy'] as const) {
    let result: Promise<unknown> | undefined;
    const sock = await listen((c) => {
      result = secureDuplex(c, me, null, 'server', { timeoutMs: 10_000 });
      result.catch(() => {});
    });
    while (!result) await new Promise((r) => setImmediate(r));
    if (how === 'end') sock.end();
    else sock.destroy();
    await expectCode(result, ['ESHUTDOWN'], `server, client ${how}`);
  }
});

test.run();
