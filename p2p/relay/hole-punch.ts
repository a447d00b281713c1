/**
 * TCP hole punching by simultaneous open: both peers, told each other's
 * public address by the relay, connect to each other at the same time from
 * a fixed local port. Each side's outgoing SYN opens its own NAT's mapping
 * for the other's packets; a SYN dropped (or refused) by the far NAT
 * before its own peer's SYN went out is retried (the kernel retransmits,
 * and a refused attempt is repeated), so after at most a few tries both
 * SYNs cross and the kernels complete one connection (RFC 793's
 * simultaneous open). The caller then runs the end-to-end handshake on it.
 *
 * The fallback: over QUIC the punch goes from the QUIC sockets themselves
 * (transport.ts punchQuic / onQuicPunch, transports/udp-punch.ts), tried
 * first where the QUIC transport is our ngtcp2 endpoint.
 */
import { connect, createServer, type Socket } from 'node:net';
import { QuicmapError } from '../../base/errors.ts';

/** A local TCP port that is free right now (bound and released). */
export function freePort(host = '0.0.0.0'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen({ host, port: 0, exclusive: true }, () => {
      const a = s.address();
      const port = a && typeof a === 'object' ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export interface SimultaneousOpenOptions {
  localPort: number;
  remoteIp: string;
  remotePort: number;
  /** Give up after this long. Default 8 000 ms. */
  deadlineMs?: number;
  /** One attempt's limit (long enough for a SYN retransmission, ~1 s). Default 2 500 ms. */
  attemptMs?: number;
}

function attempt(o: SimultaneousOpenOptions, ms: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: o.remoteIp, port: o.remotePort, localPort: o.localPort, noDelay: true });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new QuicmapError('ETIMEDOUT', 'no answer'));
    }, ms);
    s.once('connect', () => {
      clearTimeout(timer);
      s.on('error', () => {});
      resolve(s);
    });
    s.once('error', (e) => {
      clearTimeout(timer);
      s.destroy();
      reject(e);
    });
  });
}

export async function simultaneousOpen(o: SimultaneousOpenOptions): Promise<Socket> {
  const end = performance.now() + (o.deadlineMs ?? 8_000);
  let last: unknown;
  while (performance.now() < end) {
    try {
      return await attempt(o, Math.min(o.attemptMs ?? 2_500, Math.max(1, end - performance.now())));
    } catch (e) {
      last = e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  throw new QuicmapError('ETIMEDOUT', `hole punch to ${o.remoteIp}:${o.remotePort} failed: ${(last as Error | undefined)?.message ?? 'no answer'}`);
}
