/** Sealing of RAM chunks: what a peer can and cannot get past (p2p/ram/seal.ts). */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { randomBytes } from 'node:crypto';
import { ChunkSealer, MAX_VERSION, SEGMENT, plainSize, sealedSize } from '../../p2p/ram/seal.ts';
import { nativeAvailable } from '../../native/index.ts';

const test = suite('ram-seal');
const secret = randomBytes(32);
const region = randomBytes(16);

test('a sealed chunk opens with its index and version, and hides the plaintext', () => {
  const s = new ChunkSealer(secret, region);
  const data = Buffer.alloc(65536, 0x41);
  const blob = s.seal(7, 3, data);
  assert.is(blob.length, sealedSize(data.length));
  assert.is(sealedSize(data.length), 8 + data.length + 16 * 16, 'a tag per 4 KiB segment');
  assert.not.ok(Buffer.from(blob).includes(Buffer.alloc(64, 0x41)), 'the plaintext pattern shows in the blob');
  const r = s.open(7, 3, blob);
  assert.ok(r.ok);
  if (r.ok) assert.ok(Buffer.from(r.data).equals(data));
});

test('an older version (rollback) is reported stale, not opened', () => {
  const s = new ChunkSealer(secret, region);
  const old = s.seal(7, 3, Buffer.alloc(4096, 1));
  s.seal(7, 9, Buffer.alloc(4096, 2));
  const r = s.open(7, 9, old);
  assert.equal(r, { ok: false, problem: 'stale', claimed: 3 });
});

test('a claimed newer version does not help a forged blob: the version the node expects decides', () => {
  const s = new ChunkSealer(secret, region);
  const old = Buffer.from(s.seal(7, 3, Buffer.alloc(4096, 1)));
  old.writeBigUInt64BE(9n, 0); // the peer relabels the old blob as current
  const r = s.open(7, 9, old);
  assert.is(r.ok, false);
  if (!r.ok) assert.is(r.problem, 'tampered');
});

test('another chunk, another region, a flipped bit: all fail authentication', () => {
  const s = new ChunkSealer(secret, region);
  const blob = s.seal(1, 5, Buffer.alloc(4096, 3));
  assert.is(s.open(2, 5, blob).ok, false, 'another index');
  assert.is(new ChunkSealer(secret, randomBytes(16)).open(1, 5, blob).ok, false, 'another region');
  assert.is(new ChunkSealer(randomBytes(32), region).open(1, 5, blob).ok, false, 'another node key');
  for (const at of [8, 100, blob.length - 1]) {
    const bad = Buffer.from(blob);
    bad[at]! ^= 1;
    assert.is(s.open(1, 5, bad).ok, false, `bit flipped at ${at}`);
  }
  assert.equal(s.open(1, 5, blob.subarray(0, 10)), { ok: false, problem: 'malformed', claimed: -1 });
});

test('chunk ids are stable per index, distinct, and differ between regions', () => {
  const s = new ChunkSealer(secret, region);
  const ids = new Set<string>();
  for (let i = 0; i < 1000; i++) ids.add(Buffer.from(s.chunkId(i)).toString('hex'));
  assert.is(ids.size, 1000);
  assert.equal(s.chunkId(5), s.chunkId(5));
  assert.not.equal(Buffer.from(s.chunkId(5)), Buffer.from(new ChunkSealer(secret, randomBytes(16)).chunkId(5)));
  // The id is a MAC, not the index in disguise: ids of neighbours share no obvious prefix.
  const a = Buffer.from(s.chunkId(0)), b = Buffer.from(s.chunkId(1));
  assert.not.ok(a.subarray(0, 4).equals(b.subarray(0, 4)));
});

test('the same chunk sealed twice at different versions gives unrelated ciphertexts (no nonce reuse)', () => {
  const s = new ChunkSealer(secret, region);
  const data = Buffer.alloc(4096, 9);
  const a = Buffer.from(s.seal(3, 1, data)).subarray(8, 40);
  const b = Buffer.from(s.seal(3, 2, data)).subarray(8, 40);
  assert.not.ok(a.equals(b));
});

