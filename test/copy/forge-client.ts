/**
 * Test helper (run as a real process inside C's network namespace by
 * three-nodes.test.ts): plays a misbehaving orchestrator and destination
 * over real QUIC and prints one JSON line with what each attempt got.
 *
 *   forge-client.ts SRC_TICKET DST_TICKET C_IDENTITY B_IDENTITY
 */
import { loadOrCreateIdentity } from '../../crypto/identity.ts';
import { parseTicket, type Ticket } from '../../crypto/ticket.ts';
import { signDelegation } from '../../crypto/delegation.ts';
import { PeerDialer } from '../../p2p/copy/dial.ts';
import { COPY_FETCH, REF_CLAIM, REF_DEREF, REF_READ, decodeRefPieces, encodeRefCounts, idBytes } from '../../p2p/copy/wire.ts';
import { machineOf, makeCacheId } from '../../p2p/protocol/cache-id.ts';
import { QuicmapError } from '../../base/errors.ts';
import { Packr } from 'msgpackr';

/** The delegation with its length raised to the whole region, keeping the old signature: what a widening peer would send. */
function widen(bytes: Uint8Array, length: number): Uint8Array {
  const packr = new Packr({ useRecords: false, int64AsType: 'number', mapsAsObjects: true, moreTypes: false });
  const claims = packr.unpack(bytes.subarray(4, bytes.length - 64)) as unknown[];
  claims[5] = length;
  const body: Uint8Array = packr.pack(claims);
  const out = new Uint8Array(4 + body.length + 64);
  out.set(bytes.subarray(0, 4));
  out.set(body, 4);
  out.set(bytes.subarray(bytes.length - 64), 4 + body.length);
  return out;
}

const [srcText, dstText, cPath, bPath] = process.argv.slice(2);
const c = await loadOrCreateIdentity(cPath);
const b = await loadOrCreateIdentity(bPath);
const src = await parseTicket(srcText!);
const dst = await parseTicket(dstText!);
const cDial = new PeerDialer(c);
const bDial = new PeerDialer(b);
const open = (d: PeerDialer, t: Ticket, grant: Uint8Array, readOnly: boolean) =>
  d.open({ endpoints: t.claims.endpoints, sharer: t.claims.sharer, regionId: t.claims.regionId, grant, readOnly, agent: 'forge-client', requestTimeoutMs: 20_000 });

const outcome = async (p: Promise<unknown>): Promise<string> => {
  try {
    await p;
    return 'ACCEPTED';
  } catch (e) {
    return `${e instanceof QuicmapError ? e.code : 'ERROR'}: ${(e as Error).message}`;
  }
};

const out: Record<string, string> = {};
const cA = await open(cDial, src, src.grant, true);
const cB = await open(cDial, dst, dst.grant, false);
const low = decodeRefPieces(await cA.call(REF_READ, { offset: 0, length: 1 << 20 }), 'read');
const high = decodeRefPieces(await cA.call(REF_READ, { offset: 4 << 20, length: 1 << 20 }), 'read');
const delegation = await signDelegation(c, { grant: src.grant, delegate: b.publicKey, offset: 0, length: 1 << 20, validFor: 120 });
const forged = makeCacheId(machineOf(src.claims.sharer), 0, 0xabcde);
// Through B: a forged id, then a real id of a piece outside the delegated range (passed off as inside it).
out.forgedViaB = await outcome(cB.call(COPY_FETCH, { delegation, pieces: [{ id: idBytes(forged), src: 0, length: 512 << 10, dst: 0 }] }));
out.widenedViaB = await outcome(cB.call(COPY_FETCH, { delegation, pieces: [{ id: idBytes(high[0]!.id!), src: 0, length: 512 << 10, dst: 0 }] }));
// A delegation whose range was widened after signing.
const widened = widen(delegation, 64 << 20);
out.tamperedViaB = await outcome(cB.call(COPY_FETCH, { delegation: widened, pieces: [{ id: idBytes(high[0]!.id!), src: 4 << 20, length: 512 << 10, dst: 0 }] }));
// As B at A directly.
const bA = await open(bDial, src, delegation, true);
out.claimOutside = await outcome(bA.call(REF_CLAIM, { ids: [idBytes(high[0]!.id!)] }));
out.plainRead = await outcome(bA.readAt(new Uint8Array(4096), 0));
out.claimOnce = await outcome(bA.call(REF_CLAIM, { ids: [idBytes(low[1]!.id!)] }));
await bA.call(REF_DEREF, { refs: encodeRefCounts([{ id: low[1]!.id!, n: 1 }]) });
out.claimReplayed = await outcome(bA.call(REF_CLAIM, { ids: [idBytes(low[1]!.id!)] }));
out.tamperedSession = await outcome(open(bDial, src, widened, true).then((r) => r.close()));
out.stolenDelegation = await outcome(open(cDial, src, delegation, true).then((r) => r.close()));
// Give everything back, so the origin ends with nothing outstanding.
await cA.call(REF_DEREF, { refs: encodeRefCounts([...low, ...high].map((p) => ({ id: p.id!, n: 1 }))), lenient: true });
await Promise.all([cA.close(), cB.close(), bA.close()]);
await cDial.close();
await bDial.close();
process.stdout.write(`${JSON.stringify(out)}\n`);
process.exit(0);
