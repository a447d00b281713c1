#!/usr/bin/env node
// Test entry point (`npm test [-- PATTERN...]`): typecheck, then run every
// test/**/*.test.ts file through uvu + tsx, each in its own process with a
// time limit, so a hang or crash in one file is a counted failure and never
// stalls the run. Ends with the plain line "N passed, N failed, N skipped".
//
// Two files run at a time (QUICMAP_TEST_JOBS, default 2; the typecheck
// takes one of the places while it runs), each one's output printed whole
// when it ends. A file that must have the machine to itself runs alone,
// after the others, its output streamed: one that uses network namespaces
// or the WAN lab (they shape links with tc and time handshakes on them),
// or one that says so with a line `// run.mjs: alone (REASON)`.
//
// Each file runs in its own process group, with QUICMAP_TEST_TOKEN set to
// a value of its own. When it exits (or is killed at its time limit) every
// process still carrying its token — its children, which the tests start
// in process groups of their own — is reported as leaked and killed.
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const patterns = process.argv.slice(2);
const FILE_TIMEOUT_MS = Number(process.env.QUICMAP_TEST_FILE_TIMEOUT_MS ?? 240_000);
const JOBS = Math.max(1, Number(process.env.QUICMAP_TEST_JOBS ?? 2) || 1);
const ALONE = /^\s*\/\/ run\.mjs: alone\b|netns|bench\/wan\//m;

function findTests(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...findTests(p));
    else if (name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

let passed = 0;
let failed = 0;
let skipped = 0;
const failures = [];
const times = [];
const leaks = [];
const strip = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Processes (not zombies) whose environment carries `token`, as [pid, command line]. */
function carriers(token) {
  const needle = Buffer.from(`QUICMAP_TEST_TOKEN=${token}\0`);
  const out = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      if (!readFileSync(`/proc/${name}/environ`).includes(needle)) continue;
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      if (stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z') continue;
      out.push([Number(name), readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').join(' ').trim().slice(0, 160)]);
    } catch {
      // Gone meanwhile, or not ours to read.
    }
  }
  return out;
}

/** Kill what a file left behind; returns the leaked processes (still there after a short grace). */
async function reap(pgid, token) {
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {}
  let left = carriers(token);
  for (let i = 0; i < 10 && left.length; i++) {
    await sleep(100);
    left = carriers(token);
  }
  for (const [pid] of left) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {}
  }
  return left;
}

/** Run one test file; `live`: stream its output, else print it whole at the end. */
function runFile(file, token, live) {
  return new Promise((resolve) => {
    const rel = relative(root, file);
    const t0 = performance.now();
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', join(root, 'node_modules/uvu/bin.js'), '-c', 'false', join(root, 'test'), rel.slice('test/'.length).replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + '$'],
      { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: { ...process.env, FORCE_COLOR: '0', QUICMAP_TEST_TOKEN: token } },
    );
    let out = '';
    const chunks = [];
    const take = (stream) => (d) => {
      out += d;
      if (live) stream.write(d);
      else chunks.push([stream, d]);
    };
    child.stdout.on('data', take(process.stdout));
    child.stderr.on('data', take(process.stderr));
    if (!live) process.stdout.write(`${rel}: started\n`);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      process.stderr.write(`\n${rel}: timed out after ${FILE_TIMEOUT_MS} ms, killing it\n`);
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {}
    }, FILE_TIMEOUT_MS);
    child.on('close', async (code, signal) => {
      clearTimeout(timer);
      const ms = performance.now() - t0;
      const leaked = await reap(child.pid, token);
      if (!live) {
        process.stdout.write(`${rel}: output\n`);
        for (const [stream, d] of chunks) stream.write(d);
      }
      if (leaked.length) {
        process.stderr.write(`${rel}: ${leaked.length} process(es) left running${timedOut ? ' (timed out)' : ''}, killed:\n${leaked.map(([pid, cmd]) => `  ${pid} ${cmd}\n`).join('')}`);
        leaks.push(`${rel} (${leaked.length})`);
      }
      process.stdout.write(`${rel}: ${(ms / 1000).toFixed(1)} s\n`);
      times.push({ rel, ms });
      const text = strip(out);
      const total = Number(/Total:\s+(\d+)/.exec(text)?.[1] ?? NaN);
      const ok = Number(/Passed:\s+(\d+)/.exec(text)?.[1] ?? NaN);
      const skip = Number(/Skipped:\s+(\d+)/.exec(text)?.[1] ?? 0);
      if (Number.isNaN(total) || Number.isNaN(ok)) {
        // The file crashed before uvu could report: count it as one failure.
        resolve({ rel, passed: 0, failed: 1, skipped: 0, note: `exited ${signal ?? code} without a report` });
        return;
      }
      const bad = total - ok + (code !== 0 && total === ok ? 1 : 0);
      resolve({ rel, passed: ok, failed: bad, skipped: skip, note: code !== 0 ? `exit ${code}` : '' });
    });
  });
}

function typecheck() {
  return new Promise((resolve) => {
    process.stdout.write('typecheck: tsc --noEmit\n');
    const t0 = performance.now();
    const tsc = spawn(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '--noEmit', '-p', root], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    tsc.stdout.on('data', (d) => (out += d));
    tsc.stderr.on('data', (d) => (out += d));
    tsc.on('close', (code) => {
      process.stdout.write(out);
      if (code !== 0) {
        failed++;
        failures.push('typecheck');
      } else process.stdout.write(`typecheck: ok (${((performance.now() - t0) / 1000).toFixed(1)} s)\n`);
      resolve();
    });
  });
}

function count(r) {
  passed += r.passed;
  failed += r.failed;
  skipped += r.skipped;
  if (r.failed) failures.push(`${r.rel}${r.note ? ` (${r.note})` : ''}`);
}

const files = findTests(join(root, 'test')).filter((f) => patterns.length === 0 || patterns.some((p) => relative(root, f).includes(p)));
const alone = files.filter((f) => ALONE.test(readFileSync(f, 'utf8')));
const shared = files.filter((f) => !alone.includes(f));
const started = performance.now();
let seq = 0;
const token = () => `${process.pid}-${++seq}`;

// Shared files (and the typecheck) JOBS at a time; with one job left to run, it streams.
const jobs = [...(process.env.QUICMAP_SKIP_TYPECHECK ? [] : [() => typecheck()]), ...shared.map((f) => (live) => runFile(f, token(), live).then(count))];
let next = 0;
let running = 0;
await Promise.all(
  Array.from({ length: Math.min(JOBS, jobs.length) }, async () => {
    while (next < jobs.length) {
      const job = jobs[next++];
      running++;
      await job(JOBS === 1 || (next === jobs.length && running === 1));
      running--;
    }
  }),
);
for (const f of alone) count(await runFile(f, token(), true));

times.sort((a, b) => b.ms - a.ms);
const sum = times.reduce((n, t) => n + t.ms, 0);
process.stdout.write(
  `\n${files.length} files (${alone.length} alone, the rest ${JOBS} at a time) in ${((performance.now() - started) / 1000).toFixed(0)} s; the files' own times add up to ${(sum / 1000).toFixed(0)} s. Slowest:\n`,
);
for (const t of times.slice(0, 10)) process.stdout.write(`  ${(t.ms / 1000).toFixed(1).padStart(6)} s  ${t.rel}\n`);
if (leaks.length) process.stdout.write(`\nleft processes running (killed): ${leaks.join(', ')}\n`);
if (failures.length) process.stdout.write(`\nfailed: ${failures.join(', ')}\n`);
process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`);
process.exitCode = failed > 0 || passed === 0 ? 1 : 0;
