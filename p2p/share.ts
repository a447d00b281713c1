/**
 * shareRegion: the library call behind `quicmap share`. Listens on a
 * transport, serves `store` to any peer that presents a valid grant, and
 * returns the ticket for it. More tickets (other rights, expiry, a bound
 * peer) can be issued for the same region with `issue`.
 */
import type { Identity } from '../crypto/identity.ts';
import { newRegionId, regionIdText, signGrant, type Rights } from '../crypto/grant.ts';
import { isTransportName, parseEndpoint, type Endpoint, type TransportName } from '../crypto/endpoint.ts';
import { encodeTicket } from '../crypto/ticket.ts';
import { QuicmapError } from '../base/errors.ts';
import type { ReadWriterAt } from '../engine/rwat.ts';
import { Stack, buildStack } from '../engine/stack.ts';
import type { Limits } from './protocol/messages.ts';
import { DEFAULT_LIMITS, RegionServer } from './remote/server.ts';
import { ChangeFeed } from '../engine/tracking/change-feed.ts';
import { serveChanges } from './sync/change-calls.ts';
import { serveChunkHashes } from './sync/hash-calls.ts';
import type { Listener, Transport } from '../transports/transport.ts';
import { openTransport, type TransportChoice } from './transports.ts';
import { RefOrigin, type RefOriginOptions } from './copy/ref-origin.ts';
import { CopyTarget, type CopyTargetOptions } from './copy/copy-target.ts';
import { HolderBoard, type HolderBoardOptions } from './sync/held-chunks.ts';

export interface ShareOptions {
  identity: Identity;
  /**
   * What to serve: a Stack from engine/stack.ts (served as is), or any store,
   * which gets a stack of its own (a guard on top; the store stays open
   * after close, its owner closes it).
   */
  store: ReadWriterAt;
  /** 'quic' (default), 'webtransport' or 'tcp', or a transport instance (tests use the loopback transport). */
  transport?: TransportChoice;
  /** "host:port" to listen on; port 0 picks a free one. */
  listen: string;
  /**
   * More transports to listen on at once (e.g. webtransport and tcp beside
   * quic): the ticket lists an endpoint for each, and a mount falls back
   * from QUIC to the others by itself.
   */
  alsoListen?: Array<{ transport: TransportChoice; listen: string }>;
  /** The ticket grants read-only access. */
  readOnly?: boolean;
  /** Seconds the ticket stays valid; 0 or absent: no expiry. */
  expiresIn?: number;
  /** Bind the ticket to one peer's public key: nobody else may use it. */
  grantee?: Uint8Array;
  /** Keep a region id across restarts so old tickets stay valid (default: random). */
  regionId?: Uint8Array;
  /**
   * Endpoints written into the ticket instead of the bound ones (0.0.0.0
   * becomes 127.0.0.1 there): "TRANSPORT://host:port", or a bare
   * "host:port" for the first transport.
   */
  advertise?: string[];
  limits?: Partial<Limits>;
  /** Wrap the listener before serving it (the node meters bytes per peer). */
  wrapListener?: (listener: Listener) => Listener;
  /** Pull/push granularity advertised in the manifest (default: the store's preferred block size, at least 64 KiB). */
  chunkSize?: number;
  /** The by-reference cache peers read through (p2p/copy/ref-origin.ts): bytes, pieces, piece size, lease. */
  refCache?: Omit<RefOriginOptions, 'identity' | 'store' | 'log'>;
  /** The board of mounters holding copies (p2p/sync/held-chunks.ts): how many, their lease. */
  holders?: Pick<HolderBoardOptions, 'maxHolders' | 'leaseMs' | 'machineOf'>;
  /** This region as the destination of third-party copies (p2p/copy/copy-target.ts). */
  copyTarget?: Pick<CopyTargetOptions, 'holdBytes' | 'fetchers' | 'retryMs' | 'machineOf'>;
  log?: (message: string) => void;
}

export interface SharedRegion {
  /** The ticket issued at start (rights per `readOnly`). */
  ticket: string;
  /** The bound listen address (of the first transport). */
  address: string;
  /** Every endpoint the ticket lists. */
  endpoints: Endpoint[];
  /** Expiry of `ticket` in unix seconds; 0: none. */
  expiresAt: number;
  regionId: Uint8Array;
  /** The first transport (see `transports` for all). */
  transport: Transport;
  transports: Transport[];
  server: RegionServer;
  /**
   * Every change to the region — by peers, and by writes through a store
   * wrapped in `new FeedLayer(store, feed)` (the sharer's own export) —
   * so mounters' cached chunks are invalidated (DirtyList).
   */
  feed: ChangeFeed;
  /** References handed out on this region's reads (`ref.*` calls). */
  refs: RefOrigin;
  /** Third-party copies written into this region (`copy.fetch`). */
  copyTarget: CopyTarget;
  /** Mounters holding copies of this region's chunks, for reads answered by reference (`hold.offer`, `ref.locate`). */
  holders: HolderBoard;
  /** Issue another ticket for this region. */
  issue(opts?: { readOnly?: boolean; expiresIn?: number; grantee?: Uint8Array }): Promise<string>;
  close(): Promise<void>;
}

