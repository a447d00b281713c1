/**
 * `--backend nbd:URI`: any NBD server backs a region. Against a real nbdkit
 * (memory plugin for writes, pattern plugin for known contents), opened
 * through openBackend and served again by `quicmap nbd` to nbdinfo/qemu-io.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BackendSpecError, openBackend, parseBackendSpec } from '../../engine/backends/open.ts';
import { NbdClient } from '../../engine/nbd/client.ts';
import { buildStack } from '../../engine/stack.ts';
import { VECTORED } from '../../engine/capability.ts';
import { startCli } from '../helpers/cli.ts';
import { Scope, SYSTEM_PATH, needTools, run, withTimeout } from '../helpers/env.ts';

const withNbdkit = needTools(test, ['nbdkit'], 'the reference NBD server');
const withNbdkitAndClients = needTools(test, ['nbdkit', 'nbdinfo', 'qemu-io'], 'the reference NBD server and clients');

/** Start nbdkit PLUGIN ARGS on a unix socket in the scope; returns the nbd+unix URI once it listens. */
async function nbdkit(s: Scope, plugin: string, args: string[]): Promise<string> {
  const dir = s.tmpdir('quicmap-nbdkit-');
  const sock = join(dir, 'kit.sock');
  // The socket file exists from bind(), before listen(); nbdkit writes its
  // pid file only once it accepts connections, so wait for that.
  const pidFile = join(dir, 'kit.pid');
  s.spawn('nbdkit', ['-f', '-U', sock, '-P', pidFile, plugin, ...args], { env: { ...process.env, PATH: SYSTEM_PATH } });
  await withTimeout(10_000, 'nbdkit listening', async () => {
    while (!existsSync(pidFile)) await new Promise((r) => setTimeout(r, 20));
  });
  return `nbd+unix:///?socket=${sock}`;
}

test('parseBackendSpec reads nbd:URI and the bare URI; a bad URI is a clear EINVAL', () => {
  assert.equal(parseBackendSpec('nbd:nbd://10.0.0.1:10810/disk'), { kind: 'nbd', uri: 'nbd://10.0.0.1:10810/disk' });
  assert.equal(parseBackendSpec('nbd+unix:///x?socket=/tmp/s'), { kind: 'nbd', uri: 'nbd+unix:///x?socket=/tmp/s' });
  for (const bad of ['nbd:', 'nbd:host:10809', 'nbd:nbd+unix:///x']) {
    try {
      parseBackendSpec(bad);
      assert.unreachable(`accepted ${bad}`);
    } catch (e) {
      assert.instance(e, BackendSpecError, bad);
      assert.match((e as Error).message, /nbd:URI/);
    }
  }
});

withNbdkit('an nbdkit plugin is a backend: reads, writes, flush, zeroes; a wrong size is refused', async () => {
  const s = new Scope();
  try {
    const pattern = await nbdkit(s, 'pattern', ['size=1M']);
    const p = await openBackend(`nbd:${pattern}`);
    assert.instance(p, NbdClient);
    assert.is(await p.size(), 1 << 20);
    const word = Buffer.alloc(8);
    await p.readAt(word, 8 * 1000);
    assert.is(word.readBigUInt64BE(0), 8000n, 'the pattern plugin stores each offset at itself');
    assert.ok(p.caps.readOnly, 'the pattern plugin is read-only');
    await p.close();
    try {
      await openBackend(`nbd:${pattern}`, { size: 4096 });
      assert.unreachable('size mismatch accepted');
    } catch (e) {
      assert.is((e as { code?: string }).code, 'EINVAL');
    }

    const memory = await nbdkit(s, 'memory', ['4M']);
    const stack = await buildStack({ backend: `nbd:${memory}`, maxRequest: 1 << 20 });
    const data = Buffer.alloc(300_000).map((_, i) => (i * 13) & 255);
    await stack.writeAt(data, 12345, { fua: true });
    await stack.flush();
    await stack.writeZeroes(12345, 1000);
    const back = Buffer.alloc(data.length);
    await stack.readAt(back, 12345);
    assert.ok(back.subarray(0, 1000).every((b) => b === 0));
    assert.ok(back.subarray(1000).equals(data.subarray(1000)));
    // Vectored writes reach nbdkit as one WRITE each (and re-cut above the server's maximum block).
    const v = stack.capability(VECTORED);
    assert.ok(v, 'NbdClient offers VECTORED through the stack');
    const parts = [Buffer.from('quic'), Buffer.alloc(70_000, 0x33), Buffer.from('map')];
    await v!.writev(parts, 2_000_000);
    const got = Buffer.alloc(70_007);
    await stack.readAt(got, 2_000_000);
    assert.ok(got.equals(Buffer.concat(parts)));
    await stack.close();
  } finally {
    await s.close();
  }
});

withNbdkitAndClients('quicmap nbd --backend nbd:URI re-serves an nbdkit export to real clients', async () => {
  const s = new Scope();
  try {
    const memory = await nbdkit(s, 'memory', ['8M']);
    const q = startCli(s, ['nbd', '--backend', `nbd:${memory}`, '--listen', '127.0.0.1:0']);
    const uri = await q.line();
    const env = { ...process.env, PATH: SYSTEM_PATH };
    const info = await run('nbdinfo', ['--json', uri], { env });
    assert.is(info.code, 0, info.stderr);
    assert.is(JSON.parse(info.stdout).exports[0]['export-size'], 8 * 1024 * 1024);
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6b 4096 65536', uri], { env });
    assert.is(w.code, 0, w.stderr);
    // The bytes are in nbdkit, not in quicmap: read them from nbdkit directly.
    const direct = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x6b 4096 65536', memory], { env });
    assert.is(direct.code, 0, direct.stderr);
    assert.not.match(direct.stdout + direct.stderr, /fail|mismatch/i);
  } finally {
    await s.close();
  }
});

test.run();
