import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { ClosedError, OutOfRangeError, QuicmapError, ReadOnlyError, RequestTooLargeError } from '../../base/errors.ts';
import { GuardLayer, InvalidRequestError } from '../../engine/layers/guard.ts';
import type { ReadWriterAt } from '../../engine/rwat.ts';
import { rejectsWith } from './model.ts';

/** Counts what reaches the store, to prove refused requests never get there. */
function counting(inner: ReadWriterAt): ReadWriterAt & { calls: number } {
  const c = {
    calls: 0,
    caps: inner.caps,
    size: () => inner.size(),
    readAt: (b: Uint8Array, o: number) => (c.calls++, inner.readAt(b, o)),
    writeAt: (d: Uint8Array, o: number, opts?: { fua?: boolean }) => (c.calls++, inner.writeAt(d, o, opts)),
    flush: () => inner.flush(),
    trim: (o: number, l: number) => (c.calls++, inner.trim(o, l)),
    writeZeroes: (o: number, l: number) => (c.calls++, inner.writeZeroes(o, l)),
    capability: inner.capability.bind(inner),
    close: () => inner.close(),
  };
  return c;
}

test('in-range requests pass; the size is read once at open', async () => {
  const mem = new MemoryBackend(10_000);
  let sizeCalls = 0;
  const inner = counting(mem);
  inner.size = () => (sizeCalls++, mem.size());
  const g = await GuardLayer.open(inner, { maxRequest: 4096 });
  assert.is(await g.size(), 10_000);
  assert.is(await g.size(), 10_000);
  assert.is(sizeCalls, 1);
  await g.writeAt(new Uint8Array([1, 2]), 9998);
  const b = new Uint8Array(2);
  await g.readAt(b, 9998);
  assert.equal([...b], [1, 2]);
  await g.trim(0, 10_000); // no payload: not bound by maxRequest
  await g.writeZeroes(0, 10_000);
  await g.readAt(new Uint8Array(0), 10_000); // empty at the very end: fine, not forwarded
  assert.is(inner.calls, 4);
});

test('out of range, oversized and malformed requests get typed errors and never reach the store', async () => {
  const inner = counting(new MemoryBackend(10_000));
  const g = await GuardLayer.open(inner, { maxRequest: 4096 });
  const buf = (n: number) => new Uint8Array(n);
  await rejectsWith(g.readAt(buf(2), 9999), OutOfRangeError, 'EINVAL');
  await rejectsWith(g.readAt(buf(1), 10_000), OutOfRangeError, 'EINVAL');
  await rejectsWith(g.writeAt(buf(1), 2 ** 53 - 1), OutOfRangeError, 'EINVAL');
  await rejectsWith(g.trim(5000, 5001), OutOfRangeError, 'EINVAL');
  await rejectsWith(g.writeZeroes(10_001, 0), OutOfRangeError, 'EINVAL');
  await rejectsWith(g.readAt(buf(4097), 0), RequestTooLargeError, 'EOVERFLOW');
  await rejectsWith(g.writeAt(buf(8192), 0), RequestTooLargeError, 'EOVERFLOW');
  await rejectsWith(g.readAt(buf(1), -1), InvalidRequestError, 'EINVAL');
  await rejectsWith(g.readAt(buf(1), 1.5), InvalidRequestError, 'EINVAL');
  await rejectsWith(g.writeAt(buf(1), Number.NaN), InvalidRequestError, 'EINVAL');
  await rejectsWith(g.trim(0, -5), InvalidRequestError, 'EINVAL');
  await rejectsWith(g.writeZeroes(0, 0.5), InvalidRequestError, 'EINVAL');
  await rejectsWith(g.trim(2 ** 53, 1), InvalidRequestError, 'EINVAL');
  const e = await rejectsWith(g.readAt(buf(2), 9999), QuicmapError);
  assert.match(e.message, /outside the region of 10000 bytes/);
  assert.is(inner.calls, 0);
});

test('read-only: by option or by the store; reads and flush still work', async () => {
  for (const [inner, opts] of [
    [counting(new MemoryBackend(4096)), { maxRequest: 4096, readOnly: true }],
    [counting(new MemoryBackend(4096, { readOnly: true })), { maxRequest: 4096 }],
  ] as const) {
    const g = await GuardLayer.open(inner, opts);
    assert.ok(g.caps.readOnly);
    await rejectsWith(g.writeAt(new Uint8Array(1), 0), ReadOnlyError, 'EPERM');
    await rejectsWith(g.trim(0, 1), ReadOnlyError, 'EPERM');
    await rejectsWith(g.writeZeroes(0, 1), ReadOnlyError, 'EPERM');
    await g.readAt(new Uint8Array(10), 0);
    await g.flush();
    assert.is(inner.calls, 1);
  }
});

test('close closes the stack once; later calls are ClosedError', async () => {
  const mem = new MemoryBackend(4096);
  const g = await GuardLayer.open(mem, { maxRequest: 4096 });
  await g.close();
  await g.close();
  await rejectsWith(g.readAt(new Uint8Array(1), 0), ClosedError, 'ESHUTDOWN');
  await rejectsWith(g.flush(), ClosedError);
  await rejectsWith(mem.size(), ClosedError); // the backend below was closed too
  assert.throws(() => new GuardLayer(mem, 4096, { maxRequest: 0 }), /maxRequest/);
});

test.run();
