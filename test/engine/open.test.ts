import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { DirectoryBackend } from '../../engine/backends/directory.ts';
import { FileBackend, MissingSizeError } from '../../engine/backends/file.ts';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { BackendSpecError, openBackend, parseBackendSpec } from '../../engine/backends/open.ts';
import { Scope } from '../helpers/env.ts';
import { rejectsWith } from './model.ts';

test('parseBackendSpec reads the three forms and refuses the rest', () => {
  assert.equal(parseBackendSpec('memory'), { kind: 'memory' });
  assert.equal(parseBackendSpec('file:/tmp/a:b.img'), { kind: 'file', path: '/tmp/a:b.img' });
  assert.equal(parseBackendSpec('dir:rel/dir'), { kind: 'dir', path: 'rel/dir' });
  for (const bad of ['', 'mem', 'file', 'file:', 'dir:', 'redis:host', 'memory:x']) {
    try {
      parseBackendSpec(bad);
      assert.unreachable(`accepted ${bad}`);
    } catch (e) {
      assert.instance(e, BackendSpecError, bad);
      assert.is((e as BackendSpecError).code, 'EINVAL');
      assert.match((e as Error).message, /memory, file:PATH or dir:PATH/);
    }
  }
});

test('openBackend opens each kind; a missing size is a clear error', async () => {
  const s = new Scope();
  try {
    const dir = s.tmpdir();
    await rejectsWith(openBackend('memory'), MissingSizeError, 'EINVAL');
    await rejectsWith(openBackend('nope:1', { size: 1 }), BackendSpecError, 'EINVAL');
    const m = await openBackend('memory', { size: 8192 });
    assert.instance(m, MemoryBackend);
    assert.is(await m.size(), 8192);
    await m.close();
    await rejectsWith(openBackend(`file:${join(dir, 'f.img')}`, { create: true }), MissingSizeError);
    const f = await openBackend(`file:${join(dir, 'f.img')}`, { size: 8192, create: true });
    assert.instance(f, FileBackend);
    await f.close();
    const fr = await openBackend(`file:${join(dir, 'f.img')}`, { readOnly: true });
    assert.ok(fr.caps.readOnly);
    assert.is(await fr.size(), 8192);
    await fr.close();
    const d = await openBackend(`dir:${join(dir, 'd')}`, { size: 8192, create: true, chunkSize: 4096 });
    assert.instance(d, DirectoryBackend);
    await d.close();
    const d2 = await openBackend(`dir:${join(dir, 'd')}`);
    assert.is(await d2.size(), 8192);
    assert.is((d2 as DirectoryBackend).chunkSize, 4096);
    await d2.close();
  } finally {
    await s.close();
  }
});

test.run();
