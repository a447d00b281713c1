/** `quicmap relay --listen HOST:PORT`: a relay for peers that cannot reach each other directly. */
import { type Command, UsageError, log, parseFlags, untilSignal } from '../command.ts';
import { base32Decode, defaultIdentityPath, loadOrCreateIdentity } from '../../crypto/identity.ts';
import { formatSize, parseSize } from '../../base/size.ts';
import { DEFAULT_QUOTAS, type RelayQuotas } from '../../p2p/relay/book.ts';
import { RelayServer } from '../../p2p/relay/server.ts';
import type { ControlServer } from '../../p2p/node/control.ts';
import { startControl, stopOnSignal } from '../control.ts';
import { parseMillis } from './dht.ts';

const human = (ms: number) => (ms === 0 ? 'unlimited' : ms % 3_600_000 === 0 ? `${ms / 3_600_000}h` : ms % 60_000 === 0 ? `${ms / 60_000}m` : `${ms / 1000}s`);

const usage = `Usage: quicmap relay --listen HOST:PORT [options]

Relay traffic for peers that cannot reach each other directly (a hub, a
NAT). A sharer reserves a slot (\`quicmap share --relay ADDRESS\`); a mount
that cannot reach it directly opens a circuit through the relay by itself.
The peers secure each circuit end to end (the same handshake and identity
checks as a direct connection): the relay sees ciphertext only and cannot
pose as either peer. It also coordinates hole punches between peers it
relays (over QUIC: the same port number over UDP only observes the peers'
NAT mappings and never sends a datagram; over TCP: simultaneous open), so
they move to a direct path when their NATs allow. The first line of stdout is the relay's address,
RELAY_ID@HOST:PORT, what --relay takes. Every refusal is explicit and
logged on both sides. Ctrl-C or SIGTERM stops it.

Options:
  --listen HOST:PORT         TCP address, and the UDP port that observes
                             for QUIC hole punches (default 127.0.0.1:4000)
  --advertise HOST:PORT      address printed in the relay address, if peers
                             reach this one by another (default: --listen)
  --max-reservations N       peers that may hold a reservation at once
                             (default ${DEFAULT_QUOTAS.maxReservations})
  --max-circuits-per-peer N  circuits one peer may be part of at once
                             (default ${DEFAULT_QUOTAS.maxCircuitsPerPeer})
  --max-circuits N           circuits in all (default ${DEFAULT_QUOTAS.maxCircuits})
  --circuit-bytes SIZE       bytes one circuit may carry, both directions
                             (default ${formatSize(DEFAULT_QUOTAS.circuitBytes)}: sized for bulk region
                             data; 0: unlimited)
  --circuit-duration DUR     how long one circuit may last (default
                             ${human(DEFAULT_QUOTAS.circuitDurationMs)}; 0: unlimited)
  --reservation-ttl DUR      a reservation lasts this long unless renewed
                             (sharers renew at half of it; default ${human(DEFAULT_QUOTAS.reservationTtlMs)})
  --allow PEER_ID            only these peers may use the relay (repeatable;
                             default: anyone)
  --identity PATH            identity file (default ${defaultIdentityPath()});
                             keep it to keep the relay address across restarts
  --control PATH             control socket for \`quicmap status\` (default
                             $QUICMAP_HOME/run/relay-<pid>.sock, mode 0600)
  -h, --help                 this help

Example:
  quicmap relay --listen 0.0.0.0:4000 --advertise 203.0.113.7:4000
`;

function count(flag: string, text: string | undefined, dflt: number): number {
  if (text === undefined) return dflt;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`relay: ${flag} must be a positive integer, not "${text}"`);
  return n;
}

export const relay: Command = {
  name: 'relay',
  usage,
  async run(argv) {
    const { values } = parseFlags('relay', argv, {
      listen: { type: 'string', default: '127.0.0.1:4000' },
      advertise: { type: 'string' },
      'max-reservations': { type: 'string' },
      'max-circuits-per-peer': { type: 'string' },
      'max-circuits': { type: 'string' },
      'circuit-bytes': { type: 'string' },
      'circuit-duration': { type: 'string' },
      'reservation-ttl': { type: 'string' },
      allow: { type: 'string', multiple: true },
      identity: { type: 'string' },
      control: { type: 'string' },
    });
    const quotas: Partial<RelayQuotas> = {
      maxReservations: count('--max-reservations', values['max-reservations'], DEFAULT_QUOTAS.maxReservations),
      maxCircuitsPerPeer: count('--max-circuits-per-peer', values['max-circuits-per-peer'], DEFAULT_QUOTAS.maxCircuitsPerPeer),
      maxCircuits: count('--max-circuits', values['max-circuits'], DEFAULT_QUOTAS.maxCircuits),
    };
    if (values['circuit-bytes'] !== undefined) {
      try {
        quotas.circuitBytes = values['circuit-bytes'].trim() === '0' ? 0 : parseSize(values['circuit-bytes']);
      } catch (e) {
        throw new UsageError(`relay: --circuit-bytes: ${(e as Error).message}`);
      }
    }
    if (values['circuit-duration'] !== undefined) quotas.circuitDurationMs = parseMillis('relay', '--circuit-duration', values['circuit-duration']);
    if (values['reservation-ttl'] !== undefined) {
      quotas.reservationTtlMs = parseMillis('relay', '--reservation-ttl', values['reservation-ttl']);
      if (quotas.reservationTtlMs < 2_000) throw new UsageError('relay: --reservation-ttl must be at least 2s');
    }
    if (values.allow) {
      const keys = values.allow.map((id) => {
        let k: Uint8Array | undefined;
        try {
          k = base32Decode(id.trim());
        } catch {}
        if (k?.length !== 32) throw new UsageError(`relay: --allow: not a peer id: "${id}"`);
        return Buffer.from(k).toString('hex');
      });
      quotas.allow = new Set(keys);
    }
    if (!/^(?:\[[^\]]+\]|[^:\s]+):\d{1,5}$/.test(values.listen)) throw new UsageError(`relay: --listen: expected HOST:PORT, got "${values.listen}"`);
    const identity = await loadOrCreateIdentity(values.identity ?? defaultIdentityPath());
    const server = await RelayServer.start({ identity, listen: values.listen, quotas, log });
    if (values.advertise) server.relayAddress = `${identity.id}@${values.advertise}`;
    let control: ControlServer | undefined;
    try {
      control = await startControl('relay', values.control, identity.id, () => ({ relay: { address: server.relayAddress, ...server.stats } }));
      // Handle SIGINT/SIGTERM from before the first line is out: whoever reads it may signal at once.
      const signalled = untilSignal();
      process.stdout.write(`${server.relayAddress}\n`);
      const q = server.book.quotas;
      log(
        `relay ${identity.id} on ${server.address}: up to ${q.maxReservations} reservations (ttl ${human(q.reservationTtlMs)}), ${q.maxCircuitsPerPeer} circuits per peer, ${q.maxCircuits} in all, ` +
          `${q.circuitBytes ? formatSize(q.circuitBytes) : 'unlimited bytes'} and ${human(q.circuitDurationMs)} per circuit; control socket: ${control.path}`,
      );
      await stopOnSignal(signalled);
      return 0;
    } finally {
      await control?.close();
      await server.close();
    }
  },
};
