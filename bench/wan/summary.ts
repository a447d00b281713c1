/**
 * From a run's raw samples to the figures people read: per condition and
 * subject the medians and percentiles, and the issue's targets, met or not.
 */
import type { Condition, Profile, WorkloadName } from './matrix.ts';
import { fmt, median, quantile } from './matrix.ts';
import type { SubjectName } from './subjects.ts';

export interface WanRun {
  kind: 'quicmap-wan';
  version: 1;
  startedAt: string;
  finishedAt: string;
  command: string;
  profile: Profile;
  node: string;
  host: { cpus: number; loadavgStart: number[] };
  /** True when the machine was busy (load average above half its cores): figures are rough. */
  noisy: boolean;
  link: { bandwidthBps: number; jitterMs: number; tcpCongestion?: string };
  subjects: SubjectName[];
  /** Which class each quicmap subject was and its congestion controller, where chosen (absent in older runs). */
  subjectInfo?: Partial<Record<SubjectName, { impl?: string; cc?: string }>>;
  workloads: WorkloadName[];
  conditions: Condition[];
}

export interface Cell {
  endpointMs: number;
  connectMs: number;
  firstByteMs: number;
  rrP50: number;
  rrP99: number;
  bulkMBps: number;
  mountMBps: number;
  /** Managed mount: ready to working set read (ms), and full pull as MB/s. */
  managedWorkingSetMs: number;
  managedFullPullMs: number;
  managedPullMBps: number;
  holCleanP50: number;
  holCleanP99: number;
  holLossyP50: number;
}

export function cell(c: Condition, s: SubjectName): Cell {
  const r = c.results[s];
  const clean = r?.hol?.clean.flat() ?? [];
  return {
    endpointMs: median(r?.setup?.map((x) => x.endpointMs) ?? []),
    connectMs: median(r?.setup?.map((x) => x.connectMs) ?? []),
    firstByteMs: median(r?.setup?.map((x) => x.firstByteMs) ?? []),
    rrP50: quantile(r?.rr ?? [], 0.5),
    rrP99: quantile(r?.rr ?? [], 0.99),
    bulkMBps: r?.bulk ? r.bulk.bytes / r.bulk.seconds / 1e6 : NaN,
    mountMBps: r?.mount ? r.mount.bytes / r.mount.seconds / 1e6 : NaN,
    managedWorkingSetMs: r?.managed ? r.managed.workingSetMs : NaN,
    managedFullPullMs: r?.managed ? r.managed.fullPullMs : NaN,
    managedPullMBps: r?.managed ? r.managed.bytes / (r.managed.fullPullMs / 1000) / 1e6 : NaN,
    holCleanP50: quantile(clean, 0.5),
    holCleanP99: quantile(clean, 0.99),
    holLossyP50: quantile(r?.hol?.lossy ?? [], 0.5),
  };
}

/** The RTT the self-check measured (the asked one if it could not). */
export function measuredRtt(c: Condition): number {
  return Number.isFinite(c.selfCheck.rtt.medianMs) ? c.selfCheck.rtt.medianMs : c.rttMs;
}

export interface Target {
  name: string;
  /** true / false, or null when the run did not have the condition. */
  met: boolean | null;
  detail: string;
}

function find(run: WanRun, rtt: number, loss: number): Condition | undefined {
  return run.conditions.find((c) => c.rttMs === rtt && Math.abs(c.loss - loss) < 1e-9 && !c.skipped);
}

