/**
 * One writer per region directory. Two processes writing the same chunk
 * files (or one rewriting the metadata under the other) would corrupt the
 * region, so a writable open takes `quicmap-region.lock`, created with
 * O_EXCL and holding the owner's pid. A lock whose pid no longer exists is
 * stale (the owner crashed) and is taken over.
 */
import fs from 'node:fs';
import { join } from 'node:path';
import { QuicmapError } from '../../base/errors.ts';

export const LOCK_FILE = 'quicmap-region.lock';

export class RegionInUseError extends QuicmapError {
  constructor(dir: string, pid: number, lockPath: string) {
    super('EBUSY', `${dir} is already open for writing by process ${pid} (if that is wrong, remove ${lockPath})`);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // exists, owned by someone else
  }
  // A crashed owner not yet reaped by its parent is a zombie: it holds nothing.
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true;
  }
}

/** Take the lock or throw RegionInUseError; returns the release function. */
export async function lockRegionDir(dir: string): Promise<() => Promise<void>> {
  const path = join(dir, LOCK_FILE);
  const mine = `${process.pid}\n`;
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await fs.promises.writeFile(path, mine, { flag: 'wx', mode: 0o644 });
      return async () => {
        // Only remove the lock if it is still ours.
        const now = await fs.promises.readFile(path, 'utf8').catch(() => '');
        if (now === mine) await fs.promises.rm(path, { force: true });
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const owner = Number.parseInt(await fs.promises.readFile(path, 'utf8').catch(() => ''), 10);
    if (Number.isSafeInteger(owner) && owner > 0 && alive(owner)) throw new RegionInUseError(dir, owner, path);
    await fs.promises.rm(path, { force: true }); // stale: its owner is gone
  }
  throw new QuicmapError('EBUSY', `could not take ${path}: another process keeps recreating it`);
}
