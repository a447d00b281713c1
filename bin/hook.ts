/**
 * Run a user's hook command (--on-suspend, --on-resume) with `sh -c`, its
 * output going to our stderr, with extra environment variables and a time
 * limit. A non-zero exit or a timeout is an error naming the flag.
 */
import { spawn } from 'node:child_process';
import { QuicmapError } from '../base/errors.ts';

export function runHook(what: string, command: string, env: Record<string, string>, timeoutMs = 30_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', command], { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, ...env } });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new QuicmapError('ETIMEDOUT', `${what} did not finish within ${timeoutMs} ms`));
    }, timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new QuicmapError('EIO', `${what}: ${e.message}`));
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new QuicmapError('EIO', `${what} exited ${signal ?? code}`));
    });
  });
}
