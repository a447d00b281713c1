/**
 * The transmission-phase request decoder, sans-IO: framing across arbitrary
 * chunk boundaries, zero-copy payloads, bounded skipping of oversized
 * writes, bad magic, pause/resume.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { RequestDecoder, type NbdRequest } from '../../engine/nbd/requests.ts';
import { pattern } from '../helpers/buffer-store.ts';
import { CMD, requestHeader } from '../helpers/nbd-raw.ts';

const test = suite('nbd/requests');

interface Spec {
  type: number;
  flags?: number;
  handle: bigint;
  offset: bigint;
  length: number;
  payload?: Buffer;
}

function encode(specs: Spec[]): Buffer {
  return Buffer.concat(specs.flatMap((s) => [requestHeader(s.type, s.flags ?? 0, s.handle, s.offset, s.length), ...(s.payload ? [s.payload] : [])]));
}

/** A comparable snapshot of a decoded request (payload copied: views may alias reused chunks). */
function snap(r: NbdRequest) {
  return {
    type: r.type,
    flags: r.flags,
    handle: (BigInt(r.handleHi) << 32n) | BigInt(r.handleLo),
    offset: r.offset,
    length: r.length,
    payload: r.payload ? Buffer.from(r.payload).toString('hex') : undefined,
    tooLarge: r.tooLarge ?? false,
  };
}

const SESSION: Spec[] = [
  { type: CMD.READ, handle: 1n, offset: 0n, length: 4096 },
  { type: CMD.WRITE, flags: 1, handle: 0xdeadbeefcafebaben, offset: 513n, length: 37, payload: pattern(37, 1) },
  { type: CMD.FLUSH, handle: 3n, offset: 0n, length: 0 },
  { type: CMD.WRITE, handle: 4n, offset: 0n, length: 0, payload: Buffer.alloc(0) },
  { type: CMD.TRIM, handle: 5n, offset: (1n << 40n) + 5n, length: 1 << 20 },
  { type: CMD.WRITE, handle: 0xffffffffffffffffn, offset: 7n, length: 300, payload: pattern(300, 2) },
  { type: CMD.WRITE_ZEROES, flags: 2, handle: 7n, offset: 9n, length: 10 },
  { type: CMD.DISC, handle: 8n, offset: 0n, length: 0 },
];
const EXPECTED = SESSION.map((s) => ({
  type: s.type,
  flags: s.flags ?? 0,
  handle: s.handle,
  offset: Number(s.offset),
  length: s.length,
  payload: s.type === CMD.WRITE ? (s.payload ?? Buffer.alloc(0)).toString('hex') : undefined,
  tooLarge: false,
}));

function decodeAll(chunks: Buffer[], max = 1 << 20): ReturnType<typeof snap>[] {
  const got: ReturnType<typeof snap>[] = [];
  const d = new RequestDecoder(max, (r) => void got.push(snap(r)));
  for (const c of chunks) d.push(c);
  assert.is(d.buffered, 0, 'nothing left over');
  return got;
}

test('decodes a session fed at once', () => {
  const got = decodeAll([encode(SESSION)]);
  // A zero-length WRITE has no payload bytes: the decoder may report it as an empty payload or none.
  got[3]!.payload ??= '';
  assert.equal(got, EXPECTED);
});

test('decodes the same when split at every byte boundary (two and three pieces)', () => {
  const wire = encode(SESSION);
  for (let i = 0; i <= wire.length; i++) {
    const got = decodeAll([wire.subarray(0, i), wire.subarray(i)]);
    got[3]!.payload ??= '';
    assert.equal(got, EXPECTED, `split at ${i}`);
  }
  for (let i = 1; i < wire.length; i += 7) {
    const j = Math.min(wire.length, i + 29);
    const got = decodeAll([wire.subarray(0, i), wire.subarray(i, j), wire.subarray(j)]);
    got[3]!.payload ??= '';
    assert.equal(got, EXPECTED, `split at ${i}, ${j}`);
  }
});

test('decodes the same fed one byte at a time', () => {
  const wire = encode(SESSION);
  const chunks: Buffer[] = [];
  for (let i = 0; i < wire.length; i++) chunks.push(Buffer.from(wire.subarray(i, i + 1)));
  const got = decodeAll(chunks);
  got[3]!.payload ??= '';
  assert.equal(got, EXPECTED);
});

