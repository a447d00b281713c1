/**
 * The relay's native splice (native/src/splice.cc) on loopback sockets:
 * bytes and order both ways at once, half-close, the byte cap, stop, an
 * error, the heads sent first, and no descriptor left behind.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { readdirSync, readlinkSync } from 'node:fs';
import { loadNative, type NativeRelaySpliceClosed } from '../../native/index.ts';
import { socketFd, takeOver } from '../../p2p/relay/native-splice.ts';
import { needCondition, Scope, withTimeout } from '../helpers/env.ts';
import { NATIVE_OK, NATIVE_REASON } from './helpers.ts';

const nativeTest = needCondition(test, NATIVE_OK, NATIVE_REASON);
const MiB = 1024 * 1024;

/** A recomputable byte per offset, different per direction. */
const pat = (i: number, seed: number) => (i * 7 + (i >>> 11) * 13 + seed) & 0xff;
function chunk(offset: number, n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = pat(offset + i, seed);
  return b;
}

/** This process's pipe and socket descriptors, as "fd -> target" (Node may close descriptors of its own meanwhile: only new ones count). */
function pipesAndSockets(): Set<string> {
  const out = new Set<string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // closed while listing (the listing's own descriptor)
    }
    if (target.startsWith('pipe:') || target.startsWith('socket:')) out.add(`${fd} -> ${target}`);
  }
  return out;
}
const leaked = (before: Set<string>) => [...pipesAndSockets()].filter((x) => !before.has(x));

/**
 * Two loopback connections: the test holds `a` and `b` (its peers), the
 * relay-side ends `ra`, `rb` are never read by Node (pauseOnConnect).
 */
async function pairs(s: Scope, allowHalfOpen = false) {
  const accepted: Socket[] = [];
  let want: ((x: Socket) => void) | undefined;
  const server: Server = createServer({ pauseOnConnect: true, allowHalfOpen: true }, (x) => {
    x.on('error', () => {});
    if (want) want(x);
    else accepted.push(x);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  s.defer(() => new Promise<void>((r) => server.close(() => r())));
  const port = (server.address() as { port: number }).port;
  const one = async () => {
    const got = new Promise<Socket>((r) => (accepted.length ? r(accepted.shift()!) : (want = r)));
    const c = connect({ port, host: '127.0.0.1', allowHalfOpen });
    c.on('error', () => {});
    await new Promise<void>((r, j) => c.once('connect', () => r()).once('error', j));
    const x = await got;
    want = undefined;
    s.defer(() => {
      c.destroy();
      x.destroy();
    });
    return [c, x] as const;
  };
  const [a, ra] = await one();
  const [b, rb] = await one();
  return { a, b, ra, rb };
}

function splice(ra: Socket, rb: Socket, o: { capBytes?: number; headAB?: Buffer; headBA?: Buffer } = {}) {
  const n = loadNative();
  const fa = socketFd(ra);
  const fb = socketFd(rb);
  assert.ok(fa !== undefined && fb !== undefined, 'relay-side descriptors');
  const progress: number[] = [];
  let done!: (c: NativeRelaySpliceClosed) => void;
  const closed = new Promise<NativeRelaySpliceClosed>((r) => (done = r));
  const id = n.relaySplice!({ a: fa!, b: fb!, name: 'test', ...o }, (kind, v) => {
    if (kind === 'closed') done(v as NativeRelaySpliceClosed);
    else progress.push(v.bytesAB + v.bytesBA);
  });
  return { id, closed, progress, n };
}

/** Send `total` pattern bytes, 1 MiB at a time, honouring backpressure; end after if asked. */
async function send(sock: Socket, total: number, seed: number, end: boolean): Promise<void> {
  for (let off = 0; off < total; off += MiB) {
    const n = Math.min(MiB, total - off);
    if (!sock.write(chunk(off, n, seed))) await new Promise((r) => sock.once('drain', r));
  }
  if (end) await new Promise<void>((r) => sock.end(() => r()));
}

/** Read until EOF, checking every byte against the pattern; resolves with the count. */
function receive(sock: Socket, seed: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let at = 0;
    let bad = -1;
    sock.on('data', (d: Buffer) => {
      for (let i = 0; i < d.length && bad < 0; i++) if (d[i] !== pat(at + i, seed)) bad = at + i;
      at += d.length;
    });
    sock.once('end', () => (bad >= 0 ? reject(new Error(`wrong byte at ${bad}`)) : resolve(at)));
    sock.once('close', () => (bad >= 0 ? reject(new Error(`wrong byte at ${bad}`)) : resolve(at)));
  });
}

const caseOf = (name: string, ms: number, fn: (s: Scope) => Promise<void>) =>
  nativeTest(name, async () => {
    const s = new Scope();
    try {
      await withTimeout(ms, name, fn(s));
    } finally {
      await s.close();
    }
  });

