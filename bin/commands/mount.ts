/** `quicmap mount TICKET`: serve a peer's shared region as a local NBD export (a direct mount). */
import { readFileSync } from 'node:fs';
import { type Command, UsageError, log, parseDurationFlag, parseFlags, parseHostPort, untilSignal } from '../command.ts';
import { forFlag } from '../errors.ts';
import { nbdLimitsHelp } from '../limits-help.ts';
import { parseSize } from '../../base/size.ts';
import { defaultIdentityPath, loadOrCreateIdentity } from '../../crypto/identity.ts';
import { regionIdText } from '../../crypto/grant.ts';
import { NbdServer, type NbdEndpoint } from '../../engine/nbd/server.ts';
import { attachExport, type Attached } from '../../engine/attach/attach.ts';
import { formatSize } from '../../base/size.ts';
import { mountTicket, type MountedTicket } from '../../p2p/mount.ts';
import { mountSwarmOptions, openNode } from '../swarm-flags.ts';
import { buildStack } from '../../engine/stack.ts';
import { shareRegion, type SharedRegion } from '../../p2p/share.ts';
import { endpointText } from '../../crypto/endpoint.ts';
import { parseDurationMs } from '../duration.ts';
import { openManaged, type ManagedMount, type ManagedOptions } from '../../p2p/sync/managed.ts';
import { parseBackendSpec } from '../../engine/backends/open.ts';
import { parsePullOrder } from '../../engine/sync/pull-order.ts';
import { showProgress, type ProgressView } from '../progress.ts';
import { SeedPublisher, SeederFinder, type FoundSeeder } from '../../p2p/sync/dht-seeders.ts';
import { startHolding, type Holding } from '../../p2p/sync/held-chunks.ts';
import { serveHaveMap } from '../../p2p/sync/have-calls.ts';

/** Check the managed-mount flags up front, so a typo fails before anything is dialled. */
function parseManagedFlags(v: Record<string, string | boolean | string[] | undefined>): ManagedOptions {
  const out: ManagedOptions = {};
  const str = (k: string) => (typeof v[k] === 'string' ? (v[k] as string) : undefined);
  const cache = str('cache');
  if (cache !== undefined) {
    try {
      parseBackendSpec(cache);
    } catch (e) {
      throw new UsageError(`mount: --cache: ${(e as Error).message}`);
    }
    out.cache = cache;
  }
  const workers = str('pull-workers');
  if (workers !== undefined) {
    if (!/^\d+$/.test(workers) || Number(workers) > 256) throw new UsageError(`mount: --pull-workers must be a whole number from 0 to 256, not "${workers}"`);
    out.pullWorkers = Number(workers);
  }
  const order = str('pull-order');
  if (order !== undefined) {
    try {
      parsePullOrder(order);
    } catch (e) {
      throw new UsageError(`mount: --pull-order: ${(e as Error).message}`);
    }
    out.pullOrder = order;
  }
  const interval = str('push-interval');
  if (interval !== undefined) out.pushIntervalMs = parseDurationMs(interval, 'mount: --push-interval');
  const dirty = str('max-dirty');
  if (dirty !== undefined) {
    try {
      out.maxDirtyBytes = parseSize(dirty);
    } catch (e) {
      throw new UsageError(`mount: --max-dirty: ${(e as Error).message}`);
    }
    if (out.maxDirtyBytes <= 0) throw new UsageError('mount: --max-dirty must be above 0');
  }
  const trace = str('record-trace');
  if (trace !== undefined) out.recordTrace = trace;
  return out;
}

