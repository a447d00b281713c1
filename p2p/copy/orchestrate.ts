/**
 * runCopy: a third-party copy, run on the orchestrator C (`quicmap copy`).
 * C holds a read ticket on the source A and a read-write ticket on the
 * destination B. Per batch: A answers `ref.read` with references (cache IDs,
 * not bytes) held by C; C forwards them to B (`copy.fetch`) with a
 * delegation it signed once for the whole copy (crypto/delegation.ts: C's
 * grant narrowed to the source range and a time window, bound to B's key);
 * B claims them at A, fetches the bytes from A directly and writes them
 * locally. What crosses C is a few dozen bytes per piece.
 *
 * Degrades, never fails: a piece A could not cache comes inline and C
 * writes it to B itself (counted as inline bytes through C). A batch whose
 * forward fails (B could not reach A for long, a reference expired) gives
 * back what C still holds and is asked for again, up to 5 times (CopyPlan);
 * the copy completes each range exactly once.
 */
import { randomBytes } from 'node:crypto';
import { QuicmapError } from '../../base/errors.ts';
import { signDelegation } from '../../crypto/delegation.ts';
import type { Identity } from '../../crypto/identity.ts';
import { parseTicket, type Ticket } from '../../crypto/ticket.ts';
import type { Transport } from '../../transports/transport.ts';
import { endpointText, type Endpoint } from '../../crypto/endpoint.ts';
import type { DhtClient } from '../dht/client.ts';
import { newMeter } from '../node/metered.ts';
import type { RemoteRegion } from '../remote/region.ts';
import { isMachineCollision } from '../protocol/cache-id.ts';
import { CopyPlan, type Batch } from './copy-plan.ts';
import { PeerDialer } from './dial.ts';
import { COPY_FETCH, REF_DEREF, REF_READ, REF_STATS, argsOf, decodeRefPieces, encodeRefCounts, idBytes, type ForwardPiece } from './wire.ts';

export interface CopyOptions {
  identity: Identity;
  /** Source and destination tickets ("qm1…"). */
  src: string;
  dst: string;
  srcOffset?: number;
  /** Default: to the end of the source. */
  length?: number;
  dstOffset?: number;
  /** Bytes asked for per `ref.read`. Default 8 MiB. */
  batchBytes?: number;
  /** Batches in flight. Default 4. */
  window?: number;
  /** Seconds the delegation to the destination is valid. Default 3600. */
  validFor?: number;
  /** Carry the bytes through this node (read from A, write to B): the plain copy, for comparison. */
  through?: boolean;
  /** Dial with this transport instead of the tickets' (tests: loopback). */
  transport?: Transport;
  /**
   * Where tickets without addresses are looked up: the sharer's signed DHT
   * record (p2p/dht) gives its endpoints, as `mount --dht` finds them. The
   * destination is told the source's endpoints found so (it dials them
   * with the key the grant names: a wrong hint cannot impersonate).
   */
  dht?: DhtClient;
  /** How long to look for a record before giving up (default 15 s). */
  dhtLookupMs?: number;
  onProgress?: (done: number, total: number) => void;
  log?: (m: string) => void;
}

export interface CopySummary {
  bytes: number;
  ms: number;
  /** Bytes C sent and received on its two connections (the orchestrator's share of the traffic). */
  throughC: number;
  sentByC: number;
  receivedByC: number;
  /** Bytes that came inline (A's cache was full) and went through C. */
  inlineBytes: number;
  batches: number;
  retriedBatches: number;
  duplicateAcks: number;
  /** Pieces B fetched again (after dropping them, or after a failure). */
  refetched: number;
  dropped: number;
  /** Source and destination are served by the same node: the bytes stayed on it. */
  sameNode: boolean;
  /** The destination refused the source's references (their machine part is shared by another origin it knows): the rest went inline through C. */
  machineCollision: boolean;
  /** References still outstanding at the source when the copy ended (0: all given back), or null if it did not say. */
  sourceRefs: number | null;
}

