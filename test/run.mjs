#!/usr/bin/env node
// Test entry point (`npm test [-- PATTERN...]`): typecheck, then run every
// test/**/*.test.ts file through uvu + tsx, each in its own process with a
// time limit, so a hang or crash in one file is a counted failure and never
// stalls the run. Ends with the plain line "N passed, N failed, N skipped".
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const patterns = process.argv.slice(2);
const FILE_TIMEOUT_MS = Number(process.env.QUICMAP_TEST_FILE_TIMEOUT_MS ?? 240_000);

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

if (!process.env.QUICMAP_SKIP_TYPECHECK) {
  process.stdout.write('typecheck: tsc --noEmit\n');
  const tsc = spawnSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '--noEmit', '-p', root], {
    stdio: 'inherit',
  });
  if (tsc.status !== 0) {
    failed++;
    failures.push('typecheck');
  } else process.stdout.write('typecheck: ok\n');
}

const files = findTests(join(root, 'test')).filter(
  (f) => patterns.length === 0 || patterns.some((p) => relative(root, f).includes(p)),
);

const strip = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');

function runFile(file) {
  return new Promise((resolve) => {
    const rel = relative(root, file);
    const t0 = performance.now();
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', join(root, 'node_modules/uvu/bin.js'), '-c', 'false', join(root, 'test'), rel.slice('test/'.length).replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + '$'],
      { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: { ...process.env, FORCE_COLOR: '0' } },
    );
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      process.stdout.write(d);
    });
    child.stderr.on('data', (d) => {
      out += d;
      process.stderr.write(d);
    });
    const timer = setTimeout(() => {
      process.stderr.write(`\n${rel}: timed out after ${FILE_TIMEOUT_MS} ms, killing it\n`);
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {}
    }, FILE_TIMEOUT_MS);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const ms = performance.now() - t0;
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

for (const file of files) {
  const r = await runFile(file);
  passed += r.passed;
  failed += r.failed;
  skipped += r.skipped;
  if (r.failed) failures.push(`${r.rel}${r.note ? ` (${r.note})` : ''}`);
}

times.sort((a, b) => b.ms - a.ms);
process.stdout.write(`\nslowest files (sum of all files ${(times.reduce((n, t) => n + t.ms, 0) / 1000).toFixed(0)} s):\n`);
for (const t of times.slice(0, 10)) process.stdout.write(`  ${(t.ms / 1000).toFixed(1).padStart(6)} s  ${t.rel}\n`);
if (failures.length) process.stdout.write(`\nfailed: ${failures.join(', ')}\n`);
process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`);
process.exitCode = failed > 0 || passed === 0 ? 1 : 0;
