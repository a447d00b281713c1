/**
 * shareRegion: the library call behind `quicmap share`. Listens on a
 * transport, serves `store` to any peer that presents a valid grant, and
 * returns the ticket for it. More tickets (other rights, expiry, a bound
 * peer) can be issued for the same region with `issue`.
 */
import type { Identity } from '../crypto/identity.ts';
import { newRegionId, regionIdText, signGrant, type Rights, type TransportName } from '../crypto/grant.ts';
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

export interface ShareOptions {
  identity: Identity;
  /**
   * What to serve: a Stack from engine/stack.ts (served as is), or any store,
   * which gets a stack of its own (a guard on top; the store stays open
   * after close, its owner closes it).
   */
  store: ReadWriterAt;
  /** 'quic' (default) or 'tcp', or a transport instance (tests use the loopback transport). */
  transport?: TransportChoice;
  /** "host:port" to listen on; port 0 picks a free one. */
  listen: string;
  /** The ticket grants read-only access. */
  readOnly?: boolean;
  /** Seconds the ticket stays valid; 0 or absent: no expiry. */
  expiresIn?: number;
  /** Bind the ticket to one peer's public key: nobody else may use it. */
  grantee?: Uint8Array;
  /** Keep a region id across restarts so old tickets stay valid (default: random). */
  regionId?: Uint8Array;
  /** Addresses written into the ticket (default: the bound address; 0.0.0.0 becomes 127.0.0.1). */
  advertise?: string[];
  limits?: Partial<Limits>;
  /** Wrap the listener before serving it (the node meters bytes per peer). */
  wrapListener?: (listener: Listener) => Listener;
  /** Pull/push granularity advertised in the manifest (default: the store's preferred block size, at least 64 KiB). */
  chunkSize?: number;
  log?: (message: string) => void;
}

export interface SharedRegion {
  /** The ticket issued at start (rights per `readOnly`). */
  ticket: string;
  /** The bound listen address. */
  address: string;
  /** Expiry of `ticket` in unix seconds; 0: none. */
  expiresAt: number;
  regionId: Uint8Array;
  transport: Transport;
  server: RegionServer;
  /**
   * Every change to the region — by peers, and by writes through a store
   * wrapped in `new FeedLayer(store, feed)` (the sharer's own export) —
   * so mounters' cached chunks are invalidated (DirtyList).
   */
  feed: ChangeFeed;
  /** Issue another ticket for this region. */
  issue(opts?: { readOnly?: boolean; expiresIn?: number; grantee?: Uint8Array }): Promise<string>;
  close(): Promise<void>;
}

function advertised(bound: string): string {
  // A wildcard bind is not an address a peer can dial.
  return bound.replace(/^0\.0\.0\.0:/, '127.0.0.1:').replace(/^\[::\]:/, '[::1]:');
}

export async function shareRegion(opts: ShareOptions): Promise<SharedRegion> {
  const log = opts.log ?? (() => {});
  const transport = await openTransport(opts.transport ?? 'quic', opts.identity);
  const ownsTransport = typeof opts.transport === 'string' || opts.transport === undefined;
  const transportName: TransportName = transport.name === 'tcp' ? 'tcp' : 'quic';
  if (transport.name !== 'quic' && transport.name !== 'tcp' && transport.name !== 'loopback') {
    throw new QuicmapError('EINVAL', `cannot share over the ${transport.name} transport yet`);
  }
  const regionId = opts.regionId ?? newRegionId();
  const limits = { ...DEFAULT_LIMITS, ...opts.limits };
  let stack: Stack | undefined;
  let listener;
  try {
    stack = opts.store instanceof Stack ? undefined : await buildStack({ backend: opts.store, ownsBackend: false, maxRequest: limits.maxFrame });
    await stack?.start();
    listener = await transport.listen(opts.listen);
  } catch (e) {
    await stack?.close().catch(() => {});
    if (ownsTransport) await transport.close().catch(() => {});
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
  void server.serveListener(opts.wrapListener ? opts.wrapListener(listener) : listener);
  const addresses = opts.advertise ?? [advertised(listener.address)];
  let lastExpiry = 0;
  const issue = async (o: { readOnly?: boolean; expiresIn?: number; grantee?: Uint8Array } = {}) => {
    const rights: Rights = o.readOnly || opts.store.caps.readOnly ? 'ro' : 'rw';
    const expiresIn = o.expiresIn ?? 0;
    const grant = await signGrant(opts.identity, {
      regionId,
      transport: transportName,
      addresses,
      rights,
      expiresAt: expiresIn > 0 ? Math.floor(Date.now() / 1000) + Math.ceil(expiresIn) : 0,
      ...(o.grantee ? { grantee: o.grantee } : {}),
    });
    lastExpiry = grant.claims.expiresAt;
    return encodeTicket(grant);
  };
  const ticket = await issue({ readOnly: opts.readOnly, expiresIn: opts.expiresIn, ...(opts.grantee ? { grantee: opts.grantee } : {}) });
  const expiresAt = lastExpiry;
  log(`sharer ${opts.identity.id} serves region ${regionIdText(regionId)} over ${transport.name} at ${listener.address}`);
  let closing: Promise<void> | undefined;
  return {
    ticket,
    address: listener.address,
    expiresAt,
    regionId,
    transport,
    server,
    feed,
    issue,
    close() {
      closing ??= (async () => {
        await listener.close().catch(() => {});
        feed.wakeAll();
        await server.close();
        await stack?.close().catch(() => {});
        if (ownsTransport) await transport.close().catch(() => {});
      })();
      return closing;
    },
  };
}
