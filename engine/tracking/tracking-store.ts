/**
 * trackChanges: a TrackingStore (engine/capability.ts) over any
 * ChangeTracker — LazyRegion's userfaultfd write-protect tracking or
 * HashTracker's polled hashing. A ChangeTracker reports each change once
 * (since its previous call); this keeps the reported chunks until the caller
 * clears them, which is what a pusher needs: `dirty()` may be called again
 * after a failed push without losing anything.
 *
 * A write after `dirty()` is reported by the tracker again (write-protect is
 * re-armed, the hash changes), so clearing a chunk that was written once
 * more in between loses nothing: the next `dirty()` has it.
 */
import type { TrackingStore } from '../capability.ts';
import type { ChangeTracker } from './tracker.ts';

export function trackChanges(tracker: ChangeTracker): TrackingStore {
  const held = new Set<number>();
  return {
    trackChunkSize: tracker.chunkSize,
    async mark() {
      await tracker.changedChunks();
      held.clear();
    },
    async dirty() {
      for (const c of await tracker.changedChunks()) held.add(c);
      return [...held].sort((a, b) => a - b);
    },
    clear(chunks) {
      for (const c of chunks) held.delete(c);
    },
  };
}
