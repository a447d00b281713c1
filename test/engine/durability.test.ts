import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DirectoryBackend, chunkFileName } from '../../engine/backends/directory.ts';
import { FileBackend } from '../../engine/backends/file.ts';
import type { ReadWriterAt } from '../../engine/rwat.ts';
import { Scope, killTree, needTools, withTimeout } from '../helpers/env.ts';
import { durablePattern } from './fixtures/pattern.ts';
import { assertBytes } from './model.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const WRITER = fileURLToPath(new URL('./fixtures/durable-writer.ts', import.meta.url));
const SIZE = 4 * 1024 * 1024;

/**
 * The child writes, makes it durable, says "flushed", keeps writing; we
 * SIGKILL it and read the durable part back from a fresh open.
 * (A SIGKILL does not drop the page cache, so this proves the data reached
 * the store and the flush path works end to end across processes; the
 * fsync calls themselves are reviewed in the code.)
 */
/**
 * The killed writer (a grandchild when strace runs it) may take a moment to
 * die; until then its lock rightly refuses a second writer (EBUSY).
 */
async function reopenWhenReleased(path: string): Promise<DirectoryBackend> {
  for (let i = 0; ; i++) {
    try {
      return await DirectoryBackend.open(path, { size: SIZE });
    } catch (e) {
      if ((e as { code?: string }).code !== 'EBUSY' || i >= 100) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

async function killAfterFlush(kind: 'file' | 'dir', mode: 'flush' | 'fua', traceTo?: string): Promise<string> {
  const s = new Scope();
  try {
    const path = join(s.tmpdir(), kind === 'dir' ? 'region' : 'region.img');
    const node = [process.execPath, '--import', 'tsx', WRITER, kind, path, mode, String(SIZE)];
    const cmd = traceTo ? ['strace', '-f', '-y', '-qq', '-e', 'trace=fdatasync,fsync,write', '-o', traceTo, ...node] : node;
    const child = s.spawn(cmd[0]!, cmd.slice(1), { cwd: ROOT });
    let out = '';
    let err = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    await withTimeout(30_000, `${kind}/${mode} writer to flush`, new Promise<void>((resolve, reject) => {
      child.stdout!.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        if (out.includes('flushed\n')) resolve();
      });
      child.once('exit', (code, sig) => reject(new Error(`writer exited (${code ?? sig}) before flushing: ${err}`)));
    }));
    await new Promise((r) => setTimeout(r, 50)); // let it be mid-write when killed
    await killTree(child, 'SIGKILL');
    assert.is(child.signalCode, 'SIGKILL');

    const store: ReadWriterAt = kind === 'dir' ? await reopenWhenReleased(path) : await FileBackend.open(path, { size: SIZE });
    try {
      const all = new Uint8Array(SIZE);
      await store.readAt(all, 0);
      const want = new Uint8Array(SIZE / 2);
      for (const { offset, data } of durablePattern(SIZE)) want.set(data, offset);
      assertBytes(all.subarray(0, SIZE / 2), want, `${kind}/${mode}: flushed half`);
      if (kind === 'dir') {
        const files = readdirSync(path).filter((n) => n.endsWith('.chunk'));
        assert.ok(files.length > 0 && files.length <= SIZE / (64 * 1024), `chunk files: ${files.length}`);
      }
    } finally {
      await store.close();
    }
    return path;
  } finally {
    await s.close();
  }
}

test('file backend: flush, then SIGKILL: data intact', async () => void (await killAfterFlush('file', 'flush')));
test('file backend: FUA writes, then SIGKILL: data intact', async () => void (await killAfterFlush('file', 'fua')));
test('directory backend: flush, then SIGKILL: data intact', async () => void (await killAfterFlush('dir', 'flush')));
test('directory backend: FUA writes, then SIGKILL: data intact', async () => void (await killAfterFlush('dir', 'fua')));

/**
 * A SIGKILL cannot show a missing fsync, so check the syscalls: before the
 * child says "flushed", it must have fdatasynced every chunk file it wrote
 * (or the region file) and, for a directory, fsynced the directory after
 * creating chunk files.
 */
const esc = (t: string) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const traced = needTools(test, ['strace'], 'to see the fsync calls');
for (const kind of ['file', 'dir'] as const) {
  for (const mode of ['flush', 'fua'] as const) {
    traced(`${kind} backend ${mode}: fdatasync/fsync issued before the ack (strace)`, async () => {
      const s = new Scope();
      try {
        const trace = join(s.tmpdir(), 'trace');
        const path = await killAfterFlush(kind, mode, trace);
        const text = readFileSync(trace, 'utf8');
        const ack = text.search(/write\(1<[^>]*>, "flushed\\n"/);
        assert.ok(ack > 0, 'the "flushed" write is in the trace');
        const before = text.slice(0, ack);
        if (kind === 'file') {
          assert.ok(new RegExp(`fdatasync\\(\\d+<${esc(path)}>`).test(before), 'fdatasync of the file');
          return;
        }
        const chunks = new Set<number>();
        for (const { offset, data } of durablePattern(SIZE)) {
          for (let c = Math.floor(offset / 65536); c <= Math.floor((offset + data.length - 1) / 65536); c++) chunks.add(c);
        }
        for (const c of chunks) {
          assert.ok(new RegExp(`fdatasync\\(\\d+<${esc(join(path, chunkFileName(c)))}>`).test(before), `fdatasync of chunk ${c}`);
        }
        const dirSync = before.lastIndexOf(`fsync(`);
        assert.ok(new RegExp(`fsync\\(\\d+<${esc(path)}>\\)`).test(before.slice(dirSync)), 'the last fsync is of the directory');
        assert.ok(dirSync > before.indexOf(`fdatasync(`) && dirSync > 0, 'directory fsync after chunk files were written');
      } finally {
        await s.close();
      }
    });
  }
}

test.run();
