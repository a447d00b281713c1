/**
 * mountTicket: the library call behind `quicmap mount`. Parses and checks a
 * ticket offline (prefix, signature, expiry), dials the sharer on the
 * ticket's endpoints (QUIC first, then the others: WebTransport, TCP) expecting
 * the ticket's key, presents the grant and
 * returns the RemoteRegion — a ReadWriterAt that the caller serves (NBD) or
 * uses directly. A refusal or a wrong key is thrown as a QuicmapError with a
 * message fit for the user (EACCES / EPERM / EINVAL).
 */
import type { Identity } from '../crypto/identity.ts';
import { base32Encode } from '../crypto/identity.ts';
import { regionIdText } from '../crypto/grant.ts';
import { parseTicket, type Ticket } from '../crypto/ticket.ts';
import { QuicmapError } from '../base/errors.ts';
import { RemoteRegion, type RemoteRegionOptions } from './remote/region.ts';
import { buildStack, type Stack } from '../engine/stack.ts';
import type { Connection, Transport } from '../transports/transport.ts';
import { openTransport } from './transports.ts';
import { dialOrder, endpointText, type Endpoint, type TransportName } from '../crypto/endpoint.ts';

export interface MountTicketOptions {
  identity: Identity;
  ticket: string;
  /** Override the ticket's transport with an instance (tests: the loopback transport). */
  transport?: Transport;
  dialTimeoutMs?: number;
  /** Replace the ticket-address dialing (the node's PathDialer: hints, DHT, relays). */
  connect?: () => Promise<Connection>;
  /** Tuning passed to RemoteRegion (timeouts, liveness, backoff, limits). */
  region?: Partial<Pick<RemoteRegionOptions, 'limits' | 'requestTimeoutMs' | 'livenessMs' | 'idlePingMs' | 'waitForLinkMs' | 'backoff' | 'clock'>>;
  /** Largest read or write the stack's guard lets through (the serving frontend's maximum). Default 32 MiB. */
  maxRequest?: number;
  log?: (message: string) => void;
}

export interface MountedTicket {
  /** The region as a stack (a guard over the RemoteRegion): what a frontend serves. */
  store: Stack;
  /** The RemoteRegion at the bottom of `store` (connection state, stats, manifest). */
  region: RemoteRegion;
  ticket: Ticket;
  /** base32 id of the sharer. */
  sharerId: string;
  /** The endpoint of the connection in use (the last one that connected). */
  readonly endpoint: Endpoint | undefined;
  close(): Promise<void>;
}

export async function mountTicket(opts: MountTicketOptions): Promise<MountedTicket> {
  const log = opts.log ?? (() => {});
  const ticket = await parseTicket(opts.ticket);
  const c = ticket.claims;
  if (c.endpoints.length === 0 && !opts.connect) throw new QuicmapError('EINVAL', 'ticket names no address to reach the sharer (mount it with --dht)');
  const sharerId = base32Encode(c.sharer);
  // QUIC first, then the ticket's other endpoints in its order; transports
  // are opened when first needed and kept for reconnects.
  const endpoints = dialOrder(c.endpoints);
  const transports = new Map<TransportName, Transport>();
  const transportFor = async (name: TransportName): Promise<Transport> => {
    if (opts.transport) return opts.transport;
    let t = transports.get(name);
    if (!t) transports.set(name, (t = await openTransport(name, opts.identity)));
    return t;
  };
  const closeTransports = () => Promise.all([...transports.values()].map((t) => t.close().catch(() => {})));
  let next = 0;
  let lastPath: string | undefined;
  let current: Endpoint | undefined;
  // Try the endpoints in turn, starting with the one that last worked; say
  // which path was taken whenever it changes.
  const connect = opts.connect ?? (async (): Promise<Connection> => {
    let last: unknown;
    const failed: string[] = [];
    for (let i = 0; i < endpoints.length; i++) {
      const idx = (next + i) % endpoints.length;
      const ep = endpoints[idx]!;
      try {
        const conn = await (await transportFor(ep.transport)).dial(ep.address, c.sharer, { timeoutMs: opts.dialTimeoutMs ?? 5_000 });
        next = idx;
        current = ep;
        const path = endpointText(ep);
        if (path !== lastPath) {
          log(failed.length > 0 ? `connected over ${path} (fell back: ${failed.join('; ')})` : `connected over ${path}`);
          lastPath = path;
        }
        return conn;
      } catch (e) {
        last = e;
        if (e instanceof QuicmapError && e.code === 'EACCES') {
          throw new QuicmapError('EACCES', `the peer at ${endpointText(ep)} is not the sharer named in the ticket (${sharerId}): ${e.message}`);
        }
        failed.push(`${endpointText(ep)} failed: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    const why = last instanceof Error ? last.message : String(last);
    throw new QuicmapError(last instanceof QuicmapError ? last.code : 'EIO', `cannot reach the sharer at ${endpoints.map(endpointText).join(', ')}: ${why}`);
  });
  log(`mounting region ${regionIdText(c.regionId)} from sharer ${sharerId} via ${endpoints.map(endpointText).join(', ')} (${c.rights === 'ro' ? 'read-only' : 'read-write'})`);
  let region: RemoteRegion;
  try {
    region = await RemoteRegion.open({
      connect,
      grant: ticket.grant,
      sharer: c.sharer,
      regionId: c.regionId,
      readOnlyGrant: c.rights === 'ro',
      agent: `quicmap mount (${opts.identity.id.slice(0, 8)})`,
      log,
      ...opts.region,
    });
  } catch (e) {
    await closeTransports();
    throw e;
  }
  const store = await buildStack({ backend: region, maxRequest: opts.maxRequest ?? 32 * 1024 * 1024 });
  await store.start();
  let closing: Promise<void> | undefined;
  return {
    store,
    region,
    ticket,
    sharerId,
    get endpoint() {
      return current;
    },
    close() {
      closing ??= (async () => {
        await store.close();
        await closeTransports();
      })();
      return closing;
    },
  };
}
