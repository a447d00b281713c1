/**
 * DirectoryBackend: a region stored as one file per chunk in a directory.
 *
 * Sparse: a missing chunk file reads as zeros and is created on the first
 * write into it; a chunk file may also be shorter than the chunk (the rest
 * reads as zeros). Trim or writeZeroes of a whole chunk deletes its file;
 * writeZeroes of part of a chunk writes zeros into an existing file; trim of
 * part of a chunk is a no-op (trim is advisory). Writes go straight into the
 * chunk file at the right offset (pwrite), so there is no read-modify-write
 * whatever the chunk size.
 *
 * Chunk size (default 4 MiB, any power of two from 4 KiB): large chunks do
 * not cost I/O here (no RMW), but small ones cost files, opens and, above
 * all, fsyncs: a flush fdatasyncs every chunk written since the last one,
 * and each fdatasync is a journal commit, so writing 1 GiB between flushes
 * means 256 fsyncs at 4 MiB against 1024 at 1 MiB. 4 MiB also keeps a 1 TiB
 * region at 256 Ki files, and still frees space at a fine enough grain for
 * discards, which filesystems send in large ranges.
 *
 * Which chunk files exist is read once at open (readdir) and kept in a set,
 * so reads of untouched ranges make no syscalls. Open fds are kept in a
 * bounded LRU; an fd in use is never closed under a request.
 *
 * Durability: `flush` fdatasyncs every chunk file written since the last
 * flush (reopening the ones the LRU closed; Linux ≥ 4.16 reports a writeback
 * error that nobody has seen yet to a new fd, see errseq) and then fsyncs the
 * directory, so newly created or deleted chunk files survive a crash; it
 * also waits for any earlier flush still syncing. A FUA write fdatasyncs the
 * chunks it wrote and fsyncs the directory if any chunk file was created or
 * deleted since the last completed directory fsync.
 *
 * A metadata file (`quicmap-region.json`) records region size and chunk
 * size; reopening with a different size or chunk size is refused with a
 * `RegionMetadataError`. One process should own a directory at a time
 * (there is no lock file).
 */
import fs from 'node:fs';
import { join } from 'node:path';
import { ClosedError, PathError, QuicmapError, ReadOnlyError } from '../../base/errors.ts';
import { makeDirs } from '../../base/make-dirs.ts';
import { chunkPieces } from '../../base/chunk-pieces.ts';
import { LOCK_FILE, lockRegionDir } from './owner-lock.ts';
import { EXTENTS, offer, type Capability } from '../capability.ts';
import { pushExtent, type Extent, type ReadWriterAt, type StoreCaps, type WriteOptions, type ZeroOptions } from '../rwat.ts';
import {
  InFlight,
  MissingSizeError,
  closeFd,
  fdatasyncFd,
  fsyncFd,
  openFd,
  preadFull,
  pwriteFull,
} from './file.ts';

export const DEFAULT_DIRECTORY_CHUNK_SIZE = 4 * 1024 * 1024;
export const DEFAULT_MAX_OPEN_FILES = 64;
export const METADATA_FILE = 'quicmap-region.json';
const FORMAT = 'quicmap-directory-region';
const CHUNK_NAME = /^([0-9a-f]{8,13})\.chunk$/;
/** Zeros for partial writeZeroes; never written to. */
const ZEROS = new Uint8Array(1 << 20);

/** The directory's metadata is missing, unreadable, or disagrees with what was asked for. */
export class RegionMetadataError extends QuicmapError {
  constructor(message: string) {
    super('EINVAL', message);
  }
}

export interface DirectoryBackendOptions {
  /** Region size: required to create; must match the metadata on reopen. */
  size?: number;
  /** Chunk size for a new directory (default 4 MiB); must match on reopen if given. */
  chunkSize?: number;
  readOnly?: boolean;
  /** Make a region in an existing non-empty directory that is not one yet (default: refuse). */
  force?: boolean;
  /** Create the directory and its metadata if missing. */
  create?: boolean;
  /** Bound of the open-fd LRU (default 64). */
  maxOpenFiles?: number;
}

interface RegionMetadata {
  format: string;
  version: number;
  size: number;
  chunkSize: number;
}

interface Handle {
  fd: number;
  refs: number;
  /** Its file was deleted: close when the last user releases it, never reuse. */
  stale: boolean;
}

