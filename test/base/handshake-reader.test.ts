/** base/handshake-reader.ts over a real loopback socket pair. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer, connect, type Socket } from 'node:net';
import { HandshakeReader } from '../../base/handshake-reader.ts';
import { withTimeout } from '../helpers/env.ts';

async function pair(): Promise<{ a: Socket; b: Socket; close: () => Promise<void> }> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const accepted = new Promise<Socket>((r) => server.once('connection', r));
  const a = connect(port, '127.0.0.1');
  await new Promise((r) => a.once('connect', r));
  const b = await accepted;
  return {
    a,
    b,
    close: async () => {
      a.destroy();
      b.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

test('exact reads across and within chunks; the bytes after the handshake are handed over', () =>
  withTimeout(5000, 'reader', async () => {
    const p = await pair();
    try {
      const r = new HandshakeReader(p.b, 'test peer');
      p.a.write(Buffer.from('he'));
      const first = r.read(5);
      p.a.write(Buffer.from('llo, world+rest'));
      assert.is((await first).toString(), 'hello');
      assert.is((await r.read(7)).toString(), ', world');
      // '+rest' came in the same chunk as the last handshake bytes.
      assert.is(r.detach().toString(), '+rest');
      assert.is(p.b.isPaused(), true, 'left paused for the next owner');
    } finally {
      await p.close();
    }
  }));

test('a close mid-handshake rejects with EPROTO naming the peer; fail() rejects from outside', () =>
  withTimeout(5000, 'reader', async () => {
    const p = await pair();
    try {
      const r = new HandshakeReader(p.b, 'NBD server');
      const pending = r.read(10);
      p.a.end(Buffer.from('abc'));
      try {
        await pending;
        assert.unreachable('read resolved');
      } catch (e) {
        assert.is((e as { code?: string }).code, 'EPROTO');
        assert.match((e as Error).message, /NBD server closed the connection during the handshake/);
      }
      const p2 = await pair();
      const r2 = new HandshakeReader(p2.b);
      const waiting = r2.read(4);
      r2.fail(new Error('deadline'));
      await waiting.then(() => assert.unreachable('resolved'), (e: Error) => assert.is(e.message, 'deadline'));
      await p2.close();
    } finally {
      await p.close();
    }
  }));

test.run();
