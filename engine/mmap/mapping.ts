/**
 * MemoryMapping: a typed, owned mmap over the native addon — a file or block
 * device (e.g. the /dev/nbdX or nbdfuse file of a mount), a memfd, or
 * anonymous memory — with msync/madvise and an explicit, idempotent close.
 * The bytes are `bytes` (a Uint8Array over the mapping); after `close()` it is
 * detached (length 0) in this thread, and views elsewhere trap if used.
 *
 * Never map a file served by this same JS thread (an nbdfuse file or /dev/nbdX
 * whose NbdServer runs here) and touch it here: the fault needs this thread
 * to answer. Touch such mappings from a worker (`MemoryMapping.attach(id)`).
 */
import { closeSync, fstatSync, openSync } from 'node:fs';
import { QuicmapError } from '../../base/errors.ts';
import { loadNative, type NativeBinding } from '../../native/index.ts';

export interface MapOptions {
  /** PROT_WRITE too (default false). */
  writable?: boolean;
  /** MAP_SHARED (default true): writes reach the file and other mappings. MAP_PRIVATE otherwise. */
  shared?: boolean;
  /** Byte offset in the file (a multiple of the page size). */
  offset?: number;
  /** Bytes to map (default: the file's size from the offset). */
  length?: number;
}

export type SyncMode = 'sync' | 'async' | 'invalidate';

export class MemoryMapping {
  readonly bytes: Uint8Array;
  readonly length: number;
  /** Process-wide id for `MemoryMapping.attach` in another thread. */
  readonly id: number;
  private readonly native: NativeBinding;
  private readonly ab: ArrayBuffer;
  private readonly ownedFd: number | undefined;
  private closed = false;

  private constructor(native: NativeBinding, ab: ArrayBuffer, ownedFd?: number) {
    this.native = native;
    this.ab = ab;
    this.bytes = new Uint8Array(ab);
    this.length = ab.byteLength;
    this.id = native.mappingId(ab);
    this.ownedFd = ownedFd;
  }

  /** Map an open file descriptor (the caller keeps owning the fd). */
  static fromFd(fd: number, opts: MapOptions = {}): MemoryMapping {
    return MemoryMapping.mapFd(fd, opts, undefined);
  }

  private static mapFd(fd: number, opts: MapOptions, ownedFd: number | undefined): MemoryMapping {
    const n = loadNative();
    const c = n.constants;
    const offset = opts.offset ?? 0;
    const length = opts.length ?? fstatSize(fd) - offset;
    if (!(length > 0)) throw new QuicmapError('EINVAL', `nothing to map (length ${length})`);
    const prot = c.PROT_READ | (opts.writable ? c.PROT_WRITE : 0);
    const flags = opts.shared === false ? c.MAP_PRIVATE : c.MAP_SHARED;
    return new MemoryMapping(n, n.mmap(fd, length, prot, flags, offset), ownedFd);
  }

  /** Open `path` and map it; the fd is closed with the mapping. */
  static file(path: string, opts: MapOptions = {}): MemoryMapping {
    const fd = openSync(path, opts.writable ? 'r+' : 'r');
    try {
      return MemoryMapping.mapFd(fd, opts, fd);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /** Anonymous private memory (zero-filled on first touch). */
  static anonymous(length: number): MemoryMapping {
    const n = loadNative();
    const c = n.constants;
    return new MemoryMapping(n, n.mmap(-1, length, c.PROT_READ | c.PROT_WRITE, c.MAP_PRIVATE));
  }

  /** Shared memory backed by a new memfd (its fd is kept open until close, so others may map it via /proc/self/fd). */
  static memfd(name: string, length: number): MemoryMapping & { fd: number } {
    const n = loadNative();
    const c = n.constants;
    const fd = n.memfdCreate(name, length);
    try {
      const m = new MemoryMapping(n, n.mmap(fd, length, c.PROT_READ | c.PROT_WRITE, c.MAP_SHARED), fd) as MemoryMapping & { fd: number };
      m.fd = fd;
      return m;
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /** This mapping's bytes in another thread (by `id`). */
  static attach(id: number): Uint8Array {
    return new Uint8Array(loadNative().view(id));
  }

  /** msync the range (default: all, synchronously). */
  sync(mode: SyncMode = 'sync', offset = 0, length = this.length - offset): void {
    this.assertOpen();
    const c = this.native.constants;
    const flags = mode === 'sync' ? c.MS_SYNC : mode === 'async' ? c.MS_ASYNC : c.MS_INVALIDATE | c.MS_ASYNC;
    this.native.msync(this.ab, offset, length, flags);
  }

  /** madvise the range, e.g. 'dontneed' to drop pages (private anonymous pages then read as zero). */
  advise(advice: 'dontneed' | 'willneed' | 'sequential' | 'random' | 'normal', offset = 0, length = this.length - offset): void {
    this.assertOpen();
    const c = this.native.constants;
    const a = { dontneed: c.MADV_DONTNEED, willneed: c.MADV_WILLNEED, sequential: c.MADV_SEQUENTIAL, random: c.MADV_RANDOM, normal: c.MADV_NORMAL }[advice];
    this.native.madvise(this.ab, offset, length, a);
  }

  /** Unmap now (idempotent); closes the fd this object opened. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.native.munmap(this.ab);
    if (this.ownedFd !== undefined) closeSync(this.ownedFd);
  }

  private assertOpen(): void {
    if (this.closed) throw new QuicmapError('ESHUTDOWN', 'mapping is closed');
  }
}

function fstatSize(fd: number): number {
  const st = fstatSync(fd);
  if (st.isBlockDevice()) {
    throw new QuicmapError('EINVAL', 'block devices report no size through fstat: pass `length`');
  }
  return st.size;
}
