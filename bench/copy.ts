/**
 * `npm run bench -- copy [--size 1GiB] [--runs 1] [--rate RATE] [--cut 2s] [--json]`
 *
 * Third-party copy between real processes in three network namespaces (as
 * test/copy/three-nodes.test.ts builds them): A shares the source file, B
 * the destination, C orchestrates. Veth links, unshaped unless --rate (tc
 * tbf on every link, e.g. 1gbit). Subjects, alternating order per run:
 *   - orchestrated: `quicmap copy` on C (references through C, bytes A→B);
 *   - on B: the same copy run on B (the target: orchestrated ≤ 1.1×);
 *   - through C: `quicmap copy --through-here` on C (C reads A, writes B);
 *   - cut: orchestrated, with A's end of the A–B link down for --cut once a
 *     quarter is written; the resume cost is the time beyond the
 *     uninterrupted copy and the cut itself.
 * Time is the copy's own (`--json` ms: dial to last acknowledgement, flush
 * included); bytes through C from `--json` throughC. Needs root and iproute2.
 */
import { parseArgs } from 'node:util';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseSize, formatSize } from '../base/size.ts';
import { askControl } from '../p2p/node/control.ts';
import { MiB, median, table } from './_lib.ts';

const QUICMAP = fileURLToPath(new URL('../bin/quicmap.js', import.meta.url));
const NS = ['a', 'b', 'c'].map((x) => `qmbench${process.pid}${x}`);

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}
const inNs = (ns: string, cmd: string, args: string[]) => sh('ip', ['netns', 'exec', ns, cmd, ...args]);

function topology(rate: string | undefined): { aToB: string } {
  for (const n of NS) {
    spawnSync('ip', ['netns', 'del', n]);
    sh('ip', ['netns', 'add', n]);
    inNs(n, 'ip', ['link', 'set', 'lo', 'up']);
  }
  const [a, b, c] = NS as [string, string, string];
  const pairs: Array<[string, string, string, string]> = [
    [a, '10.79.1.1/24', c, '10.79.1.2/24'],
    [b, '10.79.2.1/24', c, '10.79.2.2/24'],
    [a, '10.79.3.1/24', b, '10.79.3.2/24'],
  ];
  const names: string[] = [];
  pairs.forEach(([x, xa, y, ya], i) => {
    const ix = `qbx${process.pid % 10000}${i}`;
    const iy = `qby${process.pid % 10000}${i}`;
    sh('ip', ['link', 'add', ix, 'type', 'veth', 'peer', 'name', iy]);
    sh('ip', ['link', 'set', ix, 'netns', x]);
    sh('ip', ['link', 'set', iy, 'netns', y]);
    inNs(x, 'ip', ['addr', 'add', xa, 'dev', ix]);
    inNs(y, 'ip', ['addr', 'add', ya, 'dev', iy]);
    inNs(x, 'ip', ['link', 'set', ix, 'up']);
    inNs(y, 'ip', ['link', 'set', iy, 'up']);
    if (rate) for (const [n, d] of [[x, ix], [y, iy]]) inNs(n!, 'tc', ['qdisc', 'add', 'dev', d!, 'root', 'tbf', 'rate', rate, 'burst', '1mb', 'latency', '50ms']);
    names.push(ix);
  });
  inNs(a, 'ip', ['addr', 'add', '10.79.0.1/32', 'dev', 'lo']);
  inNs(b, 'ip', ['addr', 'add', '10.79.0.2/32', 'dev', 'lo']);
  inNs(b, 'ip', ['route', 'add', '10.79.0.1/32', 'via', '10.79.3.1']);
  inNs(a, 'ip', ['route', 'add', '10.79.0.2/32', 'via', '10.79.3.2']);
  inNs(c, 'ip', ['route', 'add', '10.79.0.1/32', 'via', '10.79.1.1']);
  inNs(c, 'ip', ['route', 'add', '10.79.0.2/32', 'via', '10.79.2.1']);
  // B orchestrating reaches its own share on its loopback address directly.
  return { aToB: names[2]! };
}

function startShare(ns: string, home: string, args: string[]): Promise<{ ticket: string; stop: () => void }> {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, QUICMAP, 'share', '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, QUICMAP_HOME: home }, detached: true });
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-4000)));
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const i = out.indexOf('\n');
      if (i >= 0) resolve({ ticket: (JSON.parse(out.slice(0, i)) as { ticket: string }).ticket, stop: () => { try { process.kill(-child.pid!, 'SIGTERM'); } catch {} } });
    });
    child.once('exit', (code) => reject(new Error(`share exited ${code}: ${err}`)));
  });
}

function runCopy(ns: string, home: string, args: string[]): Promise<Record<string, number>> {
  return new Promise((resolve, reject) => {
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, QUICMAP, 'copy', ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, QUICMAP_HOME: home } });
    let out = '';
    let err = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-4000)));
    child.once('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop()!)) : reject(new Error(`copy exited ${code}: ${err}`))));
  });
}

