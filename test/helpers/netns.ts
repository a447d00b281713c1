/**
 * Network namespaces a test creates and always removes (also on failure):
 * `netns(scope, name)` makes one with loopback up; `link` joins two with a
 * veth pair and addresses. Names are `qmsw<pid>-<name>`: the test's pid
 * keeps parallel runs apart, and the first `netns` of a process removes the
 * namespaces (and kills the processes inside) of earlier runs whose process
 * is gone, e.g. a run killed by a signal before its Scope could clean up.
 * Needs root and iproute2.
 */
import { spawnSync } from 'node:child_process';
import type { Scope } from './env.ts';

export function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr || r.stdout}`);
  return r.stdout;
}

export function canUseNetns(): boolean {
  if (process.getuid?.() !== 0) return false;
  const probe = `qmprobe${process.pid}`;
  const r = spawnSync('ip', ['netns', 'add', probe]);
  if (r.status !== 0) return false;
  spawnSync('ip', ['netns', 'del', probe]);
  return true;
}

export interface Ns {
  name: string;
  /** Run a command inside it to completion (throws on failure). */
  run(cmd: string, args: string[]): string;
  /** The argv prefix that runs a command inside it. */
  prefix: string[];
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Namespaces of earlier test runs whose process no longer runs (also the older `qm<pid><name>` form). */
export function staleNamespaces(): string[] {
  const r = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  return (r.stdout ?? '')
    .split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter((n) => {
      const m = /^qmsw(\d+)-[a-z0-9]+$/.exec(n) ?? /^qm(\d+)[a-z]+$/.exec(n);
      return m !== null && Number(m[1]) !== process.pid && !pidAlive(Number(m[1]));
    });
}

/** Remove stale namespaces: first the processes still inside (they would run on), then the namespace. */
export function cleanStaleNamespaces(): string[] {
  const stale = staleNamespaces();
  for (const ns of stale) {
    const pids = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout ?? '';
    for (const pid of pids.split('\n').filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {}
    }
    spawnSync('ip', ['netns', 'del', ns]);
  }
  return stale;
}

let cleaned = false;

export function netns(scope: Scope, short: string): Ns {
  if (!cleaned) {
    cleaned = true;
    const stale = cleanStaleNamespaces();
    if (stale.length) console.log(`  (removed ${stale.length} namespaces left by earlier killed runs: ${stale.join(' ')})`);
  }
  const name = `qmsw${process.pid}-${short}`;
  spawnSync('ip', ['netns', 'del', name]);
  sh('ip', ['netns', 'add', name]);
  scope.defer(() => {
    // Processes still inside would keep the namespace's interfaces alive; the scope killed them first.
    spawnSync('ip', ['netns', 'del', name]);
  });
  const ns: Ns = {
    name,
    prefix: ['ip', 'netns', 'exec', name],
    run: (cmd, args) => sh('ip', ['netns', 'exec', name, cmd, ...args]),
  };
  ns.run('ip', ['link', 'set', 'lo', 'up']);
  return ns;
}

let vethCount = 0;
/**
 * A veth pair between `a` and `b` with these addresses (CIDR); returns the
 * interface names. `rate` (e.g. "200mbit") shapes both directions with a
 * token bucket (tc tbf), as a real link would be.
 */
export function link(a: Ns, aAddr: string, b: Ns, bAddr: string, rate?: string): [string, string] {
  const n = vethCount++;
  const ia = `qa${process.pid % 100000}x${n}`;
  const ib = `qb${process.pid % 100000}x${n}`;
  sh('ip', ['link', 'add', ia, 'type', 'veth', 'peer', 'name', ib]);
  sh('ip', ['link', 'set', ia, 'netns', a.name]);
  sh('ip', ['link', 'set', ib, 'netns', b.name]);
  a.run('ip', ['addr', 'add', aAddr, 'dev', ia]);
  b.run('ip', ['addr', 'add', bAddr, 'dev', ib]);
  a.run('ip', ['link', 'set', ia, 'up']);
  b.run('ip', ['link', 'set', ib, 'up']);
  if (rate) {
    for (const [ns, dev] of [[a, ia], [b, ib]] as const) ns.run('tc', ['qdisc', 'add', 'dev', dev, 'root', 'tbf', 'rate', rate, 'burst', '256kb', 'latency', '50ms']);
  }
  return [ia, ib];
}
