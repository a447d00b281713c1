/**
 * The addresses a bound listener can be reached at, for the DHT record: the
 * bound address itself, or for a wildcard bind every non-loopback IPv4
 * address of this host (loopback only when there is nothing else: on
 * another host it names that host).
 */
import { networkInterfaces } from 'node:os';

export function reachableAddresses(bound: string): string[] {
  const m = /^(.*):(\d+)$/.exec(bound);
  if (!m) return [bound];
  const [, host, port] = m;
  if (host !== '0.0.0.0' && host !== '[::]' && host !== '::') return [bound];
  const out: string[] = [];
  const loop: string[] = [];
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) {
      if (a.family !== 'IPv4') continue;
      (a.internal ? loop : out).push(`${a.address}:${port}`);
    }
  }
  return out.length > 0 ? out : loop;
}
