/**
 * The WAN lab: a client and a server host, each a network namespace, joined
 * through a middle namespace that shapes every packet between them.
 *
 *   [client 10.77.1.2] a0 ==veth== ma [middle] mb ==veth== b0 [server 10.77.2.2]
 *
 * In the middle, packets arriving on ma are routed into the TUN device dlab,
 * those arriving on mb into dlba (policy routing by incoming interface). The
 * bottleneck is a tbf qdisc on each TUN device (the queue a real link's
 * router has); wan-delayline (delayline.c) reads the packets the qdisc lets
 * through, holds them for the one-way delay (RTT/2) plus jitter, drops some
 * at random, and writes the rest back into the device, from where the kernel
 * forwards them to the other side. Both directions, TCP, UDP and ICMP alike.
 *
 * Namespaces are named qmwan<pid>x<n>-{a,m,b}; a lab always removes its own
 * (close(), process exit, SIGINT/SIGTERM/SIGHUP), and create() first removes
 * those of labs whose process is gone (killed with SIGKILL, say).
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';

export const CLIENT_ADDR = '10.77.1.2';
export const SERVER_ADDR = '10.77.2.2';
const PREFIX = 'qmwan';
const HERE = fileURLToPath(new URL('.', import.meta.url));
const ROOT = join(HERE, '../..');

/** What a link should look like; one-way values are half of these. */
export interface LinkConfig {
  /** Round-trip delay added by the delay line, ms. */
  rttMs: number;
  /** Jitter of the RTT, ms: each direction adds uniform ± half of it (order is kept). */
  jitterMs?: number;
  /** Random loss per direction, as a fraction (0.01 = 1 %). */
  loss: number;
  /** Loss applies only to packets of at least this many bytes (0: all). */
  lossMinBytes?: number;
  /** Bottleneck rate per direction in bits/s; 0 or undefined: none. */
  bandwidthBps?: number;
  /** Seed for the loss/jitter generator (repeatable runs). */
  seed?: number;
}

export interface DelayLineStats {
  ab: DirStats;
  ba: DirStats;
}
export interface DirStats {
  rx: number;
  tx: number;
  dropLoss: number;
  dropQueue: number;
  bytesRx: number;
  maxQueue: number;
}

function sh(cmd: string, args: string[], allowFail = false): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0 && !allowFail) throw new Error(`wan lab: ${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr.trim() || r.error?.message}`);
  return r.stdout ?? '';
}

function ipn(ns: string, ...args: string[]): void {
  sh('ip', ['-n', ns, ...args]);
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Every lab namespace that exists now. */
export function labNamespaces(): string[] {
  return sh('ip', ['netns', 'list'], true)
    .split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter((n) => n.startsWith(PREFIX));
}

function deleteNamespace(ns: string): void {
  // Processes left inside (a server whose lab died) keep nothing alive once
  // the name is gone, but they would run on: end them first.
  for (const pid of sh('ip', ['netns', 'pids', ns], true).split('\n').filter(Boolean)) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {}
  }
  sh('ip', ['netns', 'del', ns], true);
}

/** Removes the namespaces of labs whose process no longer runs; returns their names. */
export function cleanStaleLabs(): string[] {
  const stale = labNamespaces().filter((ns) => {
    const m = /^qmwan(\d+)x\d+-[amb]$/.exec(ns);
    return m !== null && Number(m[1]) !== process.pid && !pidAlive(Number(m[1]));
  });
  for (const ns of stale) deleteNamespace(ns);
  return stale;
}

/** Builds wan-delayline from delayline.c with the system C compiler (once per source version). */
export function delayLineBinary(): string {
  const src = join(HERE, 'delayline.c');
  const hash = createHash('sha256').update(readFileSync(src)).digest('hex').slice(0, 12);
  const dir = join(ROOT, 'node_modules/.cache/quicmap-wan');
  const bin = join(dir, `wan-delayline-${hash}`);
  if (existsSync(bin)) return bin;
  mkdirSync(dir, { recursive: true });
  const tmp = `${bin}.${process.pid}.tmp`;
  const r = spawnSync('cc', ['-O2', '-Wall', '-Wextra', '-o', tmp, src], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`wan lab: building the delay line failed (cc): ${r.stderr || r.error?.message}`);
  renameSync(tmp, bin);
  return bin;
}

const live = new Set<Lab>();
let hooked = false;
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const lab of live) lab.destroySync();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      for (const lab of live) lab.destroySync();
      process.kill(process.pid, sig);
    });
  }
}

let counter = 0;

export class Lab {
  readonly client: string;
  readonly middle: string;
  readonly server: string;
  private readonly delayLine: ChildProcess;
  private readonly lines: Interface;
  private readonly replies: Array<(line: string) => void> = [];
  private readonly children = new Set<ChildProcess>();
  private link: LinkConfig = { rttMs: 0, loss: 0 };
  private closed = false;

