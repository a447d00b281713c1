/**
 * Control messages (HELLO, WELCOME, ERROR) as msgpack bodies behind the
 * common frame header, plus the functions that build complete frames for
 * every frame type. Bodies from the peer are untrusted: each decoder checks
 * every field's type and range and turns anything else into a ProtocolError,
 * so random bytes never reach the rest of the engine as half-valid objects.
 *
 * A frame is returned as a list of buffers — header first, then the payload
 * as the caller's own buffer — for `ByteStream.write([...])`, which sends
 * them without concatenating (no copy of bulk data).
 */
import { Packr } from 'msgpackr';
import { ProtocolError, type ErrorCode } from '../../base/errors.ts';
import { Flag, FrameType, codeOfStatus, encodeHeader, statusOf, type Frame } from './frame.ts';

// Records (msgpackr's shared structures) are off: bodies are small, rare and
// come from peers we do not control; plain maps keep decoding stateless.
const packr = new Packr({ useRecords: false, int64AsType: 'number', mapsAsObjects: true, moreTypes: false });

export const PROTOCOL_VERSION = 1;
/** Oldest protocol version this build still speaks. */
export const MIN_PROTOCOL_VERSION = 1;

/** Limits every control body stays under; a HELLO carries a ticket (a few hundred bytes). */
export const MAX_CONTROL_BODY = 16 * 1024;

/** Optional features a side may support; the session uses the intersection. */
export const KNOWN_CAPS = ['trim', 'zero', 'fua', 'ping', 'call', 'resume', 'large-call'] as const;
export type Capability = (typeof KNOWN_CAPS)[number];

export interface Limits {
  /** Largest data payload (and request length) in bytes. */
  maxFrame: number;
  /** Requests one side may have outstanding at once. */
  maxInFlight: number;
}

/** Sizes of the resume credentials (p2p/protocol/session-table.ts). */
export const SESSION_ID_BYTES = 16;
export const SESSION_TOKEN_BYTES = 32;

/**
 * HELLO `resume`: take back a session whose link broke. `received` is the
 * highest reply sequence number the client has received of it (0: none), so
 * the sharer replays only the replies after it.
 */
export interface ResumeRequest {
  session: Uint8Array;
  token: Uint8Array;
  received: number;
}

/**
 * WELCOME `session`, present when both sides offered the `resume` cap: the
 * session's credentials (kept by the client to resume it) and, when this
 * HELLO asked to resume, whether it was resumed. `received` is the highest
 * request id of the session the sharer has received (0: none): the client
 * sends again only requests above it; those at or below it are answered
 * from the sharer's replay log. `window` is the most replies the sharer
 * keeps unacknowledged (the client acks well before). A refused resume
 * carries the typed reason and a fresh session.
 */
export interface SessionGrant {
  session: Uint8Array;
  token: Uint8Array;
  resumed: boolean;
  received: number;
  window: number;
  refused?: { code: ErrorCode; message: string };
}

export interface HelloBody {
  /** Protocol versions the client speaks, inclusive. */
  minVersion: number;
  maxVersion: number;
  limits: Limits;
  caps: string[];
  /** The signed grant (ticket body) that authorises this client. */
  grant: Uint8Array;
  /** Free text for logs, e.g. "quicmap 0.1.0". */
  agent: string;
  /** Resume this session instead of opening a new one (with the `resume` cap). */
  resume?: ResumeRequest;
}

export interface WelcomeBody {
  version: number;
  /** Negotiated: the minimum of both sides. */
  limits: Limits;
  caps: string[];
  /** The region manifest and the sharer's signature over it. */
  manifest: Uint8Array;
  manifestSig: Uint8Array;
  /** With the `resume` cap: the session (see SessionGrant). */
  session?: SessionGrant;
}

export interface ErrorBody {
  code: ErrorCode;
  message: string;
}

function pack(value: unknown): Uint8Array {
  return packr.pack(value);
}

export function unpackBody(payload: Uint8Array, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = packr.unpack(payload);
  } catch (e) {
    throw new ProtocolError(`${what}: body is not valid msgpack (${(e as Error).message})`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v) || v instanceof Uint8Array) {
    throw new ProtocolError(`${what}: body is not a map`);
  }
  return v as Record<string, unknown>;
}

function int(o: Record<string, unknown>, key: string, what: string, min: number, max: number): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new ProtocolError(`${what}: field "${key}" must be an integer in [${min}, ${max}]`);
  }
  return v;
}

