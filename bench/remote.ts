/**
 * `npm run bench -- remote [--runs N] [--size 256MiB] [--transports tcp,quic] [--json]`
 *
 * A remote region against the obvious alternative for an encrypted remote
 * block device, in the same run:
 *   quicmap-<t>  `quicmap share --size SIZE` (memory) in one process, `quicmap
 *                mount TICKET` in another, over transport <t>; nbdcopy writes
 *                then reads the mount's NBD export (loopback TCP);
 *   nbdkit-tls   `nbdkit memory SIZE --tls=require --tls-psk=FILE`, written
 *                then read by the same nbdcopy at
 *                `nbds://user@127.0.0.1:PORT/?tls-psk-file=FILE`.
 * Every run starts fresh servers; the subjects' order alternates run by run;
 * medians in MiB/s and the ratio to nbdkit-tls, and the CPU seconds per GiB
 * each process used (share, mount, nbdkit, nbdcopy: from /proc/PID/stat),
 * which a loaded machine disturbs far less than wall time.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { MiB, median, requireTools, startServer, stopServer, table, timeCommand, waitExit } from './_lib.ts';
import { parseSize } from '../base/size.ts';

const QUICMAP = join(import.meta.dirname, '..', 'bin', 'quicmap.js');

interface Running {
  uri: string;
  /** The subject's server processes by role (share, mount; nbdkit), for their CPU time. */
  pids: Record<string, number>;
  stop(): Promise<void>;
}

/** Clock ticks per second of /proc/PID/stat (USER_HZ: 100 on every Linux we run on). */
const TICKS = 100;

/** CPU seconds (user + system, all threads) a live process has used so far; NaN if it is gone. */
function cpuOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / TICKS;
  } catch {
    return Number.NaN;
  }
}

/** CPU seconds of this process's waited-for children (nbdcopy, run by spawnSync, counts here once reaped). */
function childrenCpu(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[13]) + Number(f[14])) / TICKS;
}

/**
 * Run nbdcopy once; wall seconds and CPU seconds per GiB of each server
 * process and of nbdcopy itself (far less sensitive to a loaded machine
 * than wall time).
 */
function measuredCopy(args: string[], pids: Record<string, number>, bytes: number): { secs: number; cpu: Record<string, number> } {
  const before = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuOf(pid)]));
  const kids = childrenCpu();
  const secs = timeCommand('nbdcopy', args);
  const perGiB = (1024 * MiB) / bytes;
  const cpu: Record<string, number> = {};
  for (const [k, pid] of Object.entries(pids)) cpu[k] = (cpuOf(pid) - before[k]!) * perGiB;
  cpu.nbdcopy = (childrenCpu() - kids) * perGiB;
  return { secs, cpu };
}

/** Start `quicmap ARGS` in its own process group; resolves with its first stdout line. */
async function quicmapFirstLine(args: string[], home: string): Promise<{ child: ChildProcess; line: string }> {
  const child = spawn(process.execPath, [QUICMAP, ...args], { stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: { ...process.env, QUICMAP_HOME: home } });
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const line = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`quicmap ${args[0]} printed nothing within 30 s: ${err}`)), 30_000);
    createInterface({ input: child.stdout! }).once('line', (l) => {
      clearTimeout(t);
      resolve(l.trim());
    });
    child.once('exit', (c) => {
      clearTimeout(t);
      reject(new Error(`quicmap ${args[0]} exited ${c}: ${err}`));
    });
  });
  return { child, line };
}

async function stopAll(children: ChildProcess[]): Promise<void> {
  for (const c of children.reverse()) {
    stopServer(c);
    await waitExit(c);
  }
}

