/**
 * The swarm flags shared by the long-running commands (`share`, `mount`):
 * --dht, --dht-listen, --relay, --control; and opening the node they run.
 */
import { UsageError, log } from './command.ts';
import type { Identity } from '../crypto/identity.ts';
import type { DhtBootstrap } from '../p2p/dht/client.ts';
import { parseRelayAddress } from '../p2p/relay/address.ts';
import { QuicmapNode } from '../p2p/node/node.ts';
import { defaultControlPath } from '../p2p/node/control.ts';

export const swarmOptions = {
  dht: { type: 'string' },
  'dht-listen': { type: 'string' },
  relay: { type: 'string', multiple: true },
  control: { type: 'string' },
} as const;

/** `mount` takes no --relay: it learns relays from the sharer's DHT record. */
export const { relay: _relayOption, ...mountSwarmOptions } = swarmOptions;

export const swarmHelp = `  --dht HOST:PORT[,...]  find and publish regions in a private DHT swarm
                         through these bootstrap nodes (\`quicmap dht\`);
                         "public": the public Mainline DHT (only if you
                         mean it)
  --dht-listen HOST:PORT this node's DHT socket (default 0.0.0.0:0)
  --control PATH         control socket for \`quicmap status\` (default
                         $QUICMAP_HOME/run/<command>-<pid>.sock, mode 0600)`;

export function parseDht(command: string, text: string | undefined): DhtBootstrap | undefined {
  if (text === undefined) return undefined;
  if (text.trim() === 'public') return 'public';
  const list = text.split(',').map((x) => x.trim()).filter(Boolean);
  if (list.length === 0) throw new UsageError(`${command}: --dht needs HOST:PORT[,...] or "public"`);
  for (const a of list) if (!/^[^:\s]+:\d{1,5}$/.test(a)) throw new UsageError(`${command}: --dht: expected HOST:PORT, got "${a}" (IPv4 only)`);
  return list;
}

export function parseRelays(command: string, list: string[] | undefined): string[] {
  for (const r of list ?? []) {
    try {
      parseRelayAddress(r);
    } catch (e) {
      throw new UsageError(`${command}: --relay: ${(e as Error).message}`);
    }
  }
  return list ?? [];
}

export async function openNode(
  command: string,
  identity: Identity,
  values: { dht?: string; 'dht-listen'?: string; relay?: string[]; control?: string },
  relaysAllowed: boolean,
): Promise<QuicmapNode> {
  const bootstrap = parseDht(command, values.dht);
  if (values.relay && !relaysAllowed) throw new UsageError(`${command}: --relay is for quicmap share`);
  const relays = parseRelays(command, values.relay);
  if (bootstrap === 'public') log(`${command}: joining the public Mainline DHT, as asked (--dht public)`);
  if (relays.length > 0 && !bootstrap) log(`${command}: note: --relay without --dht: mounts learn of the relay only from the DHT record, so only peers that reach this node directly can use the ticket`);
  return QuicmapNode.open({
    identity,
    role: command,
    ...(bootstrap ? { dht: { bootstrap, listen: values['dht-listen'] ?? '0.0.0.0:0' } } : {}),
    relays,
    control: values.control ?? defaultControlPath(command),
    log,
  });
}