function str(o: Record<string, unknown>, key: string, what: string, maxLen = 1024): string {
  const v = o[key];
  if (typeof v !== 'string' || v.length > maxLen) throw new ProtocolError(`${what}: field "${key}" must be a string of at most ${maxLen} characters`);
  return v;
}

function bytes(o: Record<string, unknown>, key: string, what: string, maxLen: number): Uint8Array {
  const v = o[key];
  if (!(v instanceof Uint8Array) || v.length > maxLen) throw new ProtocolError(`${what}: field "${key}" must be at most ${maxLen} bytes`);
  return v;
}

function strings(o: Record<string, unknown>, key: string, what: string): string[] {
  const v = o[key];
  if (!Array.isArray(v) || v.length > 64 || !v.every((s) => typeof s === 'string' && s.length <= 64)) {
    throw new ProtocolError(`${what}: field "${key}" must be a short list of short strings`);
  }
  return v as string[];
}

function limits(o: Record<string, unknown>, what: string): Limits {
  const l = o.limits;
  if (l === null || typeof l !== 'object' || Array.isArray(l)) throw new ProtocolError(`${what}: field "limits" must be a map`);
  const m = l as Record<string, unknown>;
  // 4 KiB is the smallest sensible data frame; 2^32-1 the largest a header can declare.
  return { maxFrame: int(m, 'maxFrame', what, 4096, 0xffff_ffff), maxInFlight: int(m, 'maxInFlight', what, 1, 65536) };
}

// ---- HELLO -------------------------------------------------------------

export function encodeHello(body: HelloBody): Uint8Array[] {
  return controlFrame(FrameType.HELLO, 0, pack(body));
}

export function decodeHello(payload: Uint8Array): HelloBody {
  const what = 'HELLO';
  const o = unpackBody(payload, what);
  const minVersion = int(o, 'minVersion', what, 0, 0xffff);
  const maxVersion = int(o, 'maxVersion', what, minVersion, 0xffff);
  return {
    minVersion,
    maxVersion,
    limits: limits(o, what),
    caps: strings(o, 'caps', what),
    grant: bytes(o, 'grant', what, 4096),
    agent: o.agent === undefined ? '' : str(o, 'agent', what, 200),
    ...(o.resume === undefined || o.resume === null ? {} : { resume: resumeRequest(o.resume, what) }),
  };
}

function map(v: unknown, what: string, key: string): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v) || v instanceof Uint8Array) throw new ProtocolError(`${what}: field "${key}" must be a map`);
  return v as Record<string, unknown>;
}

function exactBytes(o: Record<string, unknown>, key: string, what: string, len: number): Uint8Array {
  const v = o[key];
  if (!(v instanceof Uint8Array) || v.length !== len) throw new ProtocolError(`${what}: field "${key}" must be ${len} bytes`);
  return v;
}

function resumeRequest(v: unknown, what: string): ResumeRequest {
  const m = map(v, what, 'resume');
  return {
    session: exactBytes(m, 'session', `${what} resume`, SESSION_ID_BYTES),
    token: exactBytes(m, 'token', `${what} resume`, SESSION_TOKEN_BYTES),
    received: int(m, 'received', `${what} resume`, 0, Number.MAX_SAFE_INTEGER),
  };
}

const ERROR_CODES = new Set<string>(['EINVAL', 'EPERM', 'EACCES', 'EIO', 'ENOSPC', 'EOVERFLOW', 'ENOTSUP', 'ESHUTDOWN', 'ETIMEDOUT', 'EPROTO', 'EBUSY']);

function sessionGrant(v: unknown, what: string): SessionGrant {
  const w = `${what} session`;
  const m = map(v, what, 'session');
  if (typeof m.resumed !== 'boolean') throw new ProtocolError(`${w}: field "resumed" must be a boolean`);
  const out: SessionGrant = {
    session: exactBytes(m, 'session', w, SESSION_ID_BYTES),
    token: exactBytes(m, 'token', w, SESSION_TOKEN_BYTES),
    resumed: m.resumed,
    received: int(m, 'received', w, 0, 0xffff_ffff),
    window: int(m, 'window', w, 1, 1 << 20),
  };
  if (m.refused !== undefined && m.refused !== null) {
    const r = map(m.refused, w, 'refused');
    const code = str(r, 'code', w, 16);
    out.refused = { code: (ERROR_CODES.has(code) ? code : 'EIO') as ErrorCode, message: str(r, 'message', w, 1000) };
  }
  return out;
}

// ---- WELCOME -----------------------------------------------------------

