/**
 * Pick a transport by name for the share/mount library API. The QUIC
 * transport's idle timeout stays generous: liveness of a remote region is
 * judged by RemoteRegion's pings (seconds), not by QUIC's idle timer.
 */
import type { Identity } from '../crypto/identity.ts';
import { QuicmapError } from '../base/errors.ts';
import type { Transport } from '../transports/transport.ts';
import type { TransportName } from '../crypto/endpoint.ts';

export type TransportChoice = TransportName | Transport;

export async function openTransport(choice: TransportChoice, identity: Identity): Promise<Transport> {
  if (typeof choice !== 'string') return choice;
  switch (choice) {
    case 'quic': {
      // ngtcp2 where its addon is built, else the library; QUICMAP_QUIC chooses (transports/quic-choice.ts).
      const { createQuicTransport } = await import('../transports/quic-choice.ts');
      return createQuicTransport(identity, { idleTimeoutMs: 15_000, keepAliveMs: 4_000 });
    }
    case 'tcp': {
      const { TcpTransport } = await import('../transports/tcp.ts');
      return new TcpTransport(identity);
    }
    case 'webtransport': {
      const { WebTransportTransport } = await import('../transports/webtransport.ts');
      return new WebTransportTransport(identity);
    }
    default:
      throw new QuicmapError('EINVAL', `unknown transport "${String(choice)}" (use quic, webtransport or tcp)`);
  }
}
