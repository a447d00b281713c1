/**
 * Plots and the static results page of a WAN run. Charts are drawn by
 * Apache ECharts (server-side SVG rendering, no browser), PNGs rendered from
 * the SVG by resvg; the page is one HTML file with the plots, the tables and
 * the commands, readable straight from disk.
 *
 *   DIR/NAME/setup-vs-rtt.svg|png         cold setup (connect, first byte) vs RTT
 *   DIR/NAME/latency-vs-rtt.svg|png       4 KiB request/response p50/p99 vs RTT
 *   DIR/NAME/throughput-vs-loss-rttR.svg|png  bulk and mount read vs loss, per RTT
 *   DIR/NAME/hol-rttR.svg|png             head-of-line: clean streams' p99 vs loss
 *   DIR/NAME/managed-rttR.svg|png         managed mount: time to working set and full pull vs loss
 *   DIR/index.html
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as echarts from 'echarts';
import { Resvg } from '@resvg/resvg-js';
import { fmt } from './matrix.ts';
import type { Condition } from './matrix.ts';
import type { SubjectName } from './subjects.ts';
import { cell, headline, measuredRtt, type Cell, type WanRun } from './summary.ts';

const FONT = 'DejaVu Sans';
/** One colour per subject, the same on every plot: quicmap's in strong hues, references muted. */
export const COLORS: Record<SubjectName, string> = {
  'quicmap-quic': '#d9480f',
  'quicmap-ngtcp2': '#c2255c',
  'quicmap-ngtcp2-cubic': '#e64980',
  'quicmap-ngtcp2-reno': '#ae3ec9',
  'quicmap-ngtcp2-bbr': '#7048e8',
  'quicmap-ngtcp2-bbr2': '#0ca678',
  'quicmap-tcp': '#1c7ed6',
  'raw-quic': '#f59f00',
  'tls-tcp': '#5c940d',
  'plain-tcp': '#868e96',
  hyperswarm: '#495057',
};
const W = 960;
const H = 480;

interface Plot {
  file: string;
  title: string;
  caption: string;
}

function chartSvg(option: echarts.EChartsCoreOption): string {
  const chart = echarts.init(null, null, { renderer: 'svg', ssr: true, width: W, height: H });
  try {
    chart.setOption({ animation: false, backgroundColor: '#ffffff', textStyle: { fontFamily: FONT }, ...option });
    return chart.renderToSVGString();
  } finally {
    chart.dispose();
  }
}

function writePlot(dir: string, base: string, option: echarts.EChartsCoreOption): string[] {
  const svg = chartSvg(option);
  writeFileSync(join(dir, `${base}.svg`), svg);
  const png = new Resvg(svg, { background: '#ffffff', fitTo: { mode: 'width', value: W * 2 }, font: { loadSystemFonts: true, defaultFontFamily: FONT } }).render().asPng();
  writeFileSync(join(dir, `${base}.png`), png);
  return [`${base}.svg`, `${base}.png`];
}

const finite = (x: number) => (Number.isFinite(x) ? Number(x.toFixed(3)) : null);

function common(title: string, subtitle: string) {
  return {
    title: { text: title, subtext: subtitle, left: 16, top: 10, textStyle: { fontSize: 18, fontWeight: 'bold', color: '#212529' }, subtextStyle: { fontSize: 12, color: '#868e96' } },
    grid: { left: 72, right: 260, top: 78, bottom: 58 },
    legend: { orient: 'vertical', right: 12, top: 'middle', textStyle: { fontSize: 13 }, itemWidth: 22 },
  };
}

function axisName(name: string) {
  return { name, nameLocation: 'middle', nameGap: 36, nameTextStyle: { fontSize: 13, color: '#495057' }, axisLabel: { fontSize: 12 }, splitLine: { lineStyle: { color: '#e9ecef' } } };
}

function noisyNote(run: WanRun): string {
  return run.noisy ? ' · NOISY: shared, loaded machine' : '';
}

