/**
 * The behaviour every Transport must show, written once and run against each
 * implementation (memory, tcp, quic). Each test builds its own pair of
 * transports inside a Scope and is bounded by withTimeout.
 */
import * as assert from 'uvu/assert';
import type { Test } from 'uvu';
import { createHash, randomBytes } from 'node:crypto';
import type { ByteStream, Connection, Listener, Transport } from '../../transports/transport.ts';
import { generateIdentity, type Identity } from '../../crypto/identity.ts';
import { QuicmapError } from '../../base/errors.ts';
import { Scope, withTimeout } from '../helpers/env.ts';

export interface TransportFactory {
  make(identity: Identity): Transport;
  /** Where listeners bind, e.g. "127.0.0.1:0". */
  listenAddress: string;
  /** Bytes moved in the large-transfer test. */
  largeBytes?: number;
  /** Upper bound on bytes a writer may get accepted while nobody reads. */
  backpressureLimit?: number;
  timeoutMs?: number;
  /**
   * Codes a dial expecting the wrong key may fail with (default EACCES; a
   * relay routes by key, so it answers "no reservation" before any handshake).
   */
  wrongKeyCodes?: string[];
}

export interface Pair {
  client: Transport;
  server: Transport;
  serverId: Identity;
  clientId: Identity;
  listener: Listener;
  conn: Connection;
  peer: Connection;
}

export async function makePair(s: Scope, f: TransportFactory): Promise<Pair> {
  const serverId = await generateIdentity();
  const clientId = await generateIdentity();
  const server = f.make(serverId);
  s.defer(() => server.close());
  const client = f.make(clientId);
  s.defer(() => client.close());
  const listener = await server.listen(f.listenAddress);
  s.defer(() => listener.close());
  const [conn, peer] = await Promise.all([client.dial(listener.address, serverId.publicKey), listener.accept()]);
  assert.ok(peer, 'listener accepted a connection');
  s.defer(() => conn.close());
  s.defer(() => peer!.close());
  return { client, server, serverId, clientId, listener, conn, peer: peer! };
}

export async function readAll(st: ByteStream, max = Infinity): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  let n = 0;
  for (;;) {
    const c = await st.read();
    if (c === null) break;
    parts.push(c);
    n += c.length;
    if (n > max) throw new Error(`read more than ${max} bytes`);
  }
  return Buffer.concat(parts);
}

/** Read until exactly n bytes arrived (or the stream ends early: error). */
export async function readExactly(st: ByteStream, n: number): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  let got = 0;
  while (got < n) {
    const c = await st.read();
    if (c === null) throw new Error(`stream ended after ${got} of ${n} bytes`);
    parts.push(c);
    got += c.length;
  }
  return Buffer.concat(parts);
}

/** Echo every stream the connection accepts until the connection ends. */
export function serveEcho(conn: Connection): Promise<void> {
  return (async () => {
    for (;;) {
      const st = await conn.acceptStream().catch(() => null);
      if (!st) return;
      void (async () => {
        try {
          for (;;) {
            const c = await st.read();
            if (c === null) break;
            await st.write(c);
          }
          await st.closeWrite();
        } catch {
          st.reset();
        }
      })();
    }
  })();
}

export async function expectCode(p: Promise<unknown>, codes: string[], what: string): Promise<QuicmapError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof QuicmapError, `${what}: expected a QuicmapError, got ${String(e)}`);
    assert.ok(codes.includes(e.code), `${what}: expected ${codes.join('/')}, got ${e.code} (${e.message})`);
    return e;
  }
  assert.unreachable(`${what}: should have failed`);
  throw new Error('unreachable');
}

