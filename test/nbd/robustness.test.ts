/**
 * Bad and hostile input against a real NbdServer, through a raw client
 * (test/helpers/nbd-raw.ts) where real clients check for us; each case is
 * followed by a good client that must still be served. Also pipelining,
 * soft disconnect and server close with clients connected.
 */
import { randomBytes } from 'node:crypto';
import { connect, createServer, type Socket } from 'node:net';
import { existsSync } from 'node:fs';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { FileBackend } from '../../engine/backends/file.ts';
import { join } from 'node:path';
import type { ReadWriterAt, WriteOptions, ZeroOptions } from '../../engine/rwat.ts';
import { hasTool, needTools, Scope, withTimeout } from '../helpers/env.ts';
import { BufferStore, pattern, readStore } from '../helpers/buffer-store.ts';
import { CMD, ERRNO, OPT, REP, RawNbd, optionHeader, requestHeader, type Target } from '../helpers/nbd-raw.ts';
import { ok, qemuIo, startServer, TOOL_ENV, type Fixture } from './fixture.ts';

const test = suite('nbd/robustness');
const MiB = 1024 * 1024;
const SIZE = 4 * MiB + 123; // deliberately not sector-aligned

/** A good client after bad input: the server must still serve. Real tools when present, raw otherwise. */
async function stillServes(fx: Fixture, name: string, store: ReadWriterAt, target: Target = fx.tcpTarget): Promise<void> {
  const probe = pattern(777, 99);
  const { c } = await RawNbd.open(target, name);
  try {
    const w = await c.pwrite(probe, 5000);
    if (w.error === ERRNO.EPERM) {
      const r = await c.pread(0, 4096);
      assert.is(r.error, 0);
      assert.ok(r.data.equals(await readStore(store, 0, 4096)));
    } else {
      assert.is(w.error, 0);
      const r = await c.pread(5000, 777);
      assert.ok(r.data.equals(probe));
    }
    await c.disconnect();
  } finally {
    c.destroy();
  }
  if (hasTool('nbdinfo')) {
    const uri = 'path' in target ? fx.unix.uri(name) : fx.tcp.uri(name);
    const info = await ok('nbdinfo', ['--size', uri]);
    assert.is(Number(info.stdout.trim()), await store.size());
  }
}

function withServer(name: string, fn: (fx: Fixture, s: Scope) => Promise<void>, ms = 20_000): void {
  test(name, async () => {
    const s = new Scope();
    try {
      await withTimeout(ms, name, async () => fn(await startServer(s, [], { maxPayload: MiB }), s));
    } finally {
      await s.close();
    }
  });
}

withServer('out-of-range requests get EINVAL (writes: ENOSPC), nothing is written, the connection goes on', async (fx) => {
  const store = new MemoryBackend(SIZE);
  await fx.server.addExport({ name: 'd', store });
  await store.writeAt(pattern(SIZE, 3), 0);
  const { c, go } = await RawNbd.open(fx.tcpTarget, 'd');
  assert.is(go.size, SIZE);
  try {
    const r1 = await c.pread(SIZE - 10, 20);
    assert.is(r1.error, ERRNO.EINVAL, 'read across the end');
    assert.is(r1.data.length, 0, 'no payload after an error reply');
    assert.is((await c.pread(SIZE, 1)).error, ERRNO.EINVAL, 'read at the end');
    assert.is((await c.request({ type: CMD.READ, offset: 1n << 63n, length: 1 })).error, ERRNO.EINVAL, 'read at 2^63');
    assert.is((await c.request({ type: CMD.READ, offset: 0xffffffffffffffffn, length: 2 })).error, ERRNO.EINVAL, 'offset+length wraps');
    const w = await c.pwrite(Buffer.alloc(10, 0xee), SIZE - 5);
    // proto.md: "The server SHOULD return ENOSPC if it receives a write request including one or more sectors beyond the size of the device."
    assert.is(w.error, ERRNO.ENOSPC, 'write across the end');
    const z = await c.request({ type: CMD.WRITE_ZEROES, offset: SIZE - 5, length: 10 });
    assert.is(z.error, ERRNO.ENOSPC, 'zero across the end');
    assert.is((await c.request({ type: CMD.TRIM, offset: SIZE, length: 4096 })).error, ERRNO.EINVAL, 'trim past the end');
    assert.ok((await readStore(store, 0, SIZE)).equals(pattern(SIZE, 3)), 'store untouched');
    // The same connection still works, including right up to the last byte.
    const last = await c.pread(SIZE - 10, 10);
    assert.is(last.error, 0);
    assert.ok(last.data.equals(pattern(SIZE, 3).subarray(SIZE - 10)));
    assert.is((await c.pwrite(Buffer.from('end'), SIZE - 3)).error, 0);
    await c.disconnect();
  } finally {
    c.destroy();
  }
  await stillServes(fx, 'd', store);
  if (hasTool('qemu-io')) await qemuIo(fx.tcp.uri('d'), [`read -P 0x65 ${SIZE - 3} 1`]); // "e" of "end"
});

