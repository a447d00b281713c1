/** `quicmap store`: hold sealed chunks for encrypted remote RAM (`quicmap ram`) of other nodes. */
import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import { type Command, UsageError, log, parseFlags, parseHostPort, untilSignal } from '../command.ts';
import { forFlag } from '../errors.ts';
import { defaultIdentityPath, loadOrCreateIdentity } from '../../crypto/identity.ts';
import { regionIdText } from '../../crypto/grant.ts';
import { isTransportName, type TransportName } from '../../crypto/endpoint.ts';
import { formatSize, parseSize } from '../../base/size.ts';
import { openChunkStore } from '../../p2p/ram/store.ts';
import type { ControlServer } from '../../p2p/node/control.ts';
import { startControl, stopOnSignal } from '../control.ts';

const usage = `Usage: quicmap store --listen HOST:PORT --quota SIZE [options]

Hold sealed chunks for other nodes' encrypted RAM (\`quicmap ram\`). The
chunks arrive sealed (AES-256-GCM) under opaque ids: this node cannot read
them, and a change or a rollback it made would be detected by their owner.
Each client's chunks are kept apart (by its key); all together are bounded
by the quota, and a chunk past it is refused (quota exceeded: the client
places it on another store). The first line of stdout is the ticket a RAM
node presents (\`quicmap ram --store TICKET\`). Logs go to stderr; Ctrl-C or
SIGTERM stops it.

Options:
  --listen HOST:PORT    address to serve on (required; port 0 picks one)
  --quota SIZE          bytes of sealed chunks to hold at most, e.g. 1GiB
                        (required)
  --backend SPEC        memory (default) | dir:PATH (a file per chunk,
                        fsynced before a put is answered; survives a
                        restart, and so does the ticket)
  --transport NAME      quic (default) | tcp | webtransport
  --identity PATH       identity file (default ${defaultIdentityPath()})
  --control PATH        control socket for \`quicmap status\` (default
                        $QUICMAP_HOME/run/store-<pid>.sock, mode 0600)
  --json                the first line is a JSON object ({ticket, ...})
  -h, --help            this help

Limits (the region server's): 64 connections without a valid ticket (8 per
source address, the oldest of the fullest source evicted), 10 s to present
it, 256 sessions (64 per source), 32 requests in flight per session, 256 MiB
held for requests in progress across all peers (a peer not reading its
replies is dropped when that is full).

Example:
  quicmap store --listen 0.0.0.0:4500 --quota 4GiB --backend dir:/var/lib/qm-store
`;

export const store: Command = {
  name: 'store',
  usage,
  async run(argv) {
    const { values } = parseFlags('store', argv, {
      listen: { type: 'string' },
      quota: { type: 'string' },
      backend: { type: 'string', default: 'memory' },
      transport: { type: 'string', default: 'quic' },
      identity: { type: 'string' },
      control: { type: 'string' },
      json: { type: 'boolean', default: false },
    });
    if (values.listen === undefined) throw new UsageError('store: --listen HOST:PORT is required');
    parseHostPort(values.listen, 'store: --listen');
    if (values.quota === undefined) throw new UsageError('store: --quota SIZE is required (e.g. 1GiB)');
    let quota: number;
    try {
      quota = parseSize(values.quota);
    } catch (e) {
      throw new UsageError(`store: --quota: ${(e as Error).message}`);
    }
    if (quota <= 0) throw new UsageError('store: --quota must be more than 0');
    if (!isTransportName(values.transport)) throw new UsageError(`store: --transport must be quic, webtransport or tcp, not "${values.transport}"`);
    const transport = values.transport as TransportName;
    let backend: { kind: 'memory' } | { kind: 'dir'; path: string };
    if (values.backend === 'memory') backend = { kind: 'memory' };
    else if (values.backend.startsWith('dir:') && values.backend.length > 4) backend = { kind: 'dir', path: resolve(values.backend.slice(4)) };
    else throw new UsageError(`store: --backend must be memory or dir:PATH, not "${values.backend}"`);
    const identityPath = values.identity ?? defaultIdentityPath();
    const identity = await forFlag('store', '--identity', identityPath, () => loadOrCreateIdentity(identityPath));
    // A dir: store keeps its region id (and so its tickets) across restarts.
    const regionId =
      backend.kind === 'dir' ? Uint8Array.from(createHash('sha256').update(identity.publicKey).update(`store:dir:${backend.path}`).digest().subarray(0, 16)) : undefined;
    const signalled = untilSignal();
    const s = await forFlag('store', backend.kind === 'dir' ? '--backend' : '--listen', backend.kind === 'dir' ? values.backend : values.listen, () =>
      openChunkStore({ identity, listen: values.listen!, transport, quota, backend, ...(regionId ? { regionId } : {}), log }),
    );
    let control: ControlServer | undefined;
    try {
      control = await startControl('store', values.control, identity.id, () => ({
        store: { address: s.address, ...s.vault.stats(), ...s.calls, sessions: s.shared.server.stats.sessions },
      }));
      const st = s.vault.stats();
      process.stdout.write(
        values.json
          ? `${JSON.stringify({ ticket: s.ticket, store: identity.id, regionId: regionIdText(s.shared.regionId), transport, address: s.address, quota, used: st.used, backend: values.backend })}\n`
          : `${s.ticket}\n`,
      );
      log(`store ${identity.id} on ${transport}://${s.address}: quota ${formatSize(quota)}, ${formatSize(st.used)} in ${st.chunks} chunks held (${values.backend}); control socket: ${control.path}`);
      await stopOnSignal(signalled);
      return 0;
    } finally {
      await control?.close();
      await s.close();
    }
  },
};
