/**
 * Third-party copy between real processes in three network namespaces the
 * test creates: A (source), B (destination), C (the orchestrator, running
 * `quicmap copy`), joined by three veth links shaped by tc tbf (A–C, B–C,
 * A–B; C does not forward). Each node's address sits on its loopback and
 * is routed over the direct link, so B reaches A only over A–B.
 *
 * - A 64 MiB copy run on C: identical bytes; bytes through C < 1 % by C's
 *   interface counters and by `--json`; A's references back to zero (status).
 * - The A–B link cut mid-copy (A's end of the veth down for 4 s): the copy
 *   resumes and completes, each range once.
 * - A tiny origin cache (--ref-cache 1MiB) forces flushes, and a slow
 *   destination (nbdkit with a write delay) with room for one piece
 *   (--copy-hold 512KiB) drops pieces and fetches them again.
 * - A forged cache id and a widened delegation refused (forge-client.ts, a
 *   real process in C's namespace).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { Scope, SYSTEM_PATH, needCondition, needTools, run, withTimeout } from '../helpers/env.ts';
import { startCli, type CliProcess } from '../helpers/cli.ts';
import { canUseNetns, link, netns, type Ns } from '../helpers/netns.ts';
import { askControl } from '../../p2p/node/control.ts';

const test = suite('copy/three-nodes');
const tools = needTools(test, ['ip', 'tc', 'nbdkit'], 'three-node copy test');
const root = canUseNetns();
const MiB = 1 << 20;
const SIZE = 64 * MiB;
const ROOT = join(import.meta.dirname, '../..');

const env = (home: string) => ({ ...process.env, PATH: SYSTEM_PATH, QUICMAP_HOME: home });

/** Namespaces of earlier runs of this test whose process is gone (a runner killed by a signal, or the file's time limit, never cleaned up). */
function removeStale(): void {
  const r = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  for (const line of (r.stdout ?? '').split('\n')) {
    const m = /^(qm(\d+)cp[abc])\b/.exec(line.trim());
    if (!m || Number(m[2]) === process.pid) continue;
    let alive = true;
    try {
      process.kill(Number(m[2]), 0);
    } catch {
      alive = false;
    }
    if (alive) continue;
    // Processes a killed run left inside (its share commands) would keep the namespace and run forever.
    const pids = spawnSync('ip', ['netns', 'pids', m[1]!], { encoding: 'utf8' }).stdout ?? '';
    for (const pid of pids.split('\n').filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {}
    }
    spawnSync('ip', ['netns', 'del', m[1]!]);
  }
}

interface World {
  s: Scope;
  a: Ns;
  b: Ns;
  c: Ns;
  dir: string;
  /** C's two interfaces, A's end of the A–B link. */
  cIfaces: string[];
  aToB: string;
  src: string;
  data: Buffer;
}

function writeFile(path: string, data: Buffer | undefined, size: number): void {
  const fd = openSync(path, 'w');
  try {
    if (data) for (let at = 0; at < data.length; at += 8 * MiB) writeSync(fd, data, at, Math.min(8 * MiB, data.length - at), at);
    ftruncateSync(fd, size);
  } finally {
    closeSync(fd);
  }
}

function world(s: Scope): World {
  removeStale();
  const a = netns(s, 'cpa');
  const b = netns(s, 'cpb');
  const c = netns(s, 'cpc');
  const [, cToA] = link(a, '10.78.1.1/24', c, '10.78.1.2/24', '400mbit');
  const [, cToB] = link(b, '10.78.2.1/24', c, '10.78.2.2/24', '400mbit');
  // A–B slower than the rest, so a 64 MiB copy lasts long enough to be cut in the middle.
  const [aToB] = link(a, '10.78.3.1/24', b, '10.78.3.2/24', '100mbit');
  for (const ns of [a, b, c]) ns.run('sysctl', ['-qw', 'net.ipv4.ip_forward=0']);
  a.run('ip', ['addr', 'add', '10.78.0.1/32', 'dev', 'lo']);
  b.run('ip', ['addr', 'add', '10.78.0.2/32', 'dev', 'lo']);
  b.run('ip', ['route', 'add', '10.78.0.1/32', 'via', '10.78.3.1']);
  a.run('ip', ['route', 'add', '10.78.0.2/32', 'via', '10.78.3.2']);
  c.run('ip', ['route', 'add', '10.78.0.1/32', 'via', '10.78.1.1']);
  c.run('ip', ['route', 'add', '10.78.0.2/32', 'via', '10.78.2.1']);
  const dir = s.tmpdir('quicmap-copy3-');
  const data = randomBytes(SIZE);
  const src = join(dir, 'src.img');
  writeFile(src, data, SIZE);
  return { s, a, b, c, dir, cIfaces: [cToA!, cToB!], aToB: aToB!, src, data };
}

