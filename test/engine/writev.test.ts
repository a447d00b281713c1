/**
 * Vectored writes: `writev` on the stores that have it (memory, file) and the
 * `writeParts` fallback lay the pieces end to end exactly like one writeAt of
 * their concatenation, at unaligned offsets, across chunk boundaries.
 */
import { test } from 'uvu';
import { join } from 'node:path';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { FileBackend } from '../../engine/backends/file.ts';
import { DirectoryBackend } from '../../engine/backends/directory.ts';
import { writeParts, type ReadWriterAt } from '../../engine/rwat.ts';
import { VECTORED } from '../../engine/capability.ts';
import { Scope } from '../helpers/env.ts';
import { assertBytes, randomBytes, rng } from './model.ts';

const SIZE = 3 * 1024 * 1024 + 4321;

async function check(store: ReadWriterAt, seed: number): Promise<void> {
  const rand = rng(seed);
  const model = new Uint8Array(SIZE);
  for (let round = 0; round < 60; round++) {
    const nParts = 1 + Math.floor(rand() * 6);
    const parts = Array.from({ length: nParts }, () => randomBytes(rand, 1 + Math.floor(rand() * 150_000)));
    const total = parts.reduce((n, p) => n + p.length, 0);
    const offset = Math.floor(rand() * (SIZE - total));
    await writeParts(store, parts, offset, { fua: round % 10 === 0 });
    let at = offset;
    for (const p of parts) {
      model.set(p, at);
      at += p.length;
    }
  }
  const back = new Uint8Array(SIZE);
  await store.readAt(back, 0);
  assertBytes(back, model, 'after vectored writes');
}

test('memory backend writev matches the model', async () => {
  const m = new MemoryBackend(SIZE, { chunkSize: 64 * 1024 });
  if (!m.capability(VECTORED)) throw new Error('MemoryBackend should offer VECTORED');
  await check(m, 1);
  await m.close();
});

test('file backend writev (pwritev) matches the model', async () => {
  const s = new Scope();
  try {
    const f = await FileBackend.open(join(s.tmpdir(), 'img'), { size: SIZE, create: true });
    if (!f.capability(VECTORED)) throw new Error('FileBackend should offer VECTORED');
    await check(f, 2);
    await f.close();
  } finally {
    await s.close();
  }
});

test('writeParts falls back to one gathered write for stores without writev', async () => {
  const s = new Scope();
  try {
    const d = await DirectoryBackend.open(join(s.tmpdir(), 'dir'), { size: SIZE, chunkSize: 256 * 1024, create: true });
    await check(d, 3);
    await d.close();
  } finally {
    await s.close();
  }
});

test.run();
