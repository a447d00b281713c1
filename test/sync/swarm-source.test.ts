import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { HashListVerifier, chunkHash } from '../../engine/sync/hash-list.ts';
import { SwarmSource } from '../../engine/sync/swarm-source.ts';
import { storeChunkSource } from '../../engine/sync/chunk-source.ts';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { HaveMap, packHave } from '../../engine/sync/have-map.ts';

const CS = 1024;
const N = 16;

async function owner() {
  const m = new MemoryBackend(N * CS);
  const content = new Uint8Array(N * CS);
  for (let i = 0; i < content.length; i++) content[i] = (i * 3 + 1) & 0xff;
  await m.writeAt(content, 0);
  return { content, source: storeChunkSource(m, N * CS, CS) };
}

function verifierFor(content: Uint8Array) {
  const v = new HashListVerifier(N);
  const hashes = new Uint8Array(N * 32);
  for (let i = 0; i < N; i++) hashes.set(chunkHash(content.subarray(i * CS, (i + 1) * CS)), i * 32);
  v.set(0, hashes, new Uint8Array(N).fill(1));
  return v;
}

const seederOf = (content: Uint8Array, opts: { delayMs?: number; fail?: boolean; corrupt?: boolean } = {}) => {
  const calls: number[] = [];
  return {
    calls,
    source: {
      async fetch(i: number, buf: Uint8Array) {
        calls.push(i);
        if (opts.delayMs) await new Promise((r) => setTimeout(r, opts.delayMs));
        if (opts.fail) throw new Error('seeder down');
        buf.set(content.subarray(i * CS, i * CS + buf.length));
        if (opts.corrupt) buf[0] ^= 1;
      },
    },
  };
};

test('a seeder is asked only for chunks its map says it holds; an unknown map means any chunk', async () => {
  const o = await owner();
  const v = verifierFor(o.content);
  const s = seederOf(o.content);
  const have = new HaveMap(N);
  assert.ok(have.has(12) && !have.known && have.count() === N, 'no map yet: it may hold any chunk');
  have.set(packHave(N, (i) => i < 8)); // a partial seeder: chunks 0..7
  assert.is(have.count(), 8);
  const swarm = new SwarmSource({ owner: o.source, seeders: [{ name: 's', source: s.source, holds: (i) => have.has(i), heldCount: () => have.count() }], verifier: v });
  const buf = new Uint8Array(CS);
  for (const urgent of [false, true]) {
    for (const i of [12, 13, 3]) {
      await swarm.fetch(i, buf, urgent);
      assert.is(buf[7], o.content[i * CS + 7]);
    }
  }
  assert.ok(s.calls.length >= 1 && s.calls.every((c) => c === 3), `only chunk 3 may go to the seeder; 12 and 13 to the owner (seeder asked: ${s.calls})`);
  const asked = s.calls.length;
  assert.is(swarm.status().find((p) => p.name === 's')!.held, 8);
  // The seeder pulled more: the next map has chunk 12.
  have.set(packHave(N, (i) => i <= 12));
  await swarm.fetch(12, buf, false);
  assert.equal(s.calls.slice(asked), [12], 'a background pull goes to the seeder that holds it now');
  let bad: unknown;
  try {
    have.set(new Uint8Array(1));
  } catch (e) {
    bad = e;
  }
  assert.is((bad as { code?: string })?.code, 'EPROTO', 'a map of the wrong length is refused');
});

test('a chunk whose hash is stale comes from the owner only; verified seeder chunks are used', async () => {
  const o = await owner();
  const v = verifierFor(o.content);
  const s = seederOf(o.content);
  const swarm = new SwarmSource({ owner: o.source, seeders: [{ name: 's', source: s.source }], verifier: v });
  v.invalidate([3]);
  const buf = new Uint8Array(CS);
  await swarm.fetch(3, buf, false);
  assert.is(s.calls.includes(3), false, 'the seeder was not asked for a stale chunk');
  await swarm.fetch(4, buf, false);
  assert.ok(s.calls.includes(4));
  assert.is(buf[5], o.content[4 * CS + 5]);
});

test('a slow seeder is abandoned and the chunk fetched elsewhere; a failing one backs off', async () => {
  const o = await owner();
  const slow = seederOf(o.content, { delayMs: 300 });
  const down = seederOf(o.content, { fail: true });
  const swarm = new SwarmSource({ owner: o.source, seeders: [{ name: 'slow', source: slow.source }, { name: 'down', source: down.source }], verifier: verifierFor(o.content), slowMs: 50 });
  const bufs = Array.from({ length: N }, () => new Uint8Array(CS));
  await Promise.all(bufs.map((b, i) => swarm.fetch(i, b, false)));
  for (let i = 0; i < N; i++) assert.is(bufs[i]![7], o.content[i * CS + 7], `chunk ${i}`);
  const st = swarm.status();
  assert.ok(st.find((p) => p.name === 'down')!.failures >= 1);
  assert.ok(st.find((p) => p.name === 'slow')!.failures >= 1, 'timeouts count as failures');
  assert.ok(st.find((p) => p.name === 'owner')!.fetched >= 1);
});

test('a corrupting seeder gets strikes and is dropped; the data is still right', async () => {
  const o = await owner();
  const bad = seederOf(o.content, { corrupt: true });
  const logs: string[] = [];
  const swarm = new SwarmSource({ owner: o.source, seeders: [{ name: 'bad', source: bad.source }], verifier: verifierFor(o.content), maxStrikes: 2, log: (l) => logs.push(l) });
  for (let i = 0; i < N; i++) {
    const b = new Uint8Array(CS);
    await swarm.fetch(i, b, false);
    assert.is(b[0], o.content[i * CS]);
  }
  const p = swarm.status().find((x) => x.name === 'bad')!;
  assert.ok(p.banned);
  assert.is(p.badChunks, 2, 'asked no more once dropped');
  assert.ok(logs.some((l) => /dropped/.test(l)));
});

test('runs: one owner request while no seeder can take any; chunk by chunk through the scheduler once one can', async () => {
  const o = await owner();
  const ranges: Array<[number, number]> = [];
  const src = { ...o.source, fetchRange: async (first: number, count: number, buf: Uint8Array) => (ranges.push([first, count]), buf.set(o.content.subarray(first * CS, first * CS + buf.length))) };
  const swarm = new SwarmSource({ owner: src, seeders: [], verifier: verifierFor(o.content) });
  assert.type(swarm.fetchRange, 'function');
  const buf = new Uint8Array(4 * CS);
  await swarm.fetchRange!(2, 4, buf);
  assert.equal(ranges, [[2, 4]]);
  assert.ok(Buffer.from(buf).equals(Buffer.from(o.content.subarray(2 * CS, 6 * CS))));
  assert.is(swarm.status()[0]!.bytes, 4 * CS);
  const s = seederOf(o.content);
  swarm.addSeeder({ name: 's', source: s.source });
  const buf2 = new Uint8Array(4 * CS);
  await swarm.fetchRange!(8, 4, buf2);
  assert.equal(ranges, [[2, 4]], 'no owner range once a seeder can serve');
  assert.equal(s.calls.sort((a, b) => a - b), [8, 9, 10, 11]);
  assert.ok(Buffer.from(buf2).equals(Buffer.from(o.content.subarray(8 * CS, 12 * CS))));
  const plain = new SwarmSource({ owner: o.source, seeders: [], verifier: verifierFor(o.content) });
  assert.is(plain.fetchRange, undefined, 'no runs when the owner has none');
});

test.run();