export function defineConformance(suite: Test, f: TransportFactory): void {
  const T = f.timeoutMs ?? 20_000;
  const run = (name: string, fn: (s: Scope) => Promise<void>) =>
    suite(name, async () => {
      const s = new Scope();
      try {
        await withTimeout(T, name, fn(s));
      } finally {
        await withTimeout(10_000, `${name} cleanup`, s.close());
      }
    });

  run('overlapping writes on one stream arrive in call order; every waiting writer finishes', async (s) => {
    const p = await makePair(s, f);
    const st = await p.conn.openStream();
    // Large writes that must wait for credit, interleaved with small ones that
    // could go out at once: none may overtake another.
    const pieces: Buffer[] = [];
    for (let i = 0; i < 24; i++) pieces.push(Buffer.alloc(i % 3 === 0 ? 3 * 1024 * 1024 + i : 100 + i, i + 1));
    const writes = pieces.map((b) => background(st.write(b)));
    const closed = background(st.closeWrite());
    const inbound = (await p.peer.acceptStream())!;
    const got = await readAll(inbound);
    await Promise.all([...writes, closed]);
    assert.is(got.length, pieces.reduce((n, b) => n + b.length, 0));
    let at = 0;
    for (const [i, b] of pieces.entries()) {
      assert.ok(got.subarray(at, at + b.length).equals(b), `write ${i} arrived in place`);
      at += b.length;
    }
  });

  run('echo on many concurrent streams', async (s) => {
    const p = await makePair(s, f);
    void serveEcho(p.peer);
    const N = 64;
    await Promise.all(
      Array.from({ length: N }, async (_, i) => {
        const st = await p.conn.openStream();
        const msg = randomBytes(1000 + i * 97);
        await st.write([msg.subarray(0, 10), msg.subarray(10)]);
        await st.closeWrite();
        const back = await readAll(st);
        assert.ok(back.equals(msg), `stream ${i} echoed its bytes`);
      }),
    );
  });

  run('large transfer verified byte for byte, both directions', async (s) => {
    const p = await makePair(s, f);
    void serveEcho(p.peer);
    const total = f.largeBytes ?? 32 * 1024 * 1024;
    const st = await p.conn.openStream();
    const sent = createHash('sha256');
    const got = createHash('sha256');
    let received = 0;
    const reader = background((async () => {
      for (;;) {
        const c = await st.read();
        if (c === null) break;
        got.update(c);
        received += c.length;
      }
    })());
    let seed = randomBytes(1 << 20);
    for (let off = 0; off < total; off += seed.length) {
      const n = Math.min(seed.length, total - off);
      // Vary the data (and chunk sizes) so a duplicated or dropped chunk shows.
      const chunk = seed.subarray(0, n);
      chunk[0] = off & 255;
      sent.update(chunk);
      await st.write(chunk.subarray(0, n >> 1));
      await st.write(chunk.subarray(n >> 1));
      seed = randomBytes(1 << 20);
    }
    await st.closeWrite();
    await reader;
    assert.is(received, total);
    assert.is(got.digest('hex'), sent.digest('hex'));
  });

  run('half-close: the peer sees the end and can still answer', async (s) => {
    const p = await makePair(s, f);
    const served = background((async () => {
      const st = (await p.peer.acceptStream())!;
      const req = await readAll(st);
      await st.write(Buffer.from(`got ${req.length}`));
      await st.write(Buffer.from(' bytes'));
      await st.closeWrite();
    })());
    const st = await p.conn.openStream();
    await st.write(Buffer.alloc(12345, 7));
    await st.closeWrite();
    await expectError(st.write(Buffer.from('x')), 'write after closeWrite');
    assert.is((await readAll(st)).toString(), 'got 12345 bytes');
    assert.is(await st.read(), null, 'end is sticky');
    await served;
  });

  run('reset rejects pending reads on both ends', async (s) => {
    const p = await makePair(s, f);
    const st = await p.conn.openStream();
    await st.write(Buffer.from('hello'));
    const remote = (await p.peer.acceptStream())!;
    assert.is(Buffer.from((await readExactly(remote, 5))).toString(), 'hello');
    const remoteRead = remote.read();
    const localRead = st.read();
    st.reset(new Error('test reset'));
    await expectError(localRead, 'local pending read');
    await expectError(remoteRead, 'remote pending read');
    await expectError(st.write(Buffer.from('x')), 'write after reset');
    // The connection itself survives a stream reset.
    void serveEcho(p.peer);
    const st2 = await p.conn.openStream();
    await st2.write(Buffer.from('still alive'));
    await st2.closeWrite();
    assert.is((await readAll(st2)).toString(), 'still alive');
  });

  run('backpressure: a writer facing a slow reader stays bounded', async (s) => {
    const p = await makePair(s, f);
    const st = await p.conn.openStream();
    await st.write(Buffer.from('x'));
    const remote = (await p.peer.acceptStream())!;
    const limit = f.backpressureLimit ?? 8 * 1024 * 1024;
    const chunk = Buffer.alloc(64 * 1024, 1);
    let accepted = 0;
    let stalled = false;
    const total = limit * 3;
    const writer = background((async () => {
      while (accepted < total) {
        await st.write(chunk);
        accepted += chunk.length;
      }
      await st.closeWrite();
    })());
    // Nobody reads: the writer must stall well below the total.
    for (let i = 0; i < 40; i++) {
      const before = accepted;
      await new Promise((r) => setTimeout(r, 25));
      if (accepted === before && accepted > 0) {
        stalled = true;
        break;
      }
    }
    assert.ok(stalled, `writer kept going while nobody read (accepted ${accepted})`);
    assert.ok(accepted <= limit, `writer got ${accepted} bytes accepted, limit ${limit}`);
    const rest = await readAll(remote);
    await writer;
    assert.is(rest.length, total + 1, "everything arrives once the reader catches up");
  });

  run('a slow stream does not block another stream', async (s) => {
    const p = await makePair(s, f);
    const slow = await p.conn.openStream();
    await slow.write(Buffer.from('s'));
    const slowRemote = (await p.peer.acceptStream())!;
    // Fill the slow stream until its writer stalls.
    const chunk = Buffer.alloc(64 * 1024, 2);
    let stop = false;
    const filler = (async () => {
      while (!stop) await slow.write(chunk);
    })().catch(() => {});
    await new Promise((r) => setTimeout(r, 200));
    void serveEcho(p.peer);
    const fast = await p.conn.openStream();
    const msg = randomBytes(256 * 1024);
    await fast.write(msg);
    await fast.closeWrite();
    assert.ok((await readAll(fast)).equals(msg), 'fast stream echoed while another stalls');
    stop = true;
    slowRemote.reset();
    slow.reset();
    await filler;
  });

  run('dialing with the wrong expected key fails with EACCES', async (s) => {
    const serverId = await generateIdentity();
    const other = await generateIdentity();
    const server = f.make(serverId);
    s.defer(() => server.close());
    const client = f.make(await generateIdentity());
    s.defer(() => client.close());
    const l = await server.listen(f.listenAddress);
    s.defer(() => l.close());
    void (async () => {
      for (;;) {
        const c = await l.accept().catch(() => null);
        if (!c) return;
        void serveEcho(c);
      }
    })();
    await expectCode(client.dial(l.address, other.publicKey), f.wrongKeyCodes ?? ['EACCES'], 'dial with wrong key');
    // The listener still serves a client that expects the right key.
    const c = await client.dial(l.address, serverId.publicKey);
    s.defer(() => c.close());
    assert.ok(Buffer.from(c.remotePublicKey).equals(Buffer.from(serverId.publicKey)));
    const st = await c.openStream();
    await st.write(Buffer.from('ok'));
    await st.closeWrite();
    assert.is((await readAll(st)).toString(), 'ok');
  });

  run('the listener sees the dialer key', async (s) => {
    const p = await makePair(s, f);
    assert.ok(Buffer.from(p.peer.remotePublicKey).equals(Buffer.from(p.clientId.publicKey)));
    assert.ok(Buffer.from(p.conn.remotePublicKey).equals(Buffer.from(p.serverId.publicKey)));
    assert.type(p.conn.remoteAddress, 'string');
  });

  run('closing a connection ends pending reads and accepts on both ends', async (s) => {
    const p = await makePair(s, f);
    const st = await p.conn.openStream();
    await st.write(Buffer.from('a'));
    const remote = (await p.peer.acceptStream())!;
    await readExactly(remote, 1);
    const pendingLocal = st.read();
    const pendingRemote = remote.read();
    const acceptRemote = p.peer.acceptStream();
    await p.peer.close();
    await expectError(pendingRemote, 'closer pending read');
    assert.is(await acceptRemote, null, 'accept on a closed connection gives null');
    await expectError(pendingLocal, 'peer pending read');
    await p.conn.closed;
    await p.peer.closed;
    await expectError(p.conn.openStream(), 'openStream on a closed connection');
  });

  run('listener close: accept gives null and new dials fail', async (s) => {
    const serverId = await generateIdentity();
    const server = f.make(serverId);
    s.defer(() => server.close());
    const client = f.make(await generateIdentity());
    s.defer(() => client.close());
    const l = await server.listen(f.listenAddress);
    const pending = l.accept();
    await l.close();
    assert.is(await pending, null);
    assert.is(await l.accept(), null);
    await expectError(client.dial(l.address, serverId.publicKey, { timeoutMs: 2000 }), 'dial a closed listener');
  });

  run('listener close also closes the connections it accepted', async (s) => {
    const p = await makePair(s, f);
    const st = await p.conn.openStream();
    await st.write(Buffer.from('a'));
    const remote = (await p.peer.acceptStream())!;
    await readExactly(remote, 1);
    const pending = background(st.read());
    await p.listener.close();
    await p.peer.closed;
    await p.conn.closed;
    await expectError(pending, 'dialer read after the listener closed');
  });
}

/** A task the test awaits later: marked handled now so an early failure elsewhere does not crash the process. */
export function background<T>(p: Promise<T>): Promise<T> {
  p.catch(() => {});
  return p;
}

export async function expectError(p: Promise<unknown>, what: string): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  assert.unreachable(`${what}: should have failed`);
}
