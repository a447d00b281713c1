/**
 * The NBD server on every core (engine/nbd/workers.ts): connections to an
 * export whose stack can be shared move to worker threads after the
 * handshake. Real clients (qemu-io, nbdinfo, nbdcopy) against a server with
 * workers, checked against the main thread's view of the same store.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { SharedMemoryBackend } from '../../engine/backends/shared-memory.ts';
import { FileBackend } from '../../engine/backends/file.ts';
import { GuardLayer } from '../../engine/layers/guard.ts';
import { threadDescriptor } from '../../engine/shared-store.ts';
import { buildStack, tracking } from '../../engine/stack.ts';
import { TRACKING } from '../../engine/capability.ts';
import { nativeAvailable } from '../../native/index.ts';
import { needCondition, needTools, Scope, withTimeout } from '../helpers/env.ts';
import { ok, qemuIo, startServer, tool } from './fixture.ts';

const test = suite('nbd/workers');
const MiB = 1024 * 1024;
const withNative = needCondition(test, nativeAvailable(), 'the native addon is not built (node native/build.mjs)');
const tools = (names: string[]) => (nativeAvailable() ? needTools(test, names) : withNative);

async function inScope(what: string, ms: number, body: (s: Scope) => Promise<void>): Promise<void> {
  const s = new Scope();
  try {
    await withTimeout(ms, what, () => body(s));
  } finally {
    await s.close();
  }
}

withNative('shared memory and file stacks describe themselves for other threads; MemoryBackend and other layers do not', async () => {
  await inScope('descriptors', 10_000, async (s) => {
    const shm = await SharedMemoryBackend.create(MiB);
    s.defer(() => shm.close());
    assert.is(threadDescriptor(shm)?.kind, 'shm');
    const guarded = await GuardLayer.open(shm, { maxRequest: MiB, readOnly: true });
    const d = threadDescriptor(guarded);
    assert.is(d?.kind, 'guard');
    assert.ok(d?.kind === 'guard' && d.readOnly && d.inner.kind === 'shm');
    assert.is(threadDescriptor(new MemoryBackend(MiB)), undefined);
    const file = await FileBackend.open(join(s.tmpdir('quicmap-w-'), 'f.img'), { size: MiB, create: true });
    s.defer(() => file.close());
    assert.is(threadDescriptor(file)?.kind, 'file');
  });
});

tools(['qemu-io', 'nbdinfo'])('writes through worker connections are seen by the main thread, and holes by nbdinfo --map', async () => {
  await inScope('shm export on workers', 45_000, async (s) => {
    const store = await SharedMemoryBackend.create(16 * MiB);
    s.defer(() => store.close());
    const fx = await startServer(s, [{ name: 'r', store }], { workers: 2 });
    await qemuIo(fx.tcp.uri('r'), ['write -P 0xab 1M 2M', 'read -P 0xab 1M 2M', 'write -P 0x5c 7 9']);
    const b = new Uint8Array(2 * MiB);
    await store.readAt(b, MiB);
    assert.ok(b.every((x) => x === 0xab), 'the main thread reads what a worker wrote');
    const edge = new Uint8Array(16);
    await store.readAt(edge, 0);
    assert.equal([...edge.subarray(6, 17)], [0, 0x5c, 0x5c, 0x5c, 0x5c, 0x5c, 0x5c, 0x5c, 0x5c, 0x5c]);
    // Structured replies and base:allocation negotiated on the main thread go along.
    const map = await ok('nbdinfo', ['--map', fx.unix.uri('r')]);
    assert.match(map.stdout, /1048576\s+2097152\s+0\s+data/);
    assert.match(map.stdout, /3145728\s+\d+\s+3\s+hole,zero/);
    // Trim punches the pages: they are holes again.
    await qemuIo(fx.unix.uri('r'), ['discard 1M 2M', 'read -P 0 1M 2M']);
    const ext = await store.extents(MiB, 2 * MiB);
    assert.equal(ext, [{ length: 2 * MiB, hole: true, zero: true }]);
    assert.ok(fx.server.stats.writes >= 2, 'workers report their requests to the server');
  });
});

tools(['qemu-io'])('eight concurrent clients writing interleaved ranges, spread over the workers, lose nothing', async () => {
  await inScope('concurrent workers', 60_000, async (s) => {
    const store = await SharedMemoryBackend.create(8 * MiB);
    s.defer(() => store.close());
    const fx = await startServer(s, [{ name: 'r', store }], { workers: 2 });
    // Client i writes bytes i+1 into every 8th 4 KiB block starting at block i, with unaligned 1000-byte tails.
    await Promise.all(
      Array.from({ length: 8 }, (_, i) => {
        const cmds: string[] = [];
        for (let blk = i; blk < 64; blk += 8) cmds.push(`write -P ${i + 1} ${blk * 4096} 4096`, `write -P ${i + 1} ${64 * 4096 + blk * 1000} 1000`);
        return qemuIo(i % 2 ? fx.tcp.uri('r') : fx.unix.uri('r'), cmds, 45_000);
      }),
    );
    const b = new Uint8Array(64 * 4096 + 64 * 1000);
    await store.readAt(b, 0);
    for (let blk = 0; blk < 64; blk++) {
      const want = (blk % 8) + 1;
      assert.ok(b.subarray(blk * 4096, (blk + 1) * 4096).every((x) => x === want), `block ${blk}`);
      const t = 64 * 4096 + blk * 1000;
      assert.ok(b.subarray(t, t + 1000).every((x) => x === want), `tail ${blk}`);
    }
  });
});

tools(['nbdcopy'])('a file export on workers: nbdcopy round trip, flushed to the file', async () => {
  await inScope('file export on workers', 60_000, async (s) => {
    const dir = s.tmpdir('quicmap-w-');
    const path = join(dir, 'disk.img');
    const store = await FileBackend.open(path, { size: 8 * MiB, create: true });
    s.defer(() => store.close());
    const fx = await startServer(s, [{ name: 'd', store: await GuardLayer.open(store, { maxRequest: 32 * MiB }) }], { workers: 2 });
    const data = randomBytes(8 * MiB);
    const src = join(dir, 'src.bin');
    writeFileSync(src, data);
    await ok('nbdcopy', ['--flush', src, fx.unix.uri('d')], 45_000);
    assert.ok(readFileSync(path).equals(data), 'the file holds what went through the workers');
    const back = join(dir, 'back.bin');
    await ok('nbdcopy', ['--no-extents', fx.tcp.uri('d'), back], 45_000);
    assert.ok(readFileSync(back).equals(data));
  });
});

tools(['qemu-io'])('a read-only export on workers refuses writes', async () => {
  await inScope('read-only on workers', 30_000, async (s) => {
    const store = await SharedMemoryBackend.create(MiB);
    s.defer(() => store.close());
    const fx = await startServer(s, [{ name: 'r', store, readOnly: true }], { workers: 1 });
    const r = await tool('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 4096', fx.unix.uri('r')]);
    assert.match(r.stdout + r.stderr, /Operation not permitted|read-only|Permission denied/i);
    const b = new Uint8Array(4096);
    await store.readAt(b, 0);
    assert.ok(b.every((x) => x === 0));
  });
});

tools(['qemu-io'])('a store that cannot be shared is still served, on the main thread', async () => {
  await inScope('unshareable on a server with workers', 30_000, async (s) => {
    const store = new MemoryBackend(MiB);
    const fx = await startServer(s, [{ name: 'm', store }], { workers: 2 });
    await qemuIo(fx.tcp.uri('m'), ['write -P 9 0 64k', 'read -P 9 0 64k']);
    const b = new Uint8Array(4);
    await store.readAt(b, 100);
    assert.equal([...b], [9, 9, 9, 9]);
  });
});

tools(['qemu-io'])('a stack with a layer that keeps state (tracking) stays on the main thread, so the layer sees every write', async () => {
  await inScope('tracking stack on a server with workers', 30_000, async (s) => {
    const shm = await SharedMemoryBackend.create(4 * MiB);
    const stack = await buildStack({ backend: shm, layers: [tracking(64 * 1024)], maxRequest: 32 * MiB });
    s.defer(() => stack.close());
    assert.is(threadDescriptor(stack), undefined, 'tracking does not vouch for sharing');
    const fx = await startServer(s, [{ name: 't', store: stack }], { workers: 2 });
    const t = stack.capability(TRACKING)!;
    await t.mark();
    await qemuIo(fx.unix.uri('t'), ['write -P 3 1M 64k']);
    assert.equal(await t.dirty(), [16]);
  });
});

tools(['nbdsh'])('removeExport and close end the worker connections', async () => {
  await inScope('shutdown with worker connections', 45_000, async (s) => {
    const store = await SharedMemoryBackend.create(MiB);
    s.defer(() => store.close());
    const fx = await startServer(s, [{ name: 'r', store }], { workers: 2 });
    // A client that connects, writes, then waits to be disconnected.
    const script = [
      'import time',
      'h.pwrite(b"x" * 512, 0)',
      'print("connected", flush=True)',
      'try:',
      '    for _ in range(200):',
      '        h.pread(512, 0)',
      '        time.sleep(0.05)',
      '    print("never disconnected")',
      'except Exception as e:',
      '    print("disconnected")',
    ].join('\n');
    const client = tool('nbdsh', ['-u', fx.unix.uri('r'), '-c', script], 30_000);
    // Wait until its write has landed: the client is then being served on a worker.
    const b = new Uint8Array(1);
    for (let i = 0; i < 400 && b[0] !== 0x78; i++) {
      await new Promise((r) => setTimeout(r, 50));
      await store.readAt(b, 0);
    }
    assert.is(b[0], 0x78, 'the client wrote through a worker');
    assert.is(fx.server.connectionCount, 1, 'the worker connection is counted');
    await fx.server.removeExport('r');
    const out = await client;
    assert.match(out.stdout, /connected\s+disconnected/, `nbdsh said: ${out.stdout} ${out.stderr}; server log: ${fx.logs.join(" / ")}`);
    assert.is(fx.server.connectionCount, 0);
  });
});

test.run();
