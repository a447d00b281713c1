/**
 * Endpoints: where a node can be reached — a transport name and an address
 * that transport understands ("host:port", "[v6]:port"). A ticket carries a
 * list of them (crypto/grant.ts), and so can a DHT record: one small type,
 * one wire form, one order of preference.
 *
 * Wire form (inside msgpack): an array of `[transport, address]` pairs.
 * Text form (CLI, logs): "quic://127.0.0.1:4433".
 */
import { QuicmapError } from '../base/errors.ts';

/** In order of preference when dialing (see `dialOrder`). */
export const TRANSPORT_NAMES = ['quic', 'webtransport', 'tcp'] as const;
export type TransportName = (typeof TRANSPORT_NAMES)[number];

export interface Endpoint {
  transport: TransportName;
  /** Opaque to everything but the transport; "host:port" for the ones we have. */
  address: string;
}

export const MAX_ENDPOINTS = 16;
const MAX_ADDRESS = 300;

export function isTransportName(v: unknown): v is TransportName {
  return typeof v === 'string' && (TRANSPORT_NAMES as readonly string[]).includes(v);
}

export function endpointText(e: Endpoint): string {
  return `${e.transport}://${e.address}`;
}

/** "quic://host:port" → Endpoint; a bare "host:port" takes `defaultTransport` (EINVAL without one). */
export function parseEndpoint(text: string, defaultTransport?: TransportName): Endpoint {
  const m = /^([a-z0-9]+):\/\/(.+)$/i.exec(text.trim());
  if (m) {
    const t = m[1]!.toLowerCase();
    if (!isTransportName(t)) throw new QuicmapError('EINVAL', `unknown transport "${m[1]}" in "${text}" (use ${TRANSPORT_NAMES.join(', ')})`);
    return { transport: t, address: m[2]! };
  }
  if (!defaultTransport) throw new QuicmapError('EINVAL', `"${text}" names no transport: write it as TRANSPORT://HOST:PORT (${TRANSPORT_NAMES.join(', ')})`);
  return { transport: defaultTransport, address: text.trim() };
}

export function encodeEndpoints(list: readonly Endpoint[]): Array<[string, string]> {
  return list.map((e) => [e.transport, e.address]);
}

/** The inverse of encodeEndpoints; undefined if `v` is not a valid list (callers choose the error). */
export function decodeEndpoints(v: unknown): Endpoint[] | undefined {
  if (!Array.isArray(v) || v.length > MAX_ENDPOINTS) return undefined;
  const out: Endpoint[] = [];
  for (const x of v) {
    if (!Array.isArray(x) || x.length !== 2) return undefined;
    const [t, a] = x as unknown[];
    if (!isTransportName(t) || typeof a !== 'string' || a.length === 0 || a.length > MAX_ADDRESS) return undefined;
    out.push({ transport: t, address: a });
  }
  return out;
}

/**
 * The order a dialer tries endpoints in: QUIC first (fastest, and the only
 * one that needs UDP to get through), then the others in the order the
 * sharer listed them (it knows which TCP path suits its network).
 */
export function dialOrder(list: readonly Endpoint[]): Endpoint[] {
  return [...list.filter((e) => e.transport === 'quic'), ...list.filter((e) => e.transport !== 'quic')];
}
