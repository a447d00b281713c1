import { suite } from 'uvu';
import { MemoryNetwork, MemoryTransport } from '../../transports/memory.ts';
import { defineConformance } from './conformance.ts';

const test = suite('transport/memory');
const network = new MemoryNetwork();
defineConformance(test, {
  make: (id) => new MemoryTransport(id, { network, streamWindow: 256 * 1024 }),
  listenAddress: 'mem:0',
  backpressureLimit: 1024 * 1024,
});
test.run();