export default async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { size: { type: 'string', default: '1GiB' }, runs: { type: 'string', default: '1' }, rate: { type: 'string' }, cut: { type: 'string', default: '2s' }, json: { type: 'boolean', default: false } } });
  if (process.getuid?.() !== 0) throw new Error('bench copy needs root (network namespaces)');
  const size = parseSize(values.size!);
  const runs = Number(values.runs);
  const cutMs = Number(/^(\d+)s$/.exec(values.cut!)?.[1] ?? 2) * 1000;
  const dir = mkdtempSync(join(tmpdir(), 'quicmap-bench-copy-'));
  const stops: Array<() => void> = [];
  try {
    const { aToB } = topology(values.rate);
    const [a, b, c] = NS as [string, string, string];
    const src = join(dir, 'src.img');
    const dst = join(dir, 'dst.img');
    let fd = openSync(src, 'w');
    for (let at = 0; at < size; at += 64 * MiB) writeSync(fd, randomBytes(Math.min(64 * MiB, size - at)), 0, undefined, at);
    closeSync(fd);
    fd = openSync(dst, 'w');
    ftruncateSync(fd, size);
    closeSync(fd);
    const A = await startShare(a, join(dir, 'a'), ['--backend', `file:${src}`, '--read-only', '--listen', '10.79.0.1:0']);
    stops.push(A.stop);
    const bControl = join(dir, 'b.sock');
    const B = await startShare(b, join(dir, 'b'), ['--backend', `file:${dst}`, '--listen', '10.79.0.2:0', '--control', bControl]);
    stops.push(B.stop);
    const times: Record<string, number[]> = { orchestrated: [], onB: [], throughC: [], cut: [] };
    const viaC: Record<string, number[]> = { orchestrated: [], onB: [], throughC: [], cut: [] };
    const check = () => {
      const r = spawnSync('cmp', [src, dst]);
      if (r.status !== 0) throw new Error('destination differs from source');
    };
    const subjects: Array<[string, () => Promise<Record<string, number>>]> = [
      ['orchestrated', () => runCopy(c, join(dir, 'c'), [A.ticket, B.ticket])],
      ['onB', () => runCopy(b, join(dir, 'cb'), [A.ticket, B.ticket])],
      ['throughC', () => runCopy(c, join(dir, 'c'), [A.ticket, B.ticket, '--through-here'])],
      [
        'cut',
        async () => {
          const p = runCopy(c, join(dir, 'c'), [A.ticket, B.ticket]);
          const before = ((await askControl(bControl, { op: 'status' })) as { copy: { bytes: number } }).copy.bytes;
          for (;;) {
            const st = (await askControl(bControl, { op: 'status' })) as { copy: { bytes: number } };
            if (st.copy.bytes - before >= size / 4) break;
            await new Promise((r) => setTimeout(r, 20));
          }
          inNs(a, 'ip', ['link', 'set', aToB, 'down']);
          await new Promise((r) => setTimeout(r, cutMs));
          inNs(a, 'ip', ['link', 'set', aToB, 'up']);
          return p;
        },
      ],
    ];
    for (let r = 0; r < runs; r++) {
      const order = r % 2 === 0 ? subjects : [...subjects].reverse();
      for (const [name, fn] of order) {
        const s = await fn();
        check();
        times[name]!.push(s.ms!);
        viaC[name]!.push(s.throughC!);
        process.stderr.write(`run ${r + 1} ${name}: ${(s.ms! / 1000).toFixed(2)} s, through C ${formatSize(s.throughC!)}\n`);
      }
    }
    const m = (k: string) => median(times[k]!);
    const result = {
      size,
      runs,
      rate: values.rate ?? 'unshaped',
      ms: Object.fromEntries(Object.keys(times).map((k) => [k, Math.round(m(k))])),
      bytesThroughC: Object.fromEntries(Object.keys(viaC).map((k) => [k, median(viaC[k]!)])),
      orchestratedOverOnB: m('orchestrated') / m('onB'),
      orchestratedOverThroughC: m('orchestrated') / m('throughC'),
      throughCShareOrchestrated: median(viaC.orchestrated!) / size,
      resumeCostMs: Math.round(m('cut') - m('orchestrated') - cutMs),
    };
    if (values.json) process.stdout.write(`${JSON.stringify(result)}\n`);
    else {
      process.stdout.write(
        `${table(
          ['subject', 'time s', 'MiB/s', 'through C'],
          Object.keys(times).map((k) => [k, (m(k) / 1000).toFixed(2), (size / MiB / (m(k) / 1000)).toFixed(1), formatSize(median(viaC[k]!))]),
        )}\n` +
          `orchestrated / on B: ${result.orchestratedOverOnB.toFixed(2)}x (target <= 1.1)\n` +
          `orchestrated / through C: ${result.orchestratedOverThroughC.toFixed(2)}x; through C carried ${(100 * result.throughCShareOrchestrated).toFixed(3)} % of the data orchestrated\n` +
          `resume cost after a ${cutMs / 1000} s cut: ${(result.resumeCostMs / 1000).toFixed(2)} s beyond the cut\n`,
      );
    }
  } finally {
    for (const s of stops) s();
    await new Promise((r) => setTimeout(r, 500));
    for (const n of NS) spawnSync('ip', ['netns', 'del', n]);
    rmSync(dir, { recursive: true, force: true });
  }
}
