/**
 * The by-reference calls on the wire (CALL frames on the request table,
 * the way p2p/sync rides it) and the strict decoding of their arguments:
 * whatever a peer sends is checked here before it reaches the bookkeeping.
 *
 * Origin (every sharer; `ref-origin.ts`):
 *   ref.read   {offset, length}         → {refs: [{id, offset, length, data?}]}   references, or inline data when the cache is full
 *   ref.claim  {ids}                     → {claimed}     a delegate takes over the delegator's references (delegated sessions only)
 *   ref.fetch  {id}                      → {data}        the bytes behind a reference the caller holds
 *   ref.deref  {refs: [{id, n}], lenient} → {freed}      give references back (batched); lenient: only what is still held
 *   ref.events {waitMs}                  → {flush: [{id, n}]}   long poll: references the origin forces back
 *   ref.stats  {}                        → counters, refs outstanding
 * Target (every read-write sharer; `copy-target.ts`):
 *   copy.fetch {delegation, pieces: [{id, src, length, dst}]} → {written, refetched, dropped}
 *
 * Cache IDs travel as 8 big-endian bytes: msgpack integers above 2^53
 * would lose bits in JavaScript numbers.
 */
import { ProtocolError, QuicmapError } from '../../base/errors.ts';
import type { CacheId } from '../protocol/cache-id.ts';

export const REF_READ = 'ref.read';
export const REF_CLAIM = 'ref.claim';
export const REF_FETCH = 'ref.fetch';
export const REF_DEREF = 'ref.deref';
export const REF_EVENTS = 'ref.events';
export const REF_STATS = 'ref.stats';
export const COPY_FETCH = 'copy.fetch';

/** Most references one call may name (keeps every body far below the control limit). */
export const MAX_IDS_PER_CALL = 256;

export function idBytes(id: CacheId): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, id);
  return b;
}

export function idOf(v: unknown, what: string): CacheId {
  if (!(v instanceof Uint8Array) || v.length !== 8) throw new ProtocolError(`${what}: a cache id is 8 bytes`);
  return new DataView(v.buffer, v.byteOffset, 8).getBigUint64(0);
}

export function argsOf(v: unknown, what: string): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v) || v instanceof Uint8Array) throw new ProtocolError(`${what}: arguments must be a map`);
  return v as Record<string, unknown>;
}

export function uint(o: Record<string, unknown>, key: string, what: string, max = Number.MAX_SAFE_INTEGER): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > max) throw new QuicmapError('EINVAL', `${what}: "${key}" must be an integer in [0, ${max}]`);
  return v;
}

export function list(o: Record<string, unknown>, key: string, what: string, max = MAX_IDS_PER_CALL): unknown[] {
  const v = o[key];
  if (!Array.isArray(v) || v.length > max) throw new ProtocolError(`${what}: "${key}" must be a list of at most ${max}`);
  return v;
}

export interface RefCount {
  id: CacheId;
  n: number;
}

export function refCounts(o: Record<string, unknown>, key: string, what: string): RefCount[] {
  return list(o, key, what).map((x) => {
    const r = argsOf(x, what);
    return { id: idOf(r.id, what), n: uint(r, 'n', what, 1 << 30) };
  });
}

export function encodeRefCounts(refs: readonly RefCount[]): Array<{ id: Uint8Array; n: number }> {
  return refs.map((r) => ({ id: idBytes(r.id), n: r.n }));
}

/** One piece of a `ref.read` answer: a reference, or (cache full) the bytes themselves. */
export interface RefPiece {
  id?: CacheId;
  offset: number;
  length: number;
  data?: Uint8Array;
}

export function decodeRefPieces(v: unknown, what: string): RefPiece[] {
  const o = argsOf(v, what);
  return list(o, 'refs', what).map((x) => {
    const r = argsOf(x, what);
    const piece: RefPiece = { offset: uint(r, 'offset', what), length: uint(r, 'length', what, 1 << 30) };
    if (r.id !== undefined && r.id !== null) piece.id = idOf(r.id, what);
    if (r.data instanceof Uint8Array) piece.data = r.data;
    if ((piece.id === undefined) === (piece.data === undefined)) throw new ProtocolError(`${what}: a piece is a reference or data, exactly one`);
    if (piece.data && piece.data.length !== piece.length) throw new ProtocolError(`${what}: inline piece of ${piece.data.length} bytes, ${piece.length} declared`);
    return piece;
  });
}

/** What C forwards to B for one batch: where each referenced piece comes from and goes to. */
export interface ForwardPiece {
  id: CacheId;
  src: number;
  length: number;
  dst: number;
}

export function decodeForwardPieces(o: Record<string, unknown>, what: string): ForwardPiece[] {
  return list(o, 'pieces', what).map((x) => {
    const r = argsOf(x, what);
    return { id: idOf(r.id, what), src: uint(r, 'src', what), length: uint(r, 'length', what, 1 << 30), dst: uint(r, 'dst', what) };
  });
}

export function hex(key: Uint8Array): string {
  return Buffer.from(key).toString('hex');
}