function setupPlot(run: WanRun, conds: Condition[]): echarts.EChartsCoreOption {
  const series: object[] = [];
  for (const s of run.subjects) {
    const pts = (f: (x: Cell) => number) => conds.map((c) => [measuredRtt(c), finite(f(cell(c, s)))]);
    series.push({ name: s, type: 'line', symbolSize: 8, lineStyle: { width: 2.5 }, color: COLORS[s], data: pts((x) => x.firstByteMs) });
    if (s === 'quicmap-quic' || s === 'quicmap-tcp')
      series.push({ name: `${s} connect`, type: 'line', symbol: 'emptyCircle', symbolSize: 7, lineStyle: { width: 1.5, type: 'dashed' }, color: COLORS[s], data: pts((x) => x.connectMs) });
  }
  const maxRtt = Math.max(...conds.map(measuredRtt), 1);
  series.push({
    name: 'target: 1.5 RTT + 2 ms',
    type: 'line',
    symbol: 'none',
    color: '#212529',
    lineStyle: { width: 1.5, type: [2, 4] },
    data: [
      [0, 2],
      [maxRtt, 1.5 * maxRtt + 2],
    ],
  });
  return {
    ...common('Connection setup vs RTT', `new connection: first echoed byte (solid), authenticated (dashed); median${noisyNote(run)}`),
    tooltip: { trigger: 'axis' },
    xAxis: { type: 'value', min: 0, ...axisName('measured RTT (ms)') },
    yAxis: { type: 'value', min: 0, ...axisName('ms'), nameGap: 46 },
    series,
  };
}

function latencyPlot(run: WanRun, conds: Condition[]): echarts.EChartsCoreOption {
  const series: object[] = [];
  for (const s of run.subjects) {
    series.push({ name: s, type: 'line', symbolSize: 8, lineStyle: { width: 2.5 }, color: COLORS[s], data: conds.map((c) => [measuredRtt(c), finite(cell(c, s).rrP50)]) });
    series.push({ name: `${s} p99`, type: 'line', symbol: 'triangle', symbolSize: 7, lineStyle: { width: 1.2, type: 'dotted' }, color: COLORS[s], data: conds.map((c) => [measuredRtt(c), finite(cell(c, s).rrP99)]) });
  }
  return {
    ...common('4 KiB request/response latency vs RTT', `one request in flight; p50 solid, p99 dotted${noisyNote(run)}`),
    legend: { ...common('', '').legend, data: run.subjects },
    tooltip: { trigger: 'axis' },
    xAxis: { type: 'value', min: 0, ...axisName('measured RTT (ms)') },
    yAxis: { type: 'value', min: 0, ...axisName('ms'), nameGap: 46 },
    series,
  };
}

function lossLabel(loss: number): string {
  return `${Number((loss * 100).toFixed(3))} %`;
}

function throughputPlot(run: WanRun, conds: Condition[], rtt: number): echarts.EChartsCoreOption {
  const cats = conds.map((c) => lossLabel(c.loss));
  const series: object[] = [];
  for (const s of run.subjects) {
    series.push({ name: `${s}`, type: 'line', symbolSize: 9, lineStyle: { width: 2.5 }, color: COLORS[s], data: conds.map((c) => finite(cell(c, s).bulkMBps)) });
  }
  for (const s of ['quicmap-quic', 'quicmap-tcp'] as const) {
    if (run.subjects.includes(s) && conds.some((c) => Number.isFinite(cell(c, s).mountMBps)))
      series.push({ name: `${s} mount`, type: 'line', symbol: 'diamond', symbolSize: 9, lineStyle: { width: 1.5, type: 'dashed' }, color: COLORS[s], data: conds.map((c) => finite(cell(c, s).mountMBps)) });
    if (run.subjects.includes(s) && conds.some((c) => Number.isFinite(cell(c, s).managedPullMBps)))
      series.push({ name: `${s} managed pull`, type: 'line', symbol: 'rect', symbolSize: 8, lineStyle: { width: 1.5, type: 'dotted' }, color: COLORS[s], data: conds.map((c) => finite(cell(c, s).managedPullMBps)) });
  }
  const cap = run.link.bandwidthBps ? run.link.bandwidthBps / 8 / 1e6 : undefined;
  if (cap)
    (series[0] as { markLine?: object }).markLine = {
      silent: true,
      symbol: 'none',
      lineStyle: { color: '#212529', type: [2, 4] },
      label: { formatter: `link ${run.link.bandwidthBps / 1e6} Mbit/s`, position: 'insideEndTop', color: '#495057' },
      data: [{ yAxis: cap }],
    };
  return {
    ...common(`Throughput vs loss at ${rtt} ms RTT`, `one stream, server to client (solid); region read through a direct mount (dashed), managed mount's full pull (dotted); log scale${noisyNote(run)}`),
    tooltip: { trigger: 'axis' },
    xAxis: { type: 'category', data: cats, ...axisName('random loss per direction') },
    yAxis: { type: 'log', ...axisName('MB/s'), nameGap: 46 },
    series,
  };
}

