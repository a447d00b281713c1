/**
 * Progress of a managed mount or a migration for people and scripts: a
 * progress bar on stderr when it is a terminal (cli-progress), and with
 * `--json` one event per line on stdout (`{"event":"progress",...}`,
 * `{"event":"pull-complete",...}`), so scripts can wait for a full copy.
 */
import cliProgress from 'cli-progress';
import type { ProgressReporter, SyncEvent } from '../engine/layers/synced.ts';
import { formatSize } from '../base/size.ts';

export interface ProgressView {
  /** Feed a sync event (pull complete, errors). */
  event(e: SyncEvent): void;
  stop(): void;
}

export function showProgress(source: () => ProgressReporter | undefined, opts: { json: boolean; intervalMs?: number; label?: string; extra?: () => Record<string, unknown> }): ProgressView {
  const tty = process.stderr.isTTY === true && !opts.json;
  let bar: cliProgress.SingleBar | undefined;
  let lastJson = '';
  const tick = () => {
    const r = source();
    if (!r) return;
    const p = r.progress();
    if (bar) {
      bar.setTotal(p.chunks);
      bar.update(p.local, { dirty: p.dirty, pulled: formatSize(p.pulledBytes) });
    } else if (opts.json) {
      const line = JSON.stringify({ event: 'progress', ...p, ...opts.extra?.() });
      if (line !== lastJson) process.stdout.write(`${line}\n`);
      lastJson = line;
    }
  };
  if (tty) {
    bar = new cliProgress.SingleBar(
      { format: `${opts.label ?? 'pull'} [{bar}] {percentage}% | {value}/{total} chunks | {pulled} pulled | {dirty} dirty`, stream: process.stderr, hideCursor: false, clearOnComplete: false },
      cliProgress.Presets.shades_classic,
    );
    bar.start(1, 0, { dirty: 0, pulled: '0 B' });
  }
  const timer = setInterval(tick, opts.intervalMs ?? 1000);
  timer.unref();
  return {
    event(e) {
      if (opts.json && e.type !== 'invalidated') process.stdout.write(`${JSON.stringify({ event: e.type, ...e, type: undefined })}\n`);
      if (e.type === 'pull-complete') tick();
    },
    stop() {
      clearInterval(timer);
      tick();
      bar?.stop();
    },
  };
}