export function chunkFileName(idx: number): string {
  return `${idx.toString(16).padStart(8, '0')}.chunk`;
}

export class DirectoryBackend implements ReadWriterAt {
  readonly caps: StoreCaps;
  readonly dir: string;
  readonly chunkSize: number;
  private readonly regionSize: number;
  private readonly maxOpen: number;
  /** Chunk files that exist on disk. */
  private readonly present: Set<number>;
  /** Open fds, in LRU order (oldest first). */
  private readonly handles = new Map<number, Handle>();
  /** A chunk being opened or deleted: others wait for it. */
  private readonly busy = new Map<number, Promise<void>>();
  /** Chunks written since the last flush. */
  private dirty = new Set<number>();
  /** Chunk files created or deleted so far (a generation counter)... */
  private dirChanges = 0;
  /** ... and how many of those a completed directory fsync covers. */
  private dirSynced = 0;
  /** Flushes whose fsyncs are running: a later flush waits for them too. */
  private readonly syncing = new Set<Promise<void>>();
  private readonly inflight = new InFlight();
  private closed = false;
  private closing: Promise<void> | undefined;

  private constructor(dir: string, meta: RegionMetadata, present: Set<number>, readOnly: boolean, maxOpen: number) {
    this.dir = dir;
    this.regionSize = meta.size;
    this.chunkSize = meta.chunkSize;
    this.present = present;
    this.maxOpen = maxOpen;
    this.caps = {
      readOnly,
      canTrim: true,
      fastZero: true,
      multiConn: true,
      preferredBlockSize: 4096,
    };
  }

