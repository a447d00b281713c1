/** The relay client passes the transport conformance suite, through a real relay on loopback. */
import { suite } from 'uvu';
import { generateIdentity } from '../../crypto/identity.ts';
import { RelayServer } from '../../p2p/relay/server.ts';
import { RelayTransport } from '../../p2p/relay/transport.ts';
import { defineConformance, type TransportFactory } from '../transport/conformance.ts';

const test = suite('relay/conformance');
let relay: RelayServer | undefined;
const factory: TransportFactory = {
  make: (id) => new RelayTransport(id, { stepTimeoutMs: 3000 }),
  listenAddress: '',
  largeBytes: 16 * 1024 * 1024,
  backpressureLimit: 8 * 1024 * 1024,
  wrongKeyCodes: ['EACCES', 'EIO'],
};
test.before(async () => {
  relay = await RelayServer.start({ identity: await generateIdentity(), listen: '127.0.0.1:0' });
  factory.listenAddress = relay.relayAddress;
});
test.after(async () => {
  await relay?.close();
});
defineConformance(test, factory);
test.run();
