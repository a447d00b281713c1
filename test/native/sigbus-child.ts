// Child process for lazy-region.test.ts: a worker touches a granule whose
// source read fails; the process must die by SIGBUS (not hang).
import { Worker } from 'node:worker_threads';
import { LazyRegion } from '../../engine/mmap/lazy-region.ts';
import { TestStore } from './helpers.ts';

const store = new TestStore(1 << 20);
store.failAt = () => 'throw';
const region = await LazyRegion.open(store, { granule: 65536 });
const w = new Worker(new URL('./region-worker.mjs', import.meta.url));
w.postMessage({ op: 'touch', id: region.mappingId, length: region.length, from: 0, to: 1, step: 1 });
w.on('message', (m) => {
  console.log('UNEXPECTED', JSON.stringify(m));
  process.exit(3);
});
