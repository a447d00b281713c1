/**
 * `npm run bench -- nbd [--runs N] [--size 256MiB] [--subjects quicmap,nbdkit] [--json]`
 *
 * Subjects: quicmap (the default data path: shared memory served by the
 * native loop), quicmap-js (`--data-path js`: the same on JS worker
 * threads, for comparison), nbdkit (the reference every ratio is against).
 *
 * nbdcopy read (NBD -> null, --no-extents) and write (file -> NBD) against
 * quicmap's NBD server (`quicmap nbd`, its own process, memory backend) and
 * `nbdkit memory` in the same run, alternating, over unix sockets; medians
 * and the quicmap/nbdkit ratio. Each run measures a fresh server (first
 * write allocates the region, and Node's JIT is cold) and then the same
 * server again (warm: a long-running node's steady state). Then nbdfuse + mmap: sequential 1 MiB writes
 * + msync and a cold read, against each server.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { MiB, median, requireTools, socketReady, startServer, stopServer, table, timeCommand, waitExit } from './_lib.ts';
import { parseSize } from '../base/size.ts';

const QUICMAP = join(import.meta.dirname, '..', 'bin', 'quicmap.js');

interface Server {
  name: string;
  start(sock: string, size: number): Promise<{ uri: string; stop(): Promise<void> }>;
}

const quicmap = (name: string, extra: string[]): Server => ({
  name,
  async start(sock, size) {
    const child = await startServer(process.execPath, [QUICMAP, 'nbd', '--size', String(size), '--socket', sock, '--name', '', ...extra], socketReady(sock));
    return { uri: `nbd+unix:///?socket=${sock}`, stop: async () => (stopServer(child), waitExit(child)) };
  },
});

const allServers: Server[] = [
  quicmap('quicmap', []),
  quicmap('quicmap-js', ['--data-path', 'js']),
  {
    name: 'nbdkit',
    async start(sock, size) {
      rmSync(sock, { force: true }); // nbdkit leaves its socket behind on exit
      const child = await startServer('nbdkit', ['-f', '-U', sock, 'memory', String(size)], socketReady(sock));
      return { uri: `nbd+unix:///?socket=${sock}`, stop: async () => (stopServer(child), waitExit(child)) };
    },
  },
];

/** mmap benchmark body, run by python3 (always present where nbdfuse is). */
const MMAP_SCRIPT = `
import mmap, os, sys, time
path, mode, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open(path, os.O_RDWR)
m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
block = os.urandom(1 << 20)
t = time.perf_counter()
if mode == 'write':
    for off in range(0, size, 1 << 20):
        m[off:off + (1 << 20)] = block
    m.flush()
else:
    s = 0
    for off in range(0, size, 1 << 20):
        s ^= m[off + 4095]
        m[off:off + (1 << 20)]
print(time.perf_counter() - t)
`;