test('a WRITE payload that arrives whole is a view into the chunk (no copy); a split one is gathered', () => {
  const data = pattern(4096, 3);
  const wire = encode([{ type: CMD.WRITE, handle: 1n, offset: 0n, length: data.length, payload: data }]);
  let got: NbdRequest | undefined;
  const d = new RequestDecoder(1 << 20, (r) => void (got = r));
  d.push(wire);
  assert.ok(got?.payload);
  assert.is(got!.payload!.buffer, wire.buffer, 'same ArrayBuffer');
  assert.is(got!.payload!.byteOffset, wire.byteOffset + 28);
  assert.is(got!.payload!.length, 4096);

  // Header in one chunk, payload whole in the next: still a view.
  got = undefined;
  const head = Buffer.from(wire.subarray(0, 28));
  const body = Buffer.from(wire.subarray(28));
  const d2 = new RequestDecoder(1 << 20, (r) => void (got = r));
  d2.push(head);
  assert.is(got, undefined, 'no request before its payload');
  d2.push(body);
  assert.is(got!.payload!.buffer, body.buffer);

  // Payload split: gathered into a fresh buffer with the right bytes.
  got = undefined;
  const d3 = new RequestDecoder(1 << 20, (r) => void (got = r));
  d3.push(wire.subarray(0, 1000));
  d3.push(wire.subarray(1000));
  assert.ok(Buffer.from(got!.payload!).equals(data));
});

test('too-large WRITE: reported at once, payload skipped as it streams (never buffered), framing kept', () => {
  const max = 64 * 1024;
  const declared = 256 * 1024 * 1024; // 256 MiB declared, fed in 1 MiB chunks
  const got: NbdRequest[] = [];
  const d = new RequestDecoder(max, (r) => void got.push({ ...r }));
  d.push(requestHeader(CMD.WRITE, 0, 42n, 0n, declared));
  assert.is(got.length, 1, 'reported before any payload arrives');
  assert.ok(got[0]!.tooLarge);
  assert.is(got[0]!.payload, undefined);
  assert.is(got[0]!.length, declared);
  const chunk = Buffer.alloc(1024 * 1024, 0xee);
  let fed = 0;
  let maxBuffered = 0;
  while (fed + chunk.length <= declared - 100) {
    d.push(chunk);
    fed += chunk.length;
    maxBuffered = Math.max(maxBuffered, d.buffered);
  }
  assert.is(maxBuffered, 0, 'skipped bytes are dropped at once');
  // The tail of the payload and a READ in the same chunk.
  d.push(Buffer.concat([Buffer.alloc(declared - fed, 0xee), requestHeader(CMD.READ, 0, 43n, 512n, 512)]));
  assert.is(got.length, 2);
  assert.equal(snap(got[1]!), { type: CMD.READ, flags: 0, handle: 43n, offset: 512, length: 512, payload: undefined, tooLarge: false });
  assert.is(d.buffered, 0);
});

test('too-large READ carries no payload: the next header follows at once', () => {
  const got: NbdRequest[] = [];
  const d = new RequestDecoder(1024, (r) => void got.push(r));
  d.push(encode([
    { type: CMD.READ, handle: 1n, offset: 0n, length: 1025 },
    { type: CMD.WRITE, handle: 2n, offset: 0n, length: 1024, payload: pattern(1024) },
    { type: CMD.WRITE, handle: 3n, offset: 0n, length: 1025, payload: pattern(1025) },
    { type: CMD.READ, handle: 4n, offset: 0n, length: 1024 },
  ]));
  assert.equal(got.map((r) => [r.handleLo, r.tooLarge ?? false]), [[1, true], [2, false], [3, true], [4, false]]);
  assert.is(got[1]!.payload!.length, 1024);
});

test('TRIM, WRITE_ZEROES and CACHE above the maximum are not "too large" (no payload either way)', () => {
  // proto.md: for commands without a payload the client MAY exceed the
  // maximum block size and the server SHOULD NOT fail them for it.
  const got: NbdRequest[] = [];
  const d = new RequestDecoder(1024, (r) => void got.push(r));
  d.push(encode([
    { type: CMD.TRIM, handle: 1n, offset: 0n, length: 0xffffffff },
    { type: CMD.WRITE_ZEROES, handle: 2n, offset: 0n, length: 1 << 30 },
    { type: CMD.CACHE, handle: 3n, offset: 0n, length: 1 << 20 },
    { type: CMD.FLUSH, handle: 4n, offset: 0n, length: 0 },
  ]));
  assert.equal(got.map((r) => [r.handleLo, r.length, r.tooLarge ?? false]), [[1, 0xffffffff, false], [2, 1 << 30, false], [3, 1 << 20, false], [4, 0, false]]);
  assert.is(d.buffered, 0);
});