function holPlot(run: WanRun, conds: Condition[], rtt: number, subjects: SubjectName[]): echarts.EChartsCoreOption {
  const series: object[] = [];
  for (const s of subjects) {
    series.push({ name: `${s} clean p99`, type: 'bar', barGap: '10%', color: COLORS[s], data: conds.map((c) => finite(cell(c, s).holCleanP99)), label: { show: true, position: 'top', fontSize: 11, formatter: (p: { value: number }) => fmt(p.value) } });
    series.push({ name: `${s} clean p50`, type: 'bar', color: `${COLORS[s]}66`, data: conds.map((c) => finite(cell(c, s).holCleanP50)) });
  }
  return {
    ...common(`Head-of-line blocking at ${rtt} ms RTT`, `15 clean 256 B request streams beside 1 lossy 64 KiB stream on one connection (loss hits full-size packets)${noisyNote(run)}`),
    tooltip: { trigger: 'axis' },
    xAxis: { type: 'category', data: conds.map((c) => lossLabel(c.loss)), ...axisName('loss per direction on full-size packets') },
    yAxis: { type: 'value', min: 0, ...axisName("clean streams' latency (ms)"), nameGap: 46 },
    series,
  };
}

function managedPlot(run: WanRun, conds: Condition[], rtt: number, subjects: SubjectName[]): echarts.EChartsCoreOption {
  const series: object[] = [];
  const label = { show: true, position: 'top', fontSize: 11, formatter: (p: { value: number }) => fmt(p.value) };
  for (const s of subjects) {
    series.push({ name: `${s} work set`, type: 'bar', barGap: '10%', color: COLORS[s], data: conds.map((c) => finite(cell(c, s).managedWorkingSetMs / 1000)), label });
    series.push({ name: `${s} full pull`, type: 'bar', color: `${COLORS[s]}66`, data: conds.map((c) => finite(cell(c, s).managedFullPullMs / 1000)), label });
  }
  const sizes = [...new Set(conds.flatMap((c) => subjects.map((s) => c.results[s]?.managed?.bytes).filter((x): x is number => !!x)))].map((b) => `${fmt(b / 1024 / 1024)} MiB`);
  return {
    ...common(`Managed mount at ${rtt} ms RTT`, `mount --managed, ${sizes.join(' / ')}: from ready until the last eighth is read (strong), until all is pulled (light)${noisyNote(run)}`),
    tooltip: { trigger: 'axis' },
    xAxis: { type: 'category', data: conds.map((c) => lossLabel(c.loss)), ...axisName('random loss per direction') },
    yAxis: { type: 'value', min: 0, ...axisName('seconds'), nameGap: 46 },
    series,
  };
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

interface Card {
  title: string;
  where: string;
  quic: number;
  tcp: number;
  unit: string;
  lowerIsBetter: boolean;
}

/** Big-number comparisons of quicmap-quic and quicmap-tcp at the conditions the targets name (or the nearest the run has). */
function cards(run: WanRun): Card[] {
  const ok = run.conditions.filter((c) => !c.skipped);
  if (!ok.length) return [];
  const maxRtt = Math.max(...ok.map((c) => c.rttMs));
  const rtt = ok.some((c) => c.rttMs === 50) ? 50 : maxRtt;
  const losses = ok.filter((c) => c.rttMs === rtt).map((c) => c.loss);
  const clean = ok.find((c) => c.rttMs === rtt && c.loss === Math.min(...losses));
  const lossy = ok.find((c) => c.rttMs === rtt && c.loss === (losses.includes(0.01) ? 0.01 : Math.max(...losses)));
  const out: Card[] = [];
  const q = (c: Condition) => cell(c, 'quicmap-quic');
  const t = (c: Condition) => cell(c, 'quicmap-tcp');
  const where = (c: Condition) => `${c.rttMs} ms RTT, ${lossLabel(c.loss)} loss`;
  if (clean) {
    out.push({ title: 'New connection (handshake + auth)', where: where(clean), quic: q(clean).connectMs, tcp: t(clean).connectMs, unit: 'ms', lowerIsBetter: true });
    out.push({ title: 'Bulk, clean link', where: where(clean), quic: q(clean).bulkMBps, tcp: t(clean).bulkMBps, unit: 'MB/s', lowerIsBetter: false });
  }
  if (lossy && lossy !== clean) {
    out.push({ title: 'Bulk, lossy link', where: where(lossy), quic: q(lossy).bulkMBps, tcp: t(lossy).bulkMBps, unit: 'MB/s', lowerIsBetter: false });
  }
  if (lossy) out.push({ title: 'Head-of-line: clean streams p99', where: where(lossy), quic: q(lossy).holCleanP99, tcp: t(lossy).holCleanP99, unit: 'ms', lowerIsBetter: true });
  return out.filter((c) => Number.isFinite(c.quic) || Number.isFinite(c.tcp));
}

function cardHtml(c: Card): string {
  const quicWins = c.lowerIsBetter ? c.quic < c.tcp : c.quic > c.tcp;
  const ratio = c.lowerIsBetter ? c.tcp / c.quic : c.quic / c.tcp;
  return `<div class="card"><div class="ct">${esc(c.title)}</div><div class="cw">${esc(c.where)}</div>
<div class="cv"><span class="q" style="color:${COLORS['quicmap-quic']}">${fmt(c.quic)}</span><span class="u">${esc(c.unit)}</span> <span class="vs">vs</span> <span class="t" style="color:${COLORS['quicmap-tcp']}">${fmt(c.tcp)}</span><span class="u">${esc(c.unit)}</span></div>
<div class="cl">quicmap-quic vs quicmap-tcp · <b class="${quicWins ? 'win' : 'lose'}">${!Number.isFinite(ratio) ? '–' : ratio >= 1 ? `QUIC ${fmt(ratio)}× better` : `TCP ${fmt(1 / ratio)}× better`}</b></div></div>`;
}

function page(run: WanRun, name: string, plots: Plot[]): string {
  const h = headline(run);
  const targetRows = h.targets
    .map((t) => `<tr class="${t.met === null ? 'na' : t.met ? 'met' : 'miss'}"><td class="badge">${t.met === null ? 'n/a' : t.met ? 'met' : 'not met'}</td><td>${esc(t.name)}</td><td>${esc(t.detail)}</td></tr>`)
    .join('\n');
  const figures = plots
    .map((p) => `<figure><a href="${name}/${p.file}.png"><img src="${name}/${p.file}.svg" alt="${esc(p.title)}" width="960" height="480"></a><figcaption>${esc(p.caption)} <a href="${name}/${p.file}.svg">SVG</a> · <a href="${name}/${p.file}.png">PNG</a></figcaption></figure>`)
    .join('\n');
  const checks = run.conditions
    .map((c) => {
      const sc = c.selfCheck;
      return `<tr class="${sc.ok ? '' : 'miss'}"><td>${c.rttMs} ms</td><td>${lossLabel(c.loss)}</td><td>${fmt(sc.rtt.medianMs)} ms <small>(±${fmt(sc.rtt.toleranceMs)})</small></td><td>${fmt(sc.loss.roundTripLoss * 100)} % <small>of ${sc.loss.sent}, expected ${fmt(sc.loss.expectedRoundTripLoss * 100)} %</small></td><td>${fmt(sc.loss.delayLine.fraction * 100)} %</td><td>${sc.bandwidth ? `${fmt(sc.bandwidth.measuredBps / 1e6)} Mbit/s` : '–'}</td><td>${sc.ok ? 'ok' : esc(sc.problems.join('; '))}</td></tr>`;
    })
    .join('\n');
  const rows = h.rows.map((r) => `<tr>${r.map((x, i) => (i === 2 ? `<td class="subj"><span class="dot" style="background:${COLORS[x as SubjectName] ?? '#ccc'}"></span>${esc(x)}</td>` : `<td>${esc(x)}</td>`)).join('')}</tr>`).join('\n');
  const errors = run.conditions.flatMap((c) => Object.entries(c.results).flatMap(([s, r]) => (r?.errors ?? []).map((e) => `<li>RTT ${c.rttMs} ms, loss ${lossLabel(c.loss)}, ${esc(s)}: ${esc(e)}</li>`)));
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>quicmap WAN lab — QUIC vs TCP</title>
<style>
:root { --ink:#212529; --muted:#6c757d; --line:#dee2e6; --met:#2b8a3e; --miss:#c92a2a; }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", system-ui, sans-serif; color: var(--ink); margin: 0; background: #f8f9fa; line-height: 1.45; }
header { background: #212529; color: #f8f9fa; padding: 28px 40px 22px; }
header h1 { margin: 0 0 6px; font-size: 26px; } header p { margin: 0; color: #ced4da; }
.noisy { display: inline-block; background: #f59f00; color: #212529; font-weight: bold; padding: 1px 8px; border-radius: 4px; margin-left: 8px; font-size: 13px; }
main { max-width: 1840px; margin: 0 auto; padding: 24px 40px 60px; }
h2 { font-size: 20px; margin: 34px 0 12px; border-bottom: 2px solid var(--line); padding-bottom: 6px; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr)); gap: 22px; }
figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px; box-shadow: 0 1px 3px rgba(0,0,0,.05); }
figure img { width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 13px; padding: 6px 6px 2px; }
table { border-collapse: collapse; background: #fff; font-size: 13.5px; border: 1px solid var(--line); }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { background: #f1f3f5; position: sticky; top: 0; } td.subj, th:nth-child(3) { text-align: left; }
table.targets td { text-align: left; white-space: normal; } table.targets td.badge { font-weight: bold; white-space: nowrap; }
tr.met td.badge { color: var(--met); } tr.miss td.badge, tr.miss td:last-child { color: var(--miss); } tr.na td.badge { color: var(--muted); }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 7px; vertical-align: middle; }
pre { background: #212529; color: #e9ecef; padding: 12px 16px; border-radius: 6px; overflow-x: auto; font-size: 13px; }
small { color: var(--muted); } .wide { overflow-x: auto; }
table.targets th { text-align: left; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 16px; margin-top: 8px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px 18px; box-shadow: 0 1px 3px rgba(0,0,0,.05); }
.card .ct { font-weight: bold; font-size: 15px; } .card .cw { color: var(--muted); font-size: 12.5px; }
.card .cv { margin: 8px 0 4px; } .card .q, .card .t { font-size: 32px; font-weight: bold; } .card .u { color: var(--muted); margin-left: 3px; font-size: 13px; }
.card .vs { color: var(--muted); margin: 0 6px; } .card .cl { font-size: 12.5px; color: var(--muted); }
b.win { color: var(--met); } b.lose { color: var(--miss); }
</style></head>
<body>
<header><h1>quicmap WAN lab: QUIC vs TCP over real RTT, loss and bandwidth</h1>
<p>${esc(run.startedAt.replace('T', ' ').slice(0, 16))} UTC · ${esc(run.profile.name)} profile · ${run.link.bandwidthBps ? `${run.link.bandwidthBps / 1e6} Mbit/s bottleneck` : 'no bandwidth limit'}${run.link.jitterMs ? ` · jitter ±${run.link.jitterMs / 2} ms each way` : ''}${run.link.tcpCongestion ? ` · TCP congestion control ${esc(run.link.tcpCongestion)}` : ''} · node ${esc(run.node)} · ${run.host.cpus} cores, load ${run.host.loadavgStart.map((x) => x.toFixed(1)).join(' ')}${run.noisy ? '<span class="noisy">NOISY: development run on a shared machine</span>' : ''}</p></header>
<main>
<div class="cards">${cards(run).map(cardHtml).join('\n')}</div>
<h2>Targets</h2>
<table class="targets"><tr><th></th><th>target</th><th>measured</th></tr>
${targetRows}
</table>
<h2>Plots</h2>
<div class="plots">
${figures}
</div>
<h2>Results</h2>
<div class="wide"><table class="results"><tr>${h.header.map((x) => `<th>${esc(x)}</th>`).join('')}</tr>
${rows}
</table></div>
<p><small>new endpoint: the first dial of a new client endpoint, its lazy local setup (socket, key, certificate) included; connect: a second new connection from it, until authenticated (full handshake, no resumption); first byte: until a 1-byte echo came back on that connection. 4K: 4 KiB echo, one in flight, warm connection. bulk: one stream, server to client, ${run.profile.bulkMs / 1000} s from a cold connection (slow start included). mount: <code>nbdcopy</code> of a region from <code>quicmap share</code> (server namespace) through <code>quicmap mount</code> (client namespace). managed: <code>quicmap mount --managed</code> (8 pull workers, sequential order) of such a region; WS: from the mount being ready until its last eighth (which a sequential pull reaches last) was read through it, 8 × 256 KiB reads in flight; pull: the region's size over the time from ready to the mount's pull-complete event. HOL: 15 clean 256-byte echo streams beside one 64 KiB echo stream on one connection, loss applied only to packets of at least 1000 bytes.</small></p>
${errors.length ? `<h2>Errors</h2><ul>${errors.join('\n')}</ul>` : ''}
<h2>Lab self-check (measured before each condition)</h2>
<table><tr><th>asked RTT</th><th>asked loss</th><th>ping RTT (median)</th><th>round-trip loss (ping burst)</th><th>delay line dropped</th><th>UDP bandwidth</th><th></th></tr>
${checks}
</table>
<h2>How it was made</h2>
<pre>${esc(run.command)}</pre>
<p>Hosts are network namespaces; the middle namespace routes every packet through a tbf bottleneck and a userspace TUN delay line (<code>bench/wan/delayline.c</code>) that adds the delay, jitter and loss (this kernel has no netem). Raw samples and the self-check: <a href="${name}.json">${name}.json</a>. Re-render the page from them with <code>npm run bench -- wan --report bench/results/${name}.json</code>.</p>
<pre>npm run bench -- wan --quick                       # RTT 10,50 ms × loss 0,1 %, short runs
npm run bench -- wan                               # RTT 0,10,50,100 ms × loss 0,0.1,1,3 %
npm run bench -- wan --rtt 50 --loss 1 --bw 100mbit --subjects quicmap-quic,quicmap-tcp
npm run bench -- wan --quick --subjects quicmap-quic,quicmap-tcp,hyperswarm --workloads setup,rr,bulk   # with the Hyperswarm anchor</pre>
</main></body></html>
`;
}

/** Write plots and index.html for `run` into outDir; returns the files written (relative to outDir). */
export async function renderReport(run: WanRun, outDir: string, name: string): Promise<string[]> {
  const dir = join(outDir, name);
  mkdirSync(dir, { recursive: true });
  const files: string[] = [];
  const plots: Plot[] = [];
  const ok = run.conditions.filter((c) => !c.skipped);
  const losses = [...new Set(ok.map((c) => c.loss))].sort((a, b) => a - b);
  const rtts = [...new Set(ok.map((c) => c.rttMs))].sort((a, b) => a - b);
  const at = (rtt: number, loss: number) => ok.find((c) => c.rttMs === rtt && c.loss === loss);
  const add = (file: string, title: string, caption: string, option: echarts.EChartsCoreOption) => {
    files.push(...writePlot(dir, file, option).map((f) => `${name}/${f}`));
    plots.push({ file, title, caption });
  };
  if (ok.length) {
    const minLoss = losses[0]!;
    const byRtt = rtts.map((r) => at(r, minLoss)).filter((c): c is Condition => !!c);
    if (run.workloads.includes('setup')) add('setup-vs-rtt', 'Connection setup vs RTT', `Cold setup at ${lossLabel(minLoss)} loss, per transport.`, setupPlot(run, byRtt));
    if (run.workloads.includes('rr')) add('latency-vs-rtt', 'Latency vs RTT', `4 KiB request/response at ${lossLabel(minLoss)} loss.`, latencyPlot(run, byRtt));
    for (const r of rtts) {
      const byLoss = losses.map((l) => at(r, l)).filter((c): c is Condition => !!c);
      if (run.workloads.includes('bulk')) add(`throughput-vs-loss-rtt${r}`, `Throughput vs loss, ${r} ms`, `Bulk throughput vs loss at ${r} ms RTT.`, throughputPlot(run, byLoss, r));
    }
    const managedSubjects = run.subjects.filter((s) => ok.some((c) => c.results[s]?.managed));
    if (managedSubjects.length) {
      for (const r of rtts) {
        const byLoss = losses.map((l) => at(r, l)).filter((c): c is Condition => !!c);
        add(`managed-rtt${r}`, `Managed mount, ${r} ms`, `Managed mount: time to the working set and to the full pull at ${r} ms RTT.`, managedPlot(run, byLoss, r, managedSubjects));
      }
    }
    const holSubjects = run.subjects.filter((s) => ok.some((c) => c.results[s]?.hol));
    if (holSubjects.length) {
      for (const r of rtts) {
        const byLoss = losses.map((l) => at(r, l)).filter((c): c is Condition => !!c);
        add(`hol-rtt${r}`, `Head-of-line blocking, ${r} ms`, `Clean streams' latency beside a lossy stream at ${r} ms RTT.`, holPlot(run, byLoss, r, holSubjects));
      }
    }
  }
  writeFileSync(join(outDir, 'index.html'), page(run, name, plots));
  files.push('index.html');
  return files;
}
