import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { FrameWriter } from '../../p2p/remote/frame-writer.ts';
import type { ByteStream } from '../../transports/transport.ts';

/** A stream whose write takes a while and records overlapping calls. */
function slowStream() {
  const calls: Uint8Array[][] = [];
  let active = 0;
  let overlapped = false;
  const s: ByteStream = {
    read: async () => null,
    async write(d) {
      active++;
      if (active > 1) overlapped = true;
      calls.push([...(d instanceof Uint8Array ? [d] : d)]);
      await new Promise((r) => setTimeout(r, 5));
      active--;
    },
    closeWrite: async () => {},
    reset: () => {},
  };
  return { s, calls, overlapped: () => overlapped };
}

test('frames from concurrent callers never overlap, stay in order and are coalesced', async () => {
  const { s, calls, overlapped } = slowStream();
  const w = new FrameWriter(s);
  const frames = Array.from({ length: 50 }, (_, i) => [new Uint8Array([i]), new Uint8Array([i, i])]);
  await Promise.all(frames.map((f) => w.write(f)));
  assert.not.ok(overlapped(), 'one write at a time');
  assert.ok(calls.length < 10, `coalesced into ${calls.length} writes`);
  const flat = calls.flat().map((b) => b[0]);
  assert.equal(flat, frames.flat().map((b) => b[0]), 'order kept');
  for (const c of calls) for (const b of c) assert.ok(frames.flat().includes(b as Uint8Array<ArrayBuffer>), 'buffers passed through, not copied');
});

test('a failed write rejects its frames and every later one', async () => {
  const s: ByteStream = { read: async () => null, write: async () => { throw new Error('reset'); }, closeWrite: async () => {}, reset: () => {} };
  const w = new FrameWriter(s);
  const a = w.write([new Uint8Array(1)]);
  const b = w.write([new Uint8Array(1)]);
  let fails = 0;
  await a.catch(() => fails++);
  await b.catch(() => fails++);
  await w.write([new Uint8Array(1)]).catch(() => fails++);
  assert.is(fails, 3);
});

test.run();
