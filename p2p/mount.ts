/**
 * mountTicket: the library call behind `quicmap mount`. Parses and checks a
 * ticket offline (prefix, signature, expiry), dials the sharer on the
 * ticket's transport expecting the ticket's key, presents the grant and
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
  close(): Promise<void>;
}

export async function mountTicket(opts: MountTicketOptions): Promise<MountedTicket> {
  const log = opts.log ?? (() => {});
  const ticket = await parseTicket(opts.ticket);
  const c = ticket.claims;
  if (c.addresses.length === 0 && !opts.connect) throw new QuicmapError('EINVAL', 'ticket names no address to reach the sharer (mount it with --dht)');
  const sharerId = base32Encode(c.sharer);
  const transport = opts.connect ? undefined : (opts.transport ?? (await openTransport(c.transport, opts.identity)));
  const ownsTransport = opts.transport === undefined && transport !== undefined;
  let next = 0;
  // Try the ticket's addresses in turn, starting with the one that last worked.
  const connect = opts.connect ?? (async (): Promise<Connection> => {
    let last: unknown;
    for (let i = 0; i < c.addresses.length; i++) {
      const idx = (next + i) % c.addresses.length;
      try {
        const conn = await transport!.dial(c.addresses[idx]!, c.sharer, { timeoutMs: opts.dialTimeoutMs ?? 5_000 });
        next = idx;
        return conn;
      } catch (e) {
        last = e;
        if (e instanceof QuicmapError && e.code === 'EACCES') {
          throw new QuicmapError('EACCES', `the peer at ${c.addresses[idx]} is not the sharer named in the ticket (${sharerId}): ${e.message}`);
        }
      }
    }
    const why = last instanceof Error ? last.message : String(last);
    throw new QuicmapError(last instanceof QuicmapError ? last.code : 'EIO', `cannot reach the sharer at ${c.addresses.join(', ')}: ${why}`);
  });
  log(`mounting region ${regionIdText(c.regionId)} from sharer ${sharerId} over ${c.transport} (${c.rights === 'ro' ? 'read-only' : 'read-write'})`);
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
    if (ownsTransport) await transport?.close().catch(() => {});
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
    close() {
      closing ??= (async () => {
        await store.close();
        if (ownsTransport) await transport?.close().catch(() => {});
      })();
      return closing;
    },
  };
}
