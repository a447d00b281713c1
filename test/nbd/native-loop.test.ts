/**
 * The native NBD loop (native/src/nbd_serve.cc, engine/nbd/native-serve.ts)
 * answers every request exactly as the JS data path does. The same seeded
 * sequence of unaligned writes, reads, trims, zeroes (with and without
 * NO_HOLE), block status (with and without REQ_ONE), flushes and refused
 * requests runs through libnbd against two servers over the same kind of
 * store (a SharedMemoryBackend whose size is not a multiple of its chunk):
 * one serving it natively, one on a JS worker; with structured replies and
 * with simple ones; every answer must match. Then the raw wire cases
 * libnbd will not send (oversized requests, unknown commands and flags,
 * bad magic).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { SharedMemoryBackend } from '../../engine/backends/shared-memory.ts';
import { nativeServeAvailable } from '../../engine/nbd/native-serve.ts';
import { nativeAvailable } from '../../native/index.ts';
import { needCondition, needTools, Scope, withTimeout } from '../helpers/env.ts';
import { CMD, ERRNO, RawNbd, requestHeader } from '../helpers/nbd-raw.ts';
import { ok, startServer, tool, type Fixture } from './fixture.ts';

const test = suite('nbd/native-loop');
const MiB = 1024 * 1024;
const SIZE = 4 * MiB + 12_345;
const ready = nativeAvailable() && nativeServeAvailable();
const withNative = needCondition(test, ready, 'the native addon is not built (node native/build.mjs)');
const withNbdsh = ready ? needTools(test, ['nbdsh']) : withNative;

async function inScope(what: string, ms: number, body: (s: Scope) => Promise<void>): Promise<void> {
  const s = new Scope();
  try {
    await withTimeout(ms, what, () => body(s));
  } finally {
    await s.close();
  }
}

async function serverFor(s: Scope, native: boolean, opts: { readOnly?: boolean; maxPayload?: number } = {}): Promise<Fixture> {
  const store = await SharedMemoryBackend.create(SIZE);
  s.defer(() => store.close());
  return startServer(s, [{ name: 'r', store, readOnly: opts.readOnly }], { workers: 1, nativeDataPath: native, ...(opts.maxPayload ? { maxPayload: opts.maxPayload } : {}) });
}

const SCRIPT = (uri: string) => `
import nbd, random, hashlib
URI = ${JSON.stringify(uri)}
SIZE = ${SIZE}
out = []
def attempt(f):
    try:
        r = f()
        return "ok" if r is None else r
    except nbd.Error as e:
        return "E%s" % e.errno
rnd = random.Random(7)
for structured in (True, False):
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.set_request_structured_replies(structured)
    h.add_meta_context("base:allocation")
    h.connect_uri(URI)
    meta = h.can_meta_context("base:allocation")
    out.append("structured %s meta %s" % (h.get_structured_replies_negotiated(), meta))
    for i in range(400):
        op = rnd.randrange(9)
        off = rnd.randrange(SIZE)
        ln = min(rnd.choice([1, 511, 4096, 65536, 70000, 300000, 1 << 20]), SIZE - off)
        if op <= 2:
            data = bytes([rnd.randrange(1, 256)]) * ln
            out.append("w %d %d %s" % (off, ln, attempt(lambda: h.pwrite(data, off))))
        elif op <= 4:
            out.append("r %d %d %s" % (off, ln, hashlib.sha1(h.pread(ln, off)).hexdigest()))
        elif op == 5:
            out.append("t %d %d %s" % (off, ln, attempt(lambda: h.trim(ln, off))))
        elif op == 6:
            fl = nbd.CMD_FLAG_NO_HOLE if rnd.random() < 0.5 else 0
            out.append("z %d %d %d %s" % (off, ln, fl, attempt(lambda: h.zero(ln, off, fl))))
        elif op == 7 and meta:
            ext = []
            fl = nbd.CMD_FLAG_REQ_ONE if rnd.random() < 0.3 else 0
            def cb(m, o, entries, err):
                ext.append((m, list(entries)))
                return 0
            h.block_status(ln, off, cb, fl)
            out.append("b %d %d %d %s" % (off, ln, fl, ext))
        else:
            out.append("f %s %s" % (attempt(lambda: h.flush()), attempt(lambda: h.cache(ln, off))))
    # Refused: out of range, in each command.
    out.append("oob %s %s %s %s" % (attempt(lambda: h.pread(4096, SIZE - 100)), attempt(lambda: h.pwrite(b"x" * 4096, SIZE - 100)),
        attempt(lambda: h.trim(4096, SIZE - 100)), attempt(lambda: h.zero(4096, SIZE))))
    out.append("all %s" % hashlib.sha1(h.pread(SIZE, 0)).hexdigest())
    h.shutdown()
print("\\n".join(str(x) for x in out))
`;

withNbdsh('the native loop answers a seeded mix of every command exactly as the JS worker path does', async () => {
  await inScope('differential', 120_000, async (s) => {
    const outputs: string[] = [];
    for (const native of [true, false]) {
      const fx = await serverFor(s, native);
      const r = await tool('nbdsh', ['-c', SCRIPT(fx.unix.uri('r'))], 90_000);
      assert.is(r.code, 0, `nbdsh failed: ${r.stderr}`);
      outputs.push(r.stdout);
      assert.equal(fx.server.handedOff, native ? { native: 2, worker: 0 } : { native: 0, worker: 2 }, 'served where it should have been');
    }
    const [n, j] = outputs.map((o) => o.trim().split('\n'));
    assert.ok(n!.length > 700, `a full run (${n!.length} lines)`);
    assert.match(outputs[0]!, /^structured True meta True/);
    assert.match(outputs[0]!, /structured False meta False/);
    for (let i = 0; i < Math.max(n!.length, j!.length); i++) assert.is(n![i], j![i], `answer ${i} differs`);
  });
});

withNbdsh('the native loop on a read-only export refuses writes, trims and zeroes with EPERM and still reads', async () => {
  await inScope('read-only', 30_000, async (s) => {
    const fx = await serverFor(s, true, { readOnly: true });
    const script = `
h.set_strict_mode(0)
for f in (lambda: h.pwrite(b"x" * 512, 0), lambda: h.trim(4096, 0), lambda: h.zero(4096, 0)):
    try:
        f()
        print("accepted")
    except nbd.Error as e:
        print("E%s" % e.errno)
print(h.pread(4, 0))
`;
    const r = await tool('nbdsh', ['-u', fx.unix.uri('r'), '-c', script]);
    assert.is(r.stdout.trim().split('\n').join(' '), "EEPERM EEPERM EEPERM bytearray(b'\\x00\\x00\\x00\\x00')", r.stderr);
    assert.is(fx.server.handedOff.native, 1);
  });
});

const withCopyTools = ready ? needTools(test, ['nbdcopy', 'qemu-img']) : withNative;

withCopyTools('nbdcopy (4 connections) writes and reads back 16 MiB through the native loop; qemu-img compare agrees', async () => {
  await inScope('nbdcopy round trip', 90_000, async (s) => {
    const dir = s.tmpdir('quicmap-native-');
    const input = join(dir, 'in.img');
    const output = join(dir, 'out.img');
    const data = randomBytes(16 * MiB);
    data.fill(0, 3 * MiB, 5 * MiB); // a run of zeros: nbdcopy may zero (WRITE_ZEROES) rather than write it
    writeFileSync(input, data);
    const store = await SharedMemoryBackend.create(16 * MiB);
    s.defer(() => store.close());
    const fx = await startServer(s, [{ name: 'd', store }], { workers: 2 });
    await ok('nbdcopy', ['--connections=4', input, fx.unix.uri('d')], 60_000);
    await ok('nbdcopy', ['--connections=4', fx.tcp.uri('d'), output], 60_000);
    assert.ok(readFileSync(output).equals(data), 'read back what was written');
    const back = new Uint8Array(16 * MiB);
    await store.readAt(back, 0);
    assert.ok(Buffer.from(back).equals(data), 'the main thread sees the same bytes');
    await ok('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', input, fx.tcp.uri('d')], 60_000);
    assert.ok(fx.server.handedOff.native >= 3, `connections served natively: ${JSON.stringify(fx.server.handedOff)}`);
    assert.is(fx.server.handedOff.worker, 0);
  });
});

withNative('raw wire: oversized READ and WRITE, unknown command and flags are refused and the connection goes on; bad magic ends it', async () => {
  await inScope('raw', 30_000, async (s) => {
    const fx = await serverFor(s, true, { maxPayload: MiB });
    const { c } = await RawNbd.open(fx.tcpTarget, 'r');
    s.defer(() => c.destroy());
    assert.is((await c.request({ type: CMD.READ, offset: 0n, length: 2 * MiB })).error, ERRNO.EINVAL);
    // A WRITE over the maximum: its payload is skipped, then the next request is served.
    const h = c.send({ type: CMD.WRITE, offset: 0n, length: 2 * MiB, payload: Buffer.alloc(2 * MiB, 7) });
    const r1 = await c.reply();
    assert.is(r1.handle, h);
    assert.is(r1.error, ERRNO.EINVAL);
    assert.is((await c.request({ type: 77, offset: 0n, length: 0 })).error, ERRNO.EINVAL);
    assert.is((await c.request({ type: CMD.READ, flags: 0x40, offset: 0n, length: 512 })).error, ERRNO.EINVAL);
    assert.is((await c.request({ type: CMD.WRITE, offset: BigInt(SIZE), length: 512, payload: Buffer.alloc(512) })).error, ERRNO.ENOSPC);
    const data = Buffer.alloc(4096, 0x5a);
    assert.is((await c.pwrite(data, 8192)).error, 0);
    const back = await c.pread(8192, 4096);
    assert.is(back.error, 0);
    assert.ok(back.data.equals(data));
    assert.ok(fx.logs.some((l) => /exceeds the maximum/.test(l)), `logged: ${fx.logs.join(' / ')}`);
    c.write(requestHeader(CMD.READ, 0, 9n, 0n, 512, 0x12345678));
    assert.ok(await c.closesWithin(10_000), 'bad magic ends the connection');
    assert.is(fx.server.handedOff.native, 1);
  });
});

test.run();
