/**
 * The WAN lab's Hyperswarm anchor (issue 13, "optional anchor in the same
 * run"): HyperDHT 6, which is what Hyperswarm connects with — a DHT lookup
 * of the server's key, a Noise handshake, then an encrypted secret-stream
 * over UDX (its own reliable-UDP protocol with its own congestion control).
 *
 * Its DHT is private: three nodes started beside the server, in the server
 * namespace; the client's only bootstrap is the first of them. Every node is
 * given that bootstrap list, so nothing ever contacts the public HyperDHT
 * bootstrap nodes that are the library's default.
 *
 * The setup workload's time therefore includes the DHT lookup and the
 * holepunch negotiation — what a Hyperswarm user pays to connect by key —
 * where the other subjects dial an address they already know.
 */
import { randomInt } from 'node:crypto';
import { createRequire } from 'node:module';
import type { HyperDhtNode, HyperDhtSocket } from 'hyperdht';

const require = createRequire(import.meta.url);

/** Why the anchor cannot run here (hyperdht is a dev dependency of the bench), or undefined. */
export function hyperswarmUnavailable(): string | undefined {
  try {
    require.resolve('hyperdht');
    return undefined;
  } catch {
    return 'hyperdht is not installed (npm install: it is a dev dependency)';
  }
}

async function load(): Promise<typeof import('hyperdht').default> {
  return (await import('hyperdht')).default;
}

function version(): string {
  return (require('hyperdht/package.json') as { version: string }).version;
}

export interface HyperswarmServer {
  /** The private DHT's bootstrap node, HOST:PORT. */
  bootstrap: string;
  /** The server's key, hex. */
  publicKey: string;
  impl: string;
  stop(): Promise<void>;
}

/** Starts a three-node private DHT on `host` and a server on it; `serve` gets every connection. */
export async function startHyperswarmServer(host: string, serve: (sock: HyperDhtSocket) => void): Promise<HyperswarmServer> {
  const DHT = await load();
  // The lab's namespaces are fresh: a random port is free, and a fixed one
  // would be the library's default (49737), which is also the public DHT's.
  const port = 20_000 + randomInt(40_000);
  const nodes: HyperDhtNode[] = [];
  try {
    const first = new DHT({ ephemeral: false, firewalled: false, bootstrap: [], port, host, anyPort: false });
    nodes.push(first);
    await first.fullyBootstrapped();
    const bootstrap = [{ host, port }];
    while (nodes.length < 3) {
      const n = new DHT({ ephemeral: false, firewalled: false, bootstrap, host });
      nodes.push(n);
      await n.fullyBootstrapped();
    }
    const keyPair = DHT.keyPair();
    const server = nodes[nodes.length - 1]!.createServer((sock) => {
      sock.on('error', () => {});
      serve(sock);
    });
    await server.listen(keyPair);
    return {
      bootstrap: `${host}:${port}`,
      publicKey: Buffer.from(keyPair.publicKey).toString('hex'),
      impl: `hyperdht ${version()}`,
      stop: async () => {
        await server.close().catch(() => {});
        await Promise.allSettled(nodes.map((n) => n.destroy()));
      },
    };
  } catch (e) {
    await Promise.allSettled(nodes.map((n) => n.destroy()));
    throw e;
  }
}

export interface HyperswarmDialer {
  /** Looks the key up in the private DHT and connects; resolves when the encrypted stream is open. */
  dial(): Promise<HyperDhtSocket>;
  close(): Promise<void>;
}

/** A client DHT node (the cold part, like a transport endpoint) bootstrapped from `bootstrap` only. */
export async function makeHyperswarmDialer(bootstrap: string, publicKeyHex: string): Promise<HyperswarmDialer> {
  const DHT = await load();
  const i = bootstrap.lastIndexOf(':');
  const node = new DHT({ ephemeral: true, bootstrap: [{ host: bootstrap.slice(0, i), port: Number(bootstrap.slice(i + 1)) }] });
  await node.ready();
  const key = Buffer.from(publicKeyHex, 'hex');
  return {
    dial: () =>
      new Promise<HyperDhtSocket>((resolve, reject) => {
        const sock = node.connect(key);
        sock.once('open', () => resolve(sock));
        sock.once('error', reject);
        sock.once('close', () => reject(new Error('hyperdht: the connection closed before it opened')));
      }),
    close: () => node.destroy(),
  };
}
