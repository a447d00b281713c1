import { spawn } from 'node:child_process';
import { closeSync, openSync, readSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { HashTracker } from '../../engine/tracking/hash-tracker.ts';
import { MemoryMapping } from '../../engine/mmap/mapping.ts';
import { loadNative } from '../../native/index.ts';
import { needCondition, Scope, withTimeout } from '../helpers/env.ts';
import { NATIVE_OK, NATIVE_REASON, RegionWorker } from './helpers.ts';

const nativeTest = needCondition(test, NATIVE_OK, NATIVE_REASON);

/** Run a node snippet in another process; resolves with its stdout. */
function runChild(scope: Scope, code: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = scope.spawn(process.execPath, ['-e', code, ...args]);
    let out = '';
    let err = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    child.once('error', reject);
    child.once('exit', (c) => (c === 0 ? resolve(out) : reject(new Error(`child exited ${c}: ${err}`))));
  });
}

nativeTest('mmap/msync of a file shared with another process', async () => {
  const s = new Scope();
  try {
    await withTimeout(20_000, 'shared file mmap', async () => {
      const n = loadNative();
      const { PROT_READ, PROT_WRITE, MAP_SHARED, MS_SYNC, MS_ASYNC, MS_INVALIDATE } = n.constants;
      const path = join(s.tmpdir(), 'region.bin');
      const size = 1 << 20;
      const fd = openSync(path, 'w+');
      s.defer(() => closeSync(fd));
      ftruncateSync(fd, size);
      const ab = n.mmap(fd, size, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
      const view = new Uint8Array(ab);
      // Our writes through the mapping, made durable with msync, are seen by the other process.
      for (let i = 0; i < 4096; i++) view[300_000 + i] = (i * 13) & 0xff;
      n.msync(ab, 300_000, 4096, MS_SYNC);
      const sum = await runChild(
        s,
        `const fs=require('fs');const fd=fs.openSync(process.argv[1],'r');const b=Buffer.alloc(4096);fs.readSync(fd,b,0,4096,300000);let ok=1;for(let i=0;i<4096;i++)if(b[i]!==((i*13)&255))ok=0;console.log(ok)`,
        [path],
      );
      assert.is(sum.trim(), '1', 'child read what we wrote through the mapping');
      // The other process writes the file; our shared mapping sees it.
      await runChild(s, `const fs=require('fs');const fd=fs.openSync(process.argv[1],'r+');fs.writeSync(fd,Buffer.from('written by the child'),0,20,700001);fs.closeSync(fd)`, [path]);
      n.msync(ab, 0, size, MS_INVALIDATE | MS_ASYNC);
      assert.is(Buffer.from(view.subarray(700_001, 700_021)).toString(), 'written by the child');
      // And our own fd agrees.
      const b = Buffer.alloc(4);
      readSync(fd, b, 0, 4, 300_001);
      assert.equal(Array.from(b), [13, 26, 39, 52]);
      n.munmap(ab);
      assert.is(view.length, 0, 'munmap detaches the views');
      assert.throws(() => n.msync(ab, 0, 1, MS_SYNC));
    });
  } finally {
    await s.close();
  }
});

nativeTest('anonymous and memfd mappings; madvise(DONTNEED); a worker sees the same pages', async () => {
  const s = new Scope();
  const worker = new RegionWorker();
  try {
    await withTimeout(20_000, 'anon mmap', async () => {
      const n = loadNative();
      const { PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_SHARED, MADV_DONTNEED, PAGE_SIZE } = n.constants;
      const anon = n.mmap(-1, 16 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
      const a = new Uint8Array(anon);
      a.fill(0xaa);
      n.madvise(anon, PAGE_SIZE, PAGE_SIZE, MADV_DONTNEED);
      assert.is(a[PAGE_SIZE], 0, 'DONTNEED dropped the private page (reads zero)');
      assert.is(a[0], 0xaa);
      // A worker gets its own view of the same memory.
      const id = n.mappingId(anon);
      await worker.request({ op: 'write', id, length: a.length, offsets: [5, 6], values: [1, 2] });
      assert.equal([a[5], a[6]], [1, 2]);
      n.munmap(anon);

      const fd = n.memfdCreate('quicmap-test', 8 * PAGE_SIZE);
      s.defer(() => closeSync(fd));
      const m1 = n.mmap(fd, 8 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED);
      const m2 = n.mmap(fd, 8 * PAGE_SIZE, PROT_READ, MAP_SHARED);
      new Uint8Array(m1)[123] = 77;
      assert.is(new Uint8Array(m2)[123], 77, 'two shared mappings of one memfd see each other');
      writeSync(fd, Buffer.from([5]), 0, 1, 124);
      assert.is(new Uint8Array(m2)[124], 5);
      n.munmap(m1);
      n.munmap(m2);
    });
  } finally {
    await worker.close();
    await s.close();
  }
});

nativeTest('bad arguments are refused with errors, not crashes', () => {
  const n = loadNative();
  assert.throws(() => n.mmap(-1, 0, 3, n.constants.MAP_PRIVATE), /length/);
  assert.throws(() => n.munmap(new ArrayBuffer(8)), /not a mapping/);
  assert.throws(() => n.mmap(987654, 4096, 1, n.constants.MAP_SHARED), (e: unknown) => (e as { code?: string }).code === 'EBADF');
  assert.throws(() => n.view(99999999), /no such mapping/);
});

nativeTest('MemoryMapping of a file + HashTracker: push-side detection of another process\'s writes', async () => {
  const s = new Scope();
  try {
    await withTimeout(20_000, 'hash tracker on a shared file', async () => {
      const path = join(s.tmpdir(), 'shared.bin');
      const fd = openSync(path, 'w+');
      ftruncateSync(fd, 1 << 20);
      closeSync(fd);
      const m = MemoryMapping.file(path, { writable: true });
      s.defer(() => m.close());
      const t = await HashTracker.create(m.bytes, { chunkSize: 64 * 1024 });
      await runChild(s, `const fs=require('fs');const fd=fs.openSync(process.argv[1],'r+');fs.writeSync(fd,Buffer.from('x'),0,1,70000);fs.writeSync(fd,Buffer.from('y'),0,1,(1<<20)-1);fs.closeSync(fd)`, [path]);
      assert.equal(await t.poll(), [1, 15], 'both chunks the other process wrote');
      m.bytes[0] = 1;
      m.sync('sync', 0, 4096);
      assert.equal(t.pollSync(), [0]);
      const a = MemoryMapping.anonymous(8192);
      a.bytes[5000] = 3;
      a.advise('dontneed');
      assert.is(a.bytes[5000], 0);
      a.close();
      a.close();
      assert.is(a.bytes.length, 0);
      assert.throws(() => a.sync(), /closed/);
    });
  } finally {
    await s.close();
  }
});

test.run();
