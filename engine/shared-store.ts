/**
 * Stores that another thread of this process can serve: such a store
 * describes itself (`threadDescriptor()`), the description crosses to a
 * worker thread by postMessage, and `openSharedStore` rebuilds there an
 * equivalent store over the *same bytes* — the same shared pages, the same
 * file. The NBD server uses this to run a connection's data path on a worker
 * (engine/nbd/workers.ts) while the stack keeps its layers.
 *
 * A layer is shareable when its own behaviour is stateless per request (the
 * guard) and what it wraps is shareable. Layers that keep state between
 * requests (the chunked layer's per-chunk locks, tracking, caches, remote
 * links) are not: such a stack answers undefined and is served on the main
 * thread, as before.
 *
 * Why not a capability: capability queries pass through layers by default
 * (PassThroughLayer), and a layer a worker silently skipped would be
 * bypassed — tracking would miss the worker's writes. So every layer must
 * vouch for itself: only a store that implements `threadDescriptor` counts,
 * and nothing inherits it.
 */
import type { ReadWriterAt } from './rwat.ts';
import type { SharedMemoryDescriptor } from './backends/shared-memory.ts';

export type SharedStoreDescriptor =
  | SharedMemoryDescriptor
  | { kind: 'file'; path: string; readOnly: boolean }
  | { kind: 'guard'; maxRequest: number; readOnly: boolean; inner: SharedStoreDescriptor };

export interface ThreadShareable {
  /** How another thread reaches the same bytes, or undefined when it cannot. */
  threadDescriptor(): SharedStoreDescriptor | undefined;
}

/** The store's thread descriptor, if it has one. */
export function threadDescriptor(store: ReadWriterAt): SharedStoreDescriptor | undefined {
  const s = store as Partial<ThreadShareable>;
  return typeof s.threadDescriptor === 'function' ? s.threadDescriptor() : undefined;
}

/** Rebuild a described store in this thread. */
export async function openSharedStore(d: SharedStoreDescriptor): Promise<ReadWriterAt> {
  switch (d.kind) {
    case 'shm': {
      const { SharedMemoryBackend } = await import('./backends/shared-memory.ts');
      return SharedMemoryBackend.attach(d);
    }
    case 'file': {
      const { FileBackend } = await import('./backends/file.ts');
      return FileBackend.open(d.path, { readOnly: d.readOnly });
    }
    case 'guard': {
      const { GuardLayer } = await import('./layers/guard.ts');
      return GuardLayer.open(await openSharedStore(d.inner), { maxRequest: d.maxRequest, readOnly: d.readOnly });
    }
  }
}
