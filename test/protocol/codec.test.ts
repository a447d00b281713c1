import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { FrameDecoder, type DecodedItem } from '../../p2p/protocol/decoder.ts';
import { FrameType, HEADER_SIZE, encodeHeader, readHeader, codeOfStatus, statusOf } from '../../p2p/protocol/frame.ts';
import { encodeError, encodeHello, encodeOk, encodeRead, encodeWrite, decodeError, decodeHello, MAX_CONTROL_BODY } from '../../p2p/protocol/messages.ts';
import { ProtocolError } from '../../base/errors.ts';

const isProto = (e: unknown) => e instanceof ProtocolError;
const LIMITS = { maxPayload: 64 * 1024, maxControl: MAX_CONTROL_BODY };

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

test('header round-trips every field, offsets up to 2^53', () => {
  const h = { type: FrameType.READ, flags: 1, status: 7, id: 0xfffffffe, offset: Number.MAX_SAFE_INTEGER, length: 0xffffffff, payloadLength: 12345 };
  const b = encodeHeader(h);
  assert.is(b.length, HEADER_SIZE);
  const r = readHeader(b);
  for (const k of Object.keys(h) as (keyof typeof h)[]) assert.is(r[k], h[k], k);
});

test('error codes survive the wire; unknown statuses read as EIO', () => {
  assert.is(codeOfStatus(statusOf('EPERM')), 'EPERM');
  assert.is(codeOfStatus(statusOf('EACCES')), 'EACCES');
  assert.is(codeOfStatus(999), 'EIO');
});

test('write frame is header + the caller buffer, not a copy', () => {
  const data = new Uint8Array(1000).fill(7);
  const frames = encodeWrite(5, 4096, data, true);
  assert.is(frames.length, 2);
  assert.ok(frames[1] === data, 'payload is the same buffer');
  const h = readHeader(frames[0]!);
  assert.is(h.type, FrameType.WRITE);
  assert.is(h.flags, 1);
  assert.is(h.length, 1000);
  assert.is(h.payloadLength, 1000);
});

test('decoder reassembles frames split at every byte boundary', () => {
  const data = new Uint8Array(3000).map((_, i) => i & 255);
  const stream = concat([...encodeRead(1, 0, 4096), ...encodeWrite(2, 8192, data), ...encodeOk(3), ...encodeError(4, 'EIO', 'disk on fire')]);
  for (let split = 1; split < stream.length; split += 37) {
    const d = new FrameDecoder(LIMITS);
    const items: DecodedItem[] = [];
    for (let at = 0; at < stream.length; at += split) items.push(...d.push(stream.subarray(at, at + split)));
    assert.is(items.length, 4, `split ${split}`);
    const frames = items.map((i) => (i.kind === 'frame' ? i.frame : assert.unreachable()));
    assert.is(frames[0]!.type, FrameType.READ);
    assert.is(frames[0]!.length, 4096);
    assert.equal(Array.from(frames[1]!.payload), Array.from(data));
    assert.is(frames[2]!.id, 3);
    assert.equal(decodeError(frames[3]!), { code: 'EIO', message: 'disk on fire' });
    assert.ok(d.idle);
  }
});

test('decoder hands out a view (no copy) when a payload arrives whole', () => {
  const chunk = concat(encodeWrite(9, 0, new Uint8Array(500).fill(1)));
  const [item] = new FrameDecoder(LIMITS).push(chunk);
  assert.ok(item?.kind === 'frame');
  if (item?.kind === 'frame') assert.ok(item.frame.payload.buffer === chunk.buffer, 'payload shares the chunk');
});

test('decoder writes a payload straight into the sink buffer', () => {
  const target = new Uint8Array(256);
  const d = new FrameDecoder(LIMITS, (h) => (h.id === 42 ? target : undefined));
  const bytes = concat(encodeOk(42, new Uint8Array(256).fill(9)));
  const items = [...d.push(bytes.subarray(0, 30)), ...d.push(bytes.subarray(30))];
  assert.is(items.length, 1);
  assert.ok(items[0]?.kind === 'frame' && items[0].frame.payload === target);
  assert.is(target[255], 9);
});

test('a payload that spans chunks is gathered into the gather buffer, and the frame names it (to give it back)', () => {
  const pool: Uint8Array[] = [];
  const d = new FrameDecoder(LIMITS);
  d.gather = (n) => {
    const b = new Uint8Array(n + 100); // pools hand out at least n bytes
    pool.push(b);
    return b;
  };
  const data = new Uint8Array(3000).map((_, i) => i & 0xff);
  const bytes = concat([...encodeWrite(7, 0, data), ...encodeWrite(8, 4096, new Uint8Array(10).fill(3))]);
  const items = [...d.push(bytes.subarray(0, 1000)), ...d.push(bytes.subarray(1000))];
  assert.is(items.length, 2);
  const [a, b] = items.map((i) => (i.kind === 'frame' ? i.frame : undefined));
  assert.is(pool.length, 1, 'only the spanning payload was gathered');
  assert.ok(a?.gathered === pool[0], 'the frame names its gather buffer');
  assert.is(a!.payload.length, 3000);
  assert.ok(a!.payload.buffer === pool[0]!.buffer);
  assert.equal([...a!.payload], [...data]);
  assert.is(b?.gathered, undefined, 'a payload that arrived whole is a view, not gathered');
  assert.ok(b!.payload.buffer === bytes.buffer);
});

