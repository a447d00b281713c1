/**
 * The WAN lab's namespaces: created, reachable through the delay line, and
 * always removed — on close, when its process is terminated, and (for a
 * process killed outright) by the next lab's stale cleanup.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { needCondition, hasTool, Scope, withTimeout } from '../helpers/env.ts';
import { Lab, SERVER_ADDR, cleanStaleLabs, labNamespaces } from '../../bench/wan/lab.ts';

const test = suite('wan-lab');
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CHILD = fileURLToPath(new URL('./lab-child.ts', import.meta.url));
const isRoot = process.getuid?.() === 0;
const run = needCondition(test, isRoot && hasTool('ip') && hasTool('tc') && hasTool('cc'), 'root with ip, tc and cc (network namespaces, TUN devices)');

run('a lab creates its three namespaces, forwards packets through the delay line and removes everything on close', async () => {
  await withTimeout(60_000, 'lab', async () => {
    const lab = await Lab.create();
    try {
      for (const ns of [lab.client, lab.middle, lab.server]) assert.ok(labNamespaces().includes(ns), `${ns} exists`);
      if (hasTool('ping')) {
        const before = await lab.stats();
        const r = await lab.run(lab.client, 'ping', ['-n', '-c', '3', '-i', '0.05', '-W', '2', SERVER_ADDR], 20_000);
        assert.is(r.code, 0, r.stdout + r.stderr);
        const after = await lab.stats();
        assert.ok(after.ab.tx - before.ab.tx >= 3 && after.ba.tx - before.ba.tx >= 3, 'echo requests and replies went through the delay line both ways');
      }
    } finally {
      await lab.close();
    }
    for (const ns of [lab.client, lab.middle, lab.server]) assert.not.ok(labNamespaces().includes(ns), `${ns} is gone`);
  });
});

async function startChild(s: Scope): Promise<{ child: ReturnType<Scope['spawn']>; names: string[] }> {
  const child = s.spawn(process.execPath, ['--import', 'tsx', CHILD], { cwd: ROOT });
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const line = await withTimeout(
    60_000,
    'lab child',
    new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stdout! }).once('line', resolve);
      child.once('exit', (c) => reject(new Error(`lab child exited ${c}: ${err}`)));
    }),
  );
  return { child, names: JSON.parse(line) as string[] };
}

const exited = (child: ReturnType<Scope['spawn']>) =>
  child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise<void>((r) => child.once('exit', () => r()));

run('SIGTERM to the lab process removes its namespaces; after SIGKILL the next lab removes the stale ones', async () => {
  const s = new Scope();
  try {
    await withTimeout(90_000, 'lab signals', async () => {
      const a = await startChild(s);
      for (const ns of a.names) assert.ok(labNamespaces().includes(ns), `${ns} exists while the lab runs`);
      process.kill(a.child.pid!, 'SIGTERM');
      await exited(a.child);
      for (const ns of a.names) assert.not.ok(labNamespaces().includes(ns), `${ns} removed on SIGTERM`);

      const b = await startChild(s);
      process.kill(b.child.pid!, 'SIGKILL');
      await exited(b.child);
      for (const ns of b.names) assert.ok(labNamespaces().includes(ns), `${ns} outlives a SIGKILLed lab`);
      const removed = cleanStaleLabs();
      for (const ns of b.names) {
        assert.ok(removed.includes(ns), `${ns} reported as stale`);
        assert.not.ok(labNamespaces().includes(ns), `${ns} removed by the stale cleanup`);
      }
    });
  } finally {
    await s.close();
    cleanStaleLabs();
  }
});

test.run();
