/**
 * The storage peer's calls, on CALL frames of the region protocol (so each
 * has an id, a deadline and an in-flight slot like any request):
 *
 *   chunk.put  {id: bin16, tag, at, total, data: bin} -> {done, used, quota}   (ENOSPC: quota exceeded)
 *   chunk.get  {id: bin16}             -> bin | null       (older stores: {blob: bin | null})
 *   chunk.del  {id: bin16} | {ids: [bin16, …]} -> {}    (ids: at most MAX_DEL_IDS; a RAM node's end)
 *   chunk.sync {}                      -> {}                 (what was put survives a crash of the store)
 *   chunk.info {}                      -> {used, quota, chunks, boot}  (boot: new at each start of the store)
 *
 * Chunks are kept per caller (its authenticated key), so one client never
 * sees another's. put and del need a read-write grant.
 *
 * A CALL body is at most the session's maxCallBody (p2p/protocol): the
 * negotiated maxFrame when both sides offered `large-call` (the store's is
 * 1 MiB + 4 KiB, so a sealed chunk goes as one call), else 16 KiB. A blob
 * larger than that goes up in parts (`at` its offset in the blob, `total`
 * its length), sent at once; the part that completes it stores it and
 * answers `done: true` (or the quota refusal). Parts wait in a staging area
 * bounded per session and per store (EBUSY beyond) and dropped after
 * STAGING_TTL_MS.
 */
import { randomBytes } from 'node:crypto';
import { QuicmapError } from '../../base/errors.ts';
import type { RegionServer } from '../remote/server.ts';
import type { RemoteRegion } from '../remote/region.ts';
import type { ChunkVault, VaultStats } from './vault.ts';
import { MAX_BLOB } from './vault.ts';

/** Bytes of a chunk.put call that are not blob: the msgpack envelope (method, id, tag, at, total, the bin header). */
export const PUT_ENVELOPE = 256;
export const STAGING_TTL_MS = 30_000;
/** Ids one chunk.del may name (18 bytes each in msgpack: 4096 fit a 74 KiB body, under the store's frame). */
export const MAX_DEL_IDS = 4096;
export const STAGING_PER_SESSION = 8 * 1024 * 1024;
export const STAGING_PER_STORE = 64 * 1024 * 1024;

interface Staged {
  buf: Uint8Array;
  received: number;
  session: number;
  at: number;
}

const hex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex');

function bytesArg(args: unknown, name: string, length?: number): Uint8Array {
  const v = (args as Record<string, unknown> | null)?.[name];
  if (!(v instanceof Uint8Array) || (length !== undefined && v.length !== length) || v.length > MAX_BLOB) {
    throw new QuicmapError('EINVAL', `chunk call: "${name}" must be ${length ?? 'at most ' + MAX_BLOB} bytes`);
  }
  return v;
}

export interface StoreCallStats {
  puts: number;
  gets: number;
  refusedQuota: number;
}

