/**
 * Run the real `quicmap` command as a child process (in a Scope, so it is
 * killed at cleanup) and read its stdout line by line.
 */
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Scope, withTimeout } from './env.ts';

export const QUICMAP = fileURLToPath(new URL('../../bin/quicmap.js', import.meta.url));

export interface CliProcess {
  child: ChildProcess;
  /** The next stdout line (waits up to timeoutMs). */
  line(timeoutMs?: number): Promise<string>;
  stderr(): string;
  /** Resolves with the exit code once the process ends. */
  exited: Promise<number | null>;
}

/** `prefix` runs it through another command, e.g. ['ip', 'netns', 'exec', NS]. */
export function startCli(scope: Scope, args: string[], env: NodeJS.ProcessEnv = process.env, prefix: string[] = []): CliProcess {
  const argv = [...prefix, process.execPath, QUICMAP, ...args];
  const child = scope.spawn(argv[0]!, argv.slice(1), { env });
  const lines: string[] = [];
  const waiters: Array<() => void> = [];
  let partial = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    partial += d;
    let i: number;
    while ((i = partial.indexOf('\n')) >= 0) {
      lines.push(partial.slice(0, i));
      partial = partial.slice(i + 1);
    }
    waiters.splice(0).forEach((w) => w());
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => {
    waiters.splice(0).forEach((w) => w());
    resolve(code);
  }));
  return {
    child,
    exited,
    stderr: () => err,
    line: (timeoutMs = 20_000) =>
      withTimeout(timeoutMs, `waiting for a line from quicmap ${args.join(' ')} (stderr: ${err.slice(-500)})`, async () => {
        while (lines.length === 0) {
          if (child.exitCode !== null) throw new Error(`quicmap ${args[0]} exited ${child.exitCode}: ${err}`);
          await new Promise<void>((r) => waiters.push(r));
        }
        return lines.shift()!;
      }),
  };
}
