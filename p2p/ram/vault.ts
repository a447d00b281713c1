/**
 * ChunkVault: where a storage peer (`quicmap store`) keeps the sealed chunks
 * others give it, under opaque ids, per client (a client's namespace is its
 * public key: one client cannot read or overwrite another's chunks), bounded
 * by a quota over all clients. It never sees plaintext: what it holds is
 * whatever the client sent.
 *
 * Backends: memory (a map), or dir:PATH (a file per chunk,
 * PATH/<client hex>/<id hex>, written to a temporary file and renamed, so
 * a chunk on disk is always a whole one; `sync` — the client's FLUSH —
 * fsyncs every file and directory written since the last one; the used
 * bytes are counted again at open).
 */
import { mkdir, open, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { QuicmapError } from '../../base/errors.ts';

/** A put that would take the vault past its quota. */
export class QuotaExceededError extends QuicmapError {
  constructor(need: number, used: number, quota: number) {
    super('ENOSPC', `quota exceeded: storing ${need} more bytes would take this store past its quota (${used} of ${quota} bytes used)`);
    this.name = 'QuotaExceededError';
  }
}

export const MAX_BLOB = 1024 * 1024 + 64;

export interface VaultStats {
  used: number;
  quota: number;
  chunks: number;
}

export interface ChunkVault {
  get(client: string, id: string): Promise<Uint8Array | null>;
  put(client: string, id: string, blob: Uint8Array): Promise<void>;
  del(client: string, id: string): Promise<void>;
  /** Everything put so far survives a crash of this store. */
  sync(): Promise<void>;
  stats(): VaultStats;
  close(): Promise<void>;
}

const HEX_ID = /^[0-9a-f]{32}$/;
const HEX_CLIENT = /^[0-9a-f]{64}$/;

function checkNames(client: string, id: string): void {
  if (!HEX_CLIENT.test(client) || !HEX_ID.test(id)) throw new QuicmapError('EINVAL', 'a chunk id is 16 bytes and a client key 32');
}

/** Sizes of what is held, and the quota check (shared by both backends). */
class Ledger {
  readonly quota: number;
  used = 0;
  private readonly sizes = new Map<string, number>();
  constructor(quota: number) {
    this.quota = quota;
  }
  key(client: string, id: string): string {
    return `${client}/${id}`;
  }
  /** Throws QuotaExceededError if replacing key's blob with `size` bytes would pass the quota. */
  check(key: string, size: number): void {
    if (size > MAX_BLOB) throw new QuicmapError('EINVAL', `a chunk of ${size} bytes is larger than the ${MAX_BLOB} this store takes`);
    const old = this.sizes.get(key) ?? 0;
    if (this.used - old + size > this.quota) throw new QuotaExceededError(size - old, this.used, this.quota);
  }
  set(key: string, size: number): void {
    this.used += size - (this.sizes.get(key) ?? 0);
    if (size === 0) this.sizes.delete(key); // (no blob is empty: a reservation undone)
    else this.sizes.set(key, size);
  }
  sizeOf(key: string): number {
    return this.sizes.get(key) ?? 0;
  }
  delete(key: string): void {
    this.used -= this.sizes.get(key) ?? 0;
    this.sizes.delete(key);
  }
  get count(): number {
    return this.sizes.size;
  }
}

export class MemoryVault implements ChunkVault {
  private readonly ledger: Ledger;
  private readonly blobs = new Map<string, Uint8Array>();
  constructor(quota: number) {
    this.ledger = new Ledger(quota);
  }
  async get(client: string, id: string): Promise<Uint8Array | null> {
    checkNames(client, id);
    return this.blobs.get(this.ledger.key(client, id)) ?? null;
  }
  async put(client: string, id: string, blob: Uint8Array): Promise<void> {
    checkNames(client, id);
    const key = this.ledger.key(client, id);
    this.ledger.check(key, blob.length);
    // A copy: `blob` may be a view into a whole received frame.
    this.blobs.set(key, Uint8Array.prototype.slice.call(blob));
    this.ledger.set(key, blob.length);
  }
  async del(client: string, id: string): Promise<void> {
    checkNames(client, id);
    const key = this.ledger.key(client, id);
    this.blobs.delete(key);
    this.ledger.delete(key);
  }
  async sync(): Promise<void> {}
  stats(): VaultStats {
    return { used: this.ledger.used, quota: this.ledger.quota, chunks: this.ledger.count };
  }
  async close(): Promise<void> {
    this.blobs.clear();
  }
}

export class DirVault implements ChunkVault {
  readonly path: string;
  private readonly ledger: Ledger;
  private seq = 0;
  private unsynced = new Set<string>();
  /** Puts to one key are serialized so the rename order is the put order. */
  private readonly busy = new Map<string, Promise<void>>();

  private constructor(path: string, quota: number) {
    this.path = path;
    this.ledger = new Ledger(quota);
  }

  static async open(path: string, quota: number): Promise<DirVault> {
    await mkdir(path, { recursive: true });
    const v = new DirVault(path, quota);
    v.unsynced.add(path);
    for (const client of await readdir(path)) {
      if (!HEX_CLIENT.test(client)) continue;
      for (const id of await readdir(join(path, client))) {
        const file = join(path, client, id);
        if (!HEX_ID.test(id)) {
          if (id.includes('.tmp')) await rm(file, { force: true }); // a put cut short
          continue;
        }
        v.ledger.set(v.ledger.key(client, id), (await stat(file)).size);
      }
    }
    return v;
  }

  async get(client: string, id: string): Promise<Uint8Array | null> {
    checkNames(client, id);
    try {
      return new Uint8Array(await readFile(join(this.path, client, id)));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async put(client: string, id: string, blob: Uint8Array): Promise<void> {
    checkNames(client, id);
    const key = this.ledger.key(client, id);
    const prev = this.busy.get(key) ?? Promise.resolve();
    const run = prev.catch(() => {}).then(async () => {
      this.ledger.check(key, blob.length);
      // Reserve at once, so concurrent puts of other chunks cannot pass the quota together.
      const before = this.ledger.sizeOf(key);
      this.ledger.set(key, Math.max(before, blob.length));
      try {
        await this.write(client, id, blob);
      } catch (e) {
        this.ledger.set(key, before);
        throw e;
      }
      this.ledger.set(key, blob.length);
    });
    this.busy.set(key, run);
    try {
      await run;
    } finally {
      if (this.busy.get(key) === run) this.busy.delete(key);
    }
  }

  private async write(client: string, id: string, blob: Uint8Array): Promise<void> {
    {
      const dir = join(this.path, client);
      await mkdir(dir, { recursive: true });
      const tmp = join(dir, `${id}.tmp${++this.seq}`);
      const fh = await open(tmp, 'w', 0o600);
      try {
        await fh.writeFile(blob);
      } finally {
        await fh.close();
      }
      await rename(tmp, join(dir, id));
      this.unsynced.add(join(dir, id));
      this.unsynced.add(dir);
    }
  }

  async del(client: string, id: string): Promise<void> {
    checkNames(client, id);
    await rm(join(this.path, client, id), { force: true });
    this.ledger.delete(this.ledger.key(client, id));
  }

  async sync(): Promise<void> {
    const paths = [...this.unsynced];
    this.unsynced = new Set();
    // Files first, then their directories (the renames).
    paths.sort((a, b) => b.length - a.length);
    for (let i = 0; i < paths.length; i += 32) {
      await Promise.all(
        paths.slice(i, i + 32).map(async (p) => {
          const fh = await open(p, 'r').catch(() => undefined); // deleted since: nothing to keep
          if (!fh) return;
          try {
            await fh.sync();
          } finally {
            await fh.close();
          }
        }),
      );
    }
    await syncDir(this.path);
  }

  stats(): VaultStats {
    return { used: this.ledger.used, quota: this.ledger.quota, chunks: this.ledger.count };
  }

  async close(): Promise<void> {
    await this.sync().catch(() => {});
  }
}

async function syncDir(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
