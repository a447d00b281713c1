/**
 * Access traces: the first-touch order of a workload, recorded so a later
 * mount can pull in that order (`--record-trace FILE`, then
 * `--pull-order trace:FILE`). The thesis proposes generating pull
 * heuristics from recorded access patterns; this is the simplest learned
 * heuristic that works: replay the order in which the working set was
 * first needed.
 *
 * File format (text, one record per line, so traces can be edited, merged
 * or produced by other tools):
 *   # quicmap access trace v1 chunk-size=65536 chunks=4096
 *   17
 *   18
 *   4000
 *   ...
 * Each line is a chunk index, in first-touch order; `#` lines are comments.
 * A trace recorded at another chunk size is rescaled by byte offset.
 */
import { QuicmapError } from '../../base/errors.ts';

/** Sans-IO recorder: remembers each chunk's first touch once. */
export class TraceRecorder {
  readonly chunkSize: number;
  private readonly seen: Uint8Array;
  private readonly order: number[] = [];
  private flushedUpTo = 0;

  constructor(chunks: number, chunkSize: number) {
    this.chunkSize = chunkSize;
    this.seen = new Uint8Array(chunks);
  }

  get chunks(): number {
    return this.seen.length;
  }

  /** A workload touched chunk i (read or write). True when this was its first touch. */
  touch(i: number): boolean {
    if (i < 0 || i >= this.seen.length || this.seen[i]) return false;
    this.seen[i] = 1;
    this.order.push(i);
    return true;
  }

  /** Everything recorded so far. */
  get touched(): readonly number[] {
    return this.order;
  }

  header(): string {
    return `# quicmap access trace v1 chunk-size=${this.chunkSize} chunks=${this.seen.length}\n`;
  }

  /** Lines recorded since the previous call (for an appending file sink). */
  takeNewLines(): string {
    const lines = this.order.slice(this.flushedUpTo).map((i) => `${i}\n`).join('');
    this.flushedUpTo = this.order.length;
    return lines;
  }
}

export interface ParsedTrace {
  chunkSize: number | undefined;
  chunks: number[];
}

export function parseTrace(text: string, source = 'trace'): ParsedTrace {
  let chunkSize: number | undefined;
  const chunks: number[] = [];
  const lines = text.split('\n');
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n]!.trim();
    if (line === '') continue;
    if (line.startsWith('#')) {
      const m = /chunk-size=(\d+)/.exec(line);
      if (m && chunkSize === undefined) chunkSize = Number(m[1]);
      continue;
    }
    if (!/^\d+$/.test(line)) throw new QuicmapError('EINVAL', `${source}: line ${n + 1} is not a chunk index: "${line.slice(0, 40)}"`);
    chunks.push(Number(line));
  }
  return { chunkSize, chunks };
}

/** The trace's chunks in units of `chunkSize` (first touches only, order kept). */
export function rescaleTrace(trace: ParsedTrace, chunkSize: number): number[] {
  const from = trace.chunkSize ?? chunkSize;
  if (from === chunkSize) return trace.chunks;
  const out: number[] = [];
  const seen = new Set<number>();
  for (const c of trace.chunks) {
    const first = Math.floor((c * from) / chunkSize);
    const last = Math.floor(((c + 1) * from - 1) / chunkSize);
    for (let i = first; i <= last; i++) if (!seen.has(i)) (seen.add(i), out.push(i));
  }
  return out;
}
