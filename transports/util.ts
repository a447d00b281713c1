/** Small helpers shared by the transports. */
import { timingSafeEqual } from 'node:crypto';
import { QuicmapError } from '../base/errors.ts';

/** Constant-time comparison of two keys (lengths are public). */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Split "host:port" / "[v6]:port" into parts; throws EINVAL-style errors on junk. */
export function parseHostPort(address: string): { host: string; port: number; family: 4 | 6 } {
  const m = /^\[([0-9a-fA-F:.%a-zA-Z0-9]+)\]:(\d+)$/.exec(address) ?? /^([^:\[\]]+):(\d+)$/.exec(address);
  if (!m) throw new QuicmapError('EINVAL', `address must be "host:port" or "[ipv6]:port", got "${address}"`);
  const port = Number(m[2]);
  if (port > 65535) throw new QuicmapError('EINVAL', `port out of range in "${address}"`);
  const host = m[1]!;
  return { host, port, family: host.includes(':') ? 6 : 4 };
}

/** The reverse of parseHostPort. */
export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