  static async open(dir: string, opts: DirectoryBackendOptions = {}): Promise<DirectoryBackend> {
    const readOnly = opts.readOnly ?? false;
    const maxOpen = opts.maxOpenFiles ?? DEFAULT_MAX_OPEN_FILES;
    if (!Number.isSafeInteger(maxOpen) || maxOpen < 1) throw new RangeError(`bad maxOpenFiles ${maxOpen}`);
    if (opts.size !== undefined && (!Number.isSafeInteger(opts.size) || opts.size < 0)) throw new RangeError(`bad size ${opts.size}`);
    const cs = opts.chunkSize;
    if (cs !== undefined && !(Number.isSafeInteger(cs) && cs >= 4096 && (cs & (cs - 1)) === 0 && cs <= 2 ** 30)) {
      throw new RangeError(`chunk size must be a power of two from 4 KiB to 1 GiB, not ${cs}`);
    }
    // Writers are exclusive (a second writer would corrupt chunk files and
    // metadata), and the lock is taken before the metadata is read or made.
    let unlock: (() => Promise<void>) | undefined;
    if (!readOnly && (opts.create || fs.existsSync(dir))) {
      if (opts.create) await makeDirs(dir);
      else if (!fs.statSync(dir).isDirectory()) throw new PathError(dir, 'exists and is not a directory');
      unlock = await lockRegionDir(dir);
    }
    let meta: RegionMetadata;
    let present: Set<number>;
    try {
      const metaPath = join(dir, METADATA_FILE);
      let text: string | undefined;
      try {
        text = await fs.promises.readFile(metaPath, 'utf8');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
      if (text !== undefined) {
        meta = parseMetadata(metaPath, text);
        if (opts.size !== undefined && opts.size !== meta.size) {
          throw new RegionMetadataError(`${dir} holds a region of ${meta.size} bytes, not ${opts.size}`);
        }
        if (cs !== undefined && cs !== meta.chunkSize) {
          throw new RegionMetadataError(`${dir} uses ${meta.chunkSize}-byte chunks, not ${cs}`);
        }
      } else {
        if (!opts.create || readOnly) {
          throw new RegionMetadataError(`${dir} has no ${METADATA_FILE}: not a region directory (create it with a size)`);
        }
        if (opts.size === undefined) throw new MissingSizeError(`directory backend ${dir}`);
        // Never scatter region files among someone's own files by mistake.
        const others = (await fs.promises.readdir(dir)).filter((n) => n !== LOCK_FILE);
        if (others.length && !opts.force) {
          throw new PathError(dir, `is not empty (${others.length} entr${others.length === 1 ? 'y' : 'ies'}) and not a region directory; use an empty or new directory, or --force`);
        }
        meta = { format: FORMAT, version: 1, size: opts.size, chunkSize: cs ?? DEFAULT_DIRECTORY_CHUNK_SIZE };
        await writeMetadata(dir, meta);
      }
      present = new Set<number>();
      for (const name of await fs.promises.readdir(dir)) {
        const m = CHUNK_NAME.exec(name);
        if (m) present.add(parseInt(m[1]!, 16));
      }
    } catch (e) {
      await unlock?.();
      throw e;
    }
    const backend = new DirectoryBackend(dir, meta, present, readOnly, maxOpen);
    backend.unlock = unlock;
    return backend;
  }

  /** Releases the owner lock at close (writable opens only). */
  private unlock: (() => Promise<void>) | undefined;

  /** Chunks without a file are holes that read as zeros. */
  async extents(offset: number, length: number): Promise<Extent[]> {
    if (this.closed) throw new ClosedError('directory backend');
    const out: Extent[] = [];
    for (const { index, length: n } of chunkPieces(offset, length, this.chunkSize)) {
      const hole = !this.present.has(index);
      pushExtent(out, { length: n, hole, zero: hole });
    }
    return out;
  }

  /** Chunk files on disk (for tests and stats). */
  chunkFiles(): number[] {
    return [...this.present].sort((a, b) => a - b);
  }

  async size(): Promise<number> {
    if (this.closed) throw new ClosedError('directory backend');
    return this.regionSize;
  }

  async readAt(buf: Uint8Array, offset: number): Promise<void> {
    if (this.closed) throw new ClosedError('directory backend');
    await this.inflight.run(async () => {
      for (const { index, within, at, length } of chunkPieces(offset, buf.length, this.chunkSize)) {
        const piece = length === buf.length ? buf : buf.subarray(at, at + length);
        const h = await this.acquire(index, false);
        if (h === null) {
          piece.fill(0);
        } else {
          try {
            const got = await preadFull(h.fd, piece, within);
            if (got < length) piece.fill(0, got); // past the end of a short chunk file
          } finally {
            this.release(h);
          }
        }
      }
    });
  }

  async writeAt(data: Uint8Array, offset: number, opts?: WriteOptions): Promise<void> {
    this.checkWritable();
    await this.inflight.run(async () => {
      const written: number[] = [];
      for (const { index, within, at, length } of chunkPieces(offset, data.length, this.chunkSize)) {
        const h = (await this.acquire(index, true))!;
        try {
          await pwriteFull(h.fd, length === data.length ? data : data.subarray(at, at + length), within);
        } finally {
          this.release(h);
        }
        // Marked after the write: a flush that starts later must see it.
        this.dirty.add(index);
        written.push(index);
      }
      if (opts?.fua) await this.makeDurable(written);
    });
  }

  async flush(): Promise<void> {
    if (this.closed) throw new ClosedError('directory backend');
    if (this.caps.readOnly) return;
    await this.inflight.run(async () => {
      // Everything acknowledged so far: the dirty chunks and the directory
      // entries changed up to now.
      const chunks = [...this.dirty];
      this.dirty = new Set();
      const gen = this.dirChanges;
      const mine = (async () => {
        try {
          await this.syncList(chunks);
        } catch (err) {
          for (const idx of chunks) this.dirty.add(idx);
          throw err;
        }
        await this.syncDirUpTo(gen);
      })();
      this.syncing.add(mine);
      try {
        // An earlier flush may still be syncing chunks it took out of
        // `dirty`: this flush is not done until those are durable too.
        await Promise.all([...this.syncing]);
      } finally {
        this.syncing.delete(mine);
      }
    });
  }

  async trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    this.checkWritable();
    await this.zeroOrTrim(offset, length, false, false, opts?.fua ?? false);
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.checkWritable();
    await this.zeroOrTrim(offset, length, true, opts?.noHole ?? false, opts?.fua ?? false);
  }

  /** Block status: absent chunk files are holes. */
  capability<T>(key: Capability<T>): T | undefined {
    return offer(key, this, EXTENTS);
  }

  close(): Promise<void> {
    if (!this.closing) {
      this.closed = true;
      this.closing = (async () => {
        await this.inflight.wait();
        const fds = [...this.handles.values()].map((h) => h.fd);
        this.handles.clear();
        await Promise.all(fds.map((fd) => closeFd(fd)));
        await this.unlock?.();
      })();
    }
    return this.closing;
  }

