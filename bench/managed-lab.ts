/**
 * `npm run bench -- managed-lab [--size 256MiB] [--rtts 0,25] [--transport tcp|quic]
 *   [--pull-workers 8] [--json]`
 *
 * Managed vs direct mounts over real packets in the WAN lab's namespaces
 * (bench/wan/lab.ts, used as a library: netns + the userspace delay line;
 * needs root, iproute2, cc, nbdcopy): `quicmap share` of a file in the
 * server namespace, `quicmap mount` in the client's, per RTT:
 *   direct   nbdcopy of the whole region through a direct mount (MB/s)
 *   managed  `mount --managed --json`: time from its first line (the NBD
 *            URI, printed as the pull starts) until its pull-complete event
 *            (full copy), nbdcopy through it while it pulls (cold: the two
 *            compete) and once complete (warm, the cached read path)
 * Prints the ratio managed(RTT) / managed(0) for the full copy.
 * Separate processes, real links; still a shared machine: label the figures.
 */
import type { ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseSize } from '../base/size.ts';
import { Lab, SERVER_ADDR } from './wan/lab.ts';
import { MiB, table } from './_lib.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'bin/quicmap.js');
const SYSTEM_PATH = `/usr/bin:/usr/sbin:/bin:/sbin:${process.env.PATH ?? ''}`;

function arg(args: string[], name: string, def: string): string {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : def;
}

/** Lines of a child's stdout as they come; `next(pred)` waits for a matching one. */
function lines(child: ChildProcess, what: string) {
  const seen: string[] = [];
  const waiters: Array<{ pred: (l: string) => boolean; resolve: (l: string) => void }> = [];
  let err = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-4000)));
  createInterface({ input: child.stdout! }).on('line', (l) => {
    seen.push(l);
    for (const w of [...waiters]) if (w.pred(l)) (waiters.splice(waiters.indexOf(w), 1), w.resolve(l));
  });
  return {
    next(pred: (l: string) => boolean, timeoutMs: number): Promise<string> {
      const hit = seen.find(pred);
      if (hit) return Promise.resolve(hit);
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`${what}: nothing matching after ${timeoutMs} ms; stderr: ${err.slice(-1000)}`)), timeoutMs);
        waiters.push({ pred, resolve: (l) => (clearTimeout(t), resolve(l)) });
        child.once('exit', (code) => (clearTimeout(t), reject(new Error(`${what} exited ${code}: ${err.slice(-1000)}`))));
      });
    },
  };
}

function kill(child: ChildProcess): void {
  try {
    if (child.pid && child.exitCode === null) process.kill(-child.pid, 'SIGKILL');
  } catch {}
}

export default async function main(args: string[]): Promise<void> {
  const size = parseSize(arg(args, 'size', '256MiB'));
  const rtts = arg(args, 'rtts', '0,25').split(',').map(Number);
  const transport = arg(args, 'transport', 'tcp');
  const workers = arg(args, 'pull-workers', '8');
  const dir = mkdtempSync(join(tmpdir(), 'qm-managed-lab-'));
  const lab = await Lab.create();
  const procs: ChildProcess[] = [];
  const results: Array<Record<string, number>> = [];
  try {
    const img = join(dir, 'region.img');
    const fd = openSync(img, 'w');
    const block = randomBytes(MiB);
    for (let off = 0; off < size; off += MiB) writeSync(fd, block.subarray(0, Math.min(MiB, size - off)));
    closeSync(fd);
    const env = (home: string) => ({ ...process.env, QUICMAP_HOME: join(dir, home), PATH: SYSTEM_PATH });
    const share = lab.spawn(lab.server, process.execPath, [CLI, 'share', '--backend', `file:${img}`, '--listen', `${SERVER_ADDR}:0`, '--transport', transport], { cwd: ROOT, env: env('a') });
    procs.push(share);
    const ticket = await lines(share, 'quicmap share').next(() => true, 60_000);
    const copy = async (uri: string) => {
      const t0 = performance.now();
      const r = await lab.run(lab.client, 'nbdcopy', ['--no-extents', uri, 'null:'], 600_000);
      if (r.code !== 0) throw new Error(`nbdcopy failed (${r.code}): ${r.stderr.trim().slice(-500)}`);
      return size / 1e6 / ((performance.now() - t0) / 1000);
    };
    for (const rttMs of rtts) {
      await lab.configure({ rttMs, loss: 0, seed: 1 });
      // Direct.
      const d = lab.spawn(lab.client, process.execPath, [CLI, 'mount', ticket, '--listen', '127.0.0.1:0'], { cwd: ROOT, env: env('b') });
      procs.push(d);
      const dUri = await lines(d, 'quicmap mount').next(() => true, 60_000);
      const direct = await copy(dUri);
      kill(d);
      // Managed: the full copy timed from its first line (the NBD URI: the pull has just started) to its pull-complete event.
      const m = lab.spawn(lab.client, process.execPath, [CLI, 'mount', ticket, '--managed', '--pull-workers', workers, '--listen', '127.0.0.1:0', '--json'], { cwd: ROOT, env: env('c') });
      procs.push(m);
      const out = lines(m, 'quicmap mount --managed');
      const mUri = (JSON.parse(await out.next(() => true, 60_000)) as { uri: string }).uri;
      const t0 = performance.now();
      const cold = await copy(mUri);
      await out.next((l) => l.includes('"pull-complete"'), 600_000);
      const fullS = (performance.now() - t0) / 1000;
      const warm = await copy(mUri);
      kill(m);
      results.push({ rttMs, directMBps: direct, managedColdMBps: cold, managedWarmMBps: warm, fullCopyS: fullS, fullCopyMBps: size / 1e6 / fullS });
    }
  } finally {
    for (const p of procs.reverse()) kill(p);
    await lab.close();
    rmSync(dir, { recursive: true, force: true });
  }
  const base = results.find((r) => r.rttMs === 0);
  if (args.includes('--json')) process.stdout.write(`${JSON.stringify({ size, transport, pullWorkers: Number(workers), results })}\n`);
  else {
    process.stdout.write(`managed vs direct in the WAN lab (netns + delay line), ${size / MiB} MiB over ${transport}, ${workers} pull workers (shared machine: noisy)\n`);
    process.stdout.write(
      table(
        ['RTT ms', 'direct MB/s', 'managed cold MB/s', 'managed warm MB/s', 'full copy s', 'full copy MB/s', 'vs managed@0'],
        results.map((r) => [r.rttMs!, r.directMBps!.toFixed(0), r.managedColdMBps!.toFixed(0), r.managedWarmMBps!.toFixed(0), r.fullCopyS!.toFixed(2), r.fullCopyMBps!.toFixed(0), base ? (r.fullCopyMBps! / base.fullCopyMBps!).toFixed(2) : '-']),
      ) + '\n',
    );
  }
}
