/**
 * One writer per region directory: a second writable open (in this process
 * or another) is refused with EBUSY while the first is open; read-only opens
 * are not blocked; a lock left by a dead process is taken over; the lock is
 * released at close and when an open fails.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DirectoryBackend } from '../../engine/backends/directory.ts';
import { LOCK_FILE } from '../../engine/backends/owner-lock.ts';
import { Scope, run } from '../helpers/env.ts';

const SIZE = 8 * 1024 * 1024;

async function refused(p: Promise<unknown>, code: string): Promise<Error> {
  try {
    await p;
  } catch (e) {
    assert.is((e as { code?: string }).code, code, (e as Error).message);
    return e as Error;
  }
  throw new Error(`expected ${code}`);
}

test('a second writer is refused with EBUSY; readers are not; close releases the lock', async () => {
  const s = new Scope();
  try {
    const dir = join(s.tmpdir(), 'region');
    const a = await DirectoryBackend.open(dir, { size: SIZE, create: true });
    const e = await refused(DirectoryBackend.open(dir, { size: SIZE, create: true }), 'EBUSY');
    assert.match(e.message, new RegExp(`process ${process.pid}`));
    await a.writeAt(Buffer.from('owned'), 0);
    await a.flush();
    const reader = await DirectoryBackend.open(dir, { readOnly: true });
    const got = new Uint8Array(5);
    await reader.readAt(got, 0);
    assert.is(Buffer.from(got).toString(), 'owned');
    await reader.close();
    await a.close();
    assert.not.ok(existsSync(join(dir, LOCK_FILE)), 'lock removed at close');
    const b = await DirectoryBackend.open(dir, { size: SIZE });
    await b.close();
  } finally {
    await s.close();
  }
});

test('another process cannot open the directory for writing while it is open here', async () => {
  const s = new Scope();
  try {
    const dir = join(s.tmpdir(), 'region');
    const a = await DirectoryBackend.open(dir, { size: SIZE, create: true });
    try {
      const script = `import { DirectoryBackend } from ${JSON.stringify(new URL('../../engine/backends/directory.ts', import.meta.url).pathname)};
        try { await DirectoryBackend.open(${JSON.stringify(dir)}, {}); console.log('opened'); } catch (e) { console.log(e.code); }`;
      const file = join(s.tmpdir(), 'other.mts');
      writeFileSync(file, script);
      const r = await run(process.execPath, ['--import', 'tsx', file], { timeoutMs: 30_000 });
      assert.is(r.stdout.trim(), 'EBUSY', r.stderr);
    } finally {
      await a.close();
    }
  } finally {
    await s.close();
  }
});

test('a lock left by a dead process is taken over', async () => {
  const s = new Scope();
  try {
    const dir = join(s.tmpdir(), 'region');
    await (await DirectoryBackend.open(dir, { size: SIZE, create: true })).close();
    const dead = await run(process.execPath, ['-e', 'console.log(process.pid)'], { timeoutMs: 10_000 });
    writeFileSync(join(dir, LOCK_FILE), `${dead.stdout.trim()}\n`);
    const b = await DirectoryBackend.open(dir, { size: SIZE });
    await b.close();
  } finally {
    await s.close();
  }
});

test('a failed open releases the lock', async () => {
  const s = new Scope();
  try {
    const dir = join(s.tmpdir(), 'region');
    await (await DirectoryBackend.open(dir, { size: SIZE, create: true })).close();
    await refused(DirectoryBackend.open(dir, { size: SIZE * 2 }), 'EINVAL'); // size mismatch
    assert.not.ok(existsSync(join(dir, LOCK_FILE)), 'no lock left behind');
  } finally {
    await s.close();
  }
});

test.run();
