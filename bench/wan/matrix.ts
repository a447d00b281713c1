/**
 * Runs the WAN matrix: for every (RTT, loss) the lab is reconfigured and
 * self-checked, then every workload runs over every subject, subjects taking
 * turns. Client and server are processes inside the lab's namespaces; only
 * this orchestrator runs outside. Returns every raw sample.
 */
import { createInterface } from 'node:readline';
import { mkdtempSync, openSync, rmSync, writeSync, closeSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import { Lab, SERVER_ADDR, type LinkConfig } from './lab.ts';
import { selfCheck, type SelfCheck } from './selfcheck.ts';
import { STREAM_SUBJECTS, type ServerInfo, type SubjectName } from './subjects.ts';
import type { WorkRequest } from './worker.ts';
import type { BulkResult, HolResult, SetupSample } from './workloads.ts';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const ROOT = join(HERE, '../..');
const WORKER = join(HERE, 'worker.ts');
const CLI = join(ROOT, 'bin/quicmap.js');
const MiB = 1024 * 1024;
const SYSTEM_PATH = `/usr/bin:/usr/sbin:/bin:/sbin:${process.env.PATH ?? ''}`;

export type WorkloadName = 'setup' | 'rr' | 'bulk' | 'mount' | 'managed' | 'hol';
export const WORKLOADS: WorkloadName[] = ['setup', 'rr', 'bulk', 'mount', 'managed', 'hol'];

export interface Profile {
  name: 'ci' | 'quick' | 'full';
  setupN: number;
  rrMs: number;
  rrMax: number;
  bulkMs: number;
  /** The mount read is sized to take about this long (from the bulk result). */
  mountSeconds: number;
  mountMaxMiB: number;
  holMs: number;
}

export const PROFILES: Record<Profile['name'], Profile> = {
  ci: { name: 'ci', setupN: 2, rrMs: 500, rrMax: 20, bulkMs: 1000, mountSeconds: 1, mountMaxMiB: 4, holMs: 1000 },
  quick: { name: 'quick', setupN: 5, rrMs: 2000, rrMax: 100, bulkMs: 3000, mountSeconds: 3, mountMaxMiB: 48, holMs: 3000 },
  full: { name: 'full', setupN: 15, rrMs: 5000, rrMax: 300, bulkMs: 8000, mountSeconds: 8, mountMaxMiB: 256, holMs: 8000 },
};

export interface MatrixOptions {
  rtts: number[];
  losses: number[];
  bandwidthBps: number;
  jitterMs: number;
  subjects: SubjectName[];
  workloads: WorkloadName[];
  profile: Profile;
  /** TCP congestion control in the lab's hosts (undefined: the kernel's default). */
  tcpCongestion?: string;
  log: (line: string) => void;
}

export interface MatrixResult {
  conditions: Condition[];
  /** What TCP used in the hosts, read back from the lab. */
  tcpCongestion: string;
  /** What each subject's server said it was (implementation class, congestion controller). */
  subjectInfo: Partial<Record<SubjectName, { impl?: string; cc?: string }>>;
}

export interface MountResult {
  bytes: number;
  seconds: number;
}

/**
 * A managed mount (`quicmap mount --managed`, background pull, sequential
 * order) of a region: from the moment the mount is ready (its first line),
 * how long until a working set (the region's last eighth, which a
 * sequential pull reaches last, so it is fetched on demand) has been read
 * through it, and until the background pull reports the whole region local.
 */
export interface ManagedResult {
  bytes: number;
  workingSetBytes: number;
  /** Ready to working set read (8 × 256 KiB reads in flight, NBD connect included). */
  workingSetMs: number;
  /** Ready to the mount's pull-complete event. */
  fullPullMs: number;
  /** The working set read back equals the region's bytes there. */
  workingSetVerified: boolean;
}

export interface SubjectResults {
  setup?: SetupSample[];
  rr?: number[];
  bulk?: BulkResult;
  mount?: MountResult;
  managed?: ManagedResult;
  hol?: HolResult;
  errors: string[];
}

export interface Condition {
  rttMs: number;
  loss: number;
  link: LinkConfig;
  selfCheck: SelfCheck;
  /** A first self-check that failed (the one above is its retry). */
  failedSelfCheck?: SelfCheck;
  /** The head-of-line test's link: the same, with loss only for full-size packets. */
  holLink?: LinkConfig;
  results: Partial<Record<SubjectName, SubjectResults>>;
  skipped?: string;
}

/** The lossMinBytes of the head-of-line test: QUIC's and TCP's full-size packets qualify, 256-byte echoes do not. */
export const HOL_LOSS_MIN_BYTES = 1000;

class Worker {
  private readonly child: ChildProcess;
  private next = 1;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  readonly stderr: string[] = [];

  constructor(lab: Lab) {
    this.child = lab.spawn(lab.client, process.execPath, ['--import', 'tsx', WORKER, 'client'], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    createInterface({ input: this.child.stdout! }).on('line', (l) => {
      if (!l.startsWith('{')) return void this.stderr.push(`${l}\n`); // not an answer (a library's notice)
      const m = JSON.parse(l) as { id: number; result?: unknown; error?: string };
      const w = this.waiting.get(m.id);
      this.waiting.delete(m.id);
      if (m.error !== undefined) w?.reject(new Error(m.error));
      else w?.resolve(m.result);
    });
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => this.stderr.push(d));
    this.child.once('exit', (code) => {
      for (const w of this.waiting.values()) w.reject(new Error(`client worker exited (${code}): ${this.stderr.join('').slice(-2000)}`));
      this.waiting.clear();
    });
  }

  request<T>(q: Omit<WorkRequest, 'id'>, timeoutMs: number): Promise<T> {
    const id = this.next++;
    return new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiting.delete(id);
        reject(new WorkerTimeout(`${q.op} over ${q.subject} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (v) => (clearTimeout(t), resolve(v as T)),
        reject: (e) => (clearTimeout(t), reject(e)),
      });
      this.child.stdin!.write(`${JSON.stringify({ ...q, id })}\n`);
    });
  }

  stop(): void {
    this.child.stdin!.end();
  }

  /** Kill it (a workload that hung keeps it busy: it runs one request at a time). */
  kill(): void {
    kill(this.child);
  }
}

/** A request the client worker did not answer in time. */
class WorkerTimeout extends Error {}

function firstLine(child: ChildProcess, what: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let err = '';
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
    const t = setTimeout(() => reject(new Error(`${what}: no output after ${timeoutMs} ms: ${err.slice(-1000)}`)), timeoutMs);
    createInterface({ input: child.stdout! }).once('line', (l) => {
      clearTimeout(t);
      resolve(l);
    });
    child.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`${what} exited (${code}): ${err.slice(-1000)}`));
    });
  });
}

function kill(child: ChildProcess): void {
  try {
    if (child.pid && child.exitCode === null) process.kill(-child.pid, 'SIGKILL');
  } catch {}
}

function writeRegion(img: string, bytes: number): Buffer {
  const fd = openSync(img, 'w');
  const h = createHash('sha256');
  const wsFrom = bytes - workingSetSize(bytes);
  for (let off = 0; off < bytes; off += MiB) {
    const b = randomBytes(Math.min(MiB, bytes - off));
    writeSync(fd, b);
    if (off + b.length > wsFrom) {
      h.update(b.subarray(Math.max(0, wsFrom - off)));
    }
  }
  closeSync(fd);
  return h.digest();
}

/** The managed workload's working set: the region's last eighth (whole 64 KiB units, at least one). */
export function workingSetSize(bytes: number): number {
  return Math.max(64 * 1024, Math.floor(bytes / 8 / (64 * 1024)) * 64 * 1024);
}

interface Share {
  ticket: string;
  bytes: number;
  /** SHA-256 of the region's working set (workingSetSize at its end). */
  workingSetSha256: string;
}

/** `quicmap share` of a fresh random region file (in `dir`) in the server namespace; the process goes into `procs`. */
async function startShare(lab: Lab, dir: string, transport: 'quic' | 'tcp', bytes: number, procs: ChildProcess[]): Promise<Share> {
  const img = join(dir, 'region.img');
  const digest = writeRegion(img, bytes);
  const share = lab.spawn(lab.server, process.execPath, [CLI, 'share', '--backend', `file:${img}`, '--listen', `${SERVER_ADDR}:0`, '--transport', transport], { cwd: ROOT, env: cliEnv(dir, 'a') });
  procs.push(share);
  return { ticket: await firstLine(share, 'quicmap share', 30_000), bytes, workingSetSha256: digest.toString('hex') };
}

function cliEnv(dir: string, home: string): NodeJS.ProcessEnv {
  return { ...process.env, QUICMAP_HOME: join(dir, home), PATH: SYSTEM_PATH };
}

/** `quicmap mount` of the share in the client namespace, nbdcopy from the mount to null. */
async function mountRead(lab: Lab, dir: string, share: Share, timeoutMs: number): Promise<MountResult> {
  const procs: ChildProcess[] = [];
  const bytes = share.bytes;
  try {
    const mount = lab.spawn(lab.client, process.execPath, [CLI, 'mount', share.ticket, '--listen', '127.0.0.1:0'], { cwd: ROOT, env: cliEnv(dir, 'b') });
    procs.push(mount);
    const uri = await firstLine(mount, 'quicmap mount', 60_000);
    const t0 = process.hrtime.bigint();
    const r = await lab.run(lab.client, 'nbdcopy', ['--no-extents', uri, 'null:'], timeoutMs);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    if (r.code !== 0) throw new Error(`nbdcopy failed (${r.code}): ${r.stderr.trim().slice(-500)}`);
    return { bytes, seconds };
  } finally {
    for (const p of procs.reverse()) kill(p);
  }
}

/** The managed workload (see ManagedResult): share, `quicmap mount --managed --json`, the working set read by the client worker. */
async function managedRead(lab: Lab, worker: Worker, dir: string, share: Share, timeoutMs: number): Promise<ManagedResult> {
  const procs: ChildProcess[] = [];
  const { bytes, workingSetSha256 } = share;
  try {
    const mount = lab.spawn(lab.client, process.execPath, [CLI, 'mount', share.ticket, '--managed', '--json', '--pull-workers', '8', '--listen', '127.0.0.1:0'], { cwd: ROOT, env: cliEnv(dir, 'b') });
    procs.push(mount);
    let err = '';
    mount.stderr?.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-4000)));
    let ready: ((uri: string) => void) | undefined;
    let t0 = 0n;
    let fullPullMs: number | undefined;
    let pulled: (() => void) | undefined;
    const uriP = new Promise<string>((r) => (ready = r));
    const pullP = new Promise<void>((r) => (pulled = r));
    const exited = new Promise<never>((_, reject) => mount.once('exit', (code) => reject(new Error(`quicmap mount --managed exited (${code}): ${err.slice(-1000)}`))));
    exited.catch(() => {});
    createInterface({ input: mount.stdout! }).on('line', (l) => {
      let m: { uri?: string; event?: string };
      try {
        m = JSON.parse(l) as typeof m;
      } catch {
        return;
      }
      if (m.uri && t0 === 0n) {
        t0 = process.hrtime.bigint();
        ready!(m.uri);
      } else if (m.event === 'pull-complete' && fullPullMs === undefined) {
        fullPullMs = Number(process.hrtime.bigint() - t0) / 1e6;
        pulled!();
      }
    });
    const guard = <T>(p: Promise<T>, what: string) =>
      Promise.race([
        p,
        exited,
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`managed mount: no ${what} after ${timeoutMs} ms: ${err.slice(-1000)}`)), timeoutMs).unref()),
      ]);
    const uri = await guard(uriP, 'NBD URI');
    const ws = workingSetSize(bytes);
    // (The worker's own deadline, so that a hang there is a WorkerTimeout and the worker gets replaced.)
    const r = await Promise.race([worker.request<{ ms: number; sha256: string }>({ op: 'nbdread', subject: 'quicmap-tcp', info: { address: '' }, uri, offset: bytes - ws, length: ws, requestBytes: 256 * 1024, inFlight: 8 }, timeoutMs), exited]);
    const workingSetMs = Number(process.hrtime.bigint() - t0) / 1e6;
    await guard(pullP, 'pull-complete event');
    return { bytes, workingSetBytes: ws, workingSetMs, fullPullMs: fullPullMs!, workingSetVerified: r.sha256 === workingSetSha256 };
  } finally {
    for (const p of procs.reverse()) kill(p);
  }
}

/** Subject names line up in the log. */
const NAME_W = 19;

/** Generous per-request deadline: lossy long links are slow, a hang must not stop the run. */
function deadline(ms: number, rttMs: number): number {
  return 30_000 + 3 * ms + 200 * rttMs;
}

export async function runMatrix(o: MatrixOptions): Promise<MatrixResult> {
  const p = o.profile;
  const lab = await Lab.create({ tcpCongestion: o.tcpCongestion });
  o.log(`lab: TCP congestion control ${lab.tcpCongestion}`);
  const conditions: Condition[] = [];
  let server: ChildProcess | undefined;
  let worker: Worker | undefined;
  let infos: Record<SubjectName, ServerInfo> | undefined;
  try {
    server = lab.spawn(lab.server, process.execPath, ['--import', 'tsx', WORKER, 'server', SERVER_ADDR, o.subjects.join(',')], { cwd: ROOT });
    infos = JSON.parse(await firstLine(server, 'wan server worker', 60_000)) as Record<SubjectName, ServerInfo>;
    for (const s of o.subjects) if (!infos[s]) throw new Error(`wan: the server worker did not start ${s}`);
    worker = new Worker(lab);
    for (const rttMs of o.rtts) {
      for (const loss of o.losses) {
        const link: LinkConfig = { rttMs, loss, jitterMs: o.jitterMs, bandwidthBps: o.bandwidthBps, seed: 1 };
        await lab.configure(link);
        const checkOpts = p.name === 'ci' ? { lossProbes: 300 } : {};
        let sc = await selfCheck(lab, link, checkOpts);
        // One retry: on a shared machine a burst of load can spoil a probe.
        // Both attempts are kept in the results.
        const firstAttempt = sc.ok ? undefined : sc;
        if (!sc.ok) sc = await selfCheck(lab, link, checkOpts);
        const cond: Condition = { rttMs, loss, link, selfCheck: sc, ...(firstAttempt ? { failedSelfCheck: firstAttempt } : {}), results: {} };
        conditions.push(cond);
        o.log(
          `\n== RTT ${rttMs} ms, loss ${loss * 100} %, ${o.bandwidthBps ? `${o.bandwidthBps / 1e6} Mbit/s` : 'no bandwidth limit'}: self-check ${sc.ok ? 'ok' : 'FAILED'} (RTT ${sc.rtt.medianMs.toFixed(2)} ms, round-trip loss ${(sc.loss.roundTripLoss * 100).toFixed(2)} %${sc.bandwidth ? `, ${(sc.bandwidth.measuredBps / 1e6).toFixed(1)} Mbit/s` : ''})`,
        );
        if (!sc.ok) {
          cond.skipped = `self-check failed: ${sc.problems.join('; ')}`;
          o.log(`   skipped: ${cond.skipped}`);
          continue;
        }
        const res = (s: SubjectName) => (cond.results[s] ??= { errors: [] });
        const attempt = async (s: SubjectName, what: string, fn: () => Promise<void>) => {
          try {
            await fn();
          } catch (e) {
            res(s).errors.push(`${what}: ${(e as Error).message}`);
            o.log(`   ${s} ${what}: ERROR ${(e as Error).message.split('\n')[0]}`);
            if (e instanceof WorkerTimeout) {
              // The worker is still inside the hung workload: the next subjects get a fresh one.
              worker!.kill();
              worker = new Worker(lab);
            }
          }
        };
        const has = (w: WorkloadName) => o.workloads.includes(w);
        for (const s of o.subjects) {
          if (has('setup')) {
            await attempt(s, 'setup', async () => {
              const r = await worker!.request<SetupSample[]>({ op: 'setup', subject: s, info: infos![s], n: p.setupN }, deadline(p.setupN * 20 * rttMs, rttMs));
              res(s).setup = r;
              o.log(`   ${s.padEnd(NAME_W)} setup      new endpoint ${fmt(median(r.map((x) => x.endpointMs)))} ms, connect ${fmt(median(r.map((x) => x.connectMs)))} ms, first byte ${fmt(median(r.map((x) => x.firstByteMs)))} ms (median of ${r.length})`);
            });
          }
        }
        for (const s of o.subjects) {
          if (has('rr')) {
            await attempt(s, 'rr', async () => {
              const r = await worker!.request<number[]>({ op: 'rr', subject: s, info: infos![s], durationMs: p.rrMs, maxSamples: p.rrMax }, deadline(p.rrMs, rttMs));
              res(s).rr = r;
              o.log(`   ${s.padEnd(NAME_W)} 4 KiB rr   p50 ${fmt(quantile(r, 0.5))} ms, p99 ${fmt(quantile(r, 0.99))} ms (${r.length} samples)`);
            });
          }
        }
        for (const s of o.subjects) {
          if (has('bulk')) {
            await attempt(s, 'bulk', async () => {
              const r = await worker!.request<BulkResult>({ op: 'bulk', subject: s, info: infos![s], durationMs: p.bulkMs }, deadline(p.bulkMs, rttMs));
              res(s).bulk = r;
              o.log(`   ${s.padEnd(NAME_W)} bulk       ${fmt(r.bytes / r.seconds / 1e6)} MB/s (${fmt(r.bytes / MiB)} MiB in ${fmt(r.seconds)} s)`);
            });
          }
        }
        if (has('mount') || has('managed')) {
          // One `quicmap share` per transport serves the direct mount, then the managed one (CLI start-ups are slow).
          // Both transports read a region of the same size (so their times compare): what the faster of
          // their bulk transfers moved in mountSeconds.
          const mountSubjects = o.subjects.filter((x) => x === 'quicmap-quic' || x === 'quicmap-tcp');
          const rates = mountSubjects.map((x) => res(x).bulk).filter((b): b is BulkResult => !!b).map((b) => b.bytes / b.seconds);
          const mib = Math.max(1, Math.min(p.mountMaxMiB, Math.round((Math.max(1e6, ...rates) * p.mountSeconds) / MiB)));
          for (const s of mountSubjects) {
            const dir = mkdtempSync(join(tmpdir(), 'qm-wan-mount-'));
            const procs: ChildProcess[] = [];
            try {
              let share: Share | undefined;
              await attempt(s, 'share', async () => void (share = await startShare(lab, dir, s === 'quicmap-quic' ? 'quic' : 'tcp', mib * MiB, procs)));
              if (share && has('mount')) {
                await attempt(s, 'mount', async () => {
                  const r = await mountRead(lab, dir, share!, deadline(p.mountSeconds * 4000, rttMs));
                  res(s).mount = r;
                  o.log(`   ${s.padEnd(NAME_W)} mount read ${fmt(r.bytes / r.seconds / 1e6)} MB/s (nbdcopy of ${mib} MiB through quicmap mount in ${fmt(r.seconds)} s)`);
                });
              }
              if (share && has('managed')) {
                await attempt(s, 'managed', async () => {
                  const r = await managedRead(lab, worker!, dir, share!, deadline(p.mountSeconds * 6000, rttMs));
                  res(s).managed = r;
                  o.log(`   ${s.padEnd(NAME_W)} managed    working set (${fmt(r.workingSetBytes / MiB)} MiB) in ${fmt(r.workingSetMs)} ms${r.workingSetVerified ? '' : ' (DATA MISMATCH)'}, full pull of ${mib} MiB in ${fmt(r.fullPullMs)} ms (${fmt(r.bytes / (r.fullPullMs / 1000) / 1e6)} MB/s)`);
                });
              }
            } finally {
              for (const x of procs.reverse()) kill(x);
              rmSync(dir, { recursive: true, force: true });
            }
          }
        }
        if (has('hol')) {
          cond.holLink = { ...link, lossMinBytes: HOL_LOSS_MIN_BYTES };
          await lab.configure(cond.holLink);
          for (const s of o.subjects.filter((x) => STREAM_SUBJECTS.includes(x))) {
            await attempt(s, 'hol', async () => {
              const r = await worker!.request<HolResult>({ op: 'hol', subject: s, info: infos![s], durationMs: p.holMs }, deadline(p.holMs, rttMs));
              res(s).hol = r;
              const clean = r.clean.flat();
              o.log(`   ${s.padEnd(NAME_W)} HOL        clean streams p50 ${fmt(quantile(clean, 0.5))} ms, p99 ${fmt(quantile(clean, 0.99))} ms (${clean.length}); lossy stream p50 ${fmt(quantile(r.lossy, 0.5))} ms (${r.lossy.length})`);
            });
          }
          await lab.configure(link);
        }
      }
    }
  } finally {
    worker?.stop();
    if (server) server.stdin?.end();
    await new Promise((r) => setTimeout(r, 200));
    await lab.close();
  }
  const subjectInfo: MatrixResult['subjectInfo'] = {};
  for (const s of o.subjects) if (infos?.[s]?.impl) subjectInfo[s] = { impl: infos[s].impl, ...(infos[s].cc ? { cc: infos[s].cc } : {}) };
  return { conditions, tcpCongestion: lab.tcpCongestion, subjectInfo };
}

export function median(xs: number[]): number {
  return quantile(xs, 0.5);
}

/** Nearest-rank quantile (NaN for no samples). */
export function quantile(xs: number[], q: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
}

export function fmt(x: number): string {
  if (!Number.isFinite(x)) return '–';
  return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2);
}
