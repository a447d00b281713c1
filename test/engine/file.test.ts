import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FileBackend, MissingSizeError, SizeMismatchError } from '../../engine/backends/file.ts';
import { ClosedError, QuicmapError, ReadOnlyError } from '../../base/errors.ts';
import { Scope, hasTool, needCondition, run } from '../helpers/env.ts';
import { assertBytes, fuzzStore, randomBytes, rejectsWith, rng } from './model.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

test('create with a size, random unaligned I/O matches the model, reopen keeps it', async () => {
  const s = new Scope();
  try {
    const path = join(s.tmpdir(), 'region.img');
    const size = 3 * MiB + 333;
    const f = await FileBackend.open(path, { size, create: true });
    assert.is(statSync(path).size, size);
    assert.is(await f.size(), size);
    assert.is(f.caps.canTrim, f.caps.fastZero, 'trim and fast zero come together (hole punching)');
    const model = await fuzzStore(f, { seed: 11, ops: 500, unit: 256 * KiB, trim: 'either', maxLen: 2 * MiB });
    await f.close();
    const again = await FileBackend.open(path, { size });
    const all = new Uint8Array(size);
    await again.readAt(all, 0);
    assertBytes(all, model, 'after reopen');
    await again.close();
  } finally {
    await s.close();
  }
});

test('size comes from an existing file; a different size or missing size is refused', async () => {
  const s = new Scope();
  try {
    const dir = s.tmpdir();
    const path = join(dir, 'r.img');
    writeFileSync(path, new Uint8Array(10000).fill(3));
    const f = await FileBackend.open(path);
    assert.is(await f.size(), 10000);
    const b = new Uint8Array(4);
    await f.readAt(b, 9996);
    assert.equal([...b], [3, 3, 3, 3]);
    await f.close();
    await rejectsWith(FileBackend.open(path, { size: 20000 }), SizeMismatchError, 'EINVAL');
    await rejectsWith(FileBackend.open(join(dir, 'new.img'), { create: true }), MissingSizeError, 'EINVAL');
    assert.not.ok(existsSync(join(dir, 'new.img')));
    const err = await rejectsWith(FileBackend.open(join(dir, 'absent.img'), { size: 5 }), Error);
    assert.is((err as NodeJS.ErrnoException).code, 'ENOENT');
  } finally {
    await s.close();
  }
});

test('writeZeroes zeroes (punching holes or allocated with NO_HOLE), FUA writes land, trim frees blocks where it can', async () => {
  const s = new Scope();
  try {
    const path = join(s.tmpdir(), 'z.img');
    const f = await FileBackend.open(path, { size: 3 * MiB, create: true });
    await f.writeAt(new Uint8Array(3 * MiB).fill(7), 0, { fua: true });
    const full = statSync(path).blocks;
    await f.writeZeroes(100, 2 * MiB + 5, { fua: true });
    const all = new Uint8Array(3 * MiB);
    await f.readAt(all, 0);
    assert.is(all[99], 7);
    assert.ok(all.subarray(100, 100 + 2 * MiB + 5).every((x) => x === 0));
    assert.is(all[100 + 2 * MiB + 5], 7);
    if (f.caps.fastZero) assert.ok(statSync(path).blocks < full, 'zeroing punched a hole');
    // NO_HOLE: zeros, and the range stays allocated.
    await f.writeAt(new Uint8Array(3 * MiB).fill(9), 0);
    await f.flush();
    await f.writeZeroes(MiB, MiB, { noHole: true });
    await f.readAt(all, 0);
    assert.ok(all.subarray(MiB, 2 * MiB).every((x) => x === 0) && all[MiB - 1] === 9 && all[2 * MiB] === 9);
    assert.is(statSync(path).blocks, full, 'NO_HOLE kept the blocks');
    await f.trim(0, 3 * MiB);
    if (f.caps.canTrim) {
      assert.ok(statSync(path).blocks < full / 4, `trim freed the blocks (${statSync(path).blocks} of ${full} left)`);
    } else {
      await f.readAt(all, 0);
      assert.is(all[0], 9, 'without hole punching trim is a no-op');
    }
    await f.flush();
    await f.close();
  } finally {
    await s.close();
  }
});