withServer('unknown commands and BLOCK_STATUS without negotiation get EINVAL; the connection goes on', async (fx) => {
  const store = new MemoryBackend(SIZE);
  await fx.server.addExport({ name: 'd', store });
  const { c } = await RawNbd.open(fx.unixTarget, 'd');
  try {
    for (const type of [CMD.BLOCK_STATUS, 8, 9, 99, 0xffff]) {
      assert.is((await c.request({ type, offset: 0, length: 512 })).error, ERRNO.EINVAL, `command ${type}`);
    }
    assert.is((await c.request({ type: CMD.CACHE, offset: 0, length: 4096 })).error, 0, 'CACHE is a harmless no-op');
    // Flags a command cannot carry (DF without structured replies, unknown bits, FUA on READ) are refused.
    for (const flags of [0x4, 0x20, 0x8000, 0x1]) {
      assert.is((await c.request({ type: CMD.READ, flags, offset: 0, length: 16 })).error, ERRNO.EINVAL, `READ with flags 0x${flags.toString(16)}`);
    }
    assert.is((await c.pread(0, 16)).error, 0);
    await c.disconnect();
  } finally {
    c.destroy();
  }
  await stillServes(fx, 'd', store, fx.unixTarget);
});

withServer('read-only export: WRITE, TRIM and WRITE_ZEROES get EPERM, nothing changes, reads and FLUSH work', async (fx) => {
  const store = new BufferStore(SIZE, { fill: pattern(SIZE, 4) });
  await fx.server.addExport({ name: 'ro', store, readOnly: true });
  const { c, go } = await RawNbd.open(fx.tcpTarget, 'ro');
  try {
    assert.ok(go.flags & 2, 'READ_ONLY advertised');
    assert.is((await c.pwrite(Buffer.alloc(4096, 1), 0)).error, ERRNO.EPERM);
    assert.is((await c.request({ type: CMD.TRIM, offset: 0, length: 4096 })).error, ERRNO.EPERM);
    assert.is((await c.request({ type: CMD.WRITE_ZEROES, offset: 0, length: 4096 })).error, ERRNO.EPERM);
    assert.is((await c.request({ type: CMD.FLUSH, offset: 0, length: 0 })).error, 0);
    const r = await c.pread(100, 5000);
    assert.is(r.error, 0);
    assert.ok(r.data.equals(pattern(SIZE, 4).subarray(100, 5100)));
    await c.disconnect();
  } finally {
    c.destroy();
  }
  assert.ok(store.bytes.equals(pattern(SIZE, 4)), 'store untouched');
  assert.not.ok(store.events.some((e) => e.op !== 'flush'), 'no write reached the store');
  await stillServes(fx, 'ro', store);
});

