/**
 * LocalReadLayer (the cached read path of a managed mount): a read whose
 * chunks are all local is one cache read for the whole range; a read that
 * touches a remote chunk still fetches it (through the chunked path); a
 * random mix of reads, writes, zeroes and trims against a model gives the
 * same bytes as the plain chunked stack.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { ChunkedLayer } from '../../engine/layers/chunked.ts';
import { LocalReadLayer } from '../../engine/layers/local-reads.ts';
import { SyncedLayer } from '../../engine/layers/synced.ts';
import { VirtualClock } from '../../engine/sync/clock.ts';
import { assertBytes, fuzzStore } from '../engine/model.ts';
import { GatedSource } from './gated-source.ts';

const CS = 4096;

class CountingMemory extends MemoryBackend {
  reads: Array<[number, number]> = [];
  override readAt(buf: Uint8Array, offset: number): Promise<void> {
    this.reads.push([offset, buf.length]);
    return super.readAt(buf, offset);
  }
}

function setup(chunks: number) {
  const size = chunks * CS;
  const source = new GatedSource(size, CS, (i) => (i * 7 + 3) & 0xff);
  const cache = new CountingMemory(size);
  const touched: number[] = [];
  const synced = new SyncedLayer({ cache, source, clock: new VirtualClock(), pullWorkers: 0, onFirstTouch: (i) => touched.push(i) });
  const store = new LocalReadLayer(new ChunkedLayer(synced, CS), synced);
  return { size, source, cache, synced, store, touched };
}

test('a read of local chunks is one cache read; a read touching a remote chunk fetches it', async () => {
  const { source, cache, store, touched } = setup(8);
  const warm = new Uint8Array(3 * CS);
  await store.readAt(warm, CS); // chunks 1..3 remote: fetched through the chunked path
  assert.equal(source.fetchOrder.slice().sort(), [1, 2, 3]);
  assert.ok(cache.reads.length >= 3, 'the chunked path reads per chunk');
  cache.reads = [];
  const b = new Uint8Array(3 * CS - 100);
  await store.readAt(b, CS + 50);
  assert.equal(cache.reads, [[CS + 50, 3 * CS - 100]], 'one cache read for the whole local range');
  for (let k = 0; k < b.length; k += 997) assert.is(b[k], source.owner[CS + 50 + k]);
  // Chunk 4 is remote: the read goes through the chunked path and fetches it.
  await store.readAt(new Uint8Array(2 * CS), 3 * CS);
  assert.ok(source.fetchOrder.includes(4));
  assert.equal(touched, [1, 2, 3, 4], 'first touches are recorded on both paths');
});

test('mixed reads, writes, zeroes and trims: same bytes as the model, owner durable after flush', async () => {
  const { size, source, synced, store } = setup(16);
  const model = await fuzzStore(store, { seed: 21, ops: 300, unit: CS, trim: 'either', maxLen: 3 * CS + 5 }, source.owner.slice());
  await store.flush();
  assertBytes(source.durableCopy, model, 'owner after flush');
  const all = new Uint8Array(size);
  await store.readAt(all, 0);
  assertBytes(all, model, 'mount');
  await synced.stop();
});

test.run();