export function encodeWelcome(body: WelcomeBody): Uint8Array[] {
  return controlFrame(FrameType.WELCOME, 0, pack(body));
}

export function decodeWelcome(payload: Uint8Array): WelcomeBody {
  const what = 'WELCOME';
  const o = unpackBody(payload, what);
  return {
    version: int(o, 'version', what, 0, 0xffff),
    limits: limits(o, what),
    caps: strings(o, 'caps', what),
    manifest: bytes(o, 'manifest', what, 4096),
    manifestSig: bytes(o, 'manifestSig', what, 64),
    ...(o.session === undefined || o.session === null ? {} : { session: sessionGrant(o.session, what) }),
  };
}

// ---- ERROR -------------------------------------------------------------

/** An error answer to request `id` (0: the connection as a whole, e.g. a refused grant). */
export function encodeError(id: number, code: ErrorCode, message: string): Uint8Array[] {
  // Messages are for humans; cap them so an error frame stays a control frame.
  return controlFrame(FrameType.ERROR, id, pack({ code, message: message.slice(0, 1000) }), statusOf(code));
}

export function decodeError(frame: Frame): ErrorBody {
  // The status in the header is authoritative; the body adds the message.
  const code = codeOfStatus(frame.status);
  let message = '';
  try {
    const o = unpackBody(frame.payload, 'ERROR');
    if (typeof o.message === 'string') message = o.message.slice(0, 1000);
  } catch {
    message = '(unreadable error body)';
  }
  return { code, message };
}

function controlFrame(type: FrameType, id: number, body: Uint8Array, status = 0): Uint8Array[] {
  if (body.length > MAX_CONTROL_BODY) throw new ProtocolError(`control body of ${body.length} bytes exceeds ${MAX_CONTROL_BODY}`);
  return [encodeHeader({ type, flags: 0, status, id, offset: 0, length: 0, payloadLength: body.length }), body];
}

// ---- data requests and replies ----------------------------------------

export function encodeRead(id: number, offset: number, length: number): Uint8Array[] {
  return [encodeHeader({ type: FrameType.READ, flags: 0, status: 0, id, offset, length, payloadLength: 0 })];
}

/** WRITE: the header and the caller's data buffer, sent as two buffers. */
export function encodeWrite(id: number, offset: number, data: Uint8Array, fua = false): Uint8Array[] {
  const h = encodeHeader({ type: FrameType.WRITE, flags: fua ? Flag.FUA : 0, status: 0, id, offset, length: data.length, payloadLength: data.length });
  return [h, data];
}

export function encodeFlush(id: number): Uint8Array[] {
  return [encodeHeader({ type: FrameType.FLUSH, flags: 0, status: 0, id, offset: 0, length: 0, payloadLength: 0 })];
}

export function encodeTrim(id: number, offset: number, length: number, fua = false): Uint8Array[] {
  return [encodeHeader({ type: FrameType.TRIM, flags: fua ? Flag.FUA : 0, status: 0, id, offset, length, payloadLength: 0 })];
}

export function encodeZero(id: number, offset: number, length: number, opts: { fua?: boolean; noHole?: boolean } = {}): Uint8Array[] {
  const flags = (opts.fua ? Flag.FUA : 0) | (opts.noHole ? Flag.NO_HOLE : 0);
  return [encodeHeader({ type: FrameType.ZERO, flags, status: 0, id, offset, length, payloadLength: 0 })];
}

/**
 * CALL: a named control operation riding on the request table (its id,
 * deadline and in-flight bound) — change feeds (DirtyList), migration's
 * suspend/commit, chunk-hash lists, the chunks of encrypted RAM. The body is
 * msgpack `{m: method, a: args}`; the answer is OK with a msgpack body, or
 * ERROR. A body is at most MAX_CONTROL_BODY, or the negotiated maxFrame when
 * both sides offered `large-call` (callBodyLimit).
 */
export function encodeCall(id: number, method: string, args: unknown): Uint8Array[] {
  return controlFrame(FrameType.CALL, id, pack({ m: method, a: args ?? null }));
}

/** The largest CALL body a session takes: the negotiated maxFrame with `large-call`, else a control body's limit. */
export function callBodyLimit(limits: Limits, caps: ReadonlySet<string>): number {
  return caps.has('large-call') ? Math.max(MAX_CONTROL_BODY, limits.maxFrame) : MAX_CONTROL_BODY;
}

/** A CALL's body, packed (the caller checks it against callBodyLimit before sending). */
export function packCall(method: string, args: unknown): Uint8Array {
  return pack({ m: method, a: args ?? null });
}