function advertised(bound: string): string {
  // A wildcard bind is not an address a peer can dial.
  return bound.replace(/^0\.0\.0\.0:/, '127.0.0.1:').replace(/^\[::\]:/, '[::1]:');
}

function ticketName(t: Transport): TransportName {
  if (isTransportName(t.name)) return t.name;
  if (t.name === 'loopback') return 'quic'; // tests: the mount is given the loopback transport itself
  throw new QuicmapError('EINVAL', `cannot share over the ${t.name} transport yet`);
}

export async function shareRegion(opts: ShareOptions): Promise<SharedRegion> {
  const log = opts.log ?? (() => {});
  const wanted = [{ transport: opts.transport ?? 'quic', listen: opts.listen }, ...(opts.alsoListen ?? [])];
  const regionId = opts.regionId ?? newRegionId();
  const limits = { ...DEFAULT_LIMITS, ...opts.limits };
  let stack: Stack | undefined;
  try {
    stack = opts.store instanceof Stack ? undefined : await buildStack({ backend: opts.store, ownsBackend: false, maxRequest: limits.maxFrame });
    await stack?.start();
  } catch (e) {
    await stack?.close().catch(() => {});
    throw e;
  }
  const store = stack ?? opts.store;
  const chunkSize = opts.chunkSize ?? Math.max(64 * 1024, store.caps.preferredBlockSize);
  const feed = new ChangeFeed(await store.size(), chunkSize);
  const server = new RegionServer({
    identity: opts.identity,
    store,
    regionId,
    limits: opts.limits,
    chunkSize,
    onWrite: (offset, length, session) => feed.record(offset, length, session),
    log,
  });
  serveChanges(server, feed);
  serveChunkHashes(server, { identity: opts.identity, regionId, store, feed, size: await store.size(), chunkSize });
  const refs = new RefOrigin({ ...opts.refCache, identity: opts.identity, store, log });
  refs.serve(server);
  const holders = new HolderBoard({ ...opts.holders, identity: opts.identity, size: await store.size(), chunkSize, feed, log });
  holders.serve(server);
  const copyTarget = new CopyTarget({
    ...opts.copyTarget,
    identity: opts.identity,
    store,
    regionId,
    feed,
    localOrigin: refs,
    // Tests hand a transport instance: origins are dialed with it too.
    ...(typeof opts.transport === 'object' ? { transport: opts.transport } : {}),
    log,
  });
  if (!store.caps.readOnly) copyTarget.serve(server);
  const opened: Array<{ transport: Transport; owned: boolean; listener?: Listener }> = [];
  const closeAll = async () => {
    for (const o of opened) await o.listener?.close().catch(() => {});
    refs.close();
    await copyTarget.close();
    feed.wakeAll();
    await server.close();
    await stack?.close().catch(() => {});
    for (const o of opened) if (o.owned) await o.transport.close().catch(() => {});
  };
  try {
    for (const w of wanted) {
      const transport = await openTransport(w.transport, opts.identity);
      const entry: { transport: Transport; owned: boolean; listener?: Listener } = { transport, owned: typeof w.transport === 'string' };
      opened.push(entry);
      ticketName(transport);
      entry.listener = await transport.listen(w.listen);
    }
  } catch (e) {
    await closeAll();
    throw e;
  }
  const listeners = opened.map((o) => o.listener!);
  for (const l of listeners) void server.serveListener(opts.wrapListener ? opts.wrapListener(l) : l);
  const first = ticketName(opened[0]!.transport);
  let endpoints: Endpoint[];
  try {
    endpoints = opts.advertise
      ? opts.advertise.map((a) => parseEndpoint(a, first))
      : opened.map((o) => ({ transport: ticketName(o.transport), address: advertised(o.listener!.address) }));
  } catch (e) {
    await closeAll();
    throw e;
  }
  const transport = opened[0]!.transport;
  const listener = listeners[0]!;
  let lastExpiry = 0;
  const issue = async (o: { readOnly?: boolean; expiresIn?: number; grantee?: Uint8Array } = {}) => {
    const rights: Rights = o.readOnly || opts.store.caps.readOnly ? 'ro' : 'rw';
    const expiresIn = o.expiresIn ?? 0;
    const grant = await signGrant(opts.identity, {
      regionId,
      endpoints,
      rights,
      expiresAt: expiresIn > 0 ? Math.floor(Date.now() / 1000) + Math.ceil(expiresIn) : 0,
      ...(o.grantee ? { grantee: o.grantee } : {}),
    });
    lastExpiry = grant.claims.expiresAt;
    return encodeTicket(grant);
  };
  const ticket = await issue({ readOnly: opts.readOnly, expiresIn: opts.expiresIn, ...(opts.grantee ? { grantee: opts.grantee } : {}) });
  const expiresAt = lastExpiry;
  log(`sharer ${opts.identity.id} serves region ${regionIdText(regionId)} at ${opened.map((o) => `${o.transport.name}://${o.listener!.address}`).join(', ')}`);
  let closing: Promise<void> | undefined;
  return {
    ticket,
    address: listener.address,
    endpoints,
    expiresAt,
    regionId,
    transport,
    transports: opened.map((o) => o.transport),
    server,
    feed,
    refs,
    copyTarget,
    holders,
    issue,
    close() {
      closing ??= closeAll();
      return closing;
    },
  };
}