  // ---- internals ----

  private checkWritable(): void {
    if (this.closed) throw new ClosedError('directory backend');
    if (this.caps.readOnly) throw new ReadOnlyError(this.dir);
  }

  private chunkPath(idx: number): string {
    return join(this.dir, chunkFileName(idx));
  }

  /**
   * An open handle for chunk `idx` with its use count raised, or null when
   * the chunk file does not exist and `create` is false.
   */
  private async acquire(idx: number, create: boolean): Promise<Handle | null> {
    for (;;) {
      const h = this.handles.get(idx);
      if (h !== undefined) {
        this.handles.delete(idx); // move to the young end of the LRU
        this.handles.set(idx, h);
        h.refs++;
        return h;
      }
      const pending = this.busy.get(idx);
      if (pending !== undefined) {
        await pending;
        continue;
      }
      if (!create && !this.present.has(idx)) return null;
      let done!: () => void;
      this.busy.set(idx, new Promise<void>((r) => (done = r)));
      try {
        const fd = await this.openChunk(idx, create);
        if (fd === null) return null;
        const handle: Handle = { fd, refs: 1, stale: false };
        this.handles.set(idx, handle);
        this.evict();
        return handle;
      } finally {
        this.busy.delete(idx);
        done();
      }
    }
  }

  private async openChunk(idx: number, create: boolean): Promise<number | null> {
    const { O_RDONLY, O_RDWR, O_CREAT, O_EXCL } = fs.constants;
    const path = this.chunkPath(idx);
    try {
      const fd = await openFd(path, this.caps.readOnly ? O_RDONLY : O_RDWR);
      this.present.add(idx);
      return fd;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      this.present.delete(idx);
      if (!create) return null;
    }
    const fd = await openFd(path, O_RDWR | O_CREAT | O_EXCL);
    this.present.add(idx);
    this.dirChanges++;
    return fd;
  }

  private release(h: Handle): void {
    h.refs--;
    if (h.stale) {
      if (h.refs === 0) void closeFd(h.fd).catch(() => {});
      return;
    }
    if (this.handles.size > this.maxOpen) this.evict();
  }

  /** Close the least recently used idle fds until the LRU is within bounds. */
  private evict(): void {
    if (this.handles.size <= this.maxOpen) return;
    for (const [idx, h] of this.handles) {
      if (this.handles.size <= this.maxOpen) break;
      if (h.refs > 0) continue;
      this.handles.delete(idx);
      // A dirty chunk's data stays in the page cache; flush reopens the file
      // to fdatasync it.
      void closeFd(h.fd).catch(() => {});
    }
  }

