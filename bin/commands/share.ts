/** `quicmap share`: serve a region to peers that hold its ticket. */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { type Command, UsageError, log, parseDurationFlag, parseFlags, untilSignal } from '../command.ts';
import { EXIT, forFlag } from '../errors.ts';
import { base32Decode, loadOrCreateIdentity, defaultIdentityPath } from '../../crypto/identity.ts';
import { regionIdText } from '../../crypto/grant.ts';
import { parseBackendSpec } from '../../engine/backends/open.ts';
import { buildStack } from '../../engine/stack.ts';
import { formatSize, parseSize } from '../../base/size.ts';
import { DEFAULT_LIMITS } from '../../p2p/remote/server.ts';
import { openNode, swarmHelp, swarmOptions } from '../swarm-flags.ts';
import { FeedLayer } from '../../engine/layers/feed.ts';
import { WriteGate } from '../../engine/layers/write-gate.ts';
import { WriteThrottle } from '../../engine/layers/write-throttle.ts';
import { serveMigration, type MigrationSource } from '../../p2p/sync/migrate-calls.ts';
import { localExportSpec, serveLocalExport, type LocalExport } from '../local-export.ts';
import { runHook } from '../hook.ts';
import { parseDurationMs } from '../duration.ts';
import { endpointText, isTransportName, type TransportName } from '../../crypto/endpoint.ts';

const usage = `Usage: quicmap share --size SIZE --listen HOST:PORT [options]

Share a region with peers. Once the sharer accepts connections, the first
line of stdout is the ticket ("qm1..."): give it to a peer, who runs
\`quicmap mount TICKET\`. Logs (the sharer id, peers, refusals) go to stderr.
Ctrl-C or SIGTERM stops sharing, flushes and exits.

Options:
  --size SIZE            region size, e.g. 256MiB, 4G (required for memory
                         and for a backend that does not exist yet)
  --backend SPEC         memory (default, sparse) | file:PATH | dir:PATH |
                         nbd:URI (any NBD server, e.g. an nbdkit plugin)
  --listen HOST:PORT     address to serve on (default 127.0.0.1:4433;
                         port 0 picks a free one); once per --transport,
                         in the same order (missing ones: same host, port 0)
  --transport NAME       quic (default) | webtransport | tcp; repeat it
                         (or give a list: quic,webtransport) to listen on
                         several: the ticket lists them all and a mount
                         tries quic first, then the others in this order
  --read-only            the ticket grants reading only (the sharer refuses
                         writes, trims and zeroes with EPERM)
  --expires DURATION     the ticket expires after e.g. 30s, 15m, 12h, 7d
                         (at least 1s; fractions round up), or "never"
                         (the default)
  --grantee PEER_ID      only the peer with this id (its \`quicmap\` identity,
                         as printed in its logs) may use the ticket
  --advertise ADDRESS    endpoint written into the ticket, if peers reach
                         this node by another address than --listen:
                         TRANSPORT://HOST:PORT, or HOST:PORT with one
                         --transport (repeatable)
  --region-id HEX        32 hex digits naming the region. Default: derived
                         from the identity and the path for file:/dir:
                         backends or the URI for nbd: (tickets survive a
                         restart of the sharer), random for memory
  --socket PATH          also serve the region as a local NBD export
                         (export "region") on this unix socket, for an
                         application on this host; its writes are tracked:
                         mounters' cached chunks are invalidated and a
                         migration finds them dirty. The NBD URI is the
                         second stdout line
  --nbd-listen HOST:PORT the same over TCP
  --on-suspend CMD       run CMD (sh -c) when a migration target finalizes:
                         stop the application (e.g. kill -STOP PID, or an
                         msync and pause); writes are then closed, flushed
                         and handed over. A non-zero exit refuses the
                         finalize. Env: QUICMAP_TARGET (the target's id).
                         While a migration's dirty rounds do not converge,
                         the target may throttle writes through --socket /
                         --nbd-listen (auto-converge: they wait for 10 ms
                         open slices, up to 99 % of the time; lifted when
                         the target stops renewing it); \`status\` shows it
  --handover-timeout DUR a finalizing target that does not commit within
                         this (it died) leaves this node the owner again,
                         writes reopened (default 30s). After a handover a
                         file:/dir: source writes PATH.quicmap-migrated and,
                         restarted, shares read-only
  --ref-cache SIZE       memory for pieces handed out by reference (reads
                         answered with cache IDs, \`quicmap copy\`; default
                         64MiB). When full the oldest are flushed back from
                         their holders, then pieces go inline
  --copy-hold SIZE       as a copy destination: fetched pieces waiting for
                         their write (default 16MiB); beyond it a piece is
                         dropped and fetched again later
  --relay RELAY          reserve a slot on this relay (RELAY_ID@HOST:PORT,
                         the first line \`quicmap relay\` prints; repeatable):
                         peers that cannot reach this node directly come
                         through it; the DHT record lists it
${swarmHelp}
  --force                with dir:PATH, make a region in a non-empty
                         directory that is not one yet
  --identity PATH        identity file (default ${defaultIdentityPath()})
  --json                 print one JSON object instead of the bare ticket
  -h, --help             this help

Limits (hostile peers cannot lock others out or exhaust memory):
  a peer must send a valid HELLO (its grant) within 10s; until then it is
    pending: 64 at once, 8 per source address (a newcomer evicts the
    oldest of the fullest source); sessions: 256, 64 per source address;
    4 streams per connection
  memory held for requests in progress, all peers together: 256 MiB (+2 MiB
    reserve); while it is full, a peer that has not read its replies
    for 2s is dropped, largest first
  tcp: 64 handshakes at once (8 per source, same eviction), 5s each

Examples:
  quicmap share --size 256MiB --listen 127.0.0.1:4433
  quicmap share --size 1G --listen 10.0.0.5:4433 --dht 10.0.0.1:6881 \\
      --relay RELAY_ID@10.0.0.1:4000          # ticket without addresses
  quicmap share --backend file:/var/lib/disk.img --listen 0.0.0.0:4433 \\
      --advertise 10.0.0.5:4433 --transport tcp --read-only --expires 1h
  quicmap share --size 1GiB --transport quic,webtransport,tcp \\
      --listen 0.0.0.0:4433 --listen 0.0.0.0:443 --listen 0.0.0.0:4434
`;

