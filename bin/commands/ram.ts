/** `quicmap ram`: a local NBD export whose contents live sealed on storage peers (`quicmap store`). */
import { readFileSync } from 'node:fs';
import { type Command, UsageError, log, parseFlags, parseHostPort, untilSignal } from '../command.ts';
import { forFlag } from '../errors.ts';
import { defaultIdentityPath, loadOrCreateIdentity } from '../../crypto/identity.ts';
import { formatSize, parseSize } from '../../base/size.ts';
import { NbdServer } from '../../engine/nbd/server.ts';
import { buildStack } from '../../engine/stack.ts';
import { attachExport, type Attached } from '../../engine/attach/attach.ts';
import { openRemoteRam, type RemoteRam } from '../../p2p/ram/ram.ts';
import type { ControlServer } from '../../p2p/node/control.ts';
import { startControl } from '../control.ts';

const usage = `Usage: quicmap ram --size SIZE --store TICKET[,TICKET...] [options]

Encrypted remote RAM: a local NBD export (and, with --mount, an mmap-able
file) whose contents live on storage peers (\`quicmap store\`), sealed.
Each chunk is encrypted and authenticated (AES-256-GCM) with a key that
never leaves this node, under an id that does not reveal its place, with
a version bound in: a peer returning an old version (a rollback), another
chunk or altered bytes is detected, the chunk is read from another replica
and the bad one repaired; with no good replica the read fails (EIO, and a
log line naming what each peer did), never with wrong data. At most
--cache of plaintext stays here (the most recently used chunks); the rest
is sealed and evicted to the peers. A lost peer's chunks are copied to the
others in the background (progress: \`quicmap status\`). The first line of
stdout is the NBD URI. The contents last as long as this process: on
SIGTERM or SIGINT the region ends at once (within about 2 s, even with
every peer gone): nothing is saved, since the keys are per run and no one
could read it again; the cached plaintext is wiped and the peers are asked
to delete the chunks. An acknowledged FLUSH means "on K peers" while the
process runs, not past its end: this is RAM, not a disk.

Options:
  --size SIZE          region size, e.g. 1GiB (required; a multiple of the
                       chunk size)
  --store TICKET       a storage peer's ticket (the first line \`quicmap
                       store\` prints); repeat it or give a comma list
                       (required); "-" reads one ticket a line from stdin
  --replicas K         each chunk on K peers (default 2, or 1 with one
                       peer); at most the number of peers
  --cache SIZE         plaintext held here at most (default 64MiB; at
                       least 4 chunks)
  --chunk-size SIZE    sealing and eviction unit (default 64KiB)
  --socket PATH        serve the NBD export on this unix socket
  --listen HOST:PORT   or over TCP (default 127.0.0.1:10809)
  --name NAME          export name (default "ram")
  --mount DIR          also make it mmap-able (kernel NBD, else DIR/region
                       through nbdfuse); its path is the second stdout line
  --identity PATH      identity file (default ${defaultIdentityPath()}); the
                       keys are derived from it and a random region id
  --control PATH       control socket for \`quicmap status\` (default
                       $QUICMAP_HOME/run/ram-<pid>.sock, mode 0600)
  --json               the first line is a JSON object ({uri, ...})
  -h, --help           this help

Example:
  quicmap store --listen 0.0.0.0:4500 --quota 2GiB     # on peers A and B
  quicmap ram --size 1GiB --store qm1a...,qm1b... --replicas 2 \\
      --cache 128MiB --socket /tmp/ram.sock
  nbdcopy /dev/urandom 'nbd+unix:///ram?socket=/tmp/ram.sock'
`;

function sizeFlag(flag: string, text: string): number {
  try {
    return parseSize(text);
  } catch (e) {
    throw new UsageError(`ram: ${flag}: ${(e as Error).message}`);
  }
}