  /** Delete chunk `idx`'s file (no-op if it has none). */
  private async removeChunk(idx: number): Promise<void> {
    for (;;) {
      const pending = this.busy.get(idx);
      if (pending === undefined) break;
      await pending;
    }
    let done!: () => void;
    this.busy.set(idx, new Promise<void>((r) => (done = r)));
    try {
      const h = this.handles.get(idx);
      if (h !== undefined) {
        this.handles.delete(idx);
        h.stale = true;
        if (h.refs === 0) await closeFd(h.fd);
      }
      if (!this.present.has(idx)) return;
      try {
        await fs.promises.unlink(this.chunkPath(idx));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
      this.present.delete(idx);
      this.dirty.delete(idx);
      this.dirChanges++;
    } finally {
      this.busy.delete(idx);
      done();
    }
  }

  private async zeroOrTrim(offset: number, length: number, zero: boolean, noHole: boolean, fua: boolean): Promise<void> {
    if (length === 0) return;
    await this.inflight.run(async () => {
      const cs = this.chunkSize;
      const end = offset + length;
      const first = Math.floor(offset / cs);
      const last = Math.floor((end - 1) / cs);
      const written: number[] = [];
      if (!noHole && last - first > 2 * (this.present.size + this.busy.size) + 2) {
        // A large range over a sparse region (a whole-device discard): visit
        // the edges and the chunks that exist (or are being created), not
        // every index in the range.
        const visit = new Set<number>([first, last]);
        for (const idx of this.present) if (idx > first && idx < last) visit.add(idx);
        for (const idx of this.busy.keys()) if (idx > first && idx < last) visit.add(idx);
        for (const idx of [...visit].sort((a, b) => a - b)) if (await this.zeroIn(idx, offset, end, zero, false)) written.push(idx);
      } else {
        for (let idx = first; idx <= last; idx++) if (await this.zeroIn(idx, offset, end, zero, noHole)) written.push(idx);
      }
      if (fua) await this.makeDurable(written);
    });
  }

  /**
   * The part of [offset, end) inside chunk `idx`: delete the file if whole,
   * else zero (or, for trim, leave) it. True if it wrote into the file.
   */
  private async zeroIn(idx: number, offset: number, end: number, zero: boolean, noHole: boolean): Promise<boolean> {
    const start = idx * this.chunkSize;
    const chunkEnd = Math.min(start + this.chunkSize, this.regionSize);
    const from = Math.max(offset, start);
    const stop = Math.min(chunkEnd, end);
    if (from === start && stop === chunkEnd && !noHole) {
      if (this.present.has(idx) || this.handles.has(idx) || this.busy.has(idx)) await this.removeChunk(idx);
      return false;
    }
    if (!zero || !(noHole || this.present.has(idx))) return false;
    const h = await this.acquire(idx, noHole);
    if (h === null) return false;
    try {
      for (let at = from; at < stop; at += ZEROS.length) {
        await pwriteFull(h.fd, ZEROS.subarray(0, Math.min(ZEROS.length, stop - at)), at - start);
      }
    } finally {
      this.release(h);
    }
    this.dirty.add(idx);
    return true;
  }

  /**
   * FUA: make the chunks this request wrote, and every directory change so
   * far, durable. The chunks are synced here whether or not they are still
   * in `dirty` (a concurrent flush may have taken them and not finished);
   * they stay in `dirty` for the next flush.
   */
  private async makeDurable(written: number[]): Promise<void> {
    await this.syncList(written);
    await this.syncDirUpTo(this.dirChanges);
  }

  /** fdatasync the given chunk files, a few at a time (each may need an fd). */
  private async syncList(chunks: number[]): Promise<void> {
    let next = 0;
    const worker = async () => {
      while (next < chunks.length) {
        const idx = chunks[next++]!;
        const h = await this.acquire(idx, false);
        if (h === null) continue; // deleted since: nothing to make durable
        try {
          await fdatasyncFd(h.fd);
        } finally {
          this.release(h);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(8, chunks.length) }, worker));
  }

  /** fsync the directory unless a completed fsync already covers change `gen`. */
  private async syncDirUpTo(gen: number): Promise<void> {
    if (this.dirSynced >= gen) return;
    await fsyncPath(this.dir);
    this.dirSynced = Math.max(this.dirSynced, gen);
  }
}

async function fsyncPath(path: string): Promise<void> {
  const fd = await openFd(path, fs.constants.O_RDONLY);
  try {
    await fsyncFd(fd);
  } finally {
    await closeFd(fd);
  }
}

function parseMetadata(path: string, text: string): RegionMetadata {
  let m: Partial<RegionMetadata>;
  try {
    m = JSON.parse(text) as Partial<RegionMetadata>;
  } catch {
    throw new RegionMetadataError(`${path} is not valid JSON`);
  }
  if (
    m.format !== FORMAT ||
    m.version !== 1 ||
    !Number.isSafeInteger(m.size) ||
    m.size! < 0 ||
    !Number.isSafeInteger(m.chunkSize) ||
    m.chunkSize! < 4096 ||
    (m.chunkSize! & (m.chunkSize! - 1)) !== 0
  ) {
    throw new RegionMetadataError(`${path} is not quicmap directory-region metadata (version 1)`);
  }
  return m as RegionMetadata;
}

/** Write the metadata atomically and durably: temp file, fsync, rename, fsync the directory. */
async function writeMetadata(dir: string, meta: RegionMetadata): Promise<void> {
  const tmp = join(dir, `${METADATA_FILE}.tmp`);
  const fd = await openFd(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC);
  try {
    await pwriteFull(fd, new TextEncoder().encode(`${JSON.stringify(meta, null, 2)}\n`), 0);
    await fsyncFd(fd);
  } finally {
    await closeFd(fd);
  }
  await fs.promises.rename(tmp, join(dir, METADATA_FILE));
  await fsyncPath(dir);
}