withServer('requests above the advertised maximum: error reply, payload skipped without buffering, connection goes on', async (fx) => {
  const store = new MemoryBackend(SIZE);
  await fx.server.addExport({ name: 'd', store });
  const { c, go } = await RawNbd.open(fx.tcpTarget, 'd');
  try {
    assert.is(go.blockSizes?.max, MiB, 'maximum advertised');
    const rr = await c.pread(0, MiB + 1);
    assert.ok(rr.error === ERRNO.EINVAL || rr.error === ERRNO.EOVERFLOW, `oversized read: errno ${rr.error}`);
    assert.is(rr.data.length, 0);
    assert.is((await c.pread(0, MiB)).error, 0, 'a read of exactly the maximum is fine');
    assert.is((await c.pwrite(pattern(MiB, 5), 7)).error, 0, 'a write of exactly the maximum is fine');

    // A 96 MiB WRITE (above the 1 MiB maximum, and beyond the export: the length is refused first)
    // with its full payload, sent in 1 MiB pieces (one reused buffer) with backpressure.
    const declared = 96 * MiB;
    // Warm up first (heap, allocator, socket buffers grow by tens of MiB on first use)
    // with the same traffic a legitimate client sends: max-size writes.
    const warm = pattern(MiB, 5);
    for (let k = 0; k < 32; k++) assert.is((await c.pwrite(warm, 7)).error, 0);
    const rssBefore = process.memoryUsage().rss;
    let rssMax = rssBefore;
    const handle = c.send({ type: CMD.WRITE, offset: 0, length: declared });
    const piece = Buffer.alloc(MiB, 0x5a);
    for (let sent = 0; sent < declared; sent += piece.length) {
      if (!c.write(piece)) await new Promise((r) => c.socket.once('drain', r));
      if ((sent / MiB) % 8 === 0) rssMax = Math.max(rssMax, process.memoryUsage().rss);
    }
    const wr = await c.reply(new Map(), 10_000);
    rssMax = Math.max(rssMax, process.memoryUsage().rss);
    assert.is(wr.handle, handle);
    assert.ok(wr.error === ERRNO.EINVAL || wr.error === ERRNO.EOVERFLOW, `oversized write: errno ${wr.error}`);
    // Roughly: the server must not have held the payload (96 MiB).
    assert.ok(rssMax - rssBefore < 48 * MiB, `RSS grew by ${((rssMax - rssBefore) / MiB).toFixed(1)} MiB while a 96 MiB oversized write streamed in`);
    // Framing survived: the next request is understood, and the 0x5a payload went nowhere.
    const after = await c.pread(7, MiB);
    assert.is(after.error, 0);
    assert.ok(after.data.equals(pattern(MiB, 5)));
    assert.not.ok((await readStore(store, 0, SIZE)).includes(Buffer.alloc(64, 0x5a)), 'oversized payload not written');
    await c.disconnect();
  } finally {
    c.destroy();
  }
  await stillServes(fx, 'd', store);
}, 40_000);

withServer('bad request magic closes that connection only', async (fx) => {
  const store = new MemoryBackend(SIZE);
  await fx.server.addExport({ name: 'd', store });
  const other = await RawNbd.open(fx.tcpTarget, 'd');
  const { c } = await RawNbd.open(fx.tcpTarget, 'd');
  try {
    assert.is((await c.pread(0, 512)).error, 0);
    c.write(requestHeader(CMD.READ, 0, 5n, 0n, 512, 0x25609514));
    assert.ok(await c.closesWithin(3000), 'server closes a connection with bad magic');
    // The other connection is unaffected.
    assert.is((await other.c.pwrite(Buffer.from('still here'), 100)).error, 0);
    assert.is((await other.c.pread(100, 10)).data.toString(), 'still here');
    await other.c.disconnect();
  } finally {
    c.destroy();
    other.c.destroy();
  }
  await stillServes(fx, 'd', store);
});

