/**
 * Reply encoding for the transmission phase, sans-IO: simple replies, and
 * structured reply chunks once the client negotiated them. Each function
 * writes into a caller-provided buffer or returns a small new one; the
 * connection decides which to use.
 */
import {
  REPLY_FLAG_DONE,
  REPLY_TYPE_BLOCK_STATUS,
  REPLY_TYPE_ERROR,
  REPLY_TYPE_NONE,
  REPLY_TYPE_OFFSET_DATA,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
} from './constants.ts';

export interface Handle {
  handleHi: number;
  handleLo: number;
}

/** Bytes a successful READ reply puts before the data. */
export function readReplyHeaderSize(structured: boolean): number {
  return structured ? STRUCTURED_REPLY_HEADER_SIZE + 8 : SIMPLE_REPLY_SIZE;
}

function simpleHeader(buf: Buffer, h: Handle, errno: number): void {
  buf.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  buf.writeUInt32BE(errno, 4);
  buf.writeUInt32BE(h.handleHi, 8);
  buf.writeUInt32BE(h.handleLo, 12);
}

function chunkHeader(buf: Buffer, h: Handle, type: number, payloadLength: number): void {
  buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  buf.writeUInt16BE(REPLY_FLAG_DONE, 4);
  buf.writeUInt16BE(type, 6);
  buf.writeUInt32BE(h.handleHi, 8);
  buf.writeUInt32BE(h.handleLo, 12);
  buf.writeUInt32BE(payloadLength, 16);
}

/**
 * Fill in the header of a READ reply whose data already sits at
 * `readReplyHeaderSize(structured)` in `buf` (one OFFSET_DATA chunk when
 * structured).
 */
export function writeReadReplyHeader(buf: Buffer, h: Handle, structured: boolean, offset: number, length: number): void {
  if (!structured) return simpleHeader(buf, h, 0);
  chunkHeader(buf, h, REPLY_TYPE_OFFSET_DATA, 8 + length);
  buf.writeUInt32BE(Math.floor(offset / 0x100000000), STRUCTURED_REPLY_HEADER_SIZE);
  buf.writeUInt32BE(offset >>> 0, STRUCTURED_REPLY_HEADER_SIZE + 4);
}

/** Success without data. */
export function okReply(h: Handle, structured: boolean): Buffer {
  const b = Buffer.allocUnsafe(structured ? STRUCTURED_REPLY_HEADER_SIZE : SIMPLE_REPLY_SIZE);
  if (structured) chunkHeader(b, h, REPLY_TYPE_NONE, 0);
  else simpleHeader(b, h, 0);
  return b;
}

/** An error; structured replies carry a short message for the client's logs. */
export function errorReply(h: Handle, structured: boolean, errno: number, message = ''): Buffer {
  if (!structured) {
    const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
    simpleHeader(b, h, errno);
    return b;
  }
  const msg = Buffer.from(message.slice(0, 200));
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + 6 + msg.length);
  chunkHeader(b, h, REPLY_TYPE_ERROR, 6 + msg.length);
  b.writeUInt32BE(errno, STRUCTURED_REPLY_HEADER_SIZE);
  b.writeUInt16BE(msg.length, STRUCTURED_REPLY_HEADER_SIZE + 4);
  msg.copy(b, STRUCTURED_REPLY_HEADER_SIZE + 6);
  return b;
}

/** A BLOCK_STATUS reply: one chunk with the context id and (length, flags) descriptors. */
export function blockStatusReply(h: Handle, contextId: number, extents: ReadonlyArray<{ length: number; flags: number }>): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + 4 + 8 * extents.length);
  chunkHeader(b, h, REPLY_TYPE_BLOCK_STATUS, 4 + 8 * extents.length);
  b.writeUInt32BE(contextId, STRUCTURED_REPLY_HEADER_SIZE);
  let at = STRUCTURED_REPLY_HEADER_SIZE + 4;
  for (const e of extents) {
    b.writeUInt32BE(e.length, at);
    b.writeUInt32BE(e.flags, at + 4);
    at += 8;
  }
  return b;
}