  private constructor(base: string, delayLine: ChildProcess) {
    this.client = `${base}-a`;
    this.middle = `${base}-m`;
    this.server = `${base}-b`;
    this.delayLine = delayLine;
    this.lines = createInterface({ input: delayLine.stdout! });
    this.lines.on('line', (l) => this.replies.shift()?.(l));
  }

  /** The link as last configured. */
  get config(): LinkConfig {
    return { ...this.link };
  }

  /** Congestion controls a lab may choose (the host's allowed list). */
  static allowedTcpCongestion(): string[] {
    return sh('sysctl', ['-n', 'net.ipv4.tcp_allowed_congestion_control'], true).trim().split(/\s+/).filter(Boolean);
  }

  /** The TCP congestion control of the client and server namespaces. */
  tcpCongestion = '';

  /**
   * Build a lab. tcpCongestion: the congestion control TCP uses in the two
   * hosts (per-namespace sysctl; e.g. cubic, bbr, reno); default: the
   * kernel's default. It matters: BBR ignores random loss, CUBIC and QUIC's
   * NewReno/CUBIC do not.
   */
  static async create(opts: { tcpCongestion?: string } = {}): Promise<Lab> {
    if (process.getuid?.() !== 0) throw new Error('wan lab: needs root (network namespaces, TUN devices)');
    hookExit();
    cleanStaleLabs();
    const bin = delayLineBinary();
    const base = `${PREFIX}${process.pid}x${counter++}`;
    const [a, m, b] = [`${base}-a`, `${base}-m`, `${base}-b`];
    let delay: ChildProcess | undefined;
    let lab: Lab | undefined;
    try {
      for (const ns of [a, m, b]) sh('ip', ['netns', 'add', ns]);
      ipn(a, 'link', 'add', 'a0', 'type', 'veth', 'peer', 'name', 'ma', 'netns', m);
      ipn(b, 'link', 'add', 'b0', 'type', 'veth', 'peer', 'name', 'mb', 'netns', m);
      for (const ns of [a, m, b]) ipn(ns, 'link', 'set', 'dev', 'lo', 'up');
      ipn(a, 'addr', 'add', `${CLIENT_ADDR}/24`, 'dev', 'a0');
      ipn(a, 'link', 'set', 'dev', 'a0', 'up');
      ipn(a, 'route', 'add', 'default', 'via', '10.77.1.1');
      ipn(b, 'addr', 'add', `${SERVER_ADDR}/24`, 'dev', 'b0');
      ipn(b, 'link', 'set', 'dev', 'b0', 'up');
      ipn(b, 'route', 'add', 'default', 'via', '10.77.2.1');
      ipn(m, 'addr', 'add', '10.77.1.1/24', 'dev', 'ma');
      ipn(m, 'addr', 'add', '10.77.2.1/24', 'dev', 'mb');
      ipn(m, 'link', 'set', 'dev', 'ma', 'up');
      ipn(m, 'link', 'set', 'dev', 'mb', 'up');
      sh('ip', ['netns', 'exec', m, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1', 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0',
        'net.ipv4.conf.all.send_redirects=0', 'net.ipv4.conf.default.send_redirects=0', 'net.ipv4.conf.all.accept_local=1']);

      // The delay line creates its TUN devices; they live as long as it does.
      // It runs at a real-time priority (SCHED_FIFO, where allowed): the link
      // must not slow down because the machine is busy. It sleeps in ppoll
      // between packets, so it never hogs a core.
      const rt = spawnSync('chrt', ['-f', '20', 'true']).status === 0 ? ['chrt', '-f', '20'] : [];
      delay = spawn('ip', ['netns', 'exec', m, ...rt, bin, 'dlab', 'dlba'], { stdio: ['pipe', 'pipe', 'inherit'], detached: true });
      lab = new Lab(base, delay);
      live.add(lab);
      await lab.reply(20_000, 'the delay line to start');
      for (const dev of ['dlab', 'dlba']) {
        sh('ip', ['netns', 'exec', m, 'sysctl', '-q', '-w', `net.ipv4.conf.${dev}.rp_filter=0`, `net.ipv4.conf.${dev}.accept_local=1`]);
        ipn(m, 'link', 'set', 'dev', dev, 'mtu', '1500', 'txqueuelen', '1000', 'up');
      }
      ipn(m, 'route', 'add', 'default', 'dev', 'dlab', 'table', '100');
      ipn(m, 'route', 'add', 'default', 'dev', 'dlba', 'table', '101');
      ipn(m, 'rule', 'add', 'iif', 'ma', 'lookup', '100', 'pref', '100');
      ipn(m, 'rule', 'add', 'iif', 'mb', 'lookup', '101', 'pref', '101');
      if (opts.tcpCongestion) {
        // A namespace may only pick from the host's allowed list (a global setting we leave alone).
        const allowed = sh('sysctl', ['-n', 'net.ipv4.tcp_allowed_congestion_control'], true).trim().split(/\s+/);
        if (!allowed.includes(opts.tcpCongestion)) {
          throw new Error(`wan lab: TCP congestion control "${opts.tcpCongestion}" is not allowed here (net.ipv4.tcp_allowed_congestion_control: ${allowed.join(' ')})`);
        }
        for (const ns of [a, b]) sh('ip', ['netns', 'exec', ns, 'sysctl', '-q', '-w', `net.ipv4.tcp_congestion_control=${opts.tcpCongestion}`]);
      }
      lab.tcpCongestion = sh('ip', ['netns', 'exec', a, 'sysctl', '-n', 'net.ipv4.tcp_congestion_control']).trim();
      await lab.configure({ rttMs: 0, loss: 0 });
      return lab;
    } catch (e) {
      if (lab) lab.destroySync();
      else {
        delay?.kill('SIGKILL');
        for (const ns of [a, m, b]) deleteNamespace(ns);
      }
      throw e;
    }
  }

