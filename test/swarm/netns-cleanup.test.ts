/**
 * The namespace helper's start-of-run cleanup: a namespace left by a test
 * process that no longer runs (killed by a signal before its Scope closed)
 * is removed, and a process still running inside it is killed; namespaces
 * of live processes are left alone.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, spawnSync } from 'node:child_process';
import { Scope, eventually, needCondition, withTimeout } from '../helpers/env.ts';
import { canUseNetns, cleanStaleNamespaces, netns } from '../helpers/netns.ts';

const test = suite('swarm/netns-cleanup');
const root = canUseNetns();

const exists = (name: string) => spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.split('\n').some((l) => l.split(' ')[0] === name);
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

(root ? test : needCondition(test, false, 'root and ip netns (network namespaces)'))('a dead run\'s namespace and what runs inside it are removed; a live run\'s are kept', async () => {
  const s = new Scope();
  try {
    await withTimeout(30_000, 'cleanup test', async () => {
      // A pid that surely belongs to no running process: a child that has exited.
      const gone = spawnSync(process.execPath, ['-e', '']).pid!;
      assert.ok(!alive(gone));
      const stale = `qmsw${gone}-zz`;
      spawnSync('ip', ['netns', 'add', stale]);
      s.defer(() => void spawnSync('ip', ['netns', 'del', stale]));
      const inside = spawn('ip', ['netns', 'exec', stale, 'sleep', '300'], { stdio: 'ignore' });
      s.defer(() => void inside.kill('SIGKILL'));
      await eventually(10_000, () => 'sleep never started inside the namespace', () => spawnSync('ip', ['netns', 'pids', stale], { encoding: 'utf8' }).stdout.trim() !== '', 50);
      const exited = new Promise((r) => inside.once('exit', r));
      // The first namespace this run makes cleans up first.
      const mine = netns(s, 'keep');
      assert.ok(!exists(stale), 'the stale namespace is gone');
      await exited; // the process inside was killed
      assert.equal(cleanStaleNamespaces(), [], 'nothing stale left');
      assert.ok(exists(mine.name), 'the namespace of a running test (this one) is kept');
    });
  } finally {
    await s.close();
  }
});

test.run();