/** Serve a vault on `server`'s chunk.* calls. */
export function serveChunkStore(server: RegionServer, vault: ChunkVault, now: () => number = Date.now): StoreCallStats {
  const stats: StoreCallStats = { puts: 0, gets: 0, refusedQuota: 0 };
  const staging = new Map<string, Staged>();
  const perSession = new Map<number, number>();
  let staged = 0;
  const drop = (key: string, e: Staged) => {
    staging.delete(key);
    staged -= e.buf.length;
    const left = (perSession.get(e.session) ?? 0) - e.buf.length;
    if (left > 0) perSession.set(e.session, left);
    else perSession.delete(e.session);
  };
  const sweep = () => {
    const t = now();
    for (const [k, e] of staging) if (t - e.at > STAGING_TTL_MS) drop(k, e);
  };
  server.handle('chunk.put', async (args, ctx) => {
    if (ctx.readOnly) throw new QuicmapError('EPERM', 'this ticket grants reading only');
    const id = bytesArg(args, 'id', 16);
    const data = bytesArg(args, 'data');
    const a = args as { at?: unknown; total?: unknown; tag?: unknown };
    const at = a.at;
    const total = a.total;
    if (typeof at !== 'number' || typeof total !== 'number' || !Number.isSafeInteger(at) || !Number.isSafeInteger(total) || total < 1 || total > MAX_BLOB || at < 0 || at + data.length > total || data.length === 0) {
      throw new QuicmapError('EINVAL', 'chunk.put: "at" and "total" must place the part inside a blob of at most ' + MAX_BLOB + ' bytes');
    }
    const client = hex(ctx.peer);
    const name = hex(id);
    let blob: Uint8Array;
    if (at === 0 && data.length === total) {
      blob = data;
    } else {
      sweep();
      const key = `${ctx.session}/${name}/${typeof a.tag === 'number' ? a.tag : 0}`;
      let e = staging.get(key);
      if (e && e.buf.length !== total) {
        drop(key, e);
        e = undefined;
      }
      if (!e) {
        const mine = perSession.get(ctx.session) ?? 0;
        if (mine + total > STAGING_PER_SESSION || staged + total > STAGING_PER_STORE) throw new QuicmapError('EBUSY', 'chunk.put: too many chunks half sent; finish those first');
        e = { buf: new Uint8Array(total), received: 0, session: ctx.session, at: now() };
        staging.set(key, e);
        staged += total;
        perSession.set(ctx.session, mine + total);
      }
      e.buf.set(data, at);
      e.received += data.length;
      if (e.received < total) return { done: false };
      drop(key, e);
      blob = e.buf;
    }
    try {
      await vault.put(client, name, blob);
    } catch (e) {
      if (e instanceof QuicmapError && e.code === 'ENOSPC') stats.refusedQuota++;
      throw e;
    }
    stats.puts++;
    const s = vault.stats();
    return { done: true, used: s.used, quota: s.quota };
  });
  server.handle('chunk.get', async (args, ctx) => {
    const id = bytesArg(args, 'id', 16);
    stats.gets++;
    // The bare bytes: sent as they are behind a msgpack bin header (packReplyParts), not copied.
    return await vault.get(hex(ctx.peer), hex(id));
  });
  server.handle('chunk.del', async (args, ctx) => {
    if (ctx.readOnly) throw new QuicmapError('EPERM', 'this ticket grants reading only');
    const list = (args as { ids?: unknown } | null)?.ids;
    if (list === undefined) {
      await vault.del(hex(ctx.peer), hex(bytesArg(args, 'id', 16)));
      return {};
    }
    if (!Array.isArray(list) || list.length > MAX_DEL_IDS || !list.every((v) => v instanceof Uint8Array && v.length === 16)) {
      throw new QuicmapError('EINVAL', `chunk.del: "ids" must be a list of at most ${MAX_DEL_IDS} ids of 16 bytes`);
    }
    const client = hex(ctx.peer);
    for (const id of list as Uint8Array[]) await vault.del(client, hex(id));
    return {};
  });
  server.handle('chunk.sync', async () => {
    await vault.sync();
    return {};
  });
  const boot = randomBytes(8).toString('hex');
  server.handle('chunk.info', async () => ({ ...vault.stats(), boot }));
  return stats;
}

/** The client side: one storage peer's chunk calls over its RemoteRegion. */
export class StorePeerClient {
  readonly region: RemoteRegion;
  private tags = 0;
  constructor(region: RemoteRegion) {
    this.region = region;
  }
  /** Blob bytes per chunk.put call: what the session's CALL body limit leaves after the envelope. */
  get partSize(): number {
    return this.region.maxCallBody - PUT_ENVELOPE;
  }

  /** Send the blob (in parts, sent at once, when it exceeds partSize); resolves with the store's usage once the part that completed it is answered. */
  async put(id: Uint8Array, blob: Uint8Array): Promise<VaultStats> {
    const parts: Array<Promise<unknown>> = [];
    const tag = ++this.tags; // parts of one put only ever complete that put
    const part = this.partSize;
    for (let at = 0; at < blob.length; at += part) {
      parts.push(this.region.call('chunk.put', { id, tag, at, total: blob.length, data: blob.subarray(at, Math.min(blob.length, at + part)) }));
    }
    const answers = (await Promise.all(parts)) as Array<{ done?: boolean; used?: number; quota?: number } | null>;
    const done = answers.find((a) => a?.done === true);
    if (!done) throw new QuicmapError('EPROTO', 'chunk.put: the store answered every part but stored nothing');
    return { used: done.used ?? 0, quota: done.quota ?? 0, chunks: 0 };
  }
  async get(id: Uint8Array): Promise<Uint8Array | null> {
    const r = await this.region.call('chunk.get', { id });
    const blob = r instanceof Uint8Array ? r : (r as { blob?: unknown } | null)?.blob;
    if (blob === null || blob === undefined) return null;
    if (!(blob instanceof Uint8Array)) throw new QuicmapError('EPROTO', 'chunk.get: the store answered something that is not a chunk');
    return blob;
  }
  async del(id: Uint8Array): Promise<void> {
    await this.region.call('chunk.del', { id });
  }
  /** Delete many chunks, a call per MAX_DEL_IDS (fewer when the session's call bodies are small), those calls at once. */
  async delMany(ids: Uint8Array[]): Promise<void> {
    const per = Math.max(1, Math.min(MAX_DEL_IDS, Math.floor((this.region.maxCallBody - PUT_ENVELOPE) / 18)));
    const calls: Array<Promise<unknown>> = [];
    for (let at = 0; at < ids.length; at += per) calls.push(this.region.call('chunk.del', { ids: ids.slice(at, at + per) }));
    await Promise.all(calls);
  }
  async sync(): Promise<void> {
    await this.region.call('chunk.sync', {});
  }
  async info(): Promise<VaultStats & { boot?: string }> {
    return (await this.region.call('chunk.info', {})) as VaultStats & { boot?: string };
  }
}
