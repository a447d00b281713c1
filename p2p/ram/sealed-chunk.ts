/**
 * SealedChunk: a chunk fetched from a storage peer and opened as it is
 * read (the PartialChunk of engine/layers/paged.ts). A read opens the
 * 4 KiB segments under it (seal.ts: a tag each) and nothing else, so a
 * cold 4 KiB read pays for 4 KiB of AES-GCM, not 64 KiB.
 *
 * A segment that fails its tag was never served: `recover` (SealedPages)
 * fetches the next replica, takes its unopened segments over, opens the
 * range from them and repairs the bad peers; only when no replica has a
 * good copy does the read fail (ChunkUnavailableError). Segments already
 * opened were authentic when opened, so they stay: every segment comes
 * from a blob of the chunk's current version.
 */
import type { PartialChunk } from '../../engine/layers/paged.ts';
import type { OpenableChunk, Problem } from './seal.ts';

export type Recover = (chunk: OpenableChunk, at: number, len: number, problem: Problem) => Promise<void>;

export class SealedChunk implements PartialChunk {
  /** A recovery under way: later reveals wait for it rather than start another. */
  private pending: Promise<void> | undefined;

  private readonly chunk: OpenableChunk;
  private readonly recover: Recover;

  constructor(chunk: OpenableChunk, recover: Recover) {
    this.chunk = chunk;
    this.recover = recover;
  }

  get data(): Uint8Array {
    return this.chunk.data;
  }

  get complete(): boolean {
    return this.chunk.complete;
  }

  reveal(at: number, len: number): true | Promise<void> {
    if (this.pending) {
      return this.pending.then(() => {
        const r = this.reveal(at, len);
        return r === true ? undefined : r;
      });
    }
    const problem = this.chunk.open(at, len);
    if (problem === undefined) return true;
    const p = this.recover(this.chunk, at, len, problem).finally(() => {
      if (this.pending === p) this.pending = undefined;
    });
    this.pending = p;
    return p;
  }

  settle(): void {
    this.chunk.settle();
  }
}
