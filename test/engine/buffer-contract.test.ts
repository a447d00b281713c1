/**
 * The buffer contract the pooled data paths rely on (the region server's
 * and the NBD server's recycled READ and WRITE buffers): every store
 * `readAt` fills every byte of the buffer it is given, holes included, and
 * `writeAt` never keeps the caller's buffer (a later change to it must not
 * reach the store). A store that broke either would leak one request's
 * bytes into another's reply, or corrupt data once a buffer is reused.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openBackend } from '../../engine/backends/open.ts';
import { SharedMemoryBackend } from '../../engine/backends/shared-memory.ts';
import { buildStack, chunked, tracking } from '../../engine/stack.ts';
import type { ReadWriterAt } from '../../engine/rwat.ts';

const SIZE = 4 * 1024 * 1024;
const CHUNK = 64 * 1024;

async function check(name: string, store: ReadWriterAt): Promise<void> {
  try {
    // Holes: never written, so the store has nothing there; the buffer starts dirty.
    for (const [at, len] of [[0, 4096], [CHUNK - 100, 300], [SIZE - CHUNK, CHUNK], [3 * CHUNK + 7, 2 * CHUNK]] as const) {
      const b = new Uint8Array(len).fill(0xaa);
      await store.readAt(b, at);
      assert.ok(b.every((x) => x === 0), `${name}: a read of a hole at ${at}+${len} left bytes of the buffer unwritten`);
    }
    // Written data: a read over written and unwritten parts fills both.
    const data = new Uint8Array(2 * CHUNK).map((_, i) => (i * 7 + 1) & 0xff);
    await store.writeAt(data, CHUNK);
    const copy = data.slice();
    data.fill(0x55); // the caller reuses its buffer at once
    const back = new Uint8Array(4 * CHUNK).fill(0xaa);
    await store.readAt(back, 0);
    assert.ok(back.subarray(0, CHUNK).every((x) => x === 0), `${name}: the hole before the write was not filled`);
    assert.equal(Buffer.from(back.subarray(CHUNK, 3 * CHUNK)), Buffer.from(copy), `${name}: the store kept the caller's write buffer (a later change reached it)`);
    assert.ok(back.subarray(3 * CHUNK).every((x) => x === 0), `${name}: the hole after the write was not filled`);
    // Trimmed again: a hole once more.
    if (store.trim) {
      await store.trim(CHUNK, CHUNK);
      const t = new Uint8Array(CHUNK).fill(0xaa);
      await store.readAt(t, CHUNK);
      // Trim is advisory: the range reads as zeros or as it was, but every byte is written either way.
      const zeros = t.every((x) => x === 0);
      const kept = Buffer.from(t).equals(Buffer.from(copy.subarray(0, CHUNK)));
      assert.ok(zeros || kept, `${name}: a read after trim left buffer bytes unwritten`);
    }
  } finally {
    await store.close();
  }
}

test('every backend, and a stack of layers, fills read buffers and copies write buffers', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'qm-contract-'));
  try {
    await check('memory', await openBackend('memory', { size: SIZE, chunkSize: CHUNK }));
    if (SharedMemoryBackend.available()) await check('shared-memory', await SharedMemoryBackend.create(SIZE));
    else console.log('  (shared-memory backend not checked: the native addon is not built)');
    await check('file', await openBackend(`file:${join(dir, 'f.img')}`, { size: SIZE, create: true }));
    await check('dir', await openBackend(`dir:${join(dir, 'd')}`, { size: SIZE, create: true, chunkSize: CHUNK }));
    await check('stack (guard, tracking, chunked over memory)', await buildStack({ backend: 'memory', backendOptions: { size: SIZE }, layers: [tracking(CHUNK), chunked(CHUNK)], maxRequest: 1 << 20 }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
