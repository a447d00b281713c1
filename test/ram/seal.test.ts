/** Sealing of RAM chunks: what a peer can and cannot get past (p2p/ram/seal.ts). */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { randomBytes } from 'node:crypto';
import { ChunkSealer, SEAL_OVERHEAD } from '../../p2p/ram/seal.ts';

const test = suite('ram-seal');
const secret = randomBytes(32);
const region = randomBytes(16);

test('a sealed chunk opens with its index and version, and hides the plaintext', () => {
  const s = new ChunkSealer(secret, region);
  const data = Buffer.alloc(65536, 0x41);
  const blob = s.seal(7, 3, data);
  assert.is(blob.length, data.length + SEAL_OVERHEAD);
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

test.run();