export async function runCopy(o: CopyOptions): Promise<CopySummary> {
  const started = performance.now();
  const log = o.log ?? (() => {});
  const src: Ticket = await parseTicket(o.src);
  const dst: Ticket = await parseTicket(o.dst);
  if (dst.claims.rights !== 'rw') throw new QuicmapError('EPERM', 'the destination ticket is read-only: a copy writes to it');
  const [srcEndpoints, dstEndpoints] = await Promise.all([endpointsOf(src, 'source', o), endpointsOf(dst, 'destination', o)]);
  // The destination reaches the source by the delegation's grant; a grant without addresses needs the ones found here.
  const originHint = src.claims.endpoints.length === 0 ? { origin: srcEndpoints.map(endpointText) } : {};
  const meter = newMeter();
  const dialer = new PeerDialer(o.identity, o.transport);
  let srcRegion: RemoteRegion | undefined;
  let dstRegion: RemoteRegion | undefined;
  try {
    const agent = `quicmap copy (${o.identity.id.slice(0, 8)})`;
    const open = (t: Ticket, readOnly: boolean, requestTimeoutMs: number) =>
      // A copy is not latency-bound: a link is declared dead after 10 s of silence, not a mount's 3 s (fewer false alarms on a loaded host).
      dialer.open({ endpoints: t === src ? srcEndpoints : dstEndpoints, sharer: t.claims.sharer, regionId: t.claims.regionId, grant: t.grant, readOnly, meters: [meter], agent, log, requestTimeoutMs, livenessMs: 10_000 });
    [srcRegion, dstRegion] = await Promise.all([open(src, true, 30_000), open(dst, false, 180_000)]);
    const srcSize = await srcRegion.size();
    const dstSize = await dstRegion.size();
    const srcOffset = o.srcOffset ?? 0;
    const dstOffset = o.dstOffset ?? 0;
    if (srcOffset > srcSize) throw new QuicmapError('EINVAL', `source offset ${srcOffset} is past the source's ${srcSize} bytes`);
    const length = o.length ?? srcSize - srcOffset;
    if (srcOffset + length > srcSize) throw new QuicmapError('EINVAL', `source range [${srcOffset}, +${length}) is past the source's ${srcSize} bytes`);
    if (dstOffset + length > dstSize) throw new QuicmapError('EINVAL', `destination range [${dstOffset}, +${length}) is past the destination's ${dstSize} bytes`);
    const sameNode = Buffer.from(src.claims.sharer).equals(Buffer.from(dst.claims.sharer));
    const sameRegion = sameNode && Buffer.from(src.claims.regionId).equals(Buffer.from(dst.claims.regionId));
    if (sameRegion && srcOffset < dstOffset + length && dstOffset < srcOffset + length && srcOffset !== dstOffset) {
      throw new QuicmapError('EINVAL', 'source and destination ranges overlap in the same region');
    }
    const summary: CopySummary = { bytes: 0, ms: 0, throughC: 0, sentByC: 0, receivedByC: 0, inlineBytes: 0, batches: 0, retriedBatches: 0, duplicateAcks: 0, refetched: 0, dropped: 0, sameNode, machineCollision: false, sourceRefs: null };
    if (length > 0) {
      const delegation = o.through ? new Uint8Array(0) : await signDelegation(o.identity, { grant: src.grant, delegate: dst.claims.sharer, offset: srcOffset, length, validFor: o.validFor ?? 3600 });
      const copyId = randomBytes(8).toString('hex');
      const plan = new CopyPlan({ srcOffset, dstOffset, length, batchBytes: o.batchBytes ?? 8 << 20 });
      const s = srcRegion;
      const d = dstRegion;
      let wake: (() => void) | undefined;
      let failure: unknown;
      const changed = () => {
        const w = wake;
        wake = undefined;
        w?.();
      };
      const runBatch = async (b: Batch) => {
        summary.batches++;
        let held: ForwardPiece[] = [];
        try {
          // Through C: asked for (--through-here), or the destination cannot tell the source's references from another origin's.
          if (o.through || summary.machineCollision) {
            const buf = new Uint8Array(b.length);
            await s.readAt(buf, b.src);
            await d.writeAt(buf, b.dst);
            summary.inlineBytes += b.length;
            plan.ack(b);
            o.onProgress?.(plan.ackedBytes, length);
            return;
          }
          // Keyed: if the answer is lost with a link, the retry gets the same references instead of orphaning them.
          const pieces = decodeRefPieces(await s.call(REF_READ, { offset: b.src, length: b.length, key: `${copyId}:${b.src}:${b.length}` }), REF_READ);
          let at = b.src;
          for (const p of pieces) {
            if (p.offset !== at) throw new QuicmapError('EPROTO', `ref.read answered [${p.offset}, +${p.length}) where [${at}, …) was due`);
            at += p.length;
          }
          if (at === b.src || at > b.src + b.length) throw new QuicmapError('EPROTO', 'ref.read covered nothing, or more than asked');
          plan.covered(b, at - b.src);
          held = pieces.filter((p) => p.id !== undefined).map((p) => ({ id: p.id!, src: p.offset, length: p.length, dst: p.offset - b.src + b.dst }));
          const inline = pieces.filter((p) => p.data !== undefined);
          const jobs: Array<Promise<unknown>> = inline.map((p) => d.writeAt(p.data!, p.offset - b.src + b.dst).then(() => (summary.inlineBytes += p.length)));
          for (let i = 0; i < held.length; i += 256) {
            const group = held.slice(i, i + 256);
            jobs.push(
              d.call(COPY_FETCH, { delegation, ...originHint, pieces: group.map((p) => ({ id: idBytes(p.id), src: p.src, length: p.length, dst: p.dst })) }).then((r) => {
                const a = argsOf(r, COPY_FETCH);
                summary.refetched += Number(a.refetched ?? 0);
                summary.dropped += Number(a.dropped ?? 0);
              }),
            );
          }
          const results = await Promise.allSettled(jobs);
          const bad = results.find((r) => r.status === 'rejected');
          if (bad) throw (bad as PromiseRejectedResult).reason;
          plan.ack(b);
          o.onProgress?.(plan.ackedBytes, length);
        } catch (e) {
          log(`copy: batch [${b.src}, +${b.length}) failed (attempt ${b.attempt}): ${(e as Error).message}`);
          // Give back whatever C still holds of it (B may have claimed some): the range is asked for afresh.
          if (held.length > 0) await s.call(REF_DEREF, { refs: encodeRefCounts(held.map((p) => ({ id: p.id, n: 1 }))), lenient: true, key: `${copyId}:giveback:${b.src}:${b.attempt}` }).catch(() => {});
          if (isMachineCollision(e) && !summary.machineCollision) {
            // Never guess which origin an ambiguous ID names: from now on the bytes come inline (the protocol degrades, it does not fail).
            summary.machineCollision = true;
            log(`copy: the destination cannot tell the source's cache IDs from another origin's (${(e as Error).message}); carrying the bytes through this node`);
          }
          plan.fail(b, e);
        }
      };
      const worker = async () => {
        while (!plan.done && failure === undefined) {
          const b = plan.next();
          if (!b) {
            if (plan.inFlight === 0) break;
            await new Promise<void>((r) => {
              const prev = wake;
              wake = () => {
                prev?.();
                r();
              };
            });
            continue;
          }
          try {
            await runBatch(b);
          } catch (e) {
            failure ??= e;
          }
          changed();
        }
        changed();
      };
      await Promise.all(Array.from({ length: Math.max(1, o.window ?? 4) }, worker));
      if (failure !== undefined) throw failure;
      if (!plan.done) throw new QuicmapError('EIO', 'copy ended with ranges not acknowledged (a bug)');
      await d.flush();
      summary.bytes = plan.ackedBytes;
      summary.retriedBatches = plan.retried;
      summary.duplicateAcks = plan.duplicateAcks;
      try {
        const st = argsOf(await s.call(REF_STATS, {}), REF_STATS);
        summary.sourceRefs = typeof st.refs === 'number' ? st.refs : null;
      } catch {}
    }
    summary.ms = performance.now() - started;
    summary.sentByC = meter.sent;
    summary.receivedByC = meter.received;
    summary.throughC = meter.sent + meter.received;
    return summary;
  } finally {
    await Promise.all([srcRegion?.close(), dstRegion?.close()]).catch(() => {});
    await dialer.close();
  }
}