withServer('garbage during the handshake and during transmission: closed; others keep being served', async (fx) => {
  const store = new MemoryBackend(SIZE);
  await fx.server.addExport({ name: 'd', store });
  await fx.server.addExport({ name: 'e', store: new MemoryBackend(MiB) });
  const cases: Array<[string, (c: RawNbd) => Promise<void>]> = [
    ['HTTP request instead of client flags', async (c) => void c.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'))],
    ['random bytes instead of client flags', async (c) => {
      const g = randomBytes(4096);
      g[0] = 0xff; // make sure the "client flags" have unknown bits
      c.write(g);
    }],
    ['random bytes instead of an option', async (c) => {
      c.clientFlags(3);
      const g = randomBytes(64 * 1024);
      g[0] = 0; // not IHAVEOPT
      c.write(g);
    }],
    ['option header with a huge length, then the peer stops', async (c) => {
      c.clientFlags(3);
      c.write(optionHeader(7, 0xffffffff));
      c.write(randomBytes(MiB));
      c.socket.end(); // half-close: the server must not wait for the 4 GiB
    }],
    ['random bytes after GO', async (c) => {
      c.clientFlags(3);
      await c.go('e');
      const g = randomBytes(100_000);
      g[0] = 0x00;
      c.write(g);
    }],
    ['a truncated request, then close', async (c) => {
      c.clientFlags(3);
      await c.go('e');
      c.write(requestHeader(CMD.WRITE, 0, 1n, 0n, 4096).subarray(0, 20));
      c.socket.end();
    }],
  ];
  for (const [what, act] of cases) {
    const c = await RawNbd.connect(fx.tcpTarget);
    try {
      await c.greeting();
      await act(c);
      assert.ok(await c.closesWithin(3000), `server closes on: ${what}`);
    } finally {
      c.destroy();
    }
  }
  await withTimeout(3000, 'connections drained', async () => {
    while (fx.server.connectionCount > 0) await new Promise((r) => setTimeout(r, 20));
  });
  assert.ok((await readStore(store, 0, SIZE)).equals(Buffer.alloc(SIZE)), 'garbage never reached a store');
  await stillServes(fx, 'd', store);
  await stillServes(fx, 'd', store, fx.unixTarget);
});

withServer('an acknowledged write followed by FLUSH is readable by a new client; DISC answers what is in flight first', async (fx) => {
  const store = new BufferStore(SIZE, { delayMs: 20 });
  await fx.server.addExport({ name: 'd', store });
  const data = pattern(300_001, 6);
  {
    const { c } = await RawNbd.open(fx.tcpTarget, 'd');
    assert.is((await c.pwrite(data, 1_000_003)).error, 0);
    assert.is((await c.request({ type: CMD.FLUSH, offset: 0, length: 0 })).error, 0);
    c.destroy(); // hard disconnect right after the flush reply
  }
  {
    const { c } = await RawNbd.open(fx.unixTarget, 'd');
    const r = await c.pread(1_000_003, data.length);
    assert.ok(r.data.equals(data), 'a new client reads the flushed write');
    // Pipelined WRITE + DISC: the write is answered before the server closes.
    const h = c.send({ type: CMD.WRITE, offset: 17, length: 5, payload: Buffer.from('hello') });
    c.send({ type: CMD.DISC, offset: 0, length: 0 });
    const rep = await c.reply();
    assert.is(rep.handle, h);
    assert.is(rep.error, 0);
    assert.ok(await c.closesWithin(3000), 'server closes after DISC');
    assert.is(c.pending, 0, 'no reply to DISC');
    c.destroy();
  }
  assert.is(store.bytes.subarray(17, 22).toString(), 'hello');
  if (hasTool('qemu-io')) await qemuIo(fx.tcp.uri('d'), [`read -P 0x68 17 1`]);
});

/** Random per-operation delays so replies come back out of order. */
class JitterStore implements ReadWriterAt {
  readonly inner: ReadWriterAt;
  constructor(inner: ReadWriterAt) {
    this.inner = inner;
  }
  get caps() {
    return this.inner.caps;
  }
  private jitter(): Promise<void> {
    return new Promise((r) => setTimeout(r, Math.random() * 8));
  }
  size() {
    return this.inner.size();
  }
  async readAt(buf: Uint8Array, offset: number) {
    await this.jitter();
    return this.inner.readAt(buf, offset);
  }
  async writeAt(data: Uint8Array, offset: number, opts?: WriteOptions) {
    await this.jitter();
    return this.inner.writeAt(data, offset, opts);
  }
  flush() {
    return this.inner.flush();
  }
  trim(o: number, l: number, opts?: WriteOptions) {
    return this.inner.trim(o, l, opts);
  }
  writeZeroes(o: number, l: number, opts?: ZeroOptions) {
    return this.inner.writeZeroes(o, l, opts);
  }
  capability() {
    return undefined;
  }
  close() {
    return this.inner.close();
  }
}

withServer('pipelining: 64 requests sent without waiting, replies matched by handle, all correct', async (fx) => {
  const base = pattern(SIZE, 7);
  const mem = new MemoryBackend(SIZE);
  await mem.writeAt(base, 0);
  const store = new JitterStore(mem);
  await fx.server.addExport({ name: 'd', store });
  const { c } = await RawNbd.open(fx.tcpTarget, 'd');
  try {
    type Op = { kind: 'read' | 'write'; offset: number; length: number; data?: Buffer };
    const ops = new Map<bigint, Op>();
    const lengths = new Map<bigint, number>();
    // Writes go to the first half, reads to the second: disjoint, so every reply is checkable.
    for (let i = 0; i < 64; i++) {
      const handle = randomBytes(8).readBigUInt64BE(0);
      if (i % 2 === 0) {
        const offset = 1000 + i * 20_011;
        const data = pattern(10_000 + i * 37, 1000 + i);
        ops.set(handle, { kind: 'write', offset, length: data.length, data });
        c.send({ type: CMD.WRITE, handle, offset, length: data.length, payload: data });
      } else {
        const offset = 2 * MiB + 333 + i * 17_003;
        const length = 4096 + i * 101;
        ops.set(handle, { kind: 'read', offset, length });
        lengths.set(handle, length);
        c.send({ type: CMD.READ, handle, offset, length });
      }
    }
    const order: bigint[] = [];
    for (let i = 0; i < 64; i++) {
      const r = await c.reply(lengths);
      const op = ops.get(r.handle);
      assert.ok(op, `reply for an unknown or repeated handle ${r.handle}`);
      ops.delete(r.handle);
      order.push(r.handle);
      assert.is(r.error, 0);
      if (op!.kind === 'read') assert.ok(r.data.equals(base.subarray(op!.offset, op!.offset + op!.length)), `read at ${op!.offset}`);
      else assert.ok((await readStore(mem, op!.offset, op!.length)).equals(op!.data!), `write at ${op!.offset} is in the store when acknowledged`);
    }
    assert.is(ops.size, 0, 'every request answered exactly once');
    assert.is(c.pending, 0, 'nothing extra sent');
    await c.disconnect();
  } finally {
    c.destroy();
  }
});

withServer('server close with clients connected: in-flight requests answered, no hang, listeners gone', async (fx) => {
  const store = new BufferStore(SIZE, { fill: pattern(SIZE, 8), delayMs: 300 });
  await fx.server.addExport({ name: 'd', store });
  // A: in transmission with requests in flight. B: idle in transmission. C: still in the handshake.
  const a = await RawNbd.open(fx.tcpTarget, 'd');
  const b = await RawNbd.open(fx.unixTarget, 'd');
  const cc = await RawNbd.connect(fx.tcpTarget);
  try {
    await cc.greeting();
    const lengths = new Map<bigint, number>();
    const reads = [0, 4096, 123_457, SIZE - 1000].map((offset) => {
      const h = a.c.send({ type: CMD.READ, offset, length: 1000 });
      lengths.set(h, 1000);
      return { h, offset };
    });
    const wh = a.c.send({ type: CMD.WRITE, offset: 50, length: 4, payload: Buffer.from('last') });
    await new Promise((r) => setTimeout(r, 60)); // let the server pick them up
    const t0 = Date.now();
    const closing = fx.server.close();
    const replies = new Map<bigint, Buffer>();
    for (let i = 0; i < 5; i++) {
      const r = await a.c.reply(lengths, 5000);
      assert.is(r.error, 0, `in-flight request ${r.handle} answered without error`);
      replies.set(r.handle, r.data);
    }
    for (const { h, offset } of reads) assert.ok(replies.get(h)!.equals(pattern(SIZE, 8).subarray(offset, offset + 1000)));
    assert.ok(replies.has(wh));
    await withTimeout(8000, 'NbdServer.close with clients connected', closing);
    const took = Date.now() - t0;
    assert.ok(took < 3000, `close took ${took} ms`);
    assert.ok(await a.c.closesWithin(2000), 'A disconnected');
    assert.ok(await b.c.closesWithin(2000), 'B disconnected');
    assert.ok(await cc.closesWithin(2000), 'C disconnected');
    assert.is(store.bytes.subarray(50, 54).toString(), 'last', 'the in-flight write landed');
    assert.ok(store.events.some((e) => e.op === 'flush'), 'close flushes the export');
    assert.not.ok(existsSync(fx.unix.path!), 'unix socket removed');
    const refused = await RawNbd.connect(fx.tcpTarget, 2000).then((x) => (x.destroy(), false), () => true);
    assert.ok(refused, 'no longer listening on TCP');
  } finally {
    a.c.destroy();
    b.c.destroy();
    cc.destroy();
  }
});

// libnbd and qemu clients, when idle, do not read, so they never answer the
// server's FIN: close must not wait for that, only for the replies in flight.
// (It used to wait out the whole grace: with the grace at 10 minutes, the
// hang guard below fails.)
const IDLE_CLOSE = 'server close with idle libnbd and qemu clients connected returns once the replies in flight are answered, not at the grace';
needTools(test, ['nbdsh', 'qemu-io'])(IDLE_CLOSE, async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, IDLE_CLOSE, async () => idleClose(await startServer(s, [], { maxPayload: MiB }), s));
  } finally {
    await s.close();
  }
});