test('read-only, closed, truncated underneath', async () => {
  const s = new Scope();
  try {
    const path = join(s.tmpdir(), 'ro.img');
    writeFileSync(path, new Uint8Array(8192));
    const ro = await FileBackend.open(path, { readOnly: true });
    assert.ok(ro.caps.readOnly);
    await rejectsWith(ro.writeAt(new Uint8Array(1), 0), ReadOnlyError, 'EPERM');
    await rejectsWith(ro.writeZeroes(0, 1), ReadOnlyError, 'EPERM');
    await ro.flush(); // harmless on read-only
    await ro.close();
    await ro.close();
    await rejectsWith(ro.readAt(new Uint8Array(1), 0), ClosedError, 'ESHUTDOWN');
    const f = await FileBackend.open(path);
    truncateSync(path, 4096);
    const e = await rejectsWith(f.readAt(new Uint8Array(100), 4050), QuicmapError, 'EIO');
    assert.match(e.message, /end of file/);
    await f.close();
  } finally {
    await s.close();
  }
});

test('close waits for requests in flight', async () => {
  const s = new Scope();
  try {
    const path = join(s.tmpdir(), 'c.img');
    const f = await FileBackend.open(path, { size: 8 * MiB, create: true });
    const data = randomBytes(rng(5), 2 * MiB);
    const writes = [0, 1, 2, 3].map((i) => f.writeAt(data, i * 2 * MiB));
    await f.close();
    await Promise.all(writes);
    const g = await FileBackend.open(path);
    const back = new Uint8Array(2 * MiB);
    await g.readAt(back, 6 * MiB);
    assertBytes(back, data, 'last write');
    await g.close();
  } finally {
    await s.close();
  }
});

const asRoot = needCondition(test, process.getuid?.() === 0 && hasTool('losetup') && existsSync('/dev/loop-control'), 'needs root and loop devices');
asRoot('block device: size found without fstat, I/O works', async () => {
  const s = new Scope();
  try {
    const img = join(s.tmpdir(), 'loop.img');
    writeFileSync(img, '');
    truncateSync(img, 8 * MiB + 4096);
    const r = await run('losetup', ['-f', '--show', img], { timeoutMs: 10_000 });
    assert.is(r.code, 0, r.stderr);
    const dev = r.stdout.trim();
    s.defer(async () => {
      await run('losetup', ['-d', dev], { timeoutMs: 10_000 });
    });
    const f = await FileBackend.open(dev);
    assert.ok(f.isBlockDevice);
    assert.is(await f.size(), 8 * MiB + 4096);
    await rejectsWith(FileBackend.open(dev, { size: 4096 }), SizeMismatchError);
    const data = randomBytes(rng(3), 300 * KiB);
    await f.writeAt(data, 8 * MiB + 4096 - data.length, { fua: true });
    const back = new Uint8Array(data.length);
    await f.readAt(back, 8 * MiB + 4096 - data.length);
    assertBytes(back, data, 'block device read-back');
    await f.close();
  } finally {
    await s.close();
  }
});

test('extents report the holes of a sparse file (SEEK_DATA/SEEK_HOLE), and trimmed ranges become holes', async () => {
  const s = new Scope();
  try {
    const f = await FileBackend.open(join(s.tmpdir(), 'sparse.img'), { size: 8 * MiB, create: true });
    await f.writeAt(new Uint8Array(MiB).fill(5), MiB);
    await f.writeAt(new Uint8Array(64 * KiB).fill(6), 6 * MiB);
    const kinds = (await f.extents!(0, 8 * MiB)).map((e) => [e.length, e.hole]);
    if (!f.caps.canTrim) {
      assert.equal(kinds, [[8 * MiB, false]], 'without the addon everything reads as data');
    } else {
      assert.equal(kinds, [[MiB, true], [MiB, false], [4 * MiB, true], [64 * KiB, false], [2 * MiB - 64 * KiB, true]]);
      // A sub-range starting inside data, and a trim that makes a hole.
      assert.equal((await f.extents!(MiB + 4096, 8192)).map((e) => [e.length, e.hole]), [[8192, false]]);
      await f.trim(MiB, MiB);
      assert.equal((await f.extents!(0, 6 * MiB)).map((e) => [e.length, e.hole]), [[6 * MiB, true]]);
    }
    await f.close();
  } finally {
    await s.close();
  }
});

test.run();