test('native and node:crypto seal the same bytes, and each opens the other', () => {
  if (!nativeAvailable()) {
    console.log('  skipped: the native addon is not built here (the node:crypto path is tested above)');
    return;
  }
  const n = new ChunkSealer(secret, region, { engine: 'native' });
  const j = new ChunkSealer(secret, region, { engine: 'node:crypto' });
  assert.is(n.engine, 'native');
  for (const len of [65536, 4096, 5000, 1]) {
    const data = randomBytes(len);
    const a = n.seal(11, 77, data);
    const b = j.seal(11, 77, data);
    assert.ok(Buffer.from(a).equals(Buffer.from(b)), `same blob for ${len} bytes`);
    const ra = j.open(11, 77, a);
    const rb = n.open(11, 77, b);
    assert.ok(ra.ok && rb.ok && Buffer.from(ra.data).equals(data) && Buffer.from(rb.data).equals(data));
  }
});

test('segments open one by one; a bad segment fails alone and is never marked open', () => {
  for (const engine of nativeAvailable() ? (['native', 'node:crypto'] as const) : (['node:crypto'] as const)) {
    const s = new ChunkSealer(secret, region, { engine });
    const data = randomBytes(65536);
    const blob = Buffer.from(s.seal(4, 9, data));
    blob[8 + 5 * SEGMENT + 100]! ^= 1; // inside segment 5
    const c = s.chunk(4, 9, blob);
    assert.ok(c.ok);
    if (!c.ok) continue;
    assert.is(c.chunk.open(0, SEGMENT), undefined, `${engine}: segment 0 opens`);
    assert.ok(Buffer.from(c.chunk.data.subarray(0, SEGMENT)).equals(data.subarray(0, SEGMENT)));
    assert.is(c.chunk.done[1], 0, 'only what was asked is opened');
    assert.is(c.chunk.open(4 * SEGMENT + 10, SEGMENT), 'tampered', `${engine}: a range over segment 5 fails`);
    assert.is(c.chunk.done[4], 1, 'segment 4, before it, opened');
    assert.is(c.chunk.done[5], 0, 'segment 5 is not marked open');
    assert.not.ok(Buffer.from(c.chunk.data.subarray(5 * SEGMENT, 6 * SEGMENT)).equals(data.subarray(5 * SEGMENT, 6 * SEGMENT)), 'no plaintext put into a failed segment');
    assert.is(c.chunk.complete, false);
    // Another replica (a good blob) takes over the unopened segments.
    const good = s.chunk(4, 9, Buffer.from(s.seal(4, 9, data)).subarray(0));
    // (a fresh seal at the same version is the same blob: the same nonce and key)
    assert.ok(good.ok);
    if (!good.ok) continue;
    c.chunk.adopt(good.chunk);
    assert.is(c.chunk.open(0, 65536), undefined);
    assert.ok(c.chunk.complete);
    assert.ok(Buffer.from(c.chunk.data).equals(data), `${engine}: whole after adopting`);
  }
});

test('segments swapped within a blob fail; sizes and versions are checked', () => {
  const s = new ChunkSealer(secret, region);
  const data = randomBytes(8192);
  const blob = Buffer.from(s.seal(1, 2, data));
  const swapped = Buffer.from(blob);
  blob.copy(swapped, 8, 8 + SEGMENT, 8 + 2 * SEGMENT);
  blob.copy(swapped, 8 + SEGMENT, 8, 8 + SEGMENT);
  blob.copy(swapped, 8 + 8192, 8 + 8192 + 16, 8 + 8192 + 32);
  blob.copy(swapped, 8 + 8192 + 16, 8 + 8192, 8 + 8192 + 16);
  assert.is(s.open(1, 2, swapped).ok, false, 'segments and tags swapped');
  for (const len of [1, 4095, 4096, 4097, 65536, 65537]) assert.is(plainSize(sealedSize(len)), len);
  assert.is(plainSize(8 + SEGMENT + 17), -1, "no plaintext seals to that size");
  assert.throws(() => s.seal(1, MAX_VERSION + 1, data), /nonce/);
});

test.run();
