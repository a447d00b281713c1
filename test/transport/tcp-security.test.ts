/**
 * TCP transport under attack: tampering and replay on the wire, junk and
 * silent handshakes, forged or missing certificates, TLS downgrade,
 * authenticated peers that break the mux rules, stream-limit exhaustion.
 * Only loopback.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect, createServer, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { TcpTransport, type TcpTransportOptions } from '../../transports/tcp.ts';
import { generateIdentity } from '../../crypto/identity.ts';
import { Scope, withTimeout } from '../helpers/env.ts';
import { background, expectCode, readAll, serveEcho } from './conformance.ts';
import { parseHostPort } from '../../transports/util.ts';
import type { Listener } from '../../transports/transport.ts';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { createPeerCertificate, type CertificateForgery } from '../../crypto/peer-cert.ts';
import { secureDuplex } from '../../transports/secure-channel.ts';
import type { Identity } from '../../crypto/identity.ts';

const test = suite('transport/tcp-security');
const OPTS: TcpTransportOptions = { handshakeTimeoutMs: 1000, idleTimeoutMs: 3000, keepAliveMs: 1000 };

function run(name: string, fn: (s: Scope) => Promise<void>, ms = 15_000) {
  test(name, async () => {
    const s = new Scope();
    try {
      await withTimeout(ms, name, fn(s));
    } finally {
      await withTimeout(10_000, `${name} cleanup`, s.close());
    }
  });
}

/** Accept and echo on every connection until the listener closes. */
function serveAll(l: Listener): void {
  void (async () => {
    for (;;) {
      const c = await l.accept().catch(() => null);
      if (!c) return;
      void serveEcho(c);
    }
  })();
}

async function echoOnce(t: TcpTransport, address: string, key: Uint8Array, s: Scope): Promise<void> {
  const c = await t.dial(address, key);
  s.defer(() => c.close());
  const st = await c.openStream();
  const msg = randomBytes(5000);
  await st.write(msg);
  await st.closeWrite();
  assert.ok((await readAll(st)).equals(msg));
}

/**
 * A TCP proxy that, once armed, flips one byte of client->server traffic
 * (or, with `replay`, sends the next client->server chunk twice).
 */