/** A ticket's endpoints, or (none in it) its sharer's from the DHT record; EINVAL when neither. */
async function endpointsOf(t: Ticket, what: string, o: Pick<CopyOptions, 'dht' | 'dhtLookupMs' | 'log'>): Promise<Endpoint[]> {
  if (t.claims.endpoints.length > 0) return t.claims.endpoints;
  if (!o.dht) throw new QuicmapError('EINVAL', `the ${what} ticket holds no address: its sharer is found through the DHT (copy with --dht HOST:PORT)`);
  const deadline = Date.now() + (o.dhtLookupMs ?? 15_000);
  let why = 'no record for this region yet (is its sharer running with --dht?)';
  for (let wait = 250; ; wait = Math.min(wait * 2, 2_000)) {
    try {
      const v = await o.dht.get({ sharer: t.claims.sharer, regionId: t.claims.regionId }, Math.max(1_000, Math.min(5_000, deadline - Date.now())));
      if (v?.ok && v.record.endpoints.length > 0) {
        o.log?.(`copy: the ${what}'s sharer is at ${v.record.endpoints.map(endpointText).join(', ')} (DHT record)`);
        return v.record.endpoints;
      }
      if (v && !v.ok) why = v.reason;
      else if (v?.ok) why = 'its record lists no direct endpoint (relayed sharers cannot be copied from or to yet)';
    } catch (e) {
      why = (e as Error).message;
    }
    if (Date.now() + wait > deadline) throw new QuicmapError('EIO', `the ${what} ticket holds no address, and the DHT did not say where its sharer is: ${why}`);
    await new Promise((r) => setTimeout(r, wait));
  }
}
