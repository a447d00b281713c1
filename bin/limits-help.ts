/** The NBD server's bounds as `quicmap nbd|mount --help` shows them (from NBD_DEFAULTS, so they cannot drift). */
import { formatSize } from '../base/size.ts';
import { NBD_DEFAULTS as D } from '../engine/nbd/server.ts';

export function nbdLimitsHelp(): string {
  return `Limits (hostile or broken NBD clients cannot take the server down):
  memory held for clients, server-wide: --max-memory (default ${formatSize(D.memoryBudget)}),
    plus one request of up to ${formatSize(D.maxPayload)} for a client that holds
    nothing; beyond it, a client that has not read its replies (or stopped
    mid-request) for ${D.stallMs / 1000}s is disconnected, largest first
  per connection: ${formatSize(D.maxInFlightBytes)} (requests in progress, unsent replies at
    their bytes + 256 B each), ${D.maxInFlight} requests in flight
  handshake: ${D.handshakeTimeoutMs / 1000}s to finish; ${D.maxHandshakes} at once, ${D.maxHandshakesPerSource} per source address
    (a newcomer evicts the oldest of the fullest source)
  connections: ${D.maxConnections}, ${D.maxConnectionsPerSource} per source address
  RSS stays under about: Node's own (~80 MiB) + --max-memory + ${formatSize(D.maxPayload)}
    + 64 MiB of pooled buffers per thread (and ~15 MiB per worker thread)
    + ~100 KiB per connection; --max-memory counts all threads together
`;
}