needTools(test, ['nbdsh'])('the same on a worker thread (a file export): close returns without waiting for an idle client', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'idle close on a worker', async () => {
      const fx = await startServer(s, [], { maxPayload: MiB, workers: 1 });
      const store = await FileBackend.open(join(fx.dir, 'f.img'), { size: MiB, create: true });
      await fx.server.addExport({ name: 'f', store });
      const sh = s.spawn('nbdsh', ['-u', fx.tcp.uri('f'), '-c', 'import sys\nh.pread(512, 0)\nprint("ready", flush=True)\nsys.stdin.readline()'], { env: TOOL_ENV, stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      sh.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
      while (!/ready/.test(out)) {
        assert.is(sh.exitCode, null, 'nbdsh exited early');
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.is(fx.server.handedOff.worker, 1, 'served on a worker thread');
      await withTimeout(30_000, 'NbdServer.close(10 min grace) with an idle client on a worker', fx.server.close(600_000));
    });
  } finally {
    await s.close();
  }
});

async function idleClose(fx: Fixture, s: Scope): Promise<void> {
  let readsStarted = 0;
  class CountingStore extends BufferStore {
    override async readAt(buf: Uint8Array, offset: number): Promise<void> {
      readsStarted++;
      return super.readAt(buf, offset);
    }
  }
  const store = new CountingStore(SIZE, { fill: pattern(SIZE, 9), delayMs: 300 });
  await fx.server.addExport({ name: 'd', store });
  const spawnIdle = (cmd: string, args: string[]) => {
    const child = s.spawn(cmd, args, { env: TOOL_ENV, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (out += d));
    return { child, out: () => out };
  };
  // nbdsh: one read, then idle until told to read again.
  const sh = spawnIdle('nbdsh', ['-u', fx.tcp.uri('d'), '-c', 'import sys\nh.pread(512, 0)\nprint("ready", flush=True)\nsys.stdin.readline()\ntry:\n  h.pread(512, 0)\n  print("still served")\nexcept Exception as e:\n  print("gone:", e)']);
  // qemu-io: interactive, connected, idle at its prompt.
  const qemu = spawnIdle('qemu-io', ['-f', 'raw', fx.unix.uri('d')]);
  qemu.child.stdin!.write('read -P 0x09 0 0\n');
  while (!/ready/.test(sh.out()) || !/read 0\/0 bytes|qemu-io>.*qemu-io>/s.test(qemu.out())) {
    assert.ok(sh.child.exitCode === null && qemu.child.exitCode === null, `a client exited early:\n${sh.out()}\n${qemu.out()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  // And a raw client with a read in flight (the store takes 300 ms) when close starts.
  const { c } = await RawNbd.open(fx.tcpTarget, 'd');
  try {
    const before = readsStarted;
    const h = c.send({ type: CMD.READ, offset: 4096, length: 1000 });
    while (readsStarted === before) await new Promise((r) => setTimeout(r, 10));
    const closing = withTimeout(30_000, 'NbdServer.close(10 min grace) with idle clients', fx.server.close(600_000));
    const r = await c.reply(new Map([[h, 1000]]), 10_000);
    assert.is(r.error, 0, 'the read in flight is answered');
    assert.ok(r.data.equals(pattern(SIZE, 9).subarray(4096, 5096)));
    await closing;
    assert.ok(await c.closesWithin(5000), 'the raw client is disconnected');
    sh.child.stdin!.end('\n');
    await withTimeout(20_000, 'nbdsh exit', new Promise((res) => (sh.child.exitCode !== null ? res(null) : sh.child.once('exit', res))));
    assert.match(sh.out(), /gone:/, `nbdsh sees the server gone:\n${sh.out()}`);
  } finally {
    c.destroy();
  }
}

withServer('closing one endpoint stops new connections there only; connected clients keep working', async (fx) => {
  const store = new MemoryBackend(SIZE);
  await fx.server.addExport({ name: 'd', store });
  const { c } = await RawNbd.open(fx.tcpTarget, 'd');
  try {
    await withTimeout(3000, 'endpoint.close with a client connected', fx.tcp.close());
    const refused = await RawNbd.connect(fx.tcpTarget, 2000).then((x) => (x.destroy(), false), () => true);
    assert.ok(refused, 'TCP endpoint no longer accepts');
    assert.is((await c.pwrite(Buffer.from('kept'), 9)).error, 0, 'existing client still served');
    assert.is((await c.pread(9, 4)).data.toString(), 'kept');
    await c.disconnect();
  } finally {
    c.destroy();
  }
  await stillServes(fx, 'd', store, fx.unixTarget);
});

withServer('EXPORT_NAME (old way into transmission) works; an unknown name is closed; ABORT is acknowledged', async (fx) => {
  const store = new MemoryBackend(SIZE);
  await fx.server.addExport({ name: 'd', store });
  for (const noZeroes of [true, false]) {
    const c = await RawNbd.connect(fx.tcpTarget);
    try {
      await c.greeting();
      c.clientFlags(noZeroes ? 3 : 1);
      c.sendOption(OPT.EXPORT_NAME, Buffer.from('d'));
      const info = await c.read(noZeroes ? 10 : 134);
      assert.is(Number(info.readBigUInt64BE(0)), SIZE);
      assert.ok(info.readUInt16BE(8) & 1);
      assert.is((await c.pwrite(Buffer.from('xyz'), 3)).error, 0);
      assert.is((await c.pread(3, 3)).data.toString(), 'xyz');
      assert.is(c.pending, 0, noZeroes ? 'no padding with NO_ZEROES' : 'exactly 124 bytes of padding');
      await c.disconnect();
    } finally {
      c.destroy();
    }
  }
  const bad = await RawNbd.connect(fx.unixTarget);
  try {
    await bad.greeting();
    bad.clientFlags(3);
    bad.sendOption(OPT.EXPORT_NAME, Buffer.from('nope'));
    assert.ok(await bad.closesWithin(3000), 'unknown EXPORT_NAME closes');
    assert.is(bad.pending, 0, 'nothing sent');
  } finally {
    bad.destroy();
  }
  const ab = await RawNbd.connect(fx.unixTarget);
  try {
    await ab.greeting();
    ab.clientFlags(3);
    ab.sendOption(OPT.ABORT);
    const r = await ab.readOptionReply();
    assert.equal([r.option, r.type], [OPT.ABORT, REP.ACK]);
    assert.ok(await ab.closesWithin(3000));
  } finally {
    ab.destroy();
  }
  await stillServes(fx, 'd', store);
});

withServer('a refused client that ignores the server\'s FIN is still dropped (no half-open sockets kept)', async (fx) => {
  await fx.server.addExport({ name: 'd', store: new MemoryBackend(MiB) });
  // allowHalfOpen: this client never closes its side, like a hostile one.
  const socks = await Promise.all(
    [Buffer.from('GET / HTTP/1.1\r\n\r\n'), Buffer.concat([Buffer.from([0, 0, 0, 3]), optionHeader(OPT.ABORT, 0)])].map(
      (payload) =>
        new Promise<Socket>((resolve, reject) => {
          const sock = connect({ host: fx.tcp.host!, port: fx.tcp.port!, allowHalfOpen: true });
          sock.on('data', () => {});
          sock.on('error', () => {});
          sock.once('error', reject);
          sock.once('connect', () => {
            sock.write(payload);
            resolve(sock);
          });
        }),
    ),
  );
  try {
    const deadline = Date.now() + 3000;
    while (fx.server.connectionCount > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.is(fx.server.connectionCount, 0, 'connections refused during the handshake are released');
  } finally {
    for (const s of socks) s.destroy();
  }
});

withServer('serveConnection with preNegotiated: the socket starts in transmission (no greeting)', async (fx, s) => {
  const store = new MemoryBackend(SIZE);
  await fx.server.addExport({ name: 'd', store });
  let wanted = 'd';
  let thrown: unknown;
  const side = createServer((sock) => {
    try {
      fx.server.serveConnection(sock, { preNegotiated: wanted });
    } catch (e) {
      thrown = e;
      sock.destroy();
    }
  });
  await new Promise<void>((r) => side.listen(0, '127.0.0.1', r));
  s.defer(() => new Promise<void>((r) => side.close(() => r())));
  const target = { host: '127.0.0.1', port: (side.address() as { port: number }).port };
  const c = await RawNbd.connect(target);
  try {
    // No greeting: the first bytes we read are the reply to our first request.
    assert.is((await c.pwrite(Buffer.from('direct'), 1234)).error, 0);
    const r = await c.pread(1234, 6);
    assert.is(r.data.toString(), 'direct');
    await c.disconnect();
  } finally {
    c.destroy();
  }
  assert.is((await readStore(store, 1234, 6)).toString(), 'direct');
  // An unknown export name is refused up front.
  wanted = 'nope';
  const bad = await RawNbd.connect(target);
  try {
    assert.ok(await bad.closesWithin(3000));
    assert.instance(thrown, Error);
    assert.match((thrown as Error).message, /nope/);
  } finally {
    bad.destroy();
  }
});

withServer('a client that stops reading replies is throttled (bounded memory), then gets every reply', async (fx) => {
  const store = new MemoryBackend(SIZE);
  await fx.server.addExport({ name: 'd', store });
  await store.writeAt(pattern(SIZE, 5), 0);
  const { c } = await RawNbd.open(fx.unixTarget, 'd');
  try {
    c.socket.pause(); // read nothing from now on
    const N = 200;
    const lengths = new Map<bigint, number>();
    for (let i = 0; i < N; i++) lengths.set(c.send({ type: CMD.READ, offset: (i % 4) * MiB, length: MiB }), MiB);
    await new Promise((r) => setTimeout(r, 1000));
    const served = fx.server.stats.reads;
    // In-flight plus unsent reply bytes are bounded by maxInFlightBytes (64 MiB by default).
    const budget = fx.server.limits.maxInFlightBytes / MiB;
    assert.ok(served <= budget + 2, `served ${served} of ${N} 1 MiB reads to a client that reads nothing (budget ${budget})`);
    assert.ok(served < N, 'intake stopped');
    c.socket.resume();
    const seen = new Set<bigint>();
    for (let i = 0; i < N; i++) {
      const r = await c.reply(lengths, 10_000);
      assert.is(r.error, 0);
      assert.is(r.data.length, MiB);
      seen.add(r.handle);
    }
    assert.is(seen.size, N, 'every request answered once');
    await c.disconnect();
  } finally {
    c.destroy();
  }
}, 40_000);

test.run();