/**
 * --expires → seconds until expiry, 0 for "never" (the only way to ask for
 * no expiry). Tickets expire in whole seconds: under a second is refused
 * (0.4s must not round to 0, which would mean never), fractions round up.
 */
export function parseExpiry(text: string): number {
  if (text.trim().toLowerCase() === 'never') return 0;
  return Math.ceil(parseDurationFlag('share', '--expires', text, 1000) / 1000);
}

function regionIdFor(spec: string, sharerKey: Uint8Array, flag: string | undefined): Uint8Array | undefined {
  if (flag !== undefined) {
    if (!/^[0-9a-f]{32}$/i.test(flag)) throw new UsageError('share: --region-id must be 32 hex digits');
    return Uint8Array.from(Buffer.from(flag, 'hex'));
  }
  const parsed = parseBackendSpec(spec);
  if (parsed.kind === 'memory') return undefined;
  // Same sharer + same file (or NBD server) = same region: a restarted sharer keeps honouring its tickets.
  if (parsed.kind === 'nbd') return Uint8Array.from(createHash('sha256').update(sharerKey).update(`nbd:${parsed.uri}`).digest().subarray(0, 16));
  let path = parsed.path;
  try {
    path = realpathSync(path);
  } catch {}
  return Uint8Array.from(createHash('sha256').update(sharerKey).update(`${parsed.kind}:${path}`).digest().subarray(0, 16));
}

