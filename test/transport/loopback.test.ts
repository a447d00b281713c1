import { suite } from 'uvu';
import { LoopbackNetwork, LoopbackTransport } from '../../transports/loopback.ts';
import { defineConformance } from './conformance.ts';

const test = suite('transport/memory');
const network = new LoopbackNetwork();
defineConformance(test, {
  make: (id) => new LoopbackTransport(id, { network, streamWindow: 256 * 1024 }),
  listenAddress: 'mem:0',
  backpressureLimit: 1024 * 1024,
});
test.run();