  private reply(timeoutMs: number, what: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`wan lab: no answer from the delay line (${what})`)), timeoutMs);
      const onExit = () => reject(new Error(`wan lab: the delay line exited (${what})`));
      this.delayLine.once('exit', onExit);
      this.replies.push((l) => {
        clearTimeout(t);
        this.delayLine.off('exit', onExit);
        resolve(l);
      });
    });
  }

  private async command(line: string): Promise<string> {
    if (this.closed) throw new Error('wan lab: closed');
    const r = this.reply(5000, line);
    this.delayLine.stdin!.write(`${line}\n`);
    return r;
  }

  /** Set delay, jitter, loss and bottleneck rate (both directions). */
  async configure(link: LinkConfig): Promise<void> {
    if (!(link.rttMs >= 0) || !(link.loss >= 0 && link.loss < 1)) throw new Error(`wan lab: bad link ${JSON.stringify(link)}`);
    const oneWayUs = Math.round((link.rttMs * 1000) / 2);
    const jitterUs = Math.round(((link.jitterMs ?? 0) * 1000) / 2);
    const ok = await this.command(`set ${oneWayUs} ${jitterUs} ${Math.round(link.loss * 1e6)} ${link.lossMinBytes ?? 0} ${link.seed ?? 1}`);
    if (ok !== 'ok') throw new Error(`wan lab: delay line refused the setting: ${ok}`);
    for (const dev of ['dlab', 'dlba']) {
      if (link.bandwidthBps) {
        // Burst: 10 ms worth (at least a few full-size packets); queue: one
        // bandwidth-delay product of the asked RTT, at least 64 KiB.
        const bytesPerSec = link.bandwidthBps / 8;
        const burst = Math.max(16 * 1514, Math.round(bytesPerSec * 0.01));
        const limit = Math.max(64 * 1024, Math.round((bytesPerSec * Math.max(link.rttMs, 10)) / 1000));
        sh('tc', ['-n', this.middle, 'qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', `${link.bandwidthBps}bit`, 'burst', String(burst), 'limit', String(limit)]);
      } else {
        sh('tc', ['-n', this.middle, 'qdisc', 'del', 'dev', dev, 'root'], true);
      }
    }
    this.link = { ...link };
  }

  /** Counters of the delay line since it started. */
  async stats(): Promise<DelayLineStats> {
    return JSON.parse(await this.command('stats')) as DelayLineStats;
  }

  /** The qdisc statistics of the bottleneck (drops there are queue overflow, not emulated loss). */
  qdiscStats(): string {
    return sh('tc', ['-n', this.middle, '-s', 'qdisc', 'show', 'dev', 'dlab'], true).trim();
  }

  /**
   * Spawn a process inside one of the lab's namespaces, in its own process
   * group; the lab kills it at close if it still runs.
   */
  spawn(ns: string, cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['pipe', 'pipe', 'pipe'], detached: true, ...opts });
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    return child;
  }

  /** Run a command in a namespace to completion (killed after timeoutMs); never throws for a non-zero exit. */
  run(ns: string, cmd: string, args: string[], timeoutMs = 60_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const child = this.spawn(ns, cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        stderr += `\n(killed after ${timeoutMs} ms)`;
        try {
          if (child.pid) process.kill(-child.pid, 'SIGKILL');
        } catch {}
      }, timeoutMs);
      child.once('close', (code) => {
        clearTimeout(t);
        resolve({ code, stdout, stderr });
      });
      child.once('error', (e) => {
        clearTimeout(t);
        resolve({ code: -1, stdout, stderr: stderr + e.message });
      });
    });
  }

  /** Synchronous teardown, safe to call from an exit handler; idempotent. */
  destroySync(): void {
    if (this.closed) return;
    this.closed = true;
    live.delete(this);
    for (const c of [...this.children, this.delayLine]) {
      try {
        if (c.pid && c.exitCode === null) process.kill(-c.pid, 'SIGKILL');
      } catch {}
    }
    this.lines.close();
    for (const ns of [this.client, this.middle, this.server]) deleteNamespace(ns);
  }

  async close(): Promise<void> {
    this.destroySync();
  }
}
