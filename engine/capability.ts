/**
 * Capabilities: what a store can do beyond the ReadWriterAt core, as named
 * interfaces queried through the stack (`store.capability(EXTENTS)`), in the
 * way nbdkit asks each filter `can_extents` / `can_fua` and a filter answers
 * for itself or passes the question down. A layer that does not change a
 * capability's meaning passes the query through (PassThroughLayer does so
 * by default); one that does (a layer that remaps or checks writes) answers
 * with its own implementation or with `undefined`.
 *
 * A store's answers are fixed for its life, like its caps, so a layer may
 * ask once and keep the answer (the guard builds its checked wrappers once).
 *
 * Why keys and not optional methods: an optional `extents?` on every store
 * had to be copied by each layer (or was silently lost under one), and a
 * layer could not tell "the store below cannot" from "nobody asked". A key
 * names the interface once; the query travels down the stack and the answer
 * comes from whoever really implements it.
 */
import type { Extent, WriteOptions } from './rwat.ts';

/** A capability's name, typed by the interface a store answers it with. */
export interface Capability<T> {
  readonly name: string;
  /** Type-only marker tying the key to its interface; never set. */
  readonly phantom?: T;
}

function capability<T>(name: string): Capability<T> {
  return Object.freeze({ name });
}

/** Block status: how a range is allocated (NBD base:allocation). */
export interface ExtentStore {
  /** Consecutive extents covering [offset, offset + length) in order. */
  extents(offset: number, length: number): Promise<Extent[]>;
}

/** Vectored writes: scattered pieces written as one write without a gather copy. */
export interface VectoredStore {
  /** `parts` laid end to end from `offset`, as one write (same semantics and FUA as writeAt). */
  writev(parts: readonly Uint8Array[], offset: number, opts?: WriteOptions): Promise<void>;
}

/**
 * Dirty tracking at chunk granularity: which chunks changed since a mark.
 * Managed mounts push these; migration's Track/Sync/Finalize sends them.
 * Implemented by TrackingLayer (writes through the stack), LazyRegion
 * (userfaultfd write-protect: writes through its mapping) and, for memory
 * that another process writes, HashTracker behind `trackChanges`.
 */
export interface TrackingStore {
  /** Bytes per tracked chunk; chunk i covers [i*trackChunkSize, (i+1)*trackChunkSize). */
  readonly trackChunkSize: number;
  /** Start a new epoch: forget everything dirty so far; later changes count. */
  mark(): Promise<void>;
  /** Chunks changed since the mark and not cleared since (ascending). Does not clear. */
  dirty(): Promise<number[]>;
  /** Forget `chunks` (they were sent); a change after this call marks them again. */
  clear(chunks: readonly number[]): void;
}

export const EXTENTS: Capability<ExtentStore> = capability('extents');
export const VECTORED: Capability<VectoredStore> = capability('writev');
export const TRACKING: Capability<TrackingStore> = capability('tracking');

/** Answer `key` with `self` when it is one of `offered` (for stores that implement the interfaces themselves). */
export function offer<T>(key: Capability<T>, self: unknown, ...offered: Capability<unknown>[]): T | undefined {
  return offered.includes(key as Capability<unknown>) ? (self as T) : undefined;
}

/**
 * Background work on a store (a puller filling a cache, a pusher sending
 * dirty chunks): the stack starts every layer bottom-up once it is built and
 * stops them top-down before it closes, so nothing runs on a closed store.
 */
export interface Lifecycle {
  start(): Promise<void>;
  /** Finish or abandon background work; the store stays usable for foreground I/O. */
  stop(): Promise<void>;
}

export function hasLifecycle(store: object): store is Lifecycle {
  const s = store as Partial<Lifecycle>;
  return typeof s.start === 'function' && typeof s.stop === 'function';
}
