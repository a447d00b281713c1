/**
 * The client side of the WAN workloads; each returns raw samples.
 *   setup  connection setup: a new endpoint's first dial (its lazy local
 *          setup included), then a second new connection from it: dial
 *          (handshake + authentication) and the first byte of an echo
 *   rr     4 KiB request/response at 1 in flight on one warm connection
 *   bulk   server-to-client bulk on one stream for a fixed time
 *   hol    head of line: on one connection, 1 "lossy" stream doing 64 KiB
 *          echoes (full-size packets: the lab drops only those) and 15
 *          clean streams doing 256-byte echoes; the clean streams' latency
 *          shows how long they wait for the lossy one's retransmissions
 */
import { randomBytes } from 'node:crypto';
import type { Identity } from '../../crypto/identity.ts';
import { makeDialer, type ServerInfo, type SubjectName } from './subjects.ts';

const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

export interface SetupSample {
  /** First dial of a brand-new endpoint: includes its one-time local setup (sockets, key, certificate). */
  endpointMs: number;
  /** A new connection (full handshake, authentication) from an endpoint that has dialed before. */
  connectMs: number;
  /** connectMs plus a 1-byte echo on the new connection: the first byte back. */
  firstByteMs: number;
}

export async function setup(subject: SubjectName, info: ServerInfo, identity: Identity, n: number): Promise<SetupSample[]> {
  const out: SetupSample[] = [];
  const one = randomBytes(1);
  for (let i = 0; i < n; i++) {
    const d = await makeDialer(subject, info, identity);
    try {
      let t0 = process.hrtime.bigint();
      const first = await d.dial();
      const endpointMs = ms(t0);
      await first.echo(one);
      await first.close();
      t0 = process.hrtime.bigint();
      const c = await d.dial();
      const connectMs = ms(t0);
      await c.echo(one);
      out.push({ endpointMs, connectMs, firstByteMs: ms(t0) });
      await c.close();
    } finally {
      await d.close();
    }
  }
  return out;
}

export async function rr(subject: SubjectName, info: ServerInfo, identity: Identity, durationMs: number, maxSamples: number, bytes = 4096): Promise<number[]> {
  const d = await makeDialer(subject, info, identity);
  try {
    const c = await d.dial();
    const payload = randomBytes(bytes);
    for (let i = 0; i < 3; i++) await c.echo(payload);
    const out: number[] = [];
    const end = Date.now() + durationMs;
    while (out.length < maxSamples && (Date.now() < end || out.length < 5)) {
      const t0 = process.hrtime.bigint();
      await c.echo(payload);
      out.push(ms(t0));
    }
    await c.close();
    return out;
  } finally {
    await d.close();
  }
}

export interface BulkResult {
  bytes: number;
  seconds: number;
  /** Bytes received in each 100 ms since the request went out. */
  timeline: number[];
}

export async function bulk(subject: SubjectName, info: ServerInfo, identity: Identity, durationMs: number): Promise<BulkResult> {
  const d = await makeDialer(subject, info, identity);
  try {
    const c = await d.dial();
    const timeline: number[] = [];
    let bytes = 0;
    const t0 = process.hrtime.bigint();
    const b = c.bulk((n) => {
      bytes += n;
      const bin = Math.floor(ms(t0) / 100);
      while (timeline.length <= bin) timeline.push(0);
      timeline[bin]! += n;
    });
    await Promise.race([new Promise((r) => setTimeout(r, durationMs)), b.done]);
    const seconds = ms(t0) / 1000;
    const got = bytes;
    await b.stop();
    return { bytes: got, seconds, timeline };
  } finally {
    await d.close();
  }
}

export interface HolResult {
  /** Latency samples (ms) of each clean stream. */
  clean: number[][];
  /** Latency samples (ms) of the lossy stream's 64 KiB echoes. */
  lossy: number[];
}

export async function hol(subject: SubjectName, info: ServerInfo, identity: Identity, durationMs: number, cleanStreams = 15): Promise<HolResult> {
  const d = await makeDialer(subject, info, identity);
  try {
    const c = await d.dial();
    const small = randomBytes(256);
    const big = randomBytes(64 * 1024);
    await c.echo(small);
    const end = Date.now() + durationMs;
    const loop = async (payload: Uint8Array): Promise<number[]> => {
      const out: number[] = [];
      while (Date.now() < end) {
        const t0 = process.hrtime.bigint();
        await c.echo(payload);
        out.push(ms(t0));
      }
      return out;
    };
    const [lossy, ...clean] = await Promise.all([loop(big), ...Array.from({ length: cleanStreams }, () => loop(small))]);
    await c.close();
    return { lossy: lossy!, clean };
  } finally {
    await d.close();
  }
}
