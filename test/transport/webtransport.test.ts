import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash, randomBytes } from 'node:crypto';
import { connect as tlsConnect } from 'node:tls';
import { WebTransportTransport } from '../../transports/webtransport.ts';
import { loadWebTransport } from '../../transports/webtransport-lib.ts';
import { generateIdentity } from '../../crypto/identity.ts';
import { Scope, withTimeout } from '../helpers/env.ts';
import { defineConformance, readAll, serveEcho } from './conformance.ts';
import { vanishingPeer } from './vanish.ts';

const test = suite('transport/webtransport');
const fast = { idleTimeoutMs: 3000, keepAliveMs: 1000, handshakeTimeoutMs: 2000, streamWindow: 1024 * 1024 };
defineConformance(test, {
  make: (id) => new WebTransportTransport(id, fast),
  listenAddress: '127.0.0.1:0',
  largeBytes: 16 * 1024 * 1024,
  backpressureLimit: 4 * 1024 * 1024,
  // A hang guard, not a timing: this transport is pure JS and slower on a loaded machine.
  timeoutMs: 40_000,
});
test('a peer that vanishes mid-transfer makes pending reads reject', () =>
  vanishingPeer('webtransport', (id) => new WebTransportTransport(id, { idleTimeoutMs: 1500, keepAliveMs: 500 }), { idleTimeoutMs: 1500, keepAliveMs: 500 }, 4000),
);

function run(name: string, fn: (s: Scope) => Promise<void>) {
  test(name, async () => {
    const s = new Scope();
    try {
      await withTimeout(20_000, name, fn(s));
    } finally {
      await withTimeout(10_000, `${name} cleanup`, s.close());
    }
  });
}

async function pair(s: Scope, opts = {}) {
  const serverId = await generateIdentity();
  const server = new WebTransportTransport(serverId, opts);
  s.defer(() => server.close());
  const client = new WebTransportTransport(await generateIdentity(), opts);
  s.defer(() => client.close());
  const l = await server.listen('127.0.0.1:0');
  const [conn, peer] = await Promise.all([client.dial(l.address, serverId.publicKey), l.accept()]);
  return { l, conn, peer: peer! };
}

// @fails-components/webtransport 1.6.8 stalls every session at 16 KiB with
// default server options (transports/README.md). The transport passes the
// session window in full; this moves 4 MiB one way on one stream with
// default transport options, each direction, and fails (times out) if a
// library upgrade or an option change brings the stall back.
run('no 16 KiB stall: 4 MiB on one stream each way, default options', async (s) => {
  const { conn, peer } = await pair(s);
  const total = 4 * 1024 * 1024;
  const data = randomBytes(total);
  const served = (async () => {
    const st = (await peer.acceptStream())!;
    const got = await readAll(st);
    await st.write(got);
    await st.closeWrite();
    return got.length;
  })();
  const st = await conn.openStream();
  await st.write(data);
  await st.closeWrite();
  const back = await withTimeout(10_000, 'echo of 4 MiB (a stall at 16384 bytes shows here)', readAll(st));
  assert.is(await served, total);
  assert.is(back.length, total);
  assert.is(createHash('sha256').update(back).digest('hex'), createHash('sha256').update(data).digest('hex'));
});

run('loading the library prints nothing to stdout', async () => {
  // The library logs "http3 loader: ..." to stdout when its native HTTP/3
  // part is missing; `quicmap share` prints its ticket there.
  const writes: string[] = [];
  const orig = process.stdout.write.bind(process.stdout);
  const origLog = console.log;
  console.log = (...a: unknown[]) => void writes.push(a.map(String).join(' '));
  try {
    const lib = await loadWebTransport();
    assert.type(lib.http3Available, 'boolean');
  } finally {
    console.log = origLog;
    process.stdout.write = orig;
  }
  assert.equal(writes.filter((w) => w.includes('http3')), []);
});

run('the peers are bound to the TLS session (channel binding checked on both ends)', async (s) => {
  const { l, conn, peer } = await pair(s, fast);
  void serveEcho(peer);
  const st = await conn.openStream();
  await st.write(Buffer.from('bound'));
  await st.closeWrite();
  assert.is((await readAll(st)).toString(), 'bound');
  assert.is((l as unknown as { failedHandshakes: number }).failedHandshakes, 0);
});

// Library bug 3 (webtransport-lib.ts): streams that end normally never gave
// their MAX_STREAMS credit back, so a connection died after `maxStreams`
// request streams. 16 allowed at once, 200 opened one after another.
run('a connection opens many more streams over its life than its stream limit', async (s) => {
  const { conn, peer } = await pair(s, { ...fast, maxStreams: 16, streamOpenTimeoutMs: 3000 });
  void serveEcho(peer);
  for (let i = 0; i < 200; i++) {
    const st = await conn.openStream();
    await st.write(Buffer.from(`req ${i}`));
    await st.closeWrite();
    assert.is((await readAll(st)).toString(), `req ${i}`);
  }
});

run('silent TLS clients (no CONNECT) are capped and dropped at the handshake deadline; then a real peer gets in', async (s) => {
  const serverId = await generateIdentity();
  // The deadline also applies to the real peer at the end: not too short for a loaded machine.
  const server = new WebTransportTransport(serverId, { ...fast, handshakeTimeoutMs: 2000, maxPendingHandshakes: 4 });
  s.defer(() => server.close());
  const l = await server.listen('127.0.0.1:0');
  const port = Number(l.address.split(':')[1]);
  const t0 = Date.now();
  const closedAt = await withTimeout(
    15_000,
    'silent clients dropped',
    Promise.all(
      Array.from({ length: 6 }, () => {
        const sock = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false, ALPNProtocols: ['h2'] });
        s.defer(() => void sock.destroy());
        sock.on('error', () => {});
        sock.resume(); // read, or the end never shows
        return new Promise<number>((r) => sock.once('close', () => r(Date.now() - t0)));
      }),
    ),
  );
  assert.is(closedAt.length, 6, 'every silent client was dropped (2 over the cap at once, 4 at the deadline)');
  assert.ok((l as unknown as { failedHandshakes: number }).failedHandshakes >= 6, 'and counted');
  const client = new WebTransportTransport(await generateIdentity(), fast);
  s.defer(() => client.close());
  const [conn, peer] = await Promise.all([client.dial(l.address, serverId.publicKey), l.accept()]);
  void serveEcho(peer!);
  const st = await conn.openStream();
  await st.write(Buffer.from('in'));
  await st.closeWrite();
  assert.is((await readAll(st)).toString(), 'in');
});

run('IPv6 loopback', async (s) => {
  const serverId = await generateIdentity();
  const server = new WebTransportTransport(serverId, fast);
  s.defer(() => server.close());
  const client = new WebTransportTransport(await generateIdentity(), fast);
  s.defer(() => client.close());
  const l = await server.listen('[::1]:0');
  assert.match(l.address, /^\[::1\]:\d+$/);
  const [conn, peer] = await Promise.all([client.dial(l.address, serverId.publicKey), l.accept()]);
  void serveEcho(peer!);
  const st = await conn.openStream();
  await st.write(Buffer.from('v6'));
  await st.closeWrite();
  assert.is((await readAll(st)).toString(), 'v6');
});

test.run();
