/**
 * `npm run bench -- wan [--rtt 0,10,50,100] [--loss 0,0.1,1,3] [--bw 100mbit]
 *   [--jitter MS] [--quick | --ci] [--subjects a,b] [--workloads setup,rr,bulk,mount,managed,hol]
 *   [--tcp-cc cubic|bbr|reno] [--name NAME] [--out-dir DIR] [--report FILE.json [--markdown]]`
 *
 * QUIC vs TCP over emulated wide-area links (bench/wan/: namespaces, a
 * userspace delay line, tbf). Loss is in percent per direction. Writes
 * DIR/NAME.json (NAME defaults to wan-<date>, plus -<cc> for a controller other than
 * cubic/reno; every raw sample and the lab's self-check per
 * condition), the plots (SVG and PNG) in DIR/wan-<date>/ and the static page
 * DIR/index.html; DIR defaults to bench/results. --tcp-cc sets TCP's
 * congestion control in the lab's hosts (default: cubic where the host
 * allows it, else reno; loss-based like QUIC's). --report re-renders the
 * plots and the page from an earlier JSON without measuring.
 * Needs root, iproute2 (ip, tc), ping, iperf3, cc, nbdcopy.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PROFILES, WORKLOADS, runMatrix, type Profile, type WorkloadName } from './wan/matrix.ts';
import { ALL_SUBJECTS, SUBJECTS, subjectUnavailable, type SubjectName } from './wan/subjects.ts';
import { Lab } from './wan/lab.ts';
import { renderReport } from './wan/report.ts';
import type { WanRun } from './wan/summary.ts';
import { headline, formatHeadline, markdownHeadline } from './wan/summary.ts';

const RESULTS = fileURLToPath(new URL('./results', import.meta.url));

export function parseRate(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(k|m|g)?(bit|bps)?$/i.exec(s.trim());
  if (!m) throw new Error(`wan: --bw must look like 100mbit (got "${s}")`);
  const mult = { k: 1e3, m: 1e6, g: 1e9 }[(m[2] ?? '').toLowerCase() as 'k' | 'm' | 'g'] ?? 1;
  return Number(m[1]) * mult;
}

function list(s: string, flag: string): number[] {
  const xs = s.split(',').map((x) => Number(x.trim()));
  if (xs.some((x) => !Number.isFinite(x) || x < 0)) throw new Error(`wan: ${flag} takes non-negative numbers separated by commas (got "${s}")`);
  return xs;
}

export default async function main(args: string[]): Promise<void> {
  const opt = (name: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const outDir = opt('--out-dir') ?? RESULTS;
  const report = opt('--report');
  if (report) {
    const run = JSON.parse(readFileSync(report, 'utf8')) as WanRun;
    const files = await renderReport(run, outDir, basename(report, '.json'));
    const h = headline(run);
    process.stdout.write(`${args.includes('--markdown') ? markdownHeadline(h) : formatHeadline(h)}\n\nwrote ${files.join(', ')}\n`);
    return;
  }
  const profile: Profile = args.includes('--ci') ? PROFILES.ci : args.includes('--quick') ? PROFILES.quick : PROFILES.full;
  const quickish = profile.name !== 'full';
  const rtts = list(opt('--rtt') ?? (quickish ? '10,50' : '0,10,50,100'), '--rtt');
  const losses = list(opt('--loss') ?? (quickish ? '0,1' : '0,0.1,1,3'), '--loss').map((x) => x / 100);
  if (losses.some((x) => x >= 1)) throw new Error('wan: --loss is in percent, below 100');
  const bandwidthBps = opt('--bw') === undefined ? 100e6 : opt('--bw') === '0' ? 0 : parseRate(opt('--bw')!);
  const named = opt('--subjects')?.split(',') as SubjectName[] | undefined;
  for (const s of named ?? []) {
    if (!ALL_SUBJECTS.includes(s)) throw new Error(`wan: unknown subject "${s}" (${ALL_SUBJECTS.join(', ')})`);
    const why = subjectUnavailable(s);
    if (why) throw new Error(`wan: subject ${s} cannot run here: ${why}`);
  }
  // By default every subject that can run here (the ngtcp2 addon may be missing: say so, go on without it).
  const subjects = named ?? SUBJECTS.filter((s) => {
    const why = subjectUnavailable(s);
    if (why) process.stdout.write(`(subject ${s} skipped: ${why})\n`);
    return !why;
  });
  const workloads = (opt('--workloads')?.split(',') ?? WORKLOADS) as WorkloadName[];
  for (const w of workloads) if (!WORKLOADS.includes(w)) throw new Error(`wan: unknown workload "${w}" (${WORKLOADS.join(', ')})`);
  const jitterMs = Number(opt('--jitter') ?? 0);
  if (!(jitterMs >= 0)) throw new Error('wan: --jitter takes milliseconds (≥ 0)');
  // A loss-based controller by default, like QUIC's (quinn: CUBIC): CUBIC
  // where the host allows it, else Reno. This machine's kernel defaults to
  // BBR, which ignores random loss: ask for it with --tcp-cc bbr to see that.
  const tcpCongestion = opt('--tcp-cc') ?? (Lab.allowedTcpCongestion().includes('cubic') ? 'cubic' : 'reno');
  if (!/^[a-z0-9_]+$/.test(tcpCongestion)) throw new Error(`wan: --tcp-cc takes a congestion control name (got "${tcpCongestion}")`);
  const name = opt('--name') ?? `wan-${new Date().toISOString().slice(0, 10)}${tcpCongestion === 'cubic' || tcpCongestion === 'reno' ? '' : `-${tcpCongestion}`}`;
  if (!/^[\w.-]+$/.test(name)) throw new Error(`wan: --name takes a file name without a path (got "${name}")`);

  const log = (l: string) => process.stdout.write(`${l}\n`);
  const startedAt = new Date();
  log(`wan bench (${profile.name}): RTT ${rtts.join(', ')} ms × loss ${losses.map((x) => x * 100).join(', ')} % × ${subjects.join(', ')}; load average ${loadavg().map((x) => x.toFixed(1)).join(' ')} on ${cpus().length} cores`);
  const { conditions, tcpCongestion: tcpUsed, subjectInfo } = await runMatrix({ rtts, losses, bandwidthBps, jitterMs, subjects, workloads, profile, tcpCongestion, log });
  const run: WanRun = {
    kind: 'quicmap-wan',
    version: 1,
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    command: `npm run bench -- wan ${args.join(' ')}`.trim(),
    profile,
    node: process.version,
    host: { cpus: cpus().length, loadavgStart: loadavg() },
    noisy: loadavg()[0]! > cpus().length * 0.5,
    link: { bandwidthBps, jitterMs, tcpCongestion: tcpUsed },
    subjects,
    subjectInfo,
    workloads,
    conditions,
  };
  mkdirSync(outDir, { recursive: true });
  const jsonPath = join(outDir, `${name}.json`);
  writeFileSync(jsonPath, `${JSON.stringify(run, null, 1)}\n`);
  const files = await renderReport(run, outDir, name);
  log(`\n${formatHeadline(headline(run))}`);
  log(`\nwrote ${jsonPath}, ${files.length} plot and page files (open ${join(outDir, 'index.html')})`);
}
