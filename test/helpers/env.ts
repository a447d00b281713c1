/**
 * Shared test plumbing: time limits, required external tools, temp dirs and
 * child processes that are always cleaned up.
 *
 * Tools: a test that needs a real NBD client (qemu-io, nbdinfo, ...) asks for
 * it with `needTools`. Where the tool is missing the test is skipped with a
 * printed reason — unless QUICMAP_REQUIRE_TOOLS=1 (CI sets it), where a
 * missing tool is a failure.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'uvu';

export const STRICT_TOOLS = process.env.QUICMAP_REQUIRE_TOOLS === '1';

const which = new Map<string, boolean>();
export function hasTool(name: string): boolean {
  let v = which.get(name);
  if (v === undefined) {
    v = spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
    which.set(name, v);
  }
  return v;
}

/** The Python that has the libnbd module (nbdsh runs the first python3 on PATH). */
export const SYSTEM_PATH = `/usr/bin:/usr/sbin:/bin:/sbin:${process.env.PATH ?? ''}`;

/**
 * Returns a `test`-like register function: if every tool is present it
 * registers the test; otherwise it skips it with a printed reason, or (in
 * strict mode) registers a test that fails naming the missing tools.
 */
export function needTools(suite: Test, tools: string[], why = ''): (name: string, fn: () => Promise<void> | void) => void {
  const missing = tools.filter((t) => !hasTool(t));
  return (name, fn) => {
    if (missing.length === 0) return suite(name, fn);
    const msg = `missing ${missing.join(', ')}${why ? ` (${why})` : ''}; install: apt-get install libnbd-bin python3-libnbd qemu-utils nbdkit fuse3`;
    if (STRICT_TOOLS) {
      return suite(name, () => {
        throw new Error(`QUICMAP_REQUIRE_TOOLS=1 and ${msg}`);
      });
    }
    console.log(`  SKIP ${name}: ${msg}`);
    suite.skip(name, fn);
  };
}

/** Skip (or, in strict mode, fail) unless `ok`; for conditions other than tools (root, /dev/fuse, kernel NBD). */
export function needCondition(suite: Test, ok: boolean, reason: string, strict = STRICT_TOOLS): (name: string, fn: () => Promise<void> | void) => void {
  return (name, fn) => {
    if (ok) return suite(name, fn);
    if (strict) return suite(name, () => { throw new Error(`required: ${reason}`); });
    console.log(`  SKIP ${name}: ${reason}`);
    suite.skip(name, fn);
  };
}

/** Reject after `ms` with a clear message; the caller's cleanup still runs. */
export async function withTimeout<T>(ms: number, what: string, work: Promise<T> | (() => Promise<T>)): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const p = typeof work === 'function' ? work() : work;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Wait for a condition that other processes make true (a log line, a status
 * field): checked every `everyMs` until it holds, failing with `what()` after
 * `ms`. The deadline is a hang guard, not a timing assertion: keep it generous.
 */
export async function eventually(ms: number, what: () => string, check: () => boolean | Promise<boolean>, everyMs = 200): Promise<void> {
  const end = performance.now() + ms;
  while (!(await check())) {
    if (performance.now() > end) throw new Error(`${what()} (waited ${ms} ms)`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * A scope that owns temp dirs, processes and close callbacks and releases all
 * of them in reverse order, whatever happened. Use one per test:
 *   const s = new Scope(); try { ... } finally { await s.close(); }
 */
export class Scope {
  private readonly cleanups: Array<() => Promise<void> | void> = [];

  defer(fn: () => Promise<void> | void): void {
    this.cleanups.push(fn);
  }

  tmpdir(prefix = 'quicmap-test-'): string {
    const dir = mkdtempSync(join(tmpdir(), prefix));
    this.defer(() => rmSync(dir, { recursive: true, force: true }));
    return dir;
  }

  /** Spawn a process that is killed (whole process group) at cleanup. */
  spawn(cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, ...opts });
    this.defer(() => killTree(child));
    return child;
  }

  async close(): Promise<void> {
    const errors: unknown[] = [];
    while (this.cleanups.length) {
      const fn = this.cleanups.pop()!;
      try {
        await fn();
      } catch (e) {
        errors.push(e);
      }
    }
    if (errors.length) throw errors[0];
  }
}

/** Kill a detached child's process group and wait (briefly) for it to exit. */
export async function killTree(child: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    if (child.pid) process.kill(-child.pid, signal);
  } catch {
    try {
      child.kill(signal);
    } catch {}
  }
  await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run a command to completion with a time limit; never throws for a non-zero exit. */
export async function run(cmd: string, args: string[], opts: SpawnOptions & { timeoutMs?: number; input?: string | Uint8Array } = {}): Promise<RunResult> {
  const { timeoutMs = 60_000, input, ...spawnOpts } = opts;
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], detached: true, ...spawnOpts });
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  if (input !== undefined) child.stdin?.end(input);
  else child.stdin?.end();
  const done = new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve(code));
  });
  try {
    const code = await withTimeout(timeoutMs, `${cmd} ${args.join(' ')}`, done);
    return { code, stdout, stderr };
  } finally {
    await killTree(child);
  }
}