test('a payload above the limit is skipped without being buffered, and decoding goes on', () => {
  const d = new FrameDecoder({ maxPayload: 1024, maxControl: 1024 });
  const big = encodeHeader({ type: FrameType.WRITE, flags: 0, status: 0, id: 7, offset: 0, length: 100_000_000, payloadLength: 100_000_000 });
  let items = d.push(big);
  assert.is(items.length, 1);
  assert.is(items[0]!.kind, 'oversize');
  assert.is(d.buffered, 0);
  // Stream 100 MB of garbage past it: nothing is kept.
  const junk = new Uint8Array(1 << 20).fill(0xff);
  for (let i = 0; i < 95; i++) assert.is(d.push(junk).length, 0);
  assert.is(d.buffered, 0);
  const rest = 100_000_000 - 95 * (1 << 20);
  items = d.push(concat([new Uint8Array(rest), ...encodeRead(8, 0, 10)]));
  assert.is(items.length, 1);
  assert.ok(items[0]!.kind === 'frame' && items[0].frame.id === 8);
});

test('an oversized control body is fatal before any of it is read', () => {
  const d = new FrameDecoder({ maxPayload: 1 << 20, maxControl: 1024 });
  const h = encodeHeader({ type: FrameType.HELLO, flags: 0, status: 0, id: 0, offset: 0, length: 0, payloadLength: 2048 });
  assert.throws(() => d.push(h), (e: Error) => e instanceof ProtocolError && /exceeds/.test(e.message));
  assert.throws(() => d.push(new Uint8Array(1)), isProto, 'stays failed');
});

test('structurally impossible headers are protocol errors', () => {
  const bad = [
    { type: 99, flags: 0, payloadLength: 0, length: 0, offset: 0 },
    { type: FrameType.READ, flags: 0x80, payloadLength: 0, length: 0, offset: 0 },
    { type: FrameType.READ, flags: 0, payloadLength: 5, length: 0, offset: 0 },
    { type: FrameType.WRITE, flags: 0, payloadLength: 5, length: 6, offset: 0 },
  ];
  for (const b of bad) {
    const d = new FrameDecoder(LIMITS);
    assert.throws(() => d.push(encodeHeader({ status: 0, id: 1, ...b } as never)), isProto, JSON.stringify(b));
  }
  // offset beyond 2^53: high word above 0x1fffff
  const h = encodeHeader({ type: FrameType.READ, flags: 0, status: 0, id: 1, offset: 0, length: 1, payloadLength: 0 });
  new DataView(h.buffer).setUint32(8, 0x200000);
  assert.throws(() => new FrameDecoder(LIMITS).push(h), isProto);
});

test('hello body round-trips and rejects ill-typed fields', () => {
  const frames = encodeHello({ minVersion: 1, maxVersion: 1, limits: { maxFrame: 1 << 20, maxInFlight: 32 }, caps: ['trim'], grant: new Uint8Array([1, 2, 3]), agent: 'test' });
  const body = frames[1]!;
  const h = decodeHello(body);
  assert.is(h.limits.maxInFlight, 32);
  assert.equal(Array.from(h.grant), [1, 2, 3]);
  assert.throws(() => decodeHello(new Uint8Array([0x93, 1, 2, 3])), isProto);
  assert.throws(() => decodeHello(new Uint8Array([0xc1])), isProto);
});

test('a CALL answer of bytes goes as a bin header and the bytes themselves, and decodes like a packed one', async () => {
  const { packReply, packReplyParts, unpackReply } = await import('../../p2p/protocol/messages.ts');
  for (const value of [new Uint8Array(70_000).fill(9), new Uint8Array(100).fill(3), null, { blob: new Uint8Array(5000) }]) {
    const parts = packReplyParts(value);
    if (value instanceof Uint8Array && value.length >= 4096) assert.is(parts[1], value, 'the bytes are not copied');
    const back = unpackReply(Buffer.concat(parts), 'x');
    assert.equal(back instanceof Uint8Array ? new Uint8Array(back) : back, unpackReply(packReply(value), 'x') instanceof Uint8Array ? new Uint8Array(unpackReply(packReply(value), 'x') as Uint8Array) : unpackReply(packReply(value), 'x'));
  }
});

test('a CALL whose last field is large bytes is sent as buffers that decode exactly like the packed body', async () => {
  const { packCall, packCallParts, decodeCall } = await import('../../p2p/protocol/messages.ts');
  const data = new Uint8Array(70_000).map((_, i) => i & 0xff);
  const cases: unknown[] = [{ id: new Uint8Array(16).fill(1), tag: 3, at: 0, total: data.length, data }, { data: new Uint8Array(10) }, { data, more: 1 }, null, [data]];
  for (const args of cases) {
    const parts = packCallParts('chunk.put', args);
    const whole = Buffer.concat(parts);
    assert.equal(whole, Buffer.from(packCall('chunk.put', args)), 'the same bytes as the packed body');
    const back = decodeCall(whole);
    assert.is(back.method, 'chunk.put');
  }
  const parts = packCallParts('chunk.put', cases[0]);
  assert.is(parts[parts.length - 1], data, 'the data is not copied');
});

test.run();
