/**
 * Typed loader for quicmap's native addon (native/build/Release/quicmap_native.node,
 * built by `node native/build.mjs`, which `npm install` runs).
 *
 * `loadNative()` returns the binding or throws NativeUnavailableError with the
 * reason (the build failure recorded by build.mjs, or the load error);
 * `nativeAvailable()` never throws. The addon is loadable from worker threads
 * too (it is a Node-API module), which is how a thread other than the one
 * serving a LazyRegion's faults gets at its memory (`view(id)`).
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** Constants of <sys/mman.h> on this machine. */
export interface MmanConstants {
  PROT_NONE: number;
  PROT_READ: number;
  PROT_WRITE: number;
  MAP_SHARED: number;
  MAP_PRIVATE: number;
  MAP_POPULATE: number;
  MAP_NORESERVE: number;
  MS_ASYNC: number;
  MS_SYNC: number;
  MS_INVALIDATE: number;
  MADV_NORMAL: number;
  MADV_RANDOM: number;
  MADV_SEQUENTIAL: number;
  MADV_WILLNEED: number;
  MADV_DONTNEED: number;
  MADV_REMOVE: number;
  MADV_DONTFORK: number;
  MADV_HUGEPAGE: number;
  MADV_NOHUGEPAGE: number;
  PAGE_SIZE: number;
}

export interface NativeNbdServeOptions {
  fd: number;
  memfd: number;
  /** Mapping ids of the region's slabs, in order; each but the last is `slabSize` long. */
  slabs: number[];
  slabSize: number;
  size: number;
  /** One byte per `chunk` of the region: 1 once written (shared with every thread). */
  written: Uint8Array;
  chunk: number;
  readOnly: boolean;
  structured: boolean;
  blockStatus: boolean;
  maxPayload: number;
  /** Bytes already read past the handshake. */
  rest: Uint8Array;
  /** The export's name, for log lines. */
  name: string;
}

export interface NativeNbdStats {
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
}

export interface NativeRelaySpliceOptions {
  /** The two connected stream sockets (dup'd by the addon; the caller keeps its own open and must not read them). */
  a: number;
  b: number;
  /** The budget left for both directions together; absent: no limit. */
  capBytes?: number;
  /** Bytes already read from a (for b) / from b (for a): sent before anything spliced. */
  headAB?: Uint8Array;
  headBA?: Uint8Array;
  /** Names the thread ("qm " + name, 15 bytes at most: top -H, perf). */
  name: string;
  /** Each pipe's size asked for (F_SETPIPE_SZ; default 1 MiB, the kernel may give less). */
  pipeSize?: number;
}

export interface NativeRelaySpliceCounts {
  /** Bytes spliced from a to b / from b to a so far (the heads not included: the caller counted those). */
  bytesAB: number;
  bytesBA: number;
}

export interface NativeRelaySpliceClosed extends NativeRelaySpliceCounts {
  /** end: both directions reached EOF and were shut down; cap: the byte budget is spent; stop: relaySpliceStop; error: a socket failed. */
  reason: 'end' | 'cap' | 'stop' | 'error';
  /** With 'error': the errno name and the socket ('a' | 'b') it came from. */
  error?: string;
  side?: 'a' | 'b';
}

export interface UffdFeatures {
  /** A userfaultfd could be opened (syscall or /dev/userfaultfd). */
  available: boolean;
  error?: string;
  raw: number;
  writeProtect: boolean;
  poison: boolean;
  eventRemove: boolean;
}

export interface UffdRegionStats {
  missingFaults: number;
  writeFaults: number;
  batches: number;
  fills: number;
  filledBytes: number;
  failed: number;
  features: number;
  poison: boolean;
  length: number;
  granules: number;
}

/** Granule states reported by `UffdRegion.state`. */
export const GRANULE_ABSENT = 0;
export const GRANULE_PENDING = 1;
export const GRANULE_PRESENT = 2;
export const GRANULE_FAILED = 3;
/** Set on granule indices in a fault batch that were added as prefetch, not demanded. */
export const PREFETCH_BIT = 0x80000000;

/**
 * The raw userfaultfd region (engine/mmap/lazy-region.ts wraps it).
 * `onFaults` runs on the JS thread that created the region with a batch of
 * granule indices (demanded first, then prefetch ones with PREFETCH_BIT set);
 * each must be answered with `fill` or `fail`.
 */