/** C's bytes on the wire, both directions, both links (the kernel's interface counters). */
function counters(w: World): number {
  const out = JSON.parse(w.c.run('ip', ['-j', '-s', 'link', 'show'])) as Array<{ ifname: string; stats64?: { rx: { bytes: number }; tx: { bytes: number } } }>;
  let n = 0;
  for (const i of out) if (w.cIfaces.includes(i.ifname)) n += (i.stats64?.rx.bytes ?? 0) + (i.stats64?.tx.bytes ?? 0);
  return n;
}

interface Share {
  proc: CliProcess;
  ticket: string;
  control: string;
}

async function share(w: World, ns: Ns, name: string, addr: string, args: string[]): Promise<Share> {
  const control = join(w.dir, `${name}.sock`);
  const proc = startCli(w.s, ['share', '--listen', `${addr}:0`, '--identity', join(w.dir, `${name}.id`), '--control', control, '--json', ...args], env(join(w.dir, name)), ns.prefix);
  const line = JSON.parse(await proc.line(60_000)) as { ticket: string };
  return { proc, ticket: line.ticket, control };
}

async function status(sh: Share): Promise<Record<string, any>> {
  return (await askControl(sh.control, { op: 'status' }, 10_000)) as Record<string, any>;
}

async function copy(w: World, args: string[]): Promise<Record<string, any>> {
  const p = startCli(w.s, ['copy', ...args, '--identity', join(w.dir, 'c.id'), '--json'], env(join(w.dir, 'c')), w.c.prefix);
  const line = await p.line(70_000).catch((e: Error) => {
    throw new Error(`${e.message}\ncopy stderr:\n${p.stderr()}`);
  });
  assert.is(await p.exited, 0, p.stderr());
  return { ...JSON.parse(line), stderr: p.stderr() };
}

function sameBytes(file: string, expect: Buffer, offset = 0): boolean {
  const got = readFileSync(file);
  return got.subarray(offset, offset + expect.length).equals(expect);
}

let w: World | undefined;
let A: Share | undefined;
let B: Share | undefined;

const guarded = (name: string, ms: number, fn: () => Promise<void>) =>
  root ? tools(name, () => withTimeout(ms, name, fn)) : needCondition(test, false, 'root and ip netns (network namespaces)')(name, () => {});

const scope = new Scope();
test.after(async () => {
  await withTimeout(30_000, 'cleanup', scope.close());
});

async function base(): Promise<{ w: World; A: Share; B: Share }> {
  if (!w) {
    w = world(scope);
    writeFile(join(w.dir, 'dst.img'), undefined, SIZE);
    [A, B] = await Promise.all([
      share(w, w.a, 'a', '10.78.0.1', ['--backend', `file:${w.src}`, '--read-only']),
      share(w, w.b, 'b', '10.78.0.2', ['--backend', `file:${join(w.dir, 'dst.img')}`]),
    ]);
  }
  return { w, A: A!, B: B! };
}

guarded('64 MiB A → B run on C: identical bytes, under 1 % through C (interface counters and --json), A\'s references back to zero', 85_000, async () => {
  const { w, A, B } = await base();
  const before = counters(w);
  const s = await copy(w, [A.ticket, B.ticket]);
  const onWire = counters(w) - before;
  assert.is(s.bytes, SIZE);
  assert.ok(sameBytes(join(w.dir, 'dst.img'), w.data), 'destination equals source');
  assert.ok(onWire < 0.01 * SIZE, `C's interfaces carried ${onWire} bytes (1 % is ${0.01 * SIZE})`);
  assert.ok(s.throughC > 0 && s.throughC < 0.01 * SIZE, `--json throughC ${s.throughC}`);
  assert.is(s.inlineBytes, 0);
  const a = await status(A);
  assert.is(a.cache.refs, 0, `no reference outstanding at A\nC: ${s.stderr}\nA: ${A.proc.stderr().slice(-3000)}\nB: ${B.proc.stderr().slice(-3000)}`);
  assert.is(s.sourceRefs, 0);
  assert.is(a.cache.lines, 0);
  assert.is(a.cache.fetchedBytes, SIZE, 'B fetched every byte from A');
  const b = await status(B);
  assert.is(b.copy.bytes, SIZE);
});

