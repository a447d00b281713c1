/**
 * Helpers for the share/mount tests: run `quicmap share` / `quicmap mount` as
 * real processes (each in its own process group, killed by the Scope), read
 * the first stdout line, keep stderr for failure messages; wait for a log
 * line; make and read back a sharer's image file.
 */
import type { ChildProcess } from 'node:child_process';
import { closeSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import * as assert from 'uvu/assert';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { Scope, SYSTEM_PATH, run, withTimeout, type RunResult } from '../helpers/env.ts';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const CLI = join(ROOT, 'bin/quicmap.js');

export interface Proc {
  child: ChildProcess;
  /** First stdout line (ticket, URI). */
  first: string;
  lines: string[];
  stderr: () => string;
  exited: Promise<number | null>;
}

export function env(home: string): NodeJS.ProcessEnv {
  return { ...process.env, QUICMAP_HOME: home, PATH: SYSTEM_PATH };
}

/** Start `quicmap ARGS` and wait for its first stdout line (or its early exit). `prefix`: e.g. `ip netns exec NS`. */
export async function start(s: Scope, args: string[], home: string, lines = 1, timeoutMs = 20_000, prefix: string[] = []): Promise<Proc> {
  const argv = [...prefix, process.execPath, CLI, ...args];
  const child = s.spawn(argv[0]!, argv.slice(1), { env: env(home), cwd: ROOT });
  let out = '';
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const got = new Promise<string[]>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const ls = out.split('\n');
      if (ls.length > lines) resolve(ls.slice(0, lines));
    });
    void exited.then((code) => reject(new Error(`quicmap ${args[0]} exited ${code} before printing:\n${err}`)));
  });
  const ls = await withTimeout(timeoutMs, `quicmap ${args.join(' ').slice(0, 80)}`, got).catch((e: Error) => {
    throw new Error(`${e.message}\nstderr:\n${err}`);
  });
  return { child, first: ls[0]!, lines: ls, stderr: () => err, exited };
}

/** Run `quicmap ARGS` to completion. */
export function quicmap(args: string[], home: string, timeoutMs = 30_000): Promise<RunResult> {
  return run(process.execPath, [CLI, ...args], { env: env(home), cwd: ROOT, timeoutMs });
}

export function tool(cmd: string, args: string[], timeoutMs = 60_000): Promise<RunResult> {
  return run(cmd, args, { env: { ...process.env, PATH: SYSTEM_PATH }, timeoutMs });
}

/** A log line may still be in the pipe when the action it reports has finished: wait a little for it. */
export async function logged(text: () => string, re: RegExp, what: string): Promise<void> {
  const until = Date.now() + 3000;
  while (!re.test(text()) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  assert.match(text(), re, what);
}

/** A sparse image file of `size` bytes with `fill` runs of one byte each. */
export function makeImage(path: string, size: number, fill: { at: number; len: number; byte: number }[]): void {
  const fd = openSync(path, 'w+');
  try {
    ftruncateSync(fd, size);
    for (const f of fill) writeSync(fd, Buffer.alloc(f.len, f.byte), 0, f.len, f.at);
  } finally {
    closeSync(fd);
  }
}

export function readImage(path: string, at: number, len: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(len);
    readSync(fd, b, 0, len, at);
    return b;
  } finally {
    closeSync(fd);
  }
}
