/**
 * `mkdir -p` that always ends. Node's own `mkdir(path, { recursive: true })`
 * (20.x, also mkdirSync) loops forever at 100 % CPU when the kernel answers
 * ENOENT for a directory whose parent exists (e.g. anything under /proc):
 * it takes ENOENT to mean "parent missing" and retries. Here each level is
 * tried at most twice (before and after making its parent), so a refusal
 * becomes a PathError naming the path.
 */
import * as fs from 'node:fs';
import { dirname, resolve } from 'node:path';
import { PathError } from './errors.ts';

function explain(path: string, err: NodeJS.ErrnoException): Error {
  if (err.code === 'EACCES' || err.code === 'EPERM' || err.code === 'EROFS') return err;
  return new PathError(path, `cannot create this directory (${err.code ?? err.message})`, { cause: err });
}

function existingDir(path: string, err: NodeJS.ErrnoException): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch {
    throw explain(path, err);
  }
  if (!st.isDirectory()) throw new PathError(path, 'exists and is not a directory');
}

export function makeDirsSync(path: string, mode?: number): void {
  const p = resolve(path);
  try {
    fs.mkdirSync(p, { mode });
    return;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EEXIST') return existingDir(p, err);
    if (err.code !== 'ENOENT' || dirname(p) === p) throw explain(p, err);
  }
  makeDirsSync(dirname(p), mode);
  try {
    fs.mkdirSync(p, { mode });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EEXIST') return existingDir(p, err);
    throw explain(p, err);
  }
}

export async function makeDirs(path: string, mode?: number): Promise<void> {
  const p = resolve(path);
  try {
    await fs.promises.mkdir(p, { mode });
    return;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EEXIST') return existingDir(p, err);
    if (err.code !== 'ENOENT' || dirname(p) === p) throw explain(p, err);
  }
  await makeDirs(dirname(p), mode);
  try {
    await fs.promises.mkdir(p, { mode });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EEXIST') return existingDir(p, err);
    throw explain(p, err);
  }
}
