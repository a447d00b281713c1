/**
 * What both change trackers offer (LazyRegion's userfaultfd write-protect
 * tracking and HashTracker's polled hashing): the chunks that changed since
 * the previous call, so a pusher can send exactly those.
 */
export interface ChangeTracker {
  /** Bytes per chunk; chunk i covers [i*chunkSize, (i+1)*chunkSize). */
  readonly chunkSize: number;
  /** Indices of chunks changed since the previous call (ascending). */
  changedChunks(): Promise<number[]>;
}
