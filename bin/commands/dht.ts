/** `quicmap dht --listen HOST:PORT`: a DHT node for a private swarm (a bootstrap node). */
import { type Command, UsageError, log, parseFlags, untilSignal } from '../command.ts';
import { DhtClient } from '../../p2p/dht/client.ts';
import type { ControlServer } from '../../p2p/node/control.ts';
import { startControl, stopOnSignal } from '../control.ts';
import { parseDht } from '../swarm-flags.ts';

const usage = `Usage: quicmap dht --listen HOST:PORT [options]

Run a Mainline DHT node (BEP5 announces, BEP44 signed records) for a
private swarm: the bootstrap node that \`quicmap share --dht HOST:PORT\`
and \`quicmap mount --dht HOST:PORT\` join. The first line of stdout is
its address (HOST:PORT). IPv4 only. It talks to nobody but the nodes that
contact it and those given with --bootstrap; never to the public DHT.
Ctrl-C or SIGTERM stops it.

Options:
  --listen HOST:PORT      UDP address (default 127.0.0.1:6881; port 0
                          picks a free one)
  --bootstrap HOST:PORT[,...]
                          other nodes of the same private swarm to join
  --query-timeout DUR     how long one query waits for a node (default 1s;
                          ms accepted: 250ms)
  --control PATH          control socket for \`quicmap status\` (default
                          $QUICMAP_HOME/run/dht-<pid>.sock, mode 0600)
  -h, --help              this help

Example:
  quicmap dht --listen 10.0.0.1:6881
`;

/** "250ms", "1s", "2m" -> milliseconds. */
export function parseMillis(command: string, flag: string, text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/i.exec(text);
  if (!m) throw new UsageError(`${command}: ${flag}: not a duration: "${text}" (try 250ms, 30s, 15m, 12h, 7d)`);
  const mult = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[(m[2] ?? 's').toLowerCase() as 's']!;
  return Math.round(Number(m[1]) * mult);
}

export const dht: Command = {
  name: 'dht',
  usage,
  async run(argv) {
    const { values } = parseFlags('dht', argv, {
      listen: { type: 'string', default: '127.0.0.1:6881' },
      bootstrap: { type: 'string' },
      'query-timeout': { type: 'string', default: '1s' },
      control: { type: 'string' },
    });
    if (!/^[^:\s]+:\d{1,5}$/.test(values.listen)) throw new UsageError(`dht: --listen: expected HOST:PORT (IPv4), got "${values.listen}"`);
    const boot = parseDht('dht', values.bootstrap);
    if (boot === 'public') throw new UsageError('dht: --bootstrap public is not allowed: this command runs a private swarm node');
    const queryTimeoutMs = parseMillis('dht', '--query-timeout', values['query-timeout']);
    const host = values.listen.replace(/:\d+$/, '');
    const client = await DhtClient.open({ bootstrap: boot ?? 'none', listen: values.listen, ...(host !== '0.0.0.0' ? { host } : {}), queryTimeoutMs, log });
    let control: ControlServer | undefined;
    try {
      control = await startControl('dht', values.control, `dht ${client.address}`, () => ({ dht: { address: client.address, nodes: client.nodeCount } }));
      // Handle SIGINT/SIGTERM from before the first line is out: whoever reads it may signal at once.
      const signalled = untilSignal();
      process.stdout.write(`${client.address}\n`);
      log(`dht node at ${client.address}${Array.isArray(boot) ? `, joined ${boot.join(', ')}` : ' (first node of a private swarm)'}; control socket: ${control.path}`);
      await stopOnSignal(signalled);
      return 0;
    } finally {
      await control?.close();
      await client.destroy();
    }
  },
};
