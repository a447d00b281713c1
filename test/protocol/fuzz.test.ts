/**
 * Random and mutated bytes against both session state machines and the
 * decoder: nothing may throw anything but a typed QuicmapError (client) or
 * yield anything but events (server), memory held stays bounded, and every
 * request the server lets through is inside the region and the limits.
 * Seeded, so a failure is reproducible: QUICMAP_FUZZ_SEED=n.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Packr } from 'msgpackr';
import { ServerSession } from '../../p2p/protocol/server-session.ts';
import { ClientSession } from '../../p2p/protocol/client-session.ts';
import { FrameDecoder } from '../../p2p/protocol/decoder.ts';
import { FrameType, encodeHeader } from '../../p2p/protocol/frame.ts';
import { encodeFlush, encodeHello, encodeOk, encodeRead, encodeTrim, encodeWrite, encodeZero, encodeError, encodeWelcome } from '../../p2p/protocol/messages.ts';
import { QuicmapError } from '../../base/errors.ts';

const SEED = Number(process.env.QUICMAP_FUZZ_SEED ?? 1234567);
const ITER = Number(process.env.QUICMAP_FUZZ_ITER ?? 3000);
const SIZE = 1 << 20;
const MAX = 65536;

function rng(seed: number) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x1_0000_0000;
  };
}
const rand = rng(SEED);
const int = (n: number) => Math.floor(rand() * n);
const bytes = (n: number) => Uint8Array.from({ length: n }, () => int(256));
const cat = (parts: Uint8Array[]) => Buffer.concat(parts);

function serving(): ServerSession {
  const s = new ServerSession({ limits: { maxFrame: MAX, maxInFlight: 16 }, caps: ['trim', 'zero', 'fua', 'ping'] });
  const [ev] = s.receive(cat(encodeHello({ minVersion: 1, maxVersion: 1, limits: { maxFrame: MAX, maxInFlight: 16 }, caps: ['trim'], grant: new Uint8Array(1), agent: '' })));
  if (ev?.kind !== 'hello') throw new Error('setup');
  s.accept(ev.hello, { size: SIZE, readOnly: int(2) === 0, manifest: new Uint8Array(1), manifestSig: new Uint8Array(64) });
  return s;
}

function validTraffic(): Uint8Array {
  const parts: Uint8Array[] = [];
  for (let i = 0; i < 8; i++) {
    const id = 1 + int(40);
    switch (int(6)) {
      case 0: parts.push(...encodeRead(id, int(SIZE), int(MAX))); break;
      case 1: parts.push(...encodeWrite(id, int(SIZE), bytes(int(200)), int(2) === 0)); break;
      case 2: parts.push(...encodeFlush(id)); break;
      case 3: parts.push(...encodeTrim(id, int(SIZE), int(SIZE))); break;
      case 4: parts.push(...encodeZero(id, int(SIZE), int(SIZE), { noHole: true })); break;
      default: parts.push(...encodeError(id, 'EIO', 'x'));
    }
  }
  return cat(parts);
}

function mutate(b: Uint8Array): Uint8Array {
  const out = Uint8Array.from(b);
  const n = 1 + int(6);
  for (let i = 0; i < n && out.length; i++) out[int(out.length)] = int(256);
  return out;
}

/** Feed `data` in random-sized chunks. */
function chunks(data: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let at = 0; at < data.length; ) {
    const n = 1 + int(Math.min(4096, data.length - at));
    out.push(data.subarray(at, at + n));
    at += n;
  }
  return out;
}

function checkServer(s: ServerSession, input: Uint8Array) {
  for (const c of chunks(input)) {
    const evs = s.receive(c); // must never throw
    for (const ev of evs) {
      if (ev.kind !== 'request') continue;
      const r = ev.request;
      if (r.op === 'flush' || r.op === 'call') continue;
      const len = r.op === 'write' ? r.data.length : r.length;
      assert.ok(r.offset + len <= SIZE, `request outside the region: ${JSON.stringify({ op: r.op, off: r.offset, len })}`);
      if (r.op === 'read' || r.op === 'write') assert.ok(len <= MAX, 'request above the limit');
      s.reply(r.id);
    }
  }
}

test(`random bytes never crash a server session (seed ${SEED})`, () => {
  for (let i = 0; i < ITER; i++) {
    checkServer(int(2) ? serving() : new ServerSession({ limits: { maxFrame: MAX, maxInFlight: 16 }, caps: [] }), bytes(int(2000)));
  }
});

test('mutated valid traffic never crashes a server session and never escapes the region', () => {
  for (let i = 0; i < ITER; i++) checkServer(serving(), mutate(validTraffic()));
});

test('random and mutated bytes make a client throw only typed errors', () => {
  const welcome = cat(encodeWelcome({ version: 1, limits: { maxFrame: MAX, maxInFlight: 16 }, caps: [], manifest: new Uint8Array(3), manifestSig: new Uint8Array(64) }));
  for (let i = 0; i < ITER; i++) {
    const c = new ClientSession({ maxFrame: MAX, maxInFlight: 16 });
    c.hello(new Uint8Array(1), []);
    c.expectRead(1 + int(4), new Uint8Array(int(100)));
    const input = int(3) === 0 ? bytes(int(2000)) : mutate(cat([welcome, ...encodeOk(1 + int(4), bytes(int(100))), ...encodeError(2, 'EPERM', 'no')]));
    try {
      for (const ch of chunks(input)) c.receive(ch);
    } catch (e) {
      assert.ok(e instanceof QuicmapError, `untyped error: ${(e as Error)?.stack}`);
    }
  }
});

test('random msgpack HELLO bodies are refused cleanly', () => {
  const packr = new Packr({ useRecords: false });
  const values = () => [null, true, -1, 2 ** 40, 'x'.repeat(int(3000)), bytes(int(100)), [1, 2, { a: 1 }], { limits: { maxFrame: -5 } }, { minVersion: 1, maxVersion: 1, limits: { maxFrame: 1e12, maxInFlight: 0 } }][int(9)];
  for (let i = 0; i < ITER; i++) {
    const body = packr.pack(int(2) ? values() : { minVersion: values(), maxVersion: 1, limits: values(), caps: values(), grant: values(), agent: values() });
    const frame = cat([encodeHeader({ type: FrameType.HELLO, flags: 0, status: 0, id: 0, offset: 0, length: 0, payloadLength: body.length }), body]);
    const s = new ServerSession({ limits: { maxFrame: MAX, maxInFlight: 16 }, caps: [] });
    const evs = s.receive(frame);
    assert.ok(evs.length === 1 && (evs[0]!.kind === 'close' || evs[0]!.kind === 'hello'));
  }
});

test('a decoder fed endless junk never holds more than one bounded frame', () => {
  const d = new FrameDecoder({ maxPayload: MAX, maxControl: 16384 });
  let peak = 0;
  for (let i = 0; i < 2000; i++) {
    try {
      d.push(bytes(int(5000)));
    } catch {
      break;
    }
    peak = Math.max(peak, d.buffered);
  }
  assert.ok(peak <= MAX + 24, `peak ${peak}`);
});

test.run();
