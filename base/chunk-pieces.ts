/**
 * How a byte range falls onto fixed-size chunks: the one loop every chunked
 * store needs (memory and directory backends), written once.
 */
export interface ChunkPiece {
  /** Chunk number. */
  index: number;
  /** Offset of the piece inside its chunk. */
  within: number;
  /** Offset of the piece inside the request. */
  at: number;
  /** Length of the piece. */
  length: number;
}

/** The pieces of [offset, offset + length) chunk by chunk, in order. */
export function chunkPieces(offset: number, length: number, chunkSize: number): ChunkPiece[] {
  const pieces: ChunkPiece[] = [];
  let at = 0;
  while (at < length) {
    const pos = offset + at;
    const index = Math.floor(pos / chunkSize);
    const within = pos - index * chunkSize;
    const n = Math.min(chunkSize - within, length - at);
    pieces.push({ index, within, at, length: n });
    at += n;
  }
  return pieces;
}
