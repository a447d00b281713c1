/**
 * NbdClient (engine/nbd/client.ts) as a ReadWriterAt against our NbdServer:
 * the contract a caller relies on when a request is split into pieces of the
 * server's maximum block size.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { QuicmapError } from '../../base/errors.ts';
import { PassThroughLayer } from '../../engine/layers/pass-through.ts';
import { NbdClient } from '../../engine/nbd/client.ts';
import { BufferStore } from '../helpers/buffer-store.ts';
import { Scope, withTimeout } from '../helpers/env.ts';
import { startServer } from './fixture.ts';

const PIECE = 64 * 1024;

/** The first piece of a read is held until released; any read past it fails at once. */
class HeldThenFailing extends PassThroughLayer {
  release!: () => void;
  private readonly released = new Promise<void>((r) => (this.release = r));
  served = 0;
  override async readAt(buf: Uint8Array, offset: number): Promise<void> {
    if (offset >= PIECE) throw new QuicmapError('EIO', 'injected failure of the second piece');
    await this.released;
    await this.inner.readAt(buf, offset);
    this.served++;
  }
}

test('a split read that fails leaves the caller\'s buffer alone once the call has settled', () =>
  withTimeout(20_000, 'split read', async () => {
    const scope = new Scope();
    try {
      const store = new HeldThenFailing(new BufferStore(4 * PIECE, { fill: Buffer.alloc(4 * PIECE, 0xab) }));
      const fx = await startServer(scope, [{ name: 'd', store }], { maxPayload: PIECE });
      const client = await NbdClient.connect(fx.tcp.uri('d'));
      scope.defer(() => client.close());
      assert.is(client.maxBlock, PIECE);
      const buf = new Uint8Array(2 * PIECE);
      const call = client.readAt(buf, 0).then(
        () => 'resolved',
        (e: Error) => e.message,
      );
      // Release the held piece either when the call settles or soon after the failure (a
      // client that waits for every piece settles only once the held one is done).
      const fallback = setTimeout(() => store.release(), 300);
      const outcome = await call;
      store.release();
      clearTimeout(fallback);
      assert.match(outcome, /EIO/);
      const atSettle = Buffer.from(buf);
      // Let the held piece finish on the server and its reply cross the socket: a
      // flush is answered after it.
      while (store.served === 0) await new Promise((r) => setTimeout(r, 5));
      await client.flush();
      assert.ok(Buffer.from(buf).equals(atSettle), 'the buffer changed after readAt had already rejected');
      await client.close();
      // Let the server see the disconnect before the scope closes it (else its close waits out a grace period).
      for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
    } finally {
      await scope.close();
    }
  }),
);

test('writev: one WRITE for pieces within the maximum block, re-cut above it', () =>
  withTimeout(20_000, 'writev', async () => {
    const scope = new Scope();
    try {
      const store = new BufferStore(4 * PIECE);
      const fx = await startServer(scope, [{ name: 'd', store }], { maxPayload: PIECE });
      const client = await NbdClient.connect(fx.tcp.uri('d'));
      const small = [Buffer.from('ab'), Buffer.alloc(1000, 7), Buffer.from('yz')];
      await client.writev(small, 10);
      assert.equal(store.events.filter((e) => e.op === 'write').map((e) => (e as { length: number }).length), [1004]);
      const big = [Buffer.alloc(PIECE, 1), Buffer.alloc(PIECE / 2, 2), Buffer.alloc(PIECE, 3)];
      await client.writev(big, PIECE / 4, { fua: true });
      assert.ok(store.bytes.subarray(PIECE / 4, PIECE / 4 + 2.5 * PIECE).equals(Buffer.concat(big)));
      assert.ok(store.events.filter((e) => e.op === 'write').slice(1).every((e) => (e as { length: number }).length <= PIECE));
      assert.ok(store.bytes.subarray(10, 1014).equals(Buffer.concat(small)));
      await client.close();
      for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
    } finally {
      await scope.close();
    }
  }),
);

test.run();
