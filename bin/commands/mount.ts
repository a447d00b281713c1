/** `quicmap mount TICKET`: serve a peer's shared region as a local NBD export (a direct mount). */
import { readFileSync } from 'node:fs';
import { type Command, UsageError, log, parseFlags, parseHostPort, untilSignal } from '../command.ts';
import { defaultIdentityPath, loadOrCreateIdentity } from '../../crypto/identity.ts';
import { regionIdText } from '../../crypto/grant.ts';
import { NbdServer, type NbdEndpoint } from '../../engine/nbd/server.ts';
import { attachExport, type Attached } from '../../engine/attach/attach.ts';
import { formatSize } from '../../base/size.ts';
import type { MountedTicket } from '../../p2p/mount.ts';
import { mountSwarmOptions, openNode } from '../swarm-flags.ts';
import { parseDuration } from './share.ts';

const usage = `Usage: quicmap mount TICKET [options]

Mount a region a peer shares: every read and write goes to the sharer (a
direct mount). The region is served as a local NBD export; the first line
of stdout is its NBD URI, and with --mount the second line is an
mmap-able path. Logs go to stderr. If the sharer goes away, pending I/O
fails with EIO (no hang) and the mount reconnects in the background.
Exits non-zero with a clear message if the ticket is invalid or the
sharer refuses it. TICKET "-" reads the ticket from stdin.

Options:
  --listen HOST:PORT       NBD over TCP (default 127.0.0.1:10809; port 0
                           picks a free one)
  --socket PATH            NBD over a unix socket instead
  --name NAME              export name (default "region")
  --mount DIR              also make it mmap-able (kernel NBD, else
                           DIR/region through nbdfuse)
  --request-timeout DUR    fail a request the sharer leaves unanswered
                           (default 30s)
  --dht HOST:PORT[,...]    look the sharer up in a private DHT swarm
                           (\`quicmap dht\` nodes) when the ticket has no
                           address or its addresses fail; "public": the
                           public Mainline DHT (only if you mean it). The
                           record is checked (signature, seq, region); a
                           sharer unreachable directly is reached through
                           a relay its record lists, and the mount moves
                           to a direct path when one answers
  --dht-listen HOST:PORT   this node's DHT socket (default 0.0.0.0:0)
  --control PATH           control socket for \`quicmap status\` (default
                           $QUICMAP_HOME/run/mount-<pid>.sock, mode 0600)
  --identity PATH          identity file (default ${defaultIdentityPath()})
  --json                   print one JSON object instead of plain lines
  -h, --help               this help

Examples:
  quicmap mount qm1... --listen 127.0.0.1:10810
  quicmap mount qm1... --socket /tmp/r.sock --mount /mnt/r
  qemu-io -f raw nbd://127.0.0.1:10810/region -c 'read -v 0 512'
`;

export const mount: Command = {
  name: 'mount',
  usage,
  async run(argv) {
    const { values, positionals } = parseFlags(
      'mount',
      argv,
      {
        listen: { type: 'string' },
        socket: { type: 'string' },
        name: { type: 'string', default: 'region' },
        mount: { type: 'string' },
        'request-timeout': { type: 'string', default: '30s' },
        identity: { type: 'string' },
        json: { type: 'boolean', default: false },
        ...mountSwarmOptions,
      },
      true,
    );
    if (positionals.length > 1) throw new UsageError('mount: give one ticket (see quicmap mount --help)');
    if (values.listen && values.socket) throw new UsageError('mount: use --listen or --socket, not both');
    let ticketText = positionals[0] ?? '';
    if (ticketText === '-') ticketText = readFileSync(0, 'utf8').split('\n')[0] ?? '';
    if (ticketText === '') throw new UsageError('mount: missing TICKET (the "qm1..." line `quicmap share` printed)');
    const requestTimeoutMs = parseDuration(values['request-timeout']) * 1000;
    const listen = values.socket ? undefined : parseHostPort(values.listen ?? '127.0.0.1:10809');
    const identity = await loadOrCreateIdentity(values.identity ?? defaultIdentityPath());
    log(`this node is ${identity.id}`);
    const server = new NbdServer({ log });
    const node = await openNode('mount', identity, values, false);
    let mounted: MountedTicket;
    try {
      mounted = (await node.mount({ ticket: ticketText, region: { requestTimeoutMs }, maxRequest: server.limits.maxPayload })).mounted;
    } catch (e) {
      await node.close();
      await server.close();
      throw e;
    }
    let endpoint: NbdEndpoint | undefined;
    let fuse: Attached | undefined;
    try {
      const store = mounted.store;
      const readOnly = store.caps.readOnly;
      const info = await server.addExport({
        name: values.name,
        store,
        readOnly,
        description: `quicmap region ${regionIdText(mounted.ticket.claims.regionId)} from ${mounted.sharerId}`,
      });
      endpoint = await server.listen(values.socket ? { path: values.socket } : listen!);
      const uri = endpoint.uri(values.name);
      if (values.mount) fuse = await attachExport({ server, exportName: values.name, dir: values.mount, readOnly, log });
      if (values.json) {
        process.stdout.write(
          `${JSON.stringify({ uri, name: values.name, size: info.size, readOnly, sharer: mounted.sharerId, regionId: regionIdText(mounted.ticket.claims.regionId), transport: mounted.ticket.claims.transport, mount: fuse ? { method: fuse.method, path: fuse.path } : null })}\n`,
        );
      } else {
        process.stdout.write(`${uri}\n`);
        if (fuse) process.stdout.write(`${fuse.path}\n`);
      }
      log(`mounted ${formatSize(info.size)}${readOnly ? ' read-only' : ''} from sharer ${mounted.sharerId} at ${uri}${fuse ? ` and ${fuse.path}` : ''}`);
      log(`stack: NBD server → ${store.describe()}`);
      const sig = await untilSignal();
      log(`${sig}: unmounting`);
      return 0;
    } finally {
      if (fuse) await fuse.unmount().catch((e) => log(`unmount failed: ${(e as Error).message}`));
      await server.close();
      await mounted.store.flush().catch(() => {});
      await node.close();
    }
  },
};
