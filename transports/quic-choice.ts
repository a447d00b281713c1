/**
 * What the `quic` transport is: quicmap's own ngtcp2 data path
 * (quic-ngtcp2.ts) wherever its addon is built, else the
 * @chainsafe/libp2p-quic library (quic.ts). Both speak the same wire
 * protocol (QUIC v1, ALPN "libp2p", libp2p-TLS certificates, one carrier
 * stream with our mux over it), so they interoperate and tickets, endpoint
 * lists and `--transport` all just say `quic`.
 *
 * `QUICMAP_QUIC=library` (or `ngtcp2`) chooses explicitly; `ngtcp2` where
 * the addon lacks its QUIC part is an error naming the reason, and anything
 * else is an error too, so a typo never silently picks one.
 */
import type { Identity } from '../crypto/identity.ts';
import { QuicmapError } from '../base/errors.ts';
import type { Transport } from './transport.ts';
import { ngtcp2UnavailableReason } from '../native/quic.ts';

export type QuicImplementation = 'ngtcp2' | 'library';

/** Options both implementations take (each has more of its own). */
export interface QuicOptions {
  idleTimeoutMs?: number;
  keepAliveMs?: number;
  handshakeTimeoutMs?: number;
  dialTimeoutMs?: number;
  streamOpenTimeoutMs?: number;
  maxStreams?: number;
  streamWindow?: number;
  connectionWindow?: number;
  udpBufferBytes?: number;
  sendHighWater?: number;
  maxConnections?: number;
  maxConnectionsPerSource?: number;
}

/** The implementation `quic` stands for here, and why (for logs and `quicmap status`). */
export function quicImplementation(env: NodeJS.ProcessEnv = process.env): { implementation: QuicImplementation; why: string } {
  const asked = env.QUICMAP_QUIC?.trim().toLowerCase();
  const missing = ngtcp2UnavailableReason();
  if (asked === 'library' || asked === 'lib') return { implementation: 'library', why: 'QUICMAP_QUIC=library' };
  if (asked === 'ngtcp2') {
    if (missing) throw new QuicmapError('ENOTSUP', `QUICMAP_QUIC=ngtcp2, but ${missing}`);
    return { implementation: 'ngtcp2', why: 'QUICMAP_QUIC=ngtcp2' };
  }
  if (asked) throw new QuicmapError('EINVAL', `QUICMAP_QUIC must be "ngtcp2" or "library", not "${env.QUICMAP_QUIC}"`);
  if (missing) return { implementation: 'library', why: `fallback: ${missing}` };
  return { implementation: 'ngtcp2', why: 'the ngtcp2 addon is built' };
}

/** A `quic` transport of the implementation `quicImplementation()` picks (or `force`). */
export async function createQuicTransport(identity: Identity, opts: QuicOptions = {}, force?: QuicImplementation): Promise<Transport> {
  const which = force ?? quicImplementation().implementation;
  if (which === 'ngtcp2') {
    const { QuicNgtcp2Transport } = await import('./quic-ngtcp2.ts');
    return new QuicNgtcp2Transport(identity, opts);
  }
  const { QuicTransport } = await import('./quic.ts');
  return new QuicTransport(identity, opts);
}