guarded('the A–B link cut mid-copy: the copy resumes and completes exactly once', 70_000, async () => {
  const { w, A } = await base();
  writeFile(join(w.dir, 'dst2.img'), undefined, SIZE);
  const B2 = await share(w, w.b, 'b2', '10.78.0.2', ['--backend', `file:${join(w.dir, 'dst2.img')}`]);
  const p = copy(w, [A.ticket, B2.ticket]);
  let cutAt = -1;
  const cut = (async () => {
    // Wait until B has written some of it, then take A's end of the A–B link down for 4 s.
    for (let i = 0; i < 3000; i++) {
      const st = await status(B2).catch(() => undefined);
      const done = st?.copy?.bytes ?? 0;
      if (done >= 8 * MiB) {
        cutAt = done;
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    w.a.run('ip', ['link', 'set', w.aToB, 'down']);
    await new Promise((r) => setTimeout(r, 4_000));
    w.a.run('ip', ['link', 'set', w.aToB, 'up']);
  })();
  const [s] = await Promise.all([p, cut]);
  assert.ok(cutAt >= 8 * MiB && cutAt < SIZE, `the cut came mid-copy (at ${cutAt} bytes)`);
  assert.is(s.bytes, SIZE);
  assert.is(s.duplicateAcks, 0, 'each range acknowledged once');
  assert.ok(sameBytes(join(w.dir, 'dst2.img'), w.data), 'destination equals source');
  const b2 = await status(B2);
  // Whether the cut surfaces as retries depends on the transport: the ngtcp2 QUIC path can ride out 4 s of silence
  // without the link being declared dead. Either way the copy must complete once with the right bytes.
  console.log(`  cut at ${cutAt} bytes: B retried ${b2.copy.retries} requests, C retried ${s.retriedBatches} batches`);
  assert.is(b2.copy.bytes >= SIZE, true);
  assert.is((await status(A)).cache.refs, 0);
});

guarded('a tiny origin cache forces flushes; a slow destination with room for one piece drops and fetches again', 45_000, async () => {
  const { w } = await base();
  const len = 8 * MiB;
  const small = await share(w, w.a, 'a3', '10.78.0.1', ['--backend', `file:${w.src}`, '--read-only', '--ref-cache', '1MiB']);
  // The destination's disk: nbdkit with a 200 ms write delay.
  const img = join(w.dir, 'dst3.img');
  writeFile(img, undefined, len);
  const sock = join(w.dir, 'nbdkit.sock');
  // nbdkit binds the socket before it listens; it writes the pid file once it accepts.
  const pidFile = join(w.dir, 'nbdkit.pid');
  w.s.spawn('nbdkit', ['-f', '-U', sock, '-P', pidFile, '--filter=delay', 'file', img, 'wdelay=200ms'], { env: { ...process.env, PATH: SYSTEM_PATH } });
  await withTimeout(20_000, 'nbdkit pid file', async () => {
    while (!existsSync(pidFile)) await new Promise((r) => setTimeout(r, 20));
  });
  const slow = await share(w, w.b, 'b3', '10.78.0.2', ['--backend', `nbd:nbd+unix:///?socket=${sock}`, '--copy-hold', '512KiB']);
  const s = await copy(w, [`${small.ticket}:0+8MiB`, slow.ticket, '--batch', '2MiB']);
  assert.is(s.bytes, len);
  const a = await status(small);
  const b = await status(slow);
  assert.ok(a.cache.flushRequests > 0, `A forced flushes: ${a.cache.flushRequests}`);
  assert.ok(b.copy.dropped > 0 && b.copy.refetched === b.copy.dropped, `B dropped ${b.copy.dropped}, fetched again ${b.copy.refetched}`);
  assert.is(a.cache.refs, 0);
  assert.is(a.cache.lines, 0);
  assert.ok(sameBytes(img, w.data.subarray(0, len)), 'destination equals source');
});

guarded('a forged cache id and a widened delegation are refused (real processes, real QUIC)', 35_000, async () => {
  const { w, A, B } = await base();
  const r = await run('ip', ['netns', 'exec', w.c.name, process.execPath, '--import', 'tsx', join(ROOT, 'test/copy/forge-client.ts'), A.ticket, B.ticket, join(w.dir, 'c.id'), join(w.dir, 'b.id')], {
    env: env(join(w.dir, 'c')),
    cwd: ROOT,
    timeoutMs: 30_000,
  });
  assert.is(r.code, 0, r.stderr);
  const o = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, string>;
  assert.match(o.forgedViaB!, /^EACCES: .*not held/);
  assert.match(o.widenedViaB!, /^EACCES: .*outside the delegated/);
  assert.match(o.tamperedViaB!, /^EACCES: .*signature does not verify/);
  assert.match(o.claimOutside!, /^EACCES: .*outside the delegated/);
  assert.match(o.plainRead!, /^EACCES: .*by reference only/);
  assert.is(o.claimOnce, 'ACCEPTED');
  assert.match(o.claimReplayed!, /^EACCES: .*not held/);
  assert.match(o.tamperedSession!, /^EACCES: .*signature does not verify/);
  assert.match(o.stolenDelegation!, /^EACCES: .*bound to peer/);
  const a = await status(A);
  assert.is(a.cache.refs, 0, 'everything given back');
  assert.ok(a.cache.refused >= 4, `A counted its refusals: ${a.cache.refused}`);
});

test.run();