const usage = () => `Usage: quicmap mount TICKET [options]

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

Managed mounts (--managed): chunks are cached locally and pulled in the
background; reads of cached chunks never cross the network, writes go to
the cache and are pushed back in the background; FLUSH returns once every
earlier write is durable at the sharer. Chunks the sharer (or another
mounter) changes are dropped from the cache and pulled again.
  --managed                cache and pull in the background (see above)
  --cache SPEC             memory (default) | file:PATH | dir:PATH
  --pull-workers N         background pull workers (default 8; 0: fetch on
                           demand only)
  --pull-order ORDER       sequential (default) | reverse | volatility
                           (least-changed first) | trace:FILE (replay a
                           trace from --record-trace) | priority:MODULE.js
                           (default export (offset) => priority, higher
                           first)
  --push-interval DUR      push writes this long after the first unpushed
                           one (default 1s; 0: at once), or sooner once
                           --max-dirty is reached
  --max-dirty SIZE         push at once when this much is dirty (default
                           64MiB)
  --record-trace FILE      log the first-touch order of chunks (a pull
                           order for the next mount: --pull-order trace:FILE)
  --seeder TICKET          also pull from this node (repeatable): any node
                           serving a copy of the region (e.g. \`quicmap
                           share --read-only\` of a copy). Its chunks are used
                           only if they match the owner's signed chunk-hash
                           list; a seeder that sends bad chunks is dropped
  --by-reference           ask the sharer where chunks are held: chunks it
                           answers with a reference ("held by mounter P")
                           are pulled from P directly (with the sharer's
                           delegation), checked against the sharer's signed
                           chunk hashes; the rest from the sharer
  --seed-listen HOST:PORT  serve this mount's copy to other mounters as a
                           read-only seeder (it tells pullers which chunks
                           it holds, so they ask it for those only; others
                           are fetched from the owner on demand); its ticket is printed after
                           the NBD URI (with --json: "seedTicket"). With
                           --dht: default 0.0.0.0:0, and the seeder is
                           announced in the DHT once the copy holds chunks
                           ("off": do not seed). A seeding mount also
                           offers its copy to the sharer, which names it to
                           mounters pulling --by-reference
  With --dht a managed mount also finds the region's other seeders in the
  DHT (at start and every 10s) and pulls from them, verified as above.
  A progress bar shows on a terminal; with --json, progress events follow
  the first line, one JSON object per line.
  --identity PATH          identity file (default ${defaultIdentityPath()})
  --max-memory SIZE        memory the NBD server may hold for its clients
                           (see Limits)
  --json                   print one JSON object instead of plain lines
  -h, --help               this help

${nbdLimitsHelp()}
Examples:
  quicmap mount qm1... --listen 127.0.0.1:10810
  quicmap mount qm1... --socket /tmp/r.sock --mount /mnt/r
  quicmap mount qm1... --managed --cache file:/var/tmp/r.cache \
      --pull-order trace:boot.trace --socket /tmp/r.sock
  qemu-io -f raw nbd://127.0.0.1:10810/region -c 'read -v 0 512'
`;

