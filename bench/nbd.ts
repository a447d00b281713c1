/**
 * `npm run bench -- nbd [--runs N] [--size 256MiB] [--json]`
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

const servers: Server[] = [
  {
    name: 'quicmap',
    async start(sock, size) {
      const child = await startServer(process.execPath, [QUICMAP, 'nbd', '--size', String(size), '--socket', sock, '--name', ''], socketReady(sock));
      return { uri: `nbd+unix:///?socket=${sock}`, stop: async () => (stopServer(child), waitExit(child)) };
    },
  },
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
  const { values } = parseArgs({ args: argv, options: { runs: { type: 'string', default: '3' }, size: { type: 'string', default: '256MiB' }, json: { type: 'boolean', default: false }, 'skip-mmap': { type: 'boolean', default: false } } });
  requireTools(['nbdcopy', 'nbdkit']);
  const runs = Number(values.runs);
  const size = parseSize(values.size!);
  const work = mkdtempSync(join(tmpdir(), 'quicmap-bench-'));
  const input = join(work, 'input.bin');
  writeFileSync(input, randomBytes(size));
  const res: Record<string, { read: number[]; write: number[]; warmRead: number[]; warmWrite: number[]; mmapWrite: number[]; mmapRead: number[] }> = {};
  for (const s of servers) res[s.name] = { read: [], write: [], warmRead: [], warmWrite: [], mmapWrite: [], mmapRead: [] };
  try {
    for (let run = 0; run < runs; run++) {
      for (const s of run % 2 ? [...servers].reverse() : servers) {
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
        for (const s of run % 2 ? [...servers].reverse() : servers) {
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

  const q = res.quicmap!;
  const k = res.nbdkit!;
  const rows: (string | number)[][] = [];
  const summary: Record<string, { quicmap: number; nbdkit: number; ratio: number }> = {};
  const add = (label: string, a: number[], b: number[]) => {
    if (!a.length) return;
    const qa = median(a);
    const kb = median(b);
    summary[label] = { quicmap: qa, nbdkit: kb, ratio: qa / kb };
    rows.push([label, qa.toFixed(0), kb.toFixed(0), (qa / kb).toFixed(2)]);
  };
  add('nbdcopy read, fresh server', q.read, k.read);
  add('nbdcopy write, fresh server', q.write, k.write);
  add('nbdcopy read, warm server', q.warmRead, k.warmRead);
  add('nbdcopy write, warm server', q.warmWrite, k.warmWrite);
  add('nbdfuse mmap seq write+msync', q.mmapWrite, k.mmapWrite);
  add('nbdfuse mmap cold read', q.mmapRead, k.mmapRead);
  if (values.json) {
    process.stdout.write(`${JSON.stringify({ bench: 'nbd', size, runs, unit: 'MiB/s', results: summary, samples: res })}\n`);
    return;
  }
  process.stdout.write(`nbd benchmark: ${values.size} over unix sockets, ${runs} runs each, alternating, medians in MiB/s\n\n`);
  process.stdout.write(`${table(['workload', 'quicmap', 'nbdkit', 'ratio'], rows)}\n`);
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