export interface UffdRegion {
  mappingId(): number;
  /** The mapping as an ArrayBuffer. Never touch it from the thread that serves the faults. */
  buffer(): ArrayBuffer;
  /** UFFDIO_COPY the granule's missing pages (present pages are kept); returns bytes placed. */
  fill(granule: number, data: Uint8Array): number;
  /** Poison the granule's missing pages: the waiting and later accesses get SIGBUS. */
  fail(granule: number): void;
  /** Indices of chunks (granules) written since the last call; re-protects them. */
  takeDirty(): Uint32Array;
  state(granule: number): number;
  stats(): UffdRegionStats;
  /** Keep the event loop alive while open (default) / not. */
  ref(): void;
  unref(): void;
  close(): void;
}

export interface UffdRegionCtor {
  new (length: number, granule: number, opts: { trackWrites: boolean; prefetch: number }, onFaults: (granules: Uint32Array) => void): UffdRegion;
}

export interface NativeBinding {
  abiVersion: number;
  constants: MmanConstants;
  /** mmap(fd, length, prot, flags, offset); fd < 0 maps anonymous memory. Unmapped when collected or by munmap. */
  mmap(fd: number, length: number, prot: number, flags: number, offset?: number): ArrayBuffer;
  /** Unmap now: the ArrayBuffer is detached, views in other threads trap if used. */
  munmap(ab: ArrayBuffer): void;
  msync(ab: ArrayBuffer, offset: number, length: number, flags: number): void;
  madvise(ab: ArrayBuffer, offset: number, length: number, advice: number): void;
  /** memfd_create(name, MFD_CLOEXEC), truncated to `size`; returns the fd. */
  memfdCreate(name: string, size?: number): number;
  /** Process-wide id of a mapping, usable with view() from any thread. */
  mappingId(ab: ArrayBuffer): number;
  /** A new ArrayBuffer over an existing mapping (e.g. in a worker thread). */
  view(id: number): ArrayBuffer;
  /**
   * Copy between a mapping and `buf` on a native thread, with SIGBUS/SIGSEGV
   * turned into an error (code EIO for a failed/poisoned page, EFAULT for a
   * closed range, ESHUTDOWN if the mapping is closed).
   */
  copy(id: number, offset: number, buf: Uint8Array, toMapping: boolean): Promise<void>;
  UffdRegion: UffdRegionCtor;
  uffdFeatures(): UffdFeatures;
  socketPair(): [number, number];
  closeFd(fd: number): void;
  /** dup(2) with close-on-exec: another descriptor for the same open file or socket. */
  dupFd(fd: number): number;
  /**
   * Serve an NBD connection in transmission on a native thread, over a
   * shared-memory region (native/src/nbd_serve.cc). The addon takes its own
   * copies of `fd` and `memfd`. `onEvent` gets ('log', line) and, last,
   * ('closed', stats). Returns the connection's id.
   */
  nbdServe?(opts: NativeNbdServeOptions, onEvent: (kind: 'log' | 'closed', value: string | NativeNbdStats) => void): number;
  /** Stop before the next request (`now`: at once, mid-reply). False when it had ended. */
  nbdServeStop?(id: number, now: boolean): boolean;
  /**
   * Forward between two stream sockets with splice(2) on a native thread,
   * with backpressure, half-close and a byte budget (native/src/splice.cc;
   * the relay's circuits). `onEvent` gets ('progress', counts) at most
   * every ~100 ms while bytes move and, last, ('closed', …). Returns an id.
   */
  relaySplice?(
    opts: NativeRelaySpliceOptions,
    onEvent: (kind: 'progress' | 'closed', value: NativeRelaySpliceCounts | NativeRelaySpliceClosed) => void,
  ): number;
  /** End the circuit soon ('closed' with reason 'stop'); false when it had ended already. */
  relaySpliceStop?(id: number): boolean;
  /** [bytesAB, bytesBA] moved so far (exact, read now), or undefined once 'closed' was delivered. */
  relaySpliceBytes?(id: number): [number, number] | undefined;
  /**
   * Configure /dev/nbdX (blksize, size, flags, timeout, sockets) and run
   * NBD_DO_IT on a native thread; `onExit(errno)` when it returns. The socket
   * fds are closed here (the kernel keeps its references).
   */
  nbdAttach(device: string, socketFds: number[], blockSize: number, sizeBytes: number, flags: number, timeoutSec: number, onExit: (errno: number) => void): void;
  nbdDisconnect(device: string): void;
  /** fallocate(2) on a worker thread; rejects with an errno-coded error (EOPNOTSUPP: the filesystem lacks the mode). */
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void>;
  fallocateFlags: Record<'FALLOC_FL_KEEP_SIZE' | 'FALLOC_FL_PUNCH_HOLE' | 'FALLOC_FL_ZERO_RANGE', number>;
  /** lseek(2); -1 where the kernel says ENXIO (no data/hole at or after offset). */
  lseek(fd: number, offset: number, whence: number): number;
  seekWhence: Record<'SEEK_DATA' | 'SEEK_HOLE', number>;
  nbdIoctls: Record<'NBD_SET_SOCK' | 'NBD_SET_BLKSIZE' | 'NBD_SET_SIZE' | 'NBD_DO_IT' | 'NBD_CLEAR_SOCK' | 'NBD_CLEAR_QUE' | 'NBD_SET_SIZE_BLOCKS' | 'NBD_DISCONNECT' | 'NBD_SET_TIMEOUT' | 'NBD_SET_FLAGS', number>;
  /** AES-256-GCM per segment of a chunk on Node's own OpenSSL (src/gcm_pages.cc); absent in an addon built before it. */
  GcmPages?: new (key: Uint8Array, segmentSize: number) => NativeGcmPages;
  /** Whether this Node exports the OpenSSL functions GcmPages needs. */
  gcmPagesAvailable?(): boolean;
}

