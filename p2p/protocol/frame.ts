/**
 * Frame layout of the quicmap wire protocol. Every frame is a fixed 24-byte
 * header, read and written with a DataView (no msgpack on the data path),
 * followed by `payloadLength` bytes: raw data for WRITE requests and READ
 * replies, a msgpack body for control frames (HELLO, WELCOME, ERROR).
 *
 *   0  u8   type
 *   1  u8   flags          FUA, NO_HOLE
 *   2  u16  status         0 = ok; an error code on ERROR frames
 *   4  u32  request id     0 for connection-level frames (hello, refusal)
 *   8  u64  offset         big-endian, below 2^53; on OK/ERROR replies of a
 *                          resumable session: the reply's sequence number;
 *                          on ACK: the highest reply sequence received
 *   16 u32  length         bytes the operation covers (read/trim/zero/write)
 *   20 u32  payloadLength  bytes that follow this header
 *
 * Keeping `length` apart from `payloadLength` lets the decoder judge the
 * payload size before it buffers anything, whatever the frame type.
 */
import type { ErrorCode } from '../../base/errors.ts';

export const HEADER_SIZE = 24;

export const FrameType = {
  HELLO: 1,
  WELCOME: 2,
  ERROR: 3,
  READ: 16,
  WRITE: 17,
  FLUSH: 18,
  TRIM: 19,
  ZERO: 20,
  PING: 21,
  /** A named control call (msgpack body {m, a}); answered by OK with a msgpack body. */
  CALL: 22,
  /**
   * Client → sharer on a resumable session: "I have received your replies
   * up to sequence number `offset`" (cumulative), so the sharer may drop them
   * from its replay log. No payload, id 0.
   */
  ACK: 23,
  OK: 32,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

const KNOWN_TYPES = new Set<number>(Object.values(FrameType));
export function isFrameType(t: number): t is FrameType {
  return KNOWN_TYPES.has(t);
}

/** Frames that never carry a payload: a declared payload on them is a protocol error. */
export const NO_PAYLOAD_TYPES = new Set<number>([FrameType.READ, FrameType.FLUSH, FrameType.TRIM, FrameType.ZERO, FrameType.PING, FrameType.ACK]);
/** Frames whose payload is a msgpack body (bounded by the control limit, not the data limit). */
export const CONTROL_TYPES = new Set<number>([FrameType.HELLO, FrameType.WELCOME, FrameType.ERROR, FrameType.CALL]);

export const Flag = {
  FUA: 1,
  NO_HOLE: 2,
} as const;
export const KNOWN_FLAGS = Flag.FUA | Flag.NO_HOLE;

/** Largest offset a frame may name: offsets stay exact as JS numbers. */
export const MAX_OFFSET = Number.MAX_SAFE_INTEGER;
export const MAX_U32 = 0xffff_ffff;

export interface FrameHeader {
  type: FrameType;
  flags: number;
  status: number;
  id: number;
  offset: number;
  length: number;
  payloadLength: number;
}

export interface Frame extends FrameHeader {
  /** Exactly payloadLength bytes; a view into the received chunk when it arrived whole. */
  payload: Uint8Array;
  /** The decoder's `gather` buffer `payload` lies in, when it was gathered into one. */
  gathered?: Uint8Array;
}

/** Write a header into `out` (at least HEADER_SIZE bytes). */
export function writeHeader(out: Uint8Array, h: FrameHeader): void {
  const v = new DataView(out.buffer, out.byteOffset, HEADER_SIZE);
  v.setUint8(0, h.type);
  v.setUint8(1, h.flags);
  v.setUint16(2, h.status);
  v.setUint32(4, h.id);
  // Split the 53-bit offset into two u32 halves: faster than BigInt.
  v.setUint32(8, Math.floor(h.offset / 0x1_0000_0000));
  v.setUint32(12, h.offset >>> 0);
  v.setUint32(16, h.length);
  v.setUint32(20, h.payloadLength);
}

export function encodeHeader(h: FrameHeader): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE);
  writeHeader(out, h);
  return out;
}

/** Read a header; no validation beyond the layout (the decoder judges it). */
export function readHeader(bytes: Uint8Array): FrameHeader & { offsetHigh: number } {
  const v = new DataView(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
  const hi = v.getUint32(8);
  const lo = v.getUint32(12);
  return {
    type: v.getUint8(0) as FrameType,
    flags: v.getUint8(1),
    status: v.getUint16(2),
    id: v.getUint32(4),
    offsetHigh: hi,
    offset: hi * 0x1_0000_0000 + lo,
    length: v.getUint32(16),
    payloadLength: v.getUint32(20),
  };
}

/**
 * Error codes on the wire. The numbers are part of the protocol: never
 * renumber, only append. Unknown numbers from a newer peer read as EIO.
 */
const STATUS_OF: Record<ErrorCode, number> = {
  EINVAL: 1,
  EPERM: 2,
  EACCES: 3,
  EIO: 4,
  ENOSPC: 5,
  EOVERFLOW: 6,
  ENOTSUP: 7,
  ESHUTDOWN: 8,
  ETIMEDOUT: 9,
  EPROTO: 10,
  EBUSY: 11,
};
const CODE_OF = new Map<number, ErrorCode>(Object.entries(STATUS_OF).map(([k, v]) => [v, k as ErrorCode]));

export function statusOf(code: ErrorCode): number {
  return STATUS_OF[code];
}

export function codeOfStatus(status: number): ErrorCode {
  return CODE_OF.get(status) ?? 'EIO';
}

export function frameTypeName(t: number): string {
  for (const [k, v] of Object.entries(FrameType)) if (v === t) return k;
  return `type ${t}`;
}