test('bad request magic throws, and keeps throwing', () => {
  const got: NbdRequest[] = [];
  const d = new RequestDecoder(1 << 20, (r) => void got.push(r));
  const good = requestHeader(CMD.FLUSH, 0, 1n, 0n, 0);
  const bad = requestHeader(CMD.FLUSH, 0, 2n, 0n, 0, 0x25609514);
  assert.throws(() => d.push(Buffer.concat([good, bad])), /magic/);
  assert.is(got.length, 1, 'the good request before it was delivered');
  assert.throws(() => d.push(good), /magic/);
  assert.is(got.length, 1);
  // Garbage split so the magic arrives in pieces.
  const d2 = new RequestDecoder(1 << 20, () => {});
  d2.push(Buffer.from('GET / HTT'));
  assert.throws(() => d2.push(Buffer.from('P/1.1\r\nHost: example\r\n\r\n')), /magic/);
});

test('pause/resume: returning false stops delivery until resume; bytes stay queued', () => {
  const wire = encode(SESSION);
  const got: ReturnType<typeof snap>[] = [];
  let allow = 0;
  const d = new RequestDecoder(1 << 20, (r) => {
    got.push(snap(r));
    return allow-- > 0;
  });
  d.push(wire);
  assert.is(got.length, 1);
  assert.ok(d.isPaused);
  assert.ok(d.buffered > 0 && d.buffered < wire.length);
  // More bytes while paused are queued, not decoded.
  const extra = requestHeader(CMD.FLUSH, 0, 99n, 0n, 0);
  d.push(extra);
  assert.is(got.length, 1);
  allow = 2;
  d.resume();
  assert.is(got.length, 4, 'resume delivers until the next pause');
  assert.ok(d.isPaused);
  allow = Infinity;
  d.resume();
  assert.not.ok(d.isPaused);
  assert.is(got.length, SESSION.length + 1);
  assert.is(got.at(-1)!.handle, 99n);
  assert.is(d.buffered, 0);
  d.resume(); // resume when not paused is a no-op
  assert.is(got.length, SESSION.length + 1);
});

test('pause inside a chunk that also holds the next WRITE payload keeps it intact', () => {
  const a = pattern(100, 5);
  const b = pattern(200, 6);
  const wire = encode([
    { type: CMD.WRITE, handle: 1n, offset: 0n, length: 100, payload: a },
    { type: CMD.WRITE, handle: 2n, offset: 100n, length: 200, payload: b },
  ]);
  const got: NbdRequest[] = [];
  const d = new RequestDecoder(1 << 20, (r) => {
    got.push(r);
    return false;
  });
  d.push(wire);
  assert.is(got.length, 1);
  d.resume();
  assert.is(got.length, 2);
  assert.ok(Buffer.from(got[0]!.payload!).equals(a));
  assert.ok(Buffer.from(got[1]!.payload!).equals(b));
});

test('offsets above 2^32 and full 64-bit handles decode exactly', () => {
  const got = decodeAll([encode([{ type: CMD.READ, handle: 0x0123456789abcdefn, offset: 0x1f_0000_0001n, length: 1 }])]);
  assert.is(got[0]!.offset, 0x1f_0000_0001);
  assert.is(got[0]!.handle, 0x0123456789abcdefn);
});

test('vectored mode: a payload split across chunks comes as views of those chunks, in order, nothing gathered', () => {
  const payload = pattern(200_000, 9);
  const wire = encode([{ type: CMD.WRITE, handle: 7n, offset: 4096n, length: payload.length, payload }]);
  const got: NbdRequest[] = [];
  let allocated = 0;
  const d = new RequestDecoder(1 << 20, (r) => void got.push(r), (n) => ((allocated += n), Buffer.allocUnsafe(n)), true);
  const chunks: Buffer[] = [];
  for (let at = 0; at < wire.length; at += 65536) chunks.push(wire.subarray(at, at + 65536));
  for (const c of chunks) d.push(c);
  assert.is(got.length, 1);
  const r = got[0]!;
  assert.is(r.payload, undefined, 'no gathered payload');
  assert.ok(r.parts && r.parts.length >= 4, `payload in ${r.parts?.length} parts`);
  assert.ok(Buffer.concat(r.parts!).equals(payload), 'parts concatenate to the payload');
  assert.is(allocated, 0, 'nothing allocated for the payload');
  for (const p of r.parts!) assert.ok(chunks.some((c) => c.buffer === p.buffer), 'each part is a view of a received chunk');
  // A payload inside one chunk is still a single view.
  const small = pattern(1000, 2);
  d.push(encode([{ type: CMD.WRITE, handle: 8n, offset: 0n, length: small.length, payload: small }]));
  assert.ok(got[1]!.payload && Buffer.from(got[1]!.payload).equals(small));
  assert.is(got[1]!.parts, undefined);
});

test.run();
