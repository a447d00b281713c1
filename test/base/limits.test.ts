/**
 * The reusable admission and budget pieces in base/ (used by the NBD
 * server, the region server, the TCP and QUIC listeners, and later relays
 * and the DHT): fair eviction, the node-wide budget and its shedding, log
 * rate limiting, a stderr writer that never blocks, and mkdir -p that ends.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { AdmissionGate, sourceOf, sourceOfHostPort } from '../../base/admission.ts';
import { ByteBudget } from '../../base/byte-budget.ts';
import { RateLimitedLog } from '../../base/rate-limited-log.ts';
import { makeDirs, makeDirsSync } from '../../base/make-dirs.ts';
import { PathError } from '../../base/errors.ts';
import { Scope, withTimeout } from '../helpers/env.ts';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

const test = suite('base/limits');

test('sources: IPv4 as is, IPv6 by /64, mapped IPv4 as IPv4, unix as one', () => {
  assert.is(sourceOf('10.1.2.3'), '10.1.2.3');
  assert.is(sourceOf('::ffff:10.1.2.3'), '10.1.2.3');
  assert.is(sourceOf('2001:db8:1:2:aaaa::1'), sourceOf('2001:db8:1:2::99'));
  assert.is.not(sourceOf('2001:db8:1:2::1'), sourceOf('2001:db8:1:3::1'));
  assert.is(sourceOf(undefined), 'local');
  assert.is(sourceOfHostPort('10.0.0.1:4433'), '10.0.0.1');
  assert.is(sourceOfHostPort('[::1]:4433'), sourceOf('::1'));
});

test('admission: a newcomer evicts the oldest pending of its own source at the per-source limit, of the fullest source at the total', () => {
  const g = new AdmissionGate({ maxPending: 6, maxPendingPerSource: 4, maxActive: 3, maxActivePerSource: 2 });
  const evicted: string[] = [];
  const admit = (src: string, name: string) => g.admit(src, () => evicted.push(name));
  const a = [1, 2, 3, 4].map((i) => admit('A', `a${i}`)!);
  admit('A', 'a5');
  assert.equal(evicted, ['a1'], 'own oldest at the per-source limit');
  const b1 = admit('B', 'b1')!;
  admit('B', 'b2');
  assert.is(g.pendingConnections, 6);
  admit('C', 'c1');
  assert.equal(evicted, ['a1', 'a2'], 'the fullest source pays at the total limit');
  assert.is(g.held('C').pending, 1);
  // Promotion moves to the active pool, capped per source and in total.
  assert.ok(a[2]!.promote());
  assert.ok(a[3]!.promote());
  assert.is(admit('A', 'a6'), undefined, 'A holds its two active slots: refused at the door');
  assert.ok(b1.promote());
  a[2]!.release();
  assert.ok(admit('A', 'a7'));
  assert.is(g.activeConnections, 2);
});

test('budget: holders that hold nothing get through at the limit (up to the reserve); stalled holders are shed, largest first', async () => {
  let now = 0;
  const b = new ByteBudget({ limit: 100, reserve: 20, stallMs: 1000, now: () => now });
  const shed: string[] = [];
  const mk = (name: string, stalled: () => boolean) => b.holder({ shed: () => shed.push(name), stalled: () => stalled() });
  const big = mk('big', () => true);
  const small = mk('small', () => true);
  const busy = mk('busy', () => false);
  const fresh = mk('fresh', () => false);
  big.set(70);
  small.set(20);
  busy.set(15);
  assert.is(b.used, 105);
  assert.not.ok(small.mayTake(), 'a holder with bytes waits at the limit');
  assert.ok(fresh.mayTake(), 'one with none may, within the reserve');
  fresh.set(10);
  assert.not.ok(fresh.mayTake());
  let woke = false;
  small.whenRoom(() => (woke = true));
  now = 2000;
  b.shedStalled();
  assert.equal(shed, ['big'], 'the largest stalled holder goes, and enough to get below the limit');
  assert.is(b.used, 45);
  await new Promise((r) => setImmediate(r));
  assert.ok(woke, 'waiters are woken once there is room');
  big.set(50);
  assert.is(b.used, 45, 'a released holder charges nothing');
});

test('rate-limited log: a burst per window, then one summary line', () => {
  let now = 0;
  const out: string[] = [];
  const l = new RateLimitedLog((m) => out.push(m), { burst: 3, windowMs: 1000, now: () => now });
  for (let i = 0; i < 1000; i++) l.log(`refused ${i}`);
  assert.is(out.length, 3);
  now = 1000;
  l.log('later');
  assert.equal(out.slice(3), ['(997 similar messages suppressed)', 'later']);
});

test('log writer: a stderr pipe nobody reads does not block the event loop', async () => {
  const s = new Scope();
  try {
    // The unread pipe is fd 3, not Node's own stderr: a warning Node or the
    // loader prints to a full stderr pipe blocks synchronously (Node's stdio
    // pipes are blocking), which is not what is tested here — our writer is.
    const child = s.spawn(process.execPath, ['--no-warnings', '--import', 'tsx', '-e', `
      import { LogWriter } from ${JSON.stringify(fileURLToPath(new URL('../../base/log-writer.ts', import.meta.url)))};
      const w = new LogWriter({ fd: 3, maxQueuedBytes: 256 * 1024 });
      const line = 'x'.repeat(200);
      let ticks = 0;
      const t = setInterval(() => ticks++, 10);
      const start = Date.now();
      for (let i = 0; i < 50000; i++) w.line(line); // 10 MB: far beyond a 64 KiB pipe
      setTimeout(() => { console.log(JSON.stringify({ ms: Date.now() - start, ticks, dropped: w.droppedLines })); process.exit(0); }, 500);
    `], { cwd: fileURLToPath(new URL('../..', import.meta.url)), stdio: ['ignore', 'pipe', 'inherit', 'pipe'] });
    (child.stdio[3] as Readable).pause(); // never read
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    // Wait for the report, not for the exit: a process whose thread-pool write
    // is parked on a full pipe cannot exit (process.exit waits for the thread;
    // a known limit of LogWriter, see base/README.md); the scope kills it.
    await withTimeout(30_000, 'child reports', new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', () => out.includes('\n') && resolve());
      child.once('exit', (code) => (out.includes('\n') ? resolve() : reject(new Error(`child exited ${code} without a report`))));
    }));
    const res = JSON.parse(out.trim());
    assert.ok(res.ticks > 5, `timers kept running (${res.ticks} ticks)`);
    assert.ok(res.dropped > 0, 'lines beyond the bound were dropped, not queued');
  } finally {
    await s.close();
  }
});

test('makeDirs: ends with a PathError where Node\u2019s recursive mkdir loops forever (/proc)', async () => {
  const s = new Scope();
  try {
    assert.throws(() => makeDirsSync('/proc/quicmap-test/a/b'), (e: unknown) => e instanceof PathError);
    try {
      await makeDirs('/proc/quicmap-test/a');
      assert.unreachable();
    } catch (e) {
      assert.instance(e, PathError);
    }
    const d = join(s.tmpdir(), 'x', 'y', 'z');
    await makeDirs(d);
    makeDirsSync(d);
    assert.ok(existsSync(d));
  } finally {
    await s.close();
  }
});

test.run();
