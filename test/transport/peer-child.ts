/**
 * A peer in its own process, so tests can make it vanish (SIGKILL) the way a
 * crashed or unplugged node does: no close frame, no FIN from the app.
 * Usage: node --import tsx peer-child.ts <quic|quic-ngtcp2|tcp|ngtcp2|webtransport> '<options json>' [listen address] [seed hex]
 * Prints one JSON line {address, publicKey} and then streams bytes forever
 * on every stream it accepts.
 */
import { generateIdentity, identityFromSeed } from '../../crypto/identity.ts';
import type { Transport } from '../../transports/transport.ts';
import { QuicTransport } from '../../transports/quic.ts';
import { TcpTransport } from '../../transports/tcp.ts';
import { Ngtcp2Transport } from '../../transports/ngtcp2.ts';
import { QuicNgtcp2Transport } from '../../transports/quic-ngtcp2.ts';
import { WebTransportTransport } from '../../transports/webtransport.ts';

const [kind, optsJson, listenAt, seedHex] = process.argv.slice(2);
const opts = JSON.parse(optsJson ?? '{}') as Record<string, number>;
const id = seedHex ? await identityFromSeed(Buffer.from(seedHex, 'hex')) : await generateIdentity();
const t: Transport =
  kind === 'quic' ? new QuicTransport(id, opts) : kind === 'quic-ngtcp2' ? new QuicNgtcp2Transport(id, opts) : kind === 'ngtcp2' ? new Ngtcp2Transport(id, opts) : kind === 'webtransport' ? new WebTransportTransport(id, opts) : new TcpTransport(id, opts);
const l = await t.listen(listenAt ?? '127.0.0.1:0');
process.stdout.write(`${JSON.stringify({ address: l.address, publicKey: Buffer.from(id.publicKey).toString('hex') })}\n`);
const chunk = Buffer.alloc(64 * 1024, 0x5a);
for (;;) {
  const c = await l.accept();
  if (!c) break;
  void (async () => {
    for (;;) {
      const st = await c.acceptStream();
      if (!st) return;
      void (async () => {
        await st.read();
        for (;;) await st.write(chunk);
      })().catch(() => {});
    }
  })();
}
