/**
 * The lab's self-check, run before every measurement: what the link really
 * does, measured through it from the client namespace, against what was asked.
 *   - RTT: median of ICMP echoes (small, spaced); must be within
 *     max(10 % of the asked RTT, 1 ms) of it.
 *   - Loss: a burst of full-size echoes (they qualify for size-selective
 *     loss); the round-trip loss must be within 4 binomial standard
 *     deviations (+2 packets) of 1 - (1 - p)^2. The delay line's own drop
 *     counters for the same burst are recorded too.
 *   - Bandwidth (when a bottleneck is set): UDP at 1.25× the rate with
 *     iperf3; the received rate must be within 10 % of the asked rate
 *     (allowing for the asked loss).
 * The result records every sample, so the results say what was measured.
 */
import type { Lab, LinkConfig } from './lab.ts';
import { SERVER_ADDR } from './lab.ts';

export interface SelfCheck {
  asked: LinkConfig;
  at: string;
  rtt: { samplesMs: number[]; medianMs: number; toleranceMs: number; ok: boolean };
  loss: {
    sent: number;
    received: number;
    roundTripLoss: number;
    expectedRoundTripLoss: number;
    delayLine: { packets: number; dropped: number; fraction: number };
    ok: boolean;
  };
  bandwidth?: { askedBps: number; measuredBps: number; ok: boolean; iperf3: Record<string, unknown> };
  ok: boolean;
  problems: string[];
}