/** See native/README.md, "Sealed pages". Nonce and associated data per segment: p2p/ram/seal.ts. */
export interface NativeGcmPages {
  /** Seal `plain` segment by segment into `ct` (same length) and `tags` (16 bytes a segment). */
  seal(index: number, version: number, aad: Uint8Array, plain: Uint8Array, ct: Uint8Array, tags: Uint8Array): void;
  /** Open segments [first, first + count) of `data` in place where `done` is 0; -1, or the first segment whose tag failed (left as ciphertext). */
  open(index: number, version: number, aad: Uint8Array, data: Uint8Array, tags: Uint8Array, first: number, count: number, done: Uint8Array): number;
  close(): void;
}

export class NativeUnavailableError extends Error {
  readonly code = 'ENOTSUP';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'NativeUnavailableError';
  }
}

const ADDON_PATH = fileURLToPath(new URL('./build/Release/quicmap_native.node', import.meta.url));
const FAIL_PATH = fileURLToPath(new URL('./build/BUILD_FAILED.txt', import.meta.url));

let cached: NativeBinding | undefined;
let cachedError: NativeUnavailableError | undefined;

/** The binding, or a NativeUnavailableError that says why not. */
export function loadNative(): NativeBinding {
  if (cached) return cached;
  if (cachedError) throw cachedError;
  if (process.platform !== 'linux') {
    cachedError = new NativeUnavailableError(`quicmap's native addon is Linux-only (this is ${process.platform})`);
    throw cachedError;
  }
  if (!existsSync(ADDON_PATH)) {
    let why = 'it was never built';
    try {
      why = `its build failed: ${readFileSync(FAIL_PATH, 'utf8').trim()}`;
    } catch {}
    cachedError = new NativeUnavailableError(`quicmap's native addon is missing (${ADDON_PATH}): ${why}. Build it with \`node native/build.mjs\`.`);
    throw cachedError;
  }
  try {
    cached = createRequire(import.meta.url)(ADDON_PATH) as NativeBinding;
    return cached;
  } catch (cause) {
    cachedError = new NativeUnavailableError(`quicmap's native addon failed to load: ${(cause as Error).message}. Rebuild it with \`node native/build.mjs\`.`, { cause });
    throw cachedError;
  }
}

/** True when the addon loads; never throws. */
export function nativeAvailable(): boolean {
  try {
    loadNative();
    return true;
  } catch {
    return false;
  }
}

/** Why the addon is unavailable, or undefined when it loads. */
export function nativeUnavailableReason(): string | undefined {
  try {
    loadNative();
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}