/** Write the handover durably before the commit is answered, so a restarted source cannot take writes again. */
async function recordHandover(path: string, target: string): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.writeFile(`${target}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export const share: Command = {
  name: 'share',
  usage,
  async run(argv) {
    const { values } = parseFlags('share', argv, {
      size: { type: 'string' },
      backend: { type: 'string', default: 'memory' },
      listen: { type: 'string', multiple: true },
      transport: { type: 'string', multiple: true },
      'read-only': { type: 'boolean', default: false },
      expires: { type: 'string' },
      advertise: { type: 'string', multiple: true },
      'region-id': { type: 'string' },
      grantee: { type: 'string' },
      identity: { type: 'string' },
      force: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      ...swarmOptions,
      socket: { type: 'string' },
      'nbd-listen': { type: 'string' },
      'on-suspend': { type: 'string' },
      'handover-timeout': { type: 'string', default: '30s' },
      'ref-cache': { type: 'string', default: '64MiB' },
      'copy-hold': { type: 'string', default: '16MiB' },
    });
    const sizeFlag = (flag: string, text: string, min: number) => {
      let n: number;
      try {
        n = parseSize(text);
      } catch (e) {
        throw new UsageError(`share: ${flag}: ${(e as Error).message}`);
      }
      if (n < min) throw new UsageError(`share: ${flag}: at least ${formatSize(min)}`);
      return n;
    };
    const refCacheBytes = sizeFlag('--ref-cache', values['ref-cache'], 0);
    const copyHoldBytes = sizeFlag('--copy-hold', values['copy-hold'], 4096);
    const handoverTimeoutMs = parseDurationMs(values['handover-timeout'], 'share: --handover-timeout');
    const localSpec = localExportSpec('share', values.socket, values['nbd-listen'], '--nbd-listen');
    const transports = (values.transport ?? ['quic']).flatMap((t) => t.split(',')).map((t) => t.trim());
    for (const t of transports) {
      if (!isTransportName(t)) throw new UsageError(`share: --transport must be quic, webtransport or tcp, not "${t}"`);
    }
    if (new Set(transports).size !== transports.length) throw new UsageError('share: --transport names a transport twice');
    const listens = values.listen ?? ['127.0.0.1:4433'];
    if (listens.length > transports.length) throw new UsageError(`share: ${listens.length} --listen for ${transports.length} --transport (give one per transport)`);
    const host = /^(.*):\d+$/.exec(listens[0]!)?.[1] ?? '127.0.0.1';
    const listenFor = (i: number) => listens[i] ?? `${host}:0`;
    if (values.advertise && transports.length > 1) {
      for (const a of values.advertise) {
        if (!a.includes('://')) throw new UsageError(`share: --advertise "${a}": with several --transport write it as TRANSPORT://HOST:PORT`);
      }
    }
    const transport = transports[0] as TransportName;
    let size: number | undefined;
    if (values.size !== undefined) {
      try {
        size = parseSize(values.size);
      } catch (e) {
        throw new UsageError(`share: --size: ${(e as Error).message}`);
      }
    }
    const expiresIn = values.expires !== undefined ? parseExpiry(values.expires) : 0;
    let grantee: Uint8Array | undefined;
    if (values.grantee !== undefined) {
      try {
        grantee = base32Decode(values.grantee.trim());
      } catch {}
      if (grantee?.length !== 32) throw new UsageError('share: --grantee must be a peer id (52 base32 characters)');
    }
    const spec = await forFlag('share', '--backend', values.backend, () => parseBackendSpec(values.backend));
    // A region migrated away stays read-only here: the handover is recorded beside a file or dir backend.
    const marker = spec.kind === 'file' || spec.kind === 'dir' ? `${spec.path.replace(/\/+$/, '')}.quicmap-migrated` : undefined;
    const migratedTo = marker && existsSync(marker) ? readFileSync(marker, 'utf8').trim() : undefined;
    if (migratedTo) log(`share: this region was migrated to ${migratedTo} (${marker}); sharing it read-only. Remove that file to make this node the owner again.`);
    const readOnly = values['read-only'] || migratedTo !== undefined;
    const identityPath = values.identity ?? defaultIdentityPath();
    const identity = await forFlag('share', '--identity', identityPath, () => loadOrCreateIdentity(identityPath));
    const regionId = regionIdFor(values.backend, identity.publicKey, values['region-id']);
    // The region server's frame limit bounds a single request: the guard allows no more.
    const store = await forFlag('share', '--backend', values.backend, () =>
      buildStack({ backend: values.backend, backendOptions: { size, readOnly, create: true, force: values.force }, maxRequest: DEFAULT_LIMITS.maxFrame }),
    );
    let shared: Awaited<ReturnType<Awaited<ReturnType<typeof openNode>>['share']>>['shared'] | undefined;
    let node: Awaited<ReturnType<typeof openNode>> | undefined;
    let local: LocalExport | undefined;
    let migration: MigrationSource | undefined;
    // One gate on every path into the store: a migration's handover closes them all at once.
    const gate = new WriteGate();
    // Auto-converge slows the local application's writes (not peers') while a migration does not converge.
    const throttle = new WriteThrottle();
    try {
      const bytes = await store.size();
      node = await openNode('share', identity, values, true);
      const n = node;
      // Sharing also reserves relay slots and publishes to the DHT: only an unusable address is --listen's fault.
      ({ shared } = await forFlag('share', '--listen', values.listen?.join(','), () => n.share({
        store: gate.wrap(store),
        transport,
        listen: listenFor(0),
        alsoListen: transports.slice(1).map((t, i) => ({ transport: t as TransportName, listen: listenFor(i + 1) })),
        readOnly,
        expiresIn,
        ...(grantee ? { grantee } : {}),
        ...(regionId ? { regionId } : {}),
        ...(values.advertise ? { advertise: values.advertise } : {}),
        refCache: { maxBytes: refCacheBytes },
        copyTarget: { holdBytes: copyHoldBytes },
      }), [EXIT.address]));
      const sh = shared;
      node.extra.cache = () => sh.refs.view();
      node.extra.copy = () => sh.copyTarget.view();
      node.extra.holders = () => sh.holders.view();
      const feed = shared.feed;
      const onSuspend = values['on-suspend'];
      migration = serveMigration(shared.server, {
        gate,
        feed,
        flush: () => store.flush(),
        prepareTimeoutMs: handoverTimeoutMs,
        throttle,
        ...(marker ? { onCommit: (target: string) => recordHandover(marker, target) } : {}),
        ...(onSuspend ? { onSuspend: (target: string) => runHook('share: --on-suspend', onSuspend, { QUICMAP_TARGET: target }) } : {}),
        log,
      });
      const own = migration.ownership;
      node.extra.migration = () => ({ phase: own.phase, target: own.targetId ?? null, writable: gate.isOpen, throttle: throttle.stats() });
      if (localSpec) {
        // The throttle sits above the gate: a write it holds back is not in the store, so a handover never waits for it.
        local = await serveLocalExport(throttle.wrap(gate.wrap(new FeedLayer(store, feed))), localSpec, { readOnly, description: `quicmap shared region ${regionIdText(shared.regionId)}`, log });
      }
      const expiresAt = shared.expiresAt > 0 ? new Date(shared.expiresAt * 1000).toISOString() : null;
      // Handle SIGINT/SIGTERM from before the first line is out: whoever reads it may signal at once.
      const signalled = untilSignal();
      if (values.json) {
        process.stdout.write(
          `${JSON.stringify({ ticket: shared.ticket, sharer: identity.id, regionId: regionIdText(shared.regionId), transport, address: shared.address, endpoints: shared.endpoints.map(endpointText), size: bytes, readOnly, backend: values.backend, expiresAt, nbd: local?.uri ?? null })}\n`,
        );
      } else {
        process.stdout.write(`${shared.ticket}\n`);
        if (local) process.stdout.write(`${local.uri}\n`);
      }
      if (local) log(`local NBD export at ${local.uri} (writes tracked)`);
      log(`sharing ${formatSize(bytes)} (${values.backend}${readOnly ? ', read-only' : ''}) as ${identity.id} on ${shared.endpoints.map(endpointText).join(', ')}${expiresAt ? `, ticket expires ${expiresAt}` : ''}`);
      log(`stack: ${store.describe()}`);
      const sig = await signalled;
      log(`${sig}: stopping`);
      return 0;
    } finally {
      migration?.close();
      await local?.close();
      await node?.close();
      await store.flush().catch(() => {});
      await store.close();
      if (shared) log(`closed (served ${formatSize(shared.server.stats.bytesRead)} read, ${formatSize(shared.server.stats.bytesWritten)} written)`);
    }
  },
};