export interface SelfCheckOptions {
  /** Echoes for the RTT (default 20). */
  rttProbes?: number;
  /** Full-size echoes for the loss rate (default 500). */
  lossProbes?: number;
  /** Seconds of UDP for the bandwidth check (default 2; the first is not counted). */
  bandwidthSeconds?: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (!s.length) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function rttTolerance(askedMs: number): number {
  return Math.max(0.1 * askedMs, 1);
}

/** Whether `lost` of `sent` fits a per-direction loss `p` applied both ways. */
export function lossWithinTolerance(sent: number, lost: number, p: number): boolean {
  const e = 1 - (1 - p) ** 2;
  const sd = Math.sqrt(sent * e * (1 - e));
  return Math.abs(lost - sent * e) <= 4 * sd + 2;
}

/**
 * Measure the lab's link and compare it with `asked` (by default the lab's
 * own configuration; a test passes something else to see a mismatch caught).
 */
export async function selfCheck(lab: Lab, asked: LinkConfig = lab.config, o: SelfCheckOptions = {}): Promise<SelfCheck> {
  const problems: string[] = [];
  const rttProbes = o.rttProbes ?? 20;
  const lossProbes = o.lossProbes ?? 500;

  // RTT: small echoes, 20 ms apart so they never queue behind each other.
  const ping = await lab.run(lab.client, 'ping', ['-n', '-c', String(rttProbes), '-i', '0.02', '-W', '2', '-s', '56', SERVER_ADDR], 30_000);
  const samplesMs = [...ping.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
  const medianMs = median(samplesMs);
  const toleranceMs = rttTolerance(asked.rttMs);
  const rttOk = samplesMs.length > 0 && Math.abs(medianMs - asked.rttMs) <= toleranceMs;
  if (!rttOk) {
    problems.push(
      samplesMs.length
        ? `RTT ${medianMs.toFixed(2)} ms measured, ${asked.rttMs} ms asked (tolerance ±${toleranceMs.toFixed(1)} ms)`
        : `no echo came back (${ping.stderr.trim() || ping.stdout.trim().split('\n').pop()})`,
    );
  }

  // Loss: a burst of full-size echoes, 1 ms apart.
  const before = await lab.stats();
  const flood = await lab.run(lab.client, 'ping', ['-n', '-q', '-c', String(lossProbes), '-i', '0.001', '-W', '2', '-s', '1400', SERVER_ADDR], 60_000);
  const after = await lab.stats();
  const m = /(\d+) packets transmitted, (\d+) received/.exec(flood.stdout);
  const sent = m ? Number(m[1]) : 0;
  const received = m ? Number(m[2]) : 0;
  const packets = after.ab.rx - before.ab.rx + (after.ba.rx - before.ba.rx);
  const dropped = after.ab.dropLoss - before.ab.dropLoss + (after.ba.dropLoss - before.ba.dropLoss);
  const expectedRoundTripLoss = 1 - (1 - asked.loss) ** 2;
  const lossOk = sent > 0 && lossWithinTolerance(sent, sent - received, asked.loss);
  if (!lossOk) {
    problems.push(
      sent
        ? `round-trip loss ${(((sent - received) / sent) * 100).toFixed(2)} % measured, ${(expectedRoundTripLoss * 100).toFixed(2)} % expected for ${asked.loss * 100} % each way`
        : `loss probe failed (${flood.stderr.trim()})`,
    );
  }

  let bandwidth: SelfCheck['bandwidth'];
  if (asked.bandwidthBps) {
    bandwidth = await measureBandwidth(lab, asked, o.bandwidthSeconds ?? 2);
    if (!bandwidth.ok) {
      problems.push(`bandwidth ${(bandwidth.measuredBps / 1e6).toFixed(1)} Mbit/s measured, ${(asked.bandwidthBps / 1e6).toFixed(1)} Mbit/s asked`);
    }
  }

  return {
    asked: { ...asked },
    at: new Date().toISOString(),
    rtt: { samplesMs, medianMs, toleranceMs, ok: rttOk },
    loss: {
      sent,
      received,
      roundTripLoss: sent ? (sent - received) / sent : NaN,
      expectedRoundTripLoss,
      delayLine: { packets, dropped, fraction: packets ? dropped / packets : 0 },
      ok: lossOk,
    },
    bandwidth,
    ok: problems.length === 0,
    problems,
  };
}

const PAYLOAD = 1400;
const IP_UDP_HEADER = 28;

async function measureBandwidth(lab: Lab, asked: LinkConfig, seconds: number): Promise<NonNullable<SelfCheck['bandwidth']>> {
  const askedBps = asked.bandwidthBps!;
  const port = String(5201);
  // Both ends at a higher priority and with 4 MiB socket buffers: the probe
  // is meant to measure the link, not a receiver starved by other load.
  const server = lab.spawn(lab.server, 'nice', ['-n', '-10', 'iperf3', '-s', '-1', '-J', '-p', port, '-B', SERVER_ADDR], { stdio: ['ignore', 'ignore', 'ignore'] });
  try {
    let res: { code: number | null; stdout: string; stderr: string } | undefined;
    // The server needs a moment to listen; retry while it refuses.
    for (let i = 0; i < 20; i++) {
      res = await lab.run(lab.client, 'nice', ['-n', '-10', 'iperf3', '-c', SERVER_ADDR, '-p', port, '-u', '-w', '4M', '-b', String(Math.round(askedBps * 1.25)), '-l', String(PAYLOAD), '-t', String(seconds), '-J', '--get-server-output'], 30_000);
      if (res.code === 0 || !/refused|unable to connect/i.test(res.stdout + res.stderr)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    type Sum = { bytes?: number; packets?: number; lost_packets?: number; seconds?: number };
    const j = JSON.parse(res!.stdout || '{}') as { end?: { sum?: Sum }; server_output_json?: { intervals?: Array<{ sum?: Sum }> }; error?: string };
    const sum = j.end?.sum ?? {};
    // The receiver's own one-second intervals: the end-to-end sum spans the
    // link's delay and queue drain too, which skews it by up to an RTT.
    // The first second runs low while the bottleneck's queue fills (seen at
    // 100 ms: 89 then 98, 98 Mbit/s): steady state is what is asked.
    let full = (j.server_output_json?.intervals ?? []).map((i) => i.sum ?? {}).filter((x) => (x.seconds ?? 0) >= 0.5);
    if (full.length > 1) full = full.slice(1);
    const toIp = (PAYLOAD + IP_UDP_HEADER) / PAYLOAD;
    let measuredBps: number;
    if (full.length) {
      const bytes = full.reduce((a, x) => a + (x.bytes ?? 0), 0);
      const secs = full.reduce((a, x) => a + (x.seconds ?? 0), 0);
      measuredBps = ((bytes * 8) / secs) * toIp;
    } else {
      const got = (sum.packets ?? 0) - (sum.lost_packets ?? 0);
      measuredBps = sum.seconds ? (got * (PAYLOAD + IP_UDP_HEADER) * 8) / sum.seconds : 0;
    }
    const floor = 0.9 * askedBps * (1 - asked.loss);
    return { askedBps, measuredBps, ok: measuredBps >= floor && measuredBps <= 1.1 * askedBps, iperf3: { ...sum, receiverIntervals: full, error: j.error } };
  } finally {
    try {
      if (server.pid) process.kill(-server.pid, 'SIGKILL');
    } catch {}
  }
}