export function targets(run: WanRun): Target[] {
  const out: Target[] = [];
  // 1. quicmap-quic setup <= 1.5 RTT + 2 ms at every RTT (the cleanest loss rate run).
  const minLoss = Math.min(...run.conditions.map((c) => c.loss));
  const setupConds = run.conditions.filter((c) => c.loss === minLoss && !c.skipped && c.results['quicmap-quic']?.setup?.length);
  if (setupConds.length) {
    const parts = setupConds.map((c) => {
      const x = cell(c, 'quicmap-quic');
      const limit = 1.5 * measuredRtt(c) + 2;
      const tcp = cell(c, 'quicmap-tcp');
      return { ok: x.connectMs <= limit, text: `RTT ${c.rttMs}: connect ${fmt(x.connectMs)} ms (limit ${fmt(limit)}), first byte ${fmt(x.firstByteMs)} ms, new endpoint ${fmt(x.endpointMs)} ms; quicmap-tcp ${fmt(tcp.connectMs)} / ${fmt(tcp.firstByteMs)} / ${fmt(tcp.endpointMs)} ms` };
    });
    out.push({ name: 'quicmap-quic connection setup ≤ 1.5 RTT + 2 ms at every RTT', met: parts.every((p) => p.ok), detail: parts.map((p) => p.text).join('; ') });
  } else out.push({ name: 'quicmap-quic connection setup ≤ 1.5 RTT + 2 ms at every RTT', met: null, detail: 'no setup samples' });

  // The ngtcp2 transport (to become the project's QUIC) beside quicmap-quic, where the run has it.
  const ng = (c: Condition, f: (x: Cell) => number, unit: string) => {
    const alt = run.subjects.filter((s) => s.startsWith('quicmap-ngtcp2') && c.results[s]);
    return alt.length ? `; ${alt.map((s) => `${s} ${fmt(f(cell(c, s)))}${unit}`).join(', ')}` : '';
  };
  const lossy = find(run, 50, 0.01);
  if (lossy) {
    const q = cell(lossy, 'quicmap-quic');
    const t = cell(lossy, 'quicmap-tcp');
    const bulkOk = q.bulkMBps >= t.bulkMBps && (Number.isNaN(q.mountMBps) || Number.isNaN(t.mountMBps) || q.mountMBps >= t.mountMBps);
    out.push({
      name: 'at 1 % loss, 50 ms: quicmap-quic bulk ≥ quicmap-tcp',
      met: Number.isFinite(q.bulkMBps) && Number.isFinite(t.bulkMBps) ? bulkOk : null,
      detail: `stream ${fmt(q.bulkMBps)} vs ${fmt(t.bulkMBps)} MB/s; mount read ${fmt(q.mountMBps)} vs ${fmt(t.mountMBps)} MB/s${ng(lossy, (x) => x.bulkMBps, ' MB/s')}`,
    });
    const ratio = t.holCleanP99 / q.holCleanP99;
    out.push({
      name: "at 1 % loss, 50 ms: clean streams' p99 ≥ 2× better than over TCP (head of line)",
      met: Number.isFinite(ratio) ? ratio >= 2 : null,
      detail: `clean-stream p99 quicmap-quic ${fmt(q.holCleanP99)} ms vs quicmap-tcp ${fmt(t.holCleanP99)} ms: ${fmt(ratio)}×${ng(lossy, (x) => x.holCleanP99, ' ms')}`,
    });
  } else {
    out.push({ name: 'at 1 % loss, 50 ms: quicmap-quic bulk ≥ quicmap-tcp', met: null, detail: 'not in this run (needs --rtt 50 --loss 1)' });
    out.push({ name: "at 1 % loss, 50 ms: clean streams' p99 ≥ 2× better than over TCP (head of line)", met: null, detail: 'not in this run' });
  }
  const clean = find(run, 50, 0);
  if (clean) {
    const q = cell(clean, 'quicmap-quic');
    const t = cell(clean, 'quicmap-tcp');
    const rtt = measuredRtt(clean) / 1000;
    const bdp = (x: number) => `${fmt((x * 1e6 * rtt) / 1024)} KiB`;
    out.push({
      name: 'at 0 loss, 50 ms: quicmap-quic bulk ≥ 0.9× quicmap-tcp',
      met: Number.isFinite(q.bulkMBps / t.bulkMBps) ? q.bulkMBps >= 0.9 * t.bulkMBps : null,
      detail: `${fmt(q.bulkMBps)} vs ${fmt(t.bulkMBps)} MB/s (${fmt(q.bulkMBps / t.bulkMBps)}×); bandwidth-delay product reached: quicmap-quic ${bdp(q.bulkMBps)}, quicmap-tcp ${bdp(t.bulkMBps)} of ${run.link.bandwidthBps ? `${fmt((run.link.bandwidthBps / 8) * rtt / 1024)} KiB` : 'unlimited'}; mount read ${fmt(q.mountMBps)} vs ${fmt(t.mountMBps)} MB/s${ng(clean, (x) => x.bulkMBps, ' MB/s')}`,
    });
  } else out.push({ name: 'at 0 loss, 50 ms: quicmap-quic bulk ≥ 0.9× quicmap-tcp', met: null, detail: 'not in this run (needs --rtt 50 --loss 0)' });
  return out;
}

export interface Headline {
  header: string[];
  rows: string[][];
  targets: Target[];
}

export function headline(run: WanRun): Headline {
  const header = ['RTT', 'loss', 'subject', 'new endpoint ms', 'connect ms', 'first byte ms', '4K p50 ms', '4K p99 ms', 'bulk MB/s', 'mount MB/s', 'managed WS ms', 'managed pull MB/s', 'HOL clean p99 ms'];
  const rows: string[][] = [];
  for (const c of run.conditions) {
    if (c.skipped) {
      rows.push([`${c.rttMs}`, `${c.loss * 100}%`, `skipped: ${c.skipped}`, ...header.slice(3).map(() => '')]);
      continue;
    }
    for (const s of run.subjects) {
      const x = cell(c, s);
      rows.push([`${c.rttMs}`, `${c.loss * 100}%`, s, fmt(x.endpointMs), fmt(x.connectMs), fmt(x.firstByteMs), fmt(x.rrP50), fmt(x.rrP99), fmt(x.bulkMBps), fmt(x.mountMBps), fmt(x.managedWorkingSetMs), fmt(x.managedPullMBps), fmt(x.holCleanP99)]);
    }
  }
  return { header, rows, targets: targets(run) };
}

export function formatHeadline(h: Headline): string {
  const all = [h.header, ...h.rows];
  const w = h.header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  const lines = all.map((r) => r.map((c, i) => (i === 2 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  '));
  lines.push('', 'targets:');
  for (const t of h.targets) lines.push(`  [${t.met === null ? ' n/a ' : t.met ? ' met ' : ' NOT '}] ${t.name}: ${t.detail}`);
  return lines.join('\n');
}

/** The headline as a Markdown table (for RESULTS.md). */
export function markdownHeadline(h: Headline): string {
  const lines = [`| ${h.header.join(' | ')} |`, `|${h.header.map(() => '---').join('|')}|`, ...h.rows.map((r) => `| ${r.join(' | ')} |`)];
  lines.push('', ...h.targets.map((t) => `- **${t.met === null ? 'n/a' : t.met ? 'met' : 'not met'}** — ${t.name}: ${t.detail}`));
  return lines.join('\n');
}