export default async function bench(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { subjects: { type: 'string', default: 'quicmap,nbdkit' }, runs: { type: 'string', default: '3' }, size: { type: 'string', default: '256MiB' }, json: { type: 'boolean', default: false }, 'skip-mmap': { type: 'boolean', default: false } } });
  requireTools(['nbdcopy', 'nbdkit']);
  const wanted = new Set([...values.subjects!.split(','), 'nbdkit']);
  const servers = allServers.filter((s) => wanted.has(s.name));
  if (!servers.some((s) => s.name.startsWith('quicmap'))) throw new Error('nbd bench: --subjects needs quicmap or quicmap-js');
  const runs = Number(values.runs);
  const size = parseSize(values.size!);
  const work = mkdtempSync(join(tmpdir(), 'quicmap-bench-'));
  const input = join(work, 'input.bin');
  writeFileSync(input, randomBytes(size));
  const res: Record<string, { read: number[]; write: number[]; warmRead: number[]; warmWrite: number[]; mmapWrite: number[]; mmapRead: number[] }> = {};
  for (const s of servers) res[s.name] = { read: [], write: [], warmRead: [], warmWrite: [], mmapWrite: [], mmapRead: [] };
  try {
    for (let run = 0; run < runs; run++) {
      for (const s of rotate(servers, run)) {
        const sock = join(work, `${s.name}.sock`);
        const srv = await s.start(sock, size);
        try {
          // Cold: a fresh server, first write (allocates the region; JIT not warm),
          // then the first read. Write first so the read moves real data.
          const r = res[s.name]!;
          r.write.push(size / MiB / timeCommand('nbdcopy', [input, srv.uri]));
          r.read.push(size / MiB / timeCommand('nbdcopy', ['--no-extents', srv.uri, 'null:']));
          // Warm: the same server again, the steady state of a long-running node.
          r.warmWrite.push(size / MiB / timeCommand('nbdcopy', [input, srv.uri]));
          r.warmRead.push(size / MiB / timeCommand('nbdcopy', ['--no-extents', srv.uri, 'null:']));
        } finally {
          await srv.stop();
        }
      }
    }
    const fuseOk = !values['skip-mmap'] && spawnSync('sh', ['-c', 'command -v nbdfuse && command -v python3 && test -e /dev/fuse'], { stdio: 'ignore' }).status === 0;
    if (fuseOk) {
      for (let run = 0; run < runs; run++) {
        for (const s of rotate(servers, run)) {
          const sock = join(work, `${s.name}.sock`);
          const srv = await s.start(sock, size);
          try {
            res[s.name]!.mmapWrite.push(size / MiB / mmapPass(work, srv.uri, 'write', size));
            res[s.name]!.mmapRead.push(size / MiB / mmapPass(work, srv.uri, 'read', size));
          } finally {
            await srv.stop();
          }
        }
      }
    } else process.stderr.write('skipping nbdfuse + mmap: needs nbdfuse, python3 and /dev/fuse\n');
  } finally {
    rmSync(work, { recursive: true, force: true });
  }

  const k = res.nbdkit!;
  const subjects = servers.map((s) => s.name).filter((n) => n !== 'nbdkit');
  const rows: (string | number)[][] = [];
  // results[label] keeps the first quicmap subject's figures under quicmap/ratio (as before), the others by name.
  const summary: Record<string, Record<string, number>> = {};
  const add = (label: string, pick: (r: (typeof res)[string]) => number[]) => {
    if (!pick(k).length) return;
    const kb = median(pick(k));
    const row: (string | number)[] = [label];
    const entry: Record<string, number> = { nbdkit: kb };
    subjects.forEach((name, i) => {
      const qa = median(pick(res[name]!));
      if (i === 0) Object.assign(entry, { quicmap: qa, ratio: qa / kb });
      entry[name] = qa;
      entry[`${name}/nbdkit`] = qa / kb;
      row.push(qa.toFixed(0));
    });
    row.push(kb.toFixed(0), ...subjects.map((name) => (entry[`${name}/nbdkit`]!).toFixed(2)));
    summary[label] = entry;
    rows.push(row);
  };
  add('nbdcopy read, fresh server', (r) => r.read);
  add('nbdcopy write, fresh server', (r) => r.write);
  add('nbdcopy read, warm server', (r) => r.warmRead);
  add('nbdcopy write, warm server', (r) => r.warmWrite);
  add('nbdfuse mmap seq write+msync', (r) => r.mmapWrite);
  add('nbdfuse mmap cold read', (r) => r.mmapRead);
  if (values.json) {
    process.stdout.write(`${JSON.stringify({ bench: 'nbd', size, runs, unit: 'MiB/s', results: summary, samples: res })}\n`);
    return;
  }
  process.stdout.write(`nbd benchmark: ${values.size} over unix sockets, ${runs} runs each, alternating, medians in MiB/s\n\n`);
  process.stdout.write(`${table(['workload', ...subjects, 'nbdkit', ...subjects.map((n) => `${n}/nbdkit`)], rows)}\n`);
}

/** One nbdfuse mount, one mmap pass; a fresh mount makes the read cold. */
function mmapPass(work: string, uri: string, mode: 'write' | 'read', size: number): number {
  const dir = join(work, 'mnt');
  spawnSync('mkdir', ['-p', dir]);
  const pid = join(work, 'fuse.pid');
  rmSync(pid, { force: true });
  const fuse = spawnSync('sh', ['-c', `nbdfuse -P ${pid} -C 4 ${dir}/region '${uri}' </dev/null >/dev/null 2>&1 & i=0; while [ ! -s ${pid} ] && [ $i -lt 300 ]; do sleep 0.02; i=$((i+1)); done; test -s ${pid}`]);
  if (fuse.status !== 0) throw new Error('nbdfuse did not start');
  try {
    const r = spawnSync('python3', ['-c', MMAP_SCRIPT, join(dir, 'region'), mode, String(size)], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`mmap ${mode} failed: ${r.stderr}`);
    return Number(r.stdout.trim());
  } finally {
    spawnSync('fusermount3', ['-u', dir]);
    spawnSync('sh', ['-c', `while [ -d /proc/$(cat ${pid} 2>/dev/null || echo none) ]; do sleep 0.02; done`], { timeout: 5000 });
  }
}

/** The subjects in a different order each run: each goes first in turn. */
function rotate<T>(list: T[], run: number): T[] {
  const k = run % list.length;
  return [...list.slice(k), ...list.slice(0, k)];
}
