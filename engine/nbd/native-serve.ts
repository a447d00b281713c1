/**
 * Which connections the addon's native NBD loop (native/src/nbd_serve.cc)
 * can serve, and the options it is started with. A stack qualifies when it
 * is guards over a SharedMemoryBackend and nothing else: the loop reads and
 * writes the shared pages and the written map itself, as the backend does,
 * and applies the guards' checks (read-only, request size). Any other
 * shareable stack goes to a JS worker thread (workers.ts), anything else
 * stays on the main thread.
 */
import { loadNative, nativeAvailable, type NativeNbdServeOptions } from '../../native/index.ts';
import { SHARED_CHUNK, SHARED_SLAB, type SharedMemoryDescriptor } from '../backends/shared-memory.ts';
import type { SharedStoreDescriptor } from '../shared-store.ts';

export interface NativePlan {
  shm: SharedMemoryDescriptor;
  readOnly: boolean;
  /** The smallest request bound of the guards (Infinity without one). */
  maxRequest: number;
}

/** The shared-memory region under a stack of guards, if that is all the stack is. */
export function nativePlan(d: SharedStoreDescriptor): NativePlan | undefined {
  let readOnly = false;
  let maxRequest = Infinity;
  for (let at: SharedStoreDescriptor = d; ; ) {
    readOnly ||= at.readOnly;
    if (at.kind === 'guard') {
      maxRequest = Math.min(maxRequest, at.maxRequest);
      at = at.inner;
      continue;
    }
    return at.kind === 'shm' ? { shm: at, readOnly, maxRequest } : undefined;
  }
}

/** The addon is built and has the native loop. */
export function nativeServeAvailable(): boolean {
  return nativeAvailable() && typeof loadNative().nbdServe === 'function';
}

export function nativeServeOptions(
  plan: NativePlan,
  c: { fd: number; name: string; readOnly: boolean; structured: boolean; blockStatus: boolean; maxPayload: number; rest: Uint8Array },
): NativeNbdServeOptions {
  return {
    fd: c.fd,
    memfd: plan.shm.fd,
    slabs: plan.shm.slabs,
    slabSize: SHARED_SLAB,
    size: plan.shm.size,
    written: new Uint8Array(plan.shm.written),
    chunk: SHARED_CHUNK,
    readOnly: plan.readOnly || c.readOnly,
    structured: c.structured,
    blockStatus: c.blockStatus,
    maxPayload: Math.min(plan.maxRequest, c.maxPayload),
    rest: c.rest,
    name: c.name,
  };
}
