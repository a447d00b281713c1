/**
 * Makes an NBD export mmap-able as a plain file through nbdfuse (libnbd's
 * FUSE bridge): `DIR/FILENAME` becomes the export. Used where the kernel has
 * no NBD module. nbdfuse runs in the foreground as our child; it writes its
 * pid file once the file is ready, which is how we know when to return.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { makeDirsSync } from '../../base/make-dirs.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QuicmapError } from '../../base/errors.ts';

export interface FuseMountOptions {
  /** NBD URI of the export (a unix-socket URI is fastest). */
  uri: string;
  /** Mount point directory; created if missing. */
  dir: string;
  /** Name of the file inside `dir`. Default "region". */
  fileName?: string;
  readOnly?: boolean;
  /** NBD connections nbdfuse opens (needs CAN_MULTI_CONN to help). Default 4. */
  connections?: number;
  /** How long to wait for the mount. Default 15 s. */
  timeoutMs?: number;
  log?: (message: string) => void;
}

export interface FuseMount {
  readonly method: 'nbdfuse';
  /** The mmap-able file. */
  readonly path: string;
  readonly dir: string;
  /** Unmount (flushes through nbdfuse) and wait for nbdfuse to exit. Idempotent. */
  unmount(): Promise<void>;
}

export function nbdfuseAvailable(): { ok: boolean; reason?: string } {
  if (spawnSync('sh', ['-c', 'command -v nbdfuse && command -v fusermount3'], { stdio: 'ignore' }).status !== 0) {
    return { ok: false, reason: 'nbdfuse or fusermount3 not found (apt-get install libnbd-bin fuse3)' };
  }
  if (!existsSync('/dev/fuse')) return { ok: false, reason: '/dev/fuse is missing (FUSE is not available on this kernel/container)' };
  return { ok: true };
}

export async function mountWithNbdfuse(opts: FuseMountOptions): Promise<FuseMount> {
  const avail = nbdfuseAvailable();
  if (!avail.ok) throw new QuicmapError('ENOTSUP', `cannot mount: ${avail.reason}`);
  const fileName = opts.fileName ?? 'region';
  makeDirsSync(opts.dir);
  const work = mkdtempSync(join(tmpdir(), 'quicmap-fuse-'));
  const pidFile = join(work, 'nbdfuse.pid');
  const args = ['-P', pidFile, '-C', String(opts.connections ?? 4)];
  if (opts.readOnly) args.push('-r');
  args.push(join(opts.dir, fileName), opts.uri);
  // Own process group: a terminal's Ctrl-C reaches quicmap only, which then
  // unmounts in order (flushing through nbdfuse) instead of racing it.
  const child = spawn('nbdfuse', args, { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  // If this process dies without unmounting, do not leave a dead mount behind.
  const lastResort = () => {
    spawnSync('fusermount3', ['-u', '-z', opts.dir], { stdio: 'ignore' });
    try {
      child.kill('SIGKILL');
    } catch {}
  };
  process.once('exit', lastResort);
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
    opts.log?.(`nbdfuse: ${d.trimEnd()}`);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    await waitReady(pidFile, exited, opts.timeoutMs ?? 15_000, () => stderr);
  } catch (e) {
    process.off('exit', lastResort);
    lastResort();
    rmSync(work, { recursive: true, force: true });
    throw e;
  }
  let unmounted: Promise<void> | undefined;
  return {
    method: 'nbdfuse',
    path: join(opts.dir, fileName),
    dir: opts.dir,
    unmount: () => (unmounted ??= unmount(child, exited, opts.dir, work, opts.log).finally(() => process.off('exit', lastResort))),
  };
}

async function waitReady(pidFile: string, exited: Promise<number | null>, timeoutMs: number, stderr: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let gone: number | null | undefined;
  void exited.then((c) => (gone = c));
  while (Date.now() < deadline) {
    if (gone !== undefined) throw new QuicmapError('EIO', `nbdfuse exited (${gone}) before the mount was ready: ${stderr().trim()}`);
    if (existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new QuicmapError('ETIMEDOUT', `nbdfuse was not ready after ${timeoutMs} ms: ${stderr().trim()}`);
}

async function unmount(child: ChildProcess, exited: Promise<number | null>, dir: string, work: string, log?: (m: string) => void): Promise<void> {
  // fusermount3 -u makes nbdfuse flush and exit; fall back to a lazy unmount
  // and a kill if it is stuck (e.g. the NBD server already went away).
  const r = spawnSync('fusermount3', ['-u', dir], { encoding: 'utf8' });
  if (r.status !== 0) log?.(`fusermount3 -u ${dir}: ${r.stderr.trim()}`);
  const done = await Promise.race([exited.then(() => true), new Promise<boolean>((res) => setTimeout(() => res(false), 5000))]);
  if (!done) {
    spawnSync('fusermount3', ['-u', '-z', dir], { stdio: 'ignore' });
    child.kill('SIGKILL');
    await exited;
  }
  rmSync(work, { recursive: true, force: true });
}