function quicmapSubject(transport: string) {
  return {
    name: `quicmap-${transport}`,
    async start(work: string, size: number): Promise<Running> {
      const started: ChildProcess[] = [];
      try {
        const share = await quicmapFirstLine(['share', '--size', String(size), '--listen', '127.0.0.1:0', '--transport', transport], join(work, `${transport}-a`));
        started.push(share.child);
        const mount = await quicmapFirstLine(['mount', share.line, '--listen', '127.0.0.1:0'], join(work, `${transport}-b`));
        started.push(mount.child);
        return { uri: mount.line, pids: { share: share.child.pid!, mount: mount.child.pid! }, stop: () => stopAll(started) };
      } catch (e) {
        await stopAll(started);
        throw e;
      }
    },
  };
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

const nbdkitTls = {
  name: 'nbdkit-tls',
  async start(work: string, size: number): Promise<Running> {
    const psk = join(work, 'psk');
    writeFileSync(psk, `user:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    const port = await freePort();
    // nbdkit writes its pid file once it accepts connections (a probe connection would log an error).
    const pidfile = join(work, 'nbdkit.pid');
    rmSync(pidfile, { force: true });
    const ready = () => existsSync(pidfile) && statSync(pidfile).size > 0;
    const child = await startServer('nbdkit', ['-f', '-P', pidfile, '-i', '127.0.0.1', '-p', String(port), '--tls=require', `--tls-psk=${psk}`, 'memory', String(size)], ready);
    return { uri: `nbds://user@127.0.0.1:${port}/?tls-psk-file=${psk}`, pids: { nbdkit: child.pid! }, stop: async () => (stopServer(child), waitExit(child)) };
  },
};

export default async function bench(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { runs: { type: 'string', default: '3' }, size: { type: 'string', default: '256MiB' }, transports: { type: 'string', default: 'tcp,quic' }, json: { type: 'boolean', default: false } },
  });
  requireTools(['nbdcopy', 'nbdkit']);
  const runs = Number(values.runs);
  const size = parseSize(values.size!);
  const subjects = [...values.transports!.split(',').map(quicmapSubject), nbdkitTls];
  const work = mkdtempSync(join(tmpdir(), 'quicmap-bench-remote-'));
  const input = join(work, 'input.bin');
  writeFileSync(input, randomBytes(size));
  type Cpu = Record<string, number>;
  const res: Record<string, { read: number[]; write: number[]; readCpu: Cpu[]; writeCpu: Cpu[] }> = {};
  for (const s of subjects) res[s.name] = { read: [], write: [], readCpu: [], writeCpu: [] };
  const cpuText = (c: Cpu) => Object.entries(c).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ');
  try {
    for (let run = 0; run < runs; run++) {
      for (const s of run % 2 ? [...subjects].reverse() : subjects) {
        const srv = await s.start(work, size);
        const r = res[s.name]!;
        try {
          // Write first so the read moves real data.
          const w = measuredCopy([input, srv.uri], srv.pids, size);
          r.write.push(size / MiB / w.secs);
          r.writeCpu.push(w.cpu);
          const rd = measuredCopy(['--no-extents', srv.uri, 'null:'], srv.pids, size);
          r.read.push(size / MiB / rd.secs);
          r.readCpu.push(rd.cpu);
        } finally {
          await srv.stop();
        }
        if (!values.json) {
          process.stderr.write(`run ${run + 1}: ${s.name} write ${r.write.at(-1)!.toFixed(0)} MiB/s (CPU-s/GiB ${cpuText(r.writeCpu.at(-1)!)}) read ${r.read.at(-1)!.toFixed(0)} MiB/s (CPU-s/GiB ${cpuText(r.readCpu.at(-1)!)})\n`);
        }
      }
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const medianCpu = (cs: Cpu[]): Cpu => Object.fromEntries(Object.keys(cs[0] ?? {}).map((k) => [k, median(cs.map((c) => c[k]!))]));
  const ref = res['nbdkit-tls']!;
  const summary: Record<string, { read: number; write: number; readRatio: number; writeRatio: number; readCpuPerGiB: Cpu; writeCpuPerGiB: Cpu }> = {};
  const rows: (string | number)[][] = [];
  const cpuRows: (string | number)[][] = [];
  for (const s of subjects) {
    const r = res[s.name]!;
    const read = median(r.read);
    const write = median(r.write);
    const readCpuPerGiB = medianCpu(r.readCpu);
    const writeCpuPerGiB = medianCpu(r.writeCpu);
    summary[s.name] = { read, write, readRatio: read / median(ref.read), writeRatio: write / median(ref.write), readCpuPerGiB, writeCpuPerGiB };
    rows.push([s.name, read.toFixed(0), write.toFixed(0), summary[s.name]!.readRatio.toFixed(2), summary[s.name]!.writeRatio.toFixed(2)]);
    cpuRows.push([s.name, cpuText(readCpuPerGiB), cpuText(writeCpuPerGiB)]);
  }
  if (values.json) {
    process.stdout.write(`${JSON.stringify({ bench: 'remote', size, runs, unit: 'MiB/s', cpuUnit: 'CPU-s per GiB', results: summary, samples: res })}\n`);
    return;
  }
  process.stdout.write(`remote benchmark: ${values.size}, nbdcopy through the mount vs nbdkit memory over NBD+TLS (PSK), ${runs} runs, alternating, medians in MiB/s\n\n`);
  process.stdout.write(`${table(['subject', 'read', 'write', 'read / nbdkit-tls', 'write / nbdkit-tls'], rows)}\n\n`);
  process.stdout.write(`CPU seconds per GiB moved, medians, by process (user + system, all threads; the load of other processes barely moves these):\n\n`);
  process.stdout.write(`${table(['subject', 'read: CPU-s/GiB', 'write: CPU-s/GiB'], cpuRows)}\n`);
}