caseOf('64 MiB each way at once, in order; EOFs propagate; closed with the counts; no descriptor leaks', 60_000, async (s) => {
  const before = pipesAndSockets();
  const inner = new Scope();
  try {
    const { a, b, ra, rb } = await pairs(inner, true);
    const total = 64 * MiB;
    const sp = splice(ra, rb);
    const gotB = receive(b, 1);
    const gotA = receive(a, 2);
    await Promise.all([send(a, total, 1, true), send(b, total, 2, true)]);
    assert.is(await gotB, total, 'b got all of a');
    assert.is(await gotA, total, 'a got all of b');
    const c = await sp.closed;
    assert.is(c.reason, 'end');
    assert.is(c.bytesAB, total);
    assert.is(c.bytesBA, total);
    assert.ok(sp.progress.length > 0, 'progress was reported');
    assert.ok(sp.progress.every((p, i) => p <= 2 * total && (i === 0 || p >= sp.progress[i - 1]!)), 'progress grows');
    assert.is(sp.n.relaySpliceBytes!(sp.id), undefined, 'gone once closed');
    assert.is(sp.n.relaySpliceStop!(sp.id), false);
  } finally {
    await inner.close();
  }
  // Closes complete in the next turns of the loop.
  for (let i = 0; leaked(before).length > 0 && i < 50; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(leaked(before), [], 'no pipe or socket left open');
});

caseOf('half-close: a ends, b still sends to a; the circuit ends when b ends too', 20_000, async (s) => {
  const { a, b, ra, rb } = await pairs(s, true);
  const sp = splice(ra, rb);
  const gotB = receive(b, 3);
  await send(a, 3 * MiB, 3, true);
  assert.is(await gotB, 3 * MiB, 'b saw all of a, then EOF');
  const gotA = receive(a, 4);
  await send(b, 2 * MiB, 4, false);
  const mid = await Promise.race([sp.closed.then(() => 'closed'), new Promise((r) => setTimeout(() => r('open'), 200))]);
  assert.is(mid, 'open', 'still open while b has not ended');
  b.end();
  assert.is(await gotA, 2 * MiB, 'a got b\'s bytes after its own EOF');
  const c = await sp.closed;
  assert.is(c.reason, 'end');
  assert.equal([c.bytesAB, c.bytesBA], [3 * MiB, 2 * MiB]);
});

caseOf('the cap: exactly the budget passes, then closed with reason cap', 20_000, async (s) => {
  const { a, b, ra, rb } = await pairs(s);
  const cap = MiB + 12345;
  const sp = splice(ra, rb, { capBytes: cap });
  let got = 0;
  b.on('data', (d: Buffer) => (got += d.length));
  void send(a, 4 * MiB, 5, false).catch(() => {});
  const c = await sp.closed;
  assert.is(c.reason, 'cap');
  assert.is(c.bytesAB + c.bytesBA, cap);
  for (let i = 0; got < cap && i < 100; i++) await new Promise((r) => setTimeout(r, 10));
  assert.is(got, cap, 'what fitted was delivered');
  // Within the budget and ended: a clean end, not the cap.
  const p = await pairs(s);
  const sp2 = splice(p.ra, p.rb, { capBytes: 1000 });
  const gotB = receive(p.b, 6);
  await send(p.a, 1000, 6, true);
  p.b.end();
  assert.is(await gotB, 1000);
  assert.is((await sp2.closed).reason, 'end');
  // A budget of 0 left: the first byte is the cap.
  const q = await pairs(s);
  const sp3 = splice(q.ra, q.rb, { capBytes: 0 });
  q.b.write('x');
  const c3 = await sp3.closed;
  assert.is(c3.reason, 'cap');
  assert.is(c3.bytesAB + c3.bytesBA, 0);
});

caseOf('stop ends it at once; the heads go first; a reset is an error', 20_000, async (s) => {
  const { a, b, ra, rb } = await pairs(s);
  const sp = splice(ra, rb, { headAB: Buffer.from('head-a:'), headBA: Buffer.from('head-b:') });
  const fromA: Buffer[] = [];
  const fromB: Buffer[] = [];
  b.on('data', (d: Buffer) => fromA.push(d));
  a.on('data', (d: Buffer) => fromB.push(d));
  a.write('body-a');
  b.write('body-b');
  for (let i = 0; (Buffer.concat(fromA).length < 13 || Buffer.concat(fromB).length < 13) && i < 200; i++) await new Promise((r) => setTimeout(r, 10));
  assert.is(Buffer.concat(fromA).toString(), 'head-a:body-a');
  assert.is(Buffer.concat(fromB).toString(), 'head-b:body-b');
  assert.equal(sp.n.relaySpliceBytes!(sp.id), [6, 6], 'counts exclude the heads');
  assert.is(sp.n.relaySpliceStop!(sp.id), true);
  const c = await sp.closed;
  assert.is(c.reason, 'stop');
  // A reset from one end.
  const p = await pairs(s);
  const sp2 = splice(p.ra, p.rb);
  p.a.resetAndDestroy();
  const c2 = await sp2.closed;
  assert.is(c2.reason, 'error');
  assert.is(c2.side, 'a');
  assert.ok(['ECONNRESET', 'EPIPE'].includes(c2.error!), c2.error);
});

caseOf('takeOver: a socket Node was reading hands over its buffered bytes and reads no more; they go first, in order', 20_000, async (s) => {
  const { a, b, ra, rb } = await pairs(s, true);
  // ra read by Node for a while (as the relay does for the preamble), then paused with bytes buffered.
  let late = 0;
  const firstP = new Promise<Buffer>((r) => ra.once('data', (d: Buffer) => r(d)));
  ra.resume();
  const sending = send(a, 4 * MiB, 7, false);
  const first = await firstP;
  ra.pause();
  await new Promise((r) => setTimeout(r, 100));
  const held = takeOver(ra);
  ra.on('data', () => late++);
  assert.ok(held.length > 0, 'Node had bytes buffered');
  const head = Buffer.concat([first, ...held]);
  const sp = splice(ra, rb, { headAB: head });
  const gotB = receive(b, 7);
  await sending;
  a.end();
  assert.is(await gotB, 4 * MiB, 'all of it, in order, the buffered bytes first');
  b.end();
  const c = await sp.closed;
  assert.is(c.reason, 'end');
  assert.is(c.bytesAB + head.length, 4 * MiB);
  assert.is(late, 0, 'Node read nothing after the takeover');
});

test.run();