async function tamperingProxy(s: Scope, target: string): Promise<{ address: string; armed: { on: boolean; done: boolean; replay: boolean } }> {
  const { host, port } = parseHostPort(target);
  const armed = { on: false, done: false, replay: false };
  const socks = new Set<Socket>();
  const server = createServer((inbound) => {
    const outbound = connect({ host, port });
    socks.add(inbound).add(outbound);
    inbound.on('data', (d: Buffer) => {
      if (armed.on && !armed.done && armed.replay) {
        armed.done = true;
        outbound.write(d);
        outbound.write(d);
      } else if (armed.on && !armed.done && d.length > 8) {
        const copy = Buffer.from(d);
        copy[copy.length >> 1]! ^= 0x01;
        armed.done = true;
        outbound.write(copy);
      } else outbound.write(d);
    });
    outbound.on('data', (d: Buffer) => inbound.write(d));
    const kill = () => {
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on('close', kill).on('error', kill);
    outbound.on('close', kill).on('error', kill);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  s.defer(async () => {
    for (const x of socks) x.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  });
  const a = server.address() as { port: number };
  return { address: `127.0.0.1:${a.port}`, armed };
}

async function attackOnWire(s: Scope, replay: boolean): Promise<void> {
  const serverId = await generateIdentity();
  const server = new TcpTransport(serverId, OPTS);
  s.defer(() => server.close());
  const l = await server.listen('127.0.0.1:0');
  const client = new TcpTransport(await generateIdentity(), OPTS);
  s.defer(() => client.close());
  const proxy = await tamperingProxy(s, l.address);
  const [conn, peer] = await Promise.all([client.dial(proxy.address, serverId.publicKey), l.accept()]);
  s.defer(() => conn.close());
  const st = await conn.openStream();
  await st.write(Buffer.from('before'));
  const remote = (await peer!.acceptStream())!;
  assert.is(Buffer.from((await remote.read())!).toString(), 'before');
  const pending = background(remote.read());
  proxy.armed.replay = replay;
  proxy.armed.on = true;
  await st.write(randomBytes(4096));
  // A replayed record comes after the original, which is delivered first.
  const failing = replay ? (assert.ok(((await pending.catch(() => null)) ?? []).length > 0, 'original record delivered'), background(remote.read())) : pending;
  const err = await expectCode(failing, ['EPROTO'], `read after ${replay ? 'replay' : 'tampering'}`);
  assert.match(err.message, /authentication|record/);
  await withTimeout(3000, 'server side closed', peer!.closed);
  await withTimeout(3000, 'client side closed', conn.closed);
  await expectCode(st.read(), ['ESHUTDOWN', 'EIO', 'EPROTO'], 'client read on the dropped connection');
  // The listener goes on serving honest clients.
  serveAll(l);
  await echoOnce(client, l.address, serverId.publicKey, s);
}

run('tampered ciphertext kills the connection with EPROTO on the receiving side', (s) => attackOnWire(s, false));

run('a replayed TLS record kills the connection with EPROTO on the receiving side', (s) => attackOnWire(s, true));

run('a recorded session replayed on a new connection is refused', async (s) => {
  const serverId = await generateIdentity();
  const server = new TcpTransport(serverId, OPTS);
  s.defer(() => server.close());
  const l = await server.listen('127.0.0.1:0') as Listener & { failedHandshakes: number };
  serveAll(l);
  // Record everything an honest client sends in one session.
  const { host, port } = parseHostPort(l.address);
  const recorded: Buffer[] = [];
  const rec = createServer((inbound) => {
    const outbound = connect({ host, port });
    inbound.on('data', (d: Buffer) => {
      recorded.push(Buffer.from(d));
      outbound.write(d);
    });
    outbound.on('data', (d: Buffer) => inbound.write(d));
    const kill = () => {
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on('close', kill).on('error', kill);
    outbound.on('close', kill).on('error', kill);
  });
  await new Promise<void>((r) => rec.listen(0, '127.0.0.1', () => r()));
  s.defer(() => new Promise<void>((r) => rec.close(() => r())));
  const client = new TcpTransport(await generateIdentity(), OPTS);
  s.defer(() => client.close());
  await echoOnce(client, `127.0.0.1:${(rec.address() as { port: number }).port}`, serverId.publicKey, s);
  assert.ok(recorded.length > 0);
  const before = l.failedHandshakes;
  // Replay it verbatim: the server's fresh randomness makes it worthless.
  const sock = connect({ host, port });
  s.defer(() => void sock.destroy());
  sock.on('error', () => {});
  const closed = new Promise<void>((r) => sock.on('close', () => r()));
  sock.on('connect', () => {
    for (const d of recorded) sock.write(d);
  });
  sock.resume(); // read what the server says, so its close is seen
  await withTimeout(3000, 'replayed session dropped', closed);
  assert.is(l.failedHandshakes, before + 1, 'the replay counted as a failed handshake');
});

run('junk instead of a handshake is dropped; the listener then serves a good client', async (s) => {
  const serverId = await generateIdentity();
  const server = new TcpTransport(serverId, OPTS);
  s.defer(() => server.close());
  const l = await server.listen('127.0.0.1:0');
  serveAll(l);
  const { host, port } = parseHostPort(l.address);
  for (const junk of [randomBytes(40), randomBytes(4096), Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), Buffer.alloc(0)]) {
    const sock = connect({ host, port });
    s.defer(() => void sock.destroy());
    const closedBy = new Promise<string>((resolve) => {
      sock.on('close', () => resolve('closed'));
      sock.on('error', () => {});
    });
    sock.on('connect', () => (junk.length ? sock.end(junk) : undefined));
    let reply = 0;
    sock.on('data', (d: Buffer) => (reply += d.length));
    // A silent client (empty junk) is cut off by the handshake deadline.
    assert.is(await withTimeout(3000, 'junk connection dropped', closedBy), 'closed');
    assert.ok(reply <= 7, `no answer to junk beyond a TLS alert (got ${reply} bytes)`);
  }
  const client = new TcpTransport(await generateIdentity(), OPTS);
  s.defer(() => client.close());
  await echoOnce(client, l.address, serverId.publicKey, s);
});

/**
 * A raw TLS client with the given certificate (or none), against a fresh
 * listener: resolves with whether the listener accepted a connection, after
 * checking the socket was closed and an honest client is still served.
 */
async function rawTlsClient(s: Scope, opts: { forge?: CertificateForgery; noCert?: boolean; maxVersion?: 'TLSv1.2'; noAlpn?: boolean }): Promise<void> {
  const serverId = await generateIdentity();
  const server = new TcpTransport(serverId, OPTS);
  s.defer(() => server.close());
  const l = (await server.listen('127.0.0.1:0')) as Listener & { failedHandshakes: number };
  const { host, port } = parseHostPort(l.address);
  const signer = await generateIdentity();
  const cert = opts.noCert ? undefined : createPeerCertificate(signer, opts.forge);
  const sock: TLSSocket = tlsConnect({
    host,
    port,
    rejectUnauthorized: false,
    ...(opts.noAlpn ? {} : { ALPNProtocols: ['quicmap/1'] }),
    ...(cert ? { key: cert.keyPem, cert: cert.certPem } : {}),
    ...(opts.maxVersion ? { maxVersion: opts.maxVersion, minVersion: 'TLSv1.2' as const } : {}),
  });
  s.defer(() => void sock.destroy());
  sock.on('error', () => {});
  const closed = new Promise<void>((r) => sock.on('close', () => r()));
  let got = 0;
  sock.on('data', (d: Buffer) => (got += d.length));
  sock.on('secureConnect', () => sock.write(Buffer.from([0, 0, 0, 9, 5, 0, 0, 0, 0, 0, 0, 0, 0])));
  await withTimeout(3000, 'refused TLS client dropped', closed);
  assert.is(got, 0, 'the refused client got no application data');
  assert.is(l.failedHandshakes, 1);
  // The next connection handed out is the honest client's: the refused one never was.
  const honestId = await generateIdentity();
  const client = new TcpTransport(honestId, OPTS);
  s.defer(() => client.close());
  const [, first] = await Promise.all([echoOnce(client, l.address, serverId.publicKey, s), l.accept().then((c) => (c ? (void serveEcho(c), c) : c))]);
  assert.ok(first && Buffer.from(first.remotePublicKey).equals(Buffer.from(honestId.publicKey)), 'first accepted connection is the honest one');
}

run('a TLS client without a certificate is refused', (s) => rawTlsClient(s, { noCert: true }));

run('a certificate without the libp2p key extension is refused', (s) => rawTlsClient(s, { forge: { omitExtension: true } }));

run('a certificate claiming a key that did not sign the binding is refused', async (s) => {
  await rawTlsClient(s, { forge: { claimKey: (await generateIdentity()).publicKey } });
});

run('a client that offers only TLS 1.2 (downgrade) is refused', (s) => rawTlsClient(s, { maxVersion: 'TLSv1.2' }));

run('a client with a valid certificate that does not speak the quicmap ALPN is refused', (s) => rawTlsClient(s, { noAlpn: true }));

run('the raw TLS client of these tests is accepted when nothing is wrong (so the refusals above mean something)', async (s) => {
  const serverId = await generateIdentity();
  const server = new TcpTransport(serverId, OPTS);
  s.defer(() => server.close());
  const l = (await server.listen('127.0.0.1:0')) as Listener & { failedHandshakes: number };
  const { host, port } = parseHostPort(l.address);
  const me = await generateIdentity();
  const cert = createPeerCertificate(me);
  const sock: TLSSocket = tlsConnect({ host, port, rejectUnauthorized: false, ALPNProtocols: ['quicmap/1'], key: cert.keyPem, cert: cert.certPem });
  s.defer(() => void sock.destroy());
  sock.on('error', () => {});
  const c = await withTimeout(3000, 'accepted', l.accept());
  assert.ok(c && Buffer.from(c.remotePublicKey).equals(Buffer.from(me.publicKey)), 'accepted with the proven key');
  assert.is(l.failedHandshakes, 0);
});

run('dialing a listener whose certificate claims a stolen key fails with EACCES', async (s) => {
  // A rogue listener presents the victim's public key in its extension, signed by its own key.
  const victim = await generateIdentity();
  const rogue = await generateIdentity();
  const forged = createPeerCertificate(rogue, { claimKey: victim.publicKey });
  const { createServer: createTlsServer } = await import('node:tls');
  const srv = createTlsServer(
    { key: forged.keyPem, cert: forged.certPem, minVersion: 'TLSv1.3', requestCert: true, rejectUnauthorized: false, ALPNProtocols: ['quicmap/1'] },
    (c) => c.on('error', () => {}),
  );
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  s.defer(() => new Promise<void>((r) => srv.close(() => r())));
  const client = new TcpTransport(await generateIdentity(), OPTS);
  s.defer(() => client.close());
  await expectCode(client.dial(`127.0.0.1:${(srv.address() as { port: number }).port}`, victim.publicKey), ['EACCES'], 'dial a stolen key');
});

run('openStream waits for a slot and fails with ETIMEDOUT when none frees', async (s) => {
  const serverId = await generateIdentity();
  const server = new TcpTransport(serverId, { ...OPTS, maxStreams: 16 });
  s.defer(() => server.close());
  const l = await server.listen('127.0.0.1:0');
  const client = new TcpTransport(await generateIdentity(), { ...OPTS, streamOpenTimeoutMs: 300 });
  s.defer(() => client.close());
  const [conn, peer] = await Promise.all([client.dial(l.address, serverId.publicKey), l.accept()]);
  // Let the server's SETTINGS arrive.
  const probe = await conn.openStream();
  await probe.write(Buffer.from('p'));
  const pr = (await peer!.acceptStream())!;
  await pr.read();
  const open = [probe];
  for (let i = 1; i < 16; i++) open.push(await conn.openStream());
  await expectCode(conn.openStream(), ['ETIMEDOUT'], '17th stream');
  // Finishing one stream on both sides frees its slot.
  await probe.closeWrite();
  await pr.closeWrite();
  assert.is(await probe.read(), null);
  const again = await conn.openStream();
  await again.write(Buffer.from('ok'));
});

run('dialing a port that is not listening fails fast with a typed error', async (s) => {
  const t = new TcpTransport(await generateIdentity(), OPTS);
  s.defer(() => t.close());
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', () => r()));
  const port = (probe.address() as { port: number }).port;
  await new Promise<void>((r) => probe.close(() => r()));
  await expectCode(t.dial(`127.0.0.1:${port}`, randomBytes(32)), ['EIO'], 'refused');
});

run('IPv6 loopback works', async (s) => {
  const serverId = await generateIdentity();
  const server = new TcpTransport(serverId, OPTS);
  s.defer(() => server.close());
  let l: Listener;
  try {
    l = await server.listen('[::1]:0');
  } catch {
    console.log('  (no IPv6 loopback here; skipped)');
    return;
  }
  assert.match(l.address, /^\[::1\]:\d+$/);
  serveAll(l);
  const client = new TcpTransport(await generateIdentity(), OPTS);
  s.defer(() => client.close());
  await echoOnce(client, l.address, serverId.publicKey, s);
});

/**
 * An authenticated but hostile peer: completes the handshake, then sends
 * well-encrypted frames that break the mux rules. The listener must drop that
 * connection and keep serving.
 */
/** `raw`: send `frames` as they are, without the batch header. */
async function hostilePeer(s: Scope, frames: Buffer, raw = false): Promise<void> {
  const serverId = await generateIdentity();
  const server = new TcpTransport(serverId, { ...OPTS, streamWindow: 64 * 1024 });
  s.defer(() => server.close());
  const l = await server.listen('127.0.0.1:0');
  const { host, port } = parseHostPort(l.address);
  const tcp = connect({ host, port });
  s.defer(() => void tcp.destroy());
  tcp.on('error', () => {});
  await new Promise<void>((r) => tcp.once('connect', () => r()));
  const me: Identity = await generateIdentity();
  const ch = await secureDuplex(tcp, me, serverId.publicKey, 'client');
  const sock = ch.socket;
  sock.on('error', () => {});
  const closed = new Promise<void>((r) => sock.on('close', () => r()));
  sock.resume();
  const peer = await l.accept();
  assert.ok(peer, 'the handshake itself was fine');
  const h = Buffer.alloc(4);
  h.writeUInt32BE(frames.length, 0);
  sock.write(raw ? frames : Buffer.concat([h, frames]));
  // A stream opened before the violation may still be handed out; it fails.
  const st = await withTimeout(3000, 'hostile peer accept', peer!.acceptStream());
  if (st) await expectCode(withTimeout(3000, 'read on the dropped stream', readAll(st)), ['EPROTO', 'ESHUTDOWN'], 'stream of a dropped peer');
  await withTimeout(3000, 'listener side closed', peer!.closed);
  await withTimeout(3000, 'hostile socket dropped', closed);
  serveAll(l);
  const client = new TcpTransport(await generateIdentity(), OPTS);
  s.defer(() => client.close());
  await echoOnce(client, l.address, serverId.publicKey, s);
}

function frame(type: number, id: number, value: number, payload = Buffer.alloc(0)): Buffer {
  const f = Buffer.alloc(9);
  f[0] = type;
  f.writeUInt32BE(id, 1);
  f.writeUInt32BE(value, 5);
  return Buffer.concat([f, payload]);
}

const settings = () => {
  const p = Buffer.alloc(12);
  p.writeUInt32BE(256, 0);
  p.writeUInt32BE(1 << 20, 4);
  p.writeUInt32BE(16 << 20, 8);
  return frame(5, 0, 12, p);
};

run('an authenticated peer that overruns a stream window is dropped; others are served', async (s) => {
  // OPEN stream 1, then 4 x 32 KiB of DATA against a 64 KiB window.
  const data = Buffer.alloc(32 * 1024, 1);
  await hostilePeer(s, Buffer.concat([settings(), frame(1, 1, 0), ...Array.from({ length: 4 }, () => frame(0, 1, data.length, data))]));
});

run('an authenticated peer sending frames for streams never opened is dropped', async (s) => {
  await hostilePeer(s, Buffer.concat([settings(), frame(0, 7, 3, Buffer.from('abc'))]));
});

run('an authenticated peer sending an unknown frame type is dropped', async (s) => {
  await hostilePeer(s, Buffer.concat([settings(), frame(99, 0, 0)]));
});

run('an authenticated peer announcing an oversized batch is dropped', async (s) => {
  // A batch header claiming 16 MiB: refused before anything is buffered.
  const big = Buffer.alloc(4);
  big.writeUInt32BE(16 << 20, 0);
  await hostilePeer(s, Buffer.concat([big, randomBytes(1024)]), true);
});

test.run();