export const mount: Command = {
  name: 'mount',
  get usage() {
    return usage();
  },
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
        'max-memory': { type: 'string' },
        identity: { type: 'string' },
        json: { type: 'boolean', default: false },
        ...mountSwarmOptions,
        managed: { type: 'boolean', default: false },
        cache: { type: 'string' },
        'pull-workers': { type: 'string' },
        'pull-order': { type: 'string' },
        'push-interval': { type: 'string' },
        'max-dirty': { type: 'string' },
        'record-trace': { type: 'string' },
        seeder: { type: 'string', multiple: true },
        'seed-listen': { type: 'string' },
        'by-reference': { type: 'boolean' },
      },
      true,
    );
    const managedFlags = ['cache', 'pull-workers', 'pull-order', 'push-interval', 'max-dirty', 'record-trace', 'seeder', 'seed-listen', 'by-reference'] as const;
    if (!values.managed) {
      const stray = managedFlags.find((f) => values[f] !== undefined);
      if (stray) throw new UsageError(`mount: --${stray} needs --managed`);
    }
    const managed = values.managed ? parseManagedFlags(values) : undefined;
    if (positionals.length > 1) throw new UsageError('mount: give one ticket (see quicmap mount --help)');
    if (values.listen && values.socket) throw new UsageError('mount: use --listen or --socket, not both');
    let ticketText = positionals[0] ?? '';
    if (ticketText === '-') ticketText = readFileSync(0, 'utf8').split('\n')[0] ?? '';
    if (ticketText === '') throw new UsageError('mount: missing TICKET (the "qm1..." line `quicmap share` printed)');
    let memoryBudget: number | undefined;
    if (values['max-memory'] !== undefined) {
      try {
        memoryBudget = parseSize(values['max-memory']);
      } catch (e) {
        throw new UsageError(`mount: --max-memory: ${(e as Error).message}`);
      }
    }
    const requestTimeoutMs = parseDurationFlag('mount', '--request-timeout', values['request-timeout']);
    const listen = values.socket ? undefined : parseHostPort(values.listen ?? '127.0.0.1:10809');
    const identityPath = values.identity ?? defaultIdentityPath();
    const identity = await forFlag('mount', '--identity', identityPath, () => loadOrCreateIdentity(identityPath));
    log(`this node is ${identity.id}`);
    const server = new NbdServer({ log, ...(memoryBudget ? { memoryBudget } : {}) });
    const node = await openNode('mount', identity, values, false);
    let mounted: MountedTicket;
    let dialerPath: (() => { transport: string; address: string } | undefined) | undefined;
    try {
      const nm = await node.mount({ ticket: ticketText, region: { requestTimeoutMs }, maxRequest: server.limits.maxPayload });
      mounted = nm.mounted;
      dialerPath = () => nm.dialer.path;
    } catch (e) {
      await node.close();
      await server.close();
      throw e;
    }
    let endpoint: NbdEndpoint | undefined;
    let fuse: Attached | undefined;
    let mm: ManagedMount | undefined;
    let exitCode = 0;
    let seed: SharedRegion | undefined;
    const seeders: MountedTicket[] = [];
    let urgentLink: { region: MountedTicket['region']; close(): Promise<void> } | undefined;
    let progress: ProgressView | undefined;
    let finder: SeederFinder | undefined;
    let seedPublisher: SeedPublisher | undefined;
    let holding: Holding | undefined;
    const early: FoundSeeder[] = [];
    try {
      const region = mounted.region;
      if (managed) {
        for (const t of values.seeder ?? []) {
          const s = await mountTicket({ identity, ticket: t, region: { requestTimeoutMs }, log });
          seeders.push(s);
        }
        // With a DHT: the region's other seeders, asked once before the pull starts, then again now and then.
        if (node.dht) {
          const claims = mounted.ticket.claims;
          finder = new SeederFinder({
            dht: node.dht,
            identity,
            sharer: claims.sharer,
            regionId: claims.regionId,
            size: region.manifest.size,
            region: { requestTimeoutMs },
            log,
            onSeeder: (f) => (mm ? mm.addSeeder(f.name, f.mounted.region) : void early.push(f)),
          });
          await finder.lookOnce().catch((e) => log(`dht: looking for seeders failed: ${(e as Error).message}`));
        }
        // Reads a client waits for get a link of their own (no wait behind background pulls).
        // A ticket without addresses (the DHT finds the sharer) gets its second link through the node's dialer too.
        const urgent =
          mounted.ticket.claims.endpoints.length > 0
            ? await mountTicket({ identity, ticket: ticketText, region: { requestTimeoutMs }, log: () => {} })
            : await node.mount({ ticket: ticketText, region: { requestTimeoutMs }, maxRequest: server.limits.maxPayload }).then((u) => ({ region: u.mounted.region, close: () => u.close() }));
        urgentLink = urgent;
        mm = await openManaged(region, {
          ...managed,
          urgent: urgent.region,
          seeders: [...seeders.map((s) => ({ name: s.sharerId.slice(0, 12), region: s.region })), ...early.map((f) => ({ name: f.name, region: f.mounted.region }))],
          swarm: finder !== undefined,
          ...(values['by-reference'] ? { byReference: { identity } } : {}),
          log,
          onEvent: (e) => progress?.event(e),
        });
        if (managed.pullOrder) log(`pull order: ${mm.synced.progress().pullOrder}`);
        finder?.start();
        const status = mm.status;
        node.extra.managed = () => ({ ...status.progress(), peers: status.peers() ?? null, references: status.references() ?? null });
      }
      // A managed mount serves its own stack (guard → chunked → synced → cache, pulling from the region).
      const store = mm ? await buildStack({ backend: mm.store, ownsBackend: false, maxRequest: server.limits.maxPayload, readOnly: region.caps.readOnly }) : mounted.store;
      const readOnly = store.caps.readOnly;
      const info = await forFlag('mount', '--name', values.name, () =>
        server.addExport({
          name: values.name,
          store,
          readOnly,
          description: `quicmap region ${regionIdText(mounted.ticket.claims.regionId)} from ${mounted.sharerId}`,
        }),
      );
      endpoint = await forFlag('mount', values.socket ? '--socket' : '--listen', values.socket ?? values.listen ?? '127.0.0.1:10809', () =>
        server.listen(values.socket ? { path: values.socket } : listen!),
      );
      const uri = endpoint.uri(values.name);
      if (values.mount) fuse = await forFlag('mount', '--mount', values.mount, () => attachExport({ server, exportName: values.name, dir: values.mount!, readOnly, log }));
      const seedListen = values['seed-listen'] ?? (node.dht ? '0.0.0.0:0' : undefined);
      if (mm && seedListen !== undefined && seedListen !== 'off') {
        const view = await buildStack({ backend: mm.store, ownsBackend: false, maxRequest: server.limits.maxPayload, readOnly: true });
        // Seed over the transport the sharer was reached by (other mounters of the region dial the same way).
        const transport = (dialerPath?.()?.transport ?? mounted.endpoint?.transport ?? mounted.ticket.claims.endpoints[0]?.transport ?? 'quic') as 'quic' | 'tcp' | 'webtransport';
        seed = await forFlag('mount', '--seed-listen', seedListen, () => shareRegion({ identity, store: view, transport, listen: seedListen, readOnly: true, log }));
        // Offer the copy to the sharer: mounters pulling by reference are sent here for the chunks it holds.
        holding = startHolding({ owner: region, identity, copy: mm.synced, seed: { server: seed.server, regionId: seed.regionId, endpoints: seed.endpoints }, chunkSize: mm.synced.progress().chunkSize, log });
        const held = holding;
        node.extra.holding = () => ({ offered: held.offer.offered, accepted: held.offer.lastAccepted, lastError: held.offer.lastError ?? null, served: { ...held.served } });
        // Pullers ask which chunks this copy holds (clean local ones: a dirty chunk would not match the owner's hash).
        const states = mm.synced.states;
        serveHaveMap(seed.server, states.count, (i) => states.isLocal(i) && !states.isDirty(i));
        if (node.dht) {
          const m = mm;
          const claims = mounted.ticket.claims;
          seedPublisher = new SeedPublisher({ dht: node.dht, sharer: claims.sharer, regionId: claims.regionId, ticket: seed.ticket, address: seed.address, ready: () => m.synced.progress().local > 0, log });
          const sp = seedPublisher;
          node.extra.seeding = () => ({ address: sp && seed ? seed.address : null, published: sp.published, lastError: sp.lastError ?? null, found: finder?.found.map((f) => ({ name: f.name, address: f.address })) ?? [] });
          void seedPublisher.start();
        }
      }
      // Handle SIGINT/SIGTERM from before the first line is out: whoever reads it may signal at once.
      const signalled = untilSignal();
      if (values.json) {
        process.stdout.write(
          `${JSON.stringify({ uri, name: values.name, size: info.size, readOnly, sharer: mounted.sharerId, regionId: regionIdText(mounted.ticket.claims.regionId), transport: dialerPath?.()?.transport ?? mounted.endpoint?.transport ?? null, endpoint: ((p) => (p ? `${p.transport}://${p.address}` : mounted.endpoint ? endpointText(mounted.endpoint) : null))(dialerPath?.()), mount: fuse ? { method: fuse.method, path: fuse.path } : null, seedTicket: seed?.ticket ?? null })}\n`,
        );
      } else {
        process.stdout.write(`${uri}\n`);
        if (fuse) process.stdout.write(`${fuse.path}\n`);
        if (seed) process.stdout.write(`${seed.ticket}\n`);
      }
      log(`mounted ${formatSize(info.size)}${readOnly ? ' read-only' : ''} from sharer ${mounted.sharerId} at ${uri}${fuse ? ` and ${fuse.path}` : ''}${mm ? ` (managed, cache ${managed!.cache ?? 'memory'})` : ''}`);
      log(`stack: NBD server → ${store.describe()}`);
      if (mm) {
        const synced = mm.synced;
        const m = mm;
        progress = showProgress(() => synced, { json: values.json, extra: () => ({ peers: m.peers() }) });
      }
      const sig = await signalled;
      log(`${sig}: unmounting`);
    } finally {
      // The region's retry and deadline timers do not hold the process open; this does, until shutdown is done
      // (a last push to a sharer that is down waits for its link deadline instead of the process just ending).
      const alive = setInterval(() => {}, 60_000);
      progress?.stop();
      seedPublisher?.stop();
      await holding?.stop().catch(() => {});
      await finder?.stop();
      await seed?.close().catch(() => {});
      if (fuse) await fuse.unmount().catch((e) => log(`unmount failed: ${(e as Error).message}`));
      await server.close();
      // A managed mount pushes what is still dirty before it lets go of the sharer.
      if (mm) {
        await mm.close().catch((e) => {
          const dirty = mm!.synced.progress().dirty;
          log(`mount: ${dirty} written chunk(s) could not be pushed to the sharer before exit (${(e as Error).message}); they are lost`);
          exitCode = 1;
        });
      }
      await mounted.store.flush().catch(() => {});
      for (const s of seeders) await s.close().catch(() => {});
      await urgentLink?.close().catch(() => {});
      await node.close();
      clearInterval(alive);
    }
    return exitCode;
  },
};