export const ram: Command = {
  name: 'ram',
  usage,
  async run(argv) {
    const { values } = parseFlags('ram', argv, {
      size: { type: 'string' },
      store: { type: 'string', multiple: true },
      replicas: { type: 'string' },
      cache: { type: 'string', default: '64MiB' },
      'chunk-size': { type: 'string', default: '64KiB' },
      socket: { type: 'string' },
      listen: { type: 'string' },
      name: { type: 'string', default: 'ram' },
      mount: { type: 'string' },
      identity: { type: 'string' },
      control: { type: 'string' },
      json: { type: 'boolean', default: false },
    });
    if (values.size === undefined) throw new UsageError('ram: --size SIZE is required');
    const size = sizeFlag('--size', values.size);
    const chunkSize = sizeFlag('--chunk-size', values['chunk-size']);
    if (chunkSize < 4096 || chunkSize > 1024 * 1024 || (chunkSize & (chunkSize - 1)) !== 0) throw new UsageError('ram: --chunk-size must be a power of two from 4KiB to 1MiB');
    if (size <= 0 || size % chunkSize !== 0) throw new UsageError(`ram: --size must be a positive multiple of the chunk size (${formatSize(chunkSize)})`);
    if (size / chunkSize > 0xffffffff) throw new UsageError('ram: --size is too large for the chunk size (at most 2^32 chunks)');
    const cacheBytes = sizeFlag('--cache', values.cache);
    if (cacheBytes < 4 * chunkSize) throw new UsageError(`ram: --cache must hold at least 4 chunks (${formatSize(4 * chunkSize)})`);
    let tickets = (values.store ?? []).flatMap((t) => t.split(',')).map((t) => t.trim()).filter((t) => t !== '');
    if (tickets.includes('-')) tickets = [...tickets.filter((t) => t !== '-'), ...readFileSync(0, 'utf8').split('\n').map((l) => l.trim()).filter((l) => l !== '')];
    if (tickets.length === 0) throw new UsageError('ram: --store TICKET is required (the first line `quicmap store` prints)');
    const replicas = values.replicas === undefined ? Math.min(2, tickets.length) : Number(values.replicas);
    if (!Number.isSafeInteger(replicas) || replicas < 1) throw new UsageError(`ram: --replicas must be a positive integer, not "${values.replicas}"`);
    if (replicas > tickets.length) throw new UsageError(`ram: --replicas ${replicas} needs at least ${replicas} --store tickets (${tickets.length} given)`);
    if (values.socket !== undefined && values.listen !== undefined) throw new UsageError('ram: use --socket or --listen, not both');
    if (values.socket === '') throw new UsageError('ram: --socket needs a path');
    const listen = values.socket ? undefined : parseHostPort(values.listen ?? '127.0.0.1:10809', 'ram: --listen');
    const identityPath = values.identity ?? defaultIdentityPath();
    const identity = await forFlag('ram', '--identity', identityPath, () => loadOrCreateIdentity(identityPath));
    const signalled = untilSignal();
    const r: RemoteRam = await forFlag('ram', '--store', undefined, () => openRemoteRam({ identity, size, tickets, replicas, cacheBytes, chunkSize, log }), [2]);
    const server = new NbdServer({ log });
    let control: ControlServer | undefined;
    let fuse: Attached | undefined;
    let exitCode = 0;
    try {
      const stack = await buildStack({ backend: r.store, ownsBackend: false, maxRequest: server.limits.maxPayload });
      await server.addExport({ name: values.name, store: stack, readOnly: false, description: `quicmap encrypted RAM ${formatSize(size)}` });
      const ep = await forFlag('ram', values.socket ? '--socket' : '--listen', values.socket ?? values.listen ?? '127.0.0.1:10809', () =>
        server.listen(values.socket ? { path: values.socket } : listen!),
      );
      const uri = ep.uri(values.name);
      if (values.mount) fuse = await forFlag('ram', '--mount', values.mount, () => attachExport({ server, exportName: values.name, dir: values.mount!, readOnly: false, log }));
      control = await startControl('ram', values.control, identity.id, () => {
        const s = r.status();
        const rep = s.replication;
        return {
          operations: rep.running || rep.underReplicated > 0 ? [{ name: 're-replication', elapsedMs: 0, progress: `${rep.copied} copied, ${rep.underReplicated} of ${rep.chunks} chunks below ${rep.replicas} replicas${rep.lost ? `, ${rep.lost} lost` : ''}` }] : [],
          ram: s,
        };
      });
      process.stdout.write(values.json ? `${JSON.stringify({ uri, name: values.name, size, chunkSize, replicas, cache: cacheBytes, stores: tickets.length, mount: fuse?.path ?? null, control: control.path })}\n` : `${uri}\n${fuse ? `${fuse.path}\n` : ''}`);
      log(`encrypted RAM ${formatSize(size)} at ${uri}${fuse ? ` and ${fuse.path}` : ''}; control socket: ${control.path}`);
      const sig = await signalled;
      log(`${sig}: stopping; the region ends here (its contents are not saved: they last as long as this process)`);
    } finally {
      const alive = setInterval(() => {}, 60_000);
      if (fuse) await fuse.unmount().catch((e) => log(`unmount failed: ${(e as Error).message}`));
      // End the region first: nothing is saved (no one could read it again), and
      // closing the peers' links fails whatever waits on a lost peer, so the NBD
      // connections drain at once instead of after request timeouts.
      const ended = r.end({ releaseMs: 1000 }).then(
        (e) => log(`region ended: ${e.cachedChunks} cached chunks dropped (${e.dirtyChunks} not yet on a peer); ${e.released} chunk copies deleted from the peers${e.releasedAll ? '' : ' (not every peer answered in time; what they keep is ciphertext no one can open)'}`),
        (e: Error) => {
          log(`ram: ${e.message}`);
          exitCode = 1;
        },
      );
      await server.close();
      await control?.close();
      await ended;
      clearInterval(alive);
      // Whatever might still hold the event loop (a transport's close), the exit is bounded.
      setTimeout(() => process.exit(), 1000).unref();
    }
    return exitCode;
  },
};