const EMPTY_BYTES = new Uint8Array(0);

/**
 * A CALL's body as buffers for the frame. When the last field of `args` is
 * a large byte string (chunk.put's data), it is not copied into the packed
 * buffer: the body is the packed rest, a msgpack bin 32 header and the
 * caller's bytes — the same msgpack value as `packCall` gives, decoded the
 * same way. (The packed rest must end in that field's empty bin 8, c4 00;
 * if msgpackr ever packs it otherwise, the whole body is packed.)
 */
export function packCallParts(method: string, args: unknown): Uint8Array[] {
  if (args !== null && typeof args === 'object' && !Array.isArray(args) && !(args instanceof Uint8Array)) {
    const keys = Object.keys(args);
    const last = keys[keys.length - 1];
    const bytes = last === undefined ? undefined : (args as Record<string, unknown>)[last];
    if (bytes instanceof Uint8Array && bytes.length >= 4096) {
      const rest = pack({ m: method, a: { ...(args as Record<string, unknown>), [last!]: EMPTY_BYTES } });
      if (rest.length >= 2 && rest[rest.length - 2] === 0xc4 && rest[rest.length - 1] === 0) {
        const h = new Uint8Array(5);
        h[0] = 0xc6;
        new DataView(h.buffer).setUint32(1, bytes.length);
        return [rest.subarray(0, rest.length - 2), h, bytes];
      }
    }
  }
  return [packCall(method, args)];
}

/** The CALL frame of a packed body, given as buffers (sent as they are: not copied). */
export function callFrame(id: number, body: Uint8Array | Uint8Array[]): Uint8Array[] {
  const parts = body instanceof Uint8Array ? [body] : body;
  let len = 0;
  for (const p of parts) len += p.length;
  return [encodeHeader({ type: FrameType.CALL, flags: 0, status: 0, id, offset: 0, length: 0, payloadLength: len }), ...parts];
}

export interface CallBody {
  method: string;
  args: unknown;
}

export function decodeCall(payload: Uint8Array): CallBody {
  const o = unpackBody(payload, 'CALL');
  return { method: str(o, 'm', 'CALL', 64), args: o.a ?? null };
}

/** A CALL's answer body. */
export function packReply(value: unknown): Uint8Array {
  return pack(value ?? null);
}

/**
 * A CALL's answer body as buffers for the frame: a large byte string (a
 * sealed chunk) goes as a msgpack bin 32 header followed by the caller's own
 * bytes, not copied into a packed buffer; anything else is packed.
 */
export function packReplyParts(value: unknown): Uint8Array[] {
  if (value instanceof Uint8Array && value.length >= 4096) {
    const h = new Uint8Array(5);
    h[0] = 0xc6;
    new DataView(h.buffer).setUint32(1, value.length);
    return [h, value];
  }
  return [packReply(value)];
}

export function unpackReply(payload: Uint8Array, what: string): unknown {
  if (payload.length === 0) return null;
  try {
    return packr.unpack(payload);
  } catch (e) {
    throw new ProtocolError(`${what}: reply is not valid msgpack (${(e as Error).message})`);
  }
}

/** ACK (resumable sessions): every reply up to sequence `received` has arrived. */
export function encodeAck(received: number): Uint8Array[] {
  return [encodeHeader({ type: FrameType.ACK, flags: 0, status: 0, id: 0, offset: received, length: 0, payloadLength: 0 })];
}

export function encodePing(id: number): Uint8Array[] {
  return [encodeHeader({ type: FrameType.PING, flags: 0, status: 0, id, offset: 0, length: 0, payloadLength: 0 })];
}

/** A success reply whose payload is several buffers (sent as they are: a CALL answer from packReplyParts). */
export function encodeOkParts(id: number, parts: Uint8Array[]): Uint8Array[] {
  let len = 0;
  for (const p of parts) len += p.length;
  return [encodeHeader({ type: FrameType.OK, flags: 0, status: 0, id, offset: 0, length: len, payloadLength: len }), ...parts.filter((p) => p.length > 0)];
}

/** A success reply; `data` is the READ payload (sent as its own buffer), absent otherwise. */
export function encodeOk(id: number, data?: Uint8Array): Uint8Array[] {
  const len = data?.length ?? 0;
  const h = encodeHeader({ type: FrameType.OK, flags: 0, status: 0, id, offset: 0, length: len, payloadLength: len });
  return data && len > 0 ? [h, data] : [h];
}
