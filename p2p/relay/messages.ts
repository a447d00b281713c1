/**
 * The relay's control protocol and its typed refusals.
 *
 * Control messages travel on one stream of an authenticated connection
 * between a peer and the relay (same handshake as the TCP transport), as
 * u32 BE length + msgpack object, at most MAX_CONTROL_MESSAGE bytes:
 *
 *   peer -> relay  { t: 'reserve', rid }                 keep a slot for me
 *                  { t: 'connect', rid, target }         open a circuit to target
 *   relay -> peer  { t: 'reserved', rid, expiresAt, limits }
 *                  { t: 'circuit', rid, id, token, limits }
 *                  { t: 'refused', rid, refusal, message }
 *                  { t: 'incoming', id, token, from }    (to the reserved peer)
 *                  { t: 'closed', id, refusal, message } (a circuit ended by the relay)
 *
 * Hole punching (DCUtR-style: the relay coordinates, then both peers open
 * a TCP connection to each other at once from fixed ports):
 *
 *   dialer -> relay  { t: 'punch', rid, target, port }
 *   relay -> target  { t: 'punch', id, from, ip, port }   ip: the dialer as the relay sees it
 *   target -> relay  { t: 'punch-answer', id, port }       (port 0: declined)
 *   relay -> dialer  { t: 'punch-go', rid, ip, port }      ip: the target as the relay sees it
 *
 * Over QUIC (quic: true) the addresses are UDP ones: each peer first has the
 * relay observe the NAT mapping of its QUIC socket. It sends
 *
 *   peer -> relay    { t: 'observe', rid, token }          (16 random bytes)
 *
 * and, from that socket, punch datagrams carrying the token to the relay's
 * UDP port (the same number as its TCP port); the relay answers on the
 * control connection, never over UDP (so it reflects nothing), and takes
 * the datagram only from the control connection's IP address (so a token
 * cannot bind a spoofed source to a peer):
 *
 *   relay -> peer    { t: 'observed', rid, ip, port }      the socket as the relay sees it
 *
 * and keeps that address for the control connection. A punch with quic: true
 * carries the dialer's observed UDP address to the target, and the target's
 * (observed before it answers) back to the dialer; the port in the request
 * and the answer is then unused (the answer's 0 still declines).
 *
 * A circuit's bytes do not go over the control connection: each side opens
 * a plain TCP connection to the relay, sends CIRCUIT_MAGIC and its 16-byte
 * token, and the relay splices the two sockets (counting bytes). The peers
 * run their own end-to-end handshake over the spliced bytes, so the relay
 * sees ciphertext only and cannot pose as either peer.
 */
import { Packr } from 'msgpackr';
import { QuicmapError, type ErrorCode } from '../../base/errors.ts';

const packr = new Packr({ useRecords: false, int64AsType: 'number', mapsAsObjects: true, moreTypes: false });

export const MAX_CONTROL_MESSAGE = 4096;
/** First bytes of a circuit socket (a control connection starts with a TLS ClientHello instead). */
export const CIRCUIT_MAGIC = Buffer.from('QMCIRC01', 'latin1');
export const TOKEN_BYTES = 16;

export type Refusal =
  | 'RESERVATION_REFUSED' // the relay holds its maximum of reservations
  | 'RESOURCE_LIMIT_EXCEEDED' // too many circuits for this peer (or in all)
  | 'PERMISSION_DENIED' // this peer may not use the relay
  | 'NO_RESERVATION' // the target holds no reservation here
  | 'CONNECTION_FAILED' // the target did not take the circuit in time
  | 'CIRCUIT_BYTE_LIMIT' // the circuit carried its byte quota
  | 'CIRCUIT_TIME_LIMIT'; // the circuit lasted its maximum duration

const REFUSAL_CODES: Record<Refusal, ErrorCode> = {
  RESERVATION_REFUSED: 'EBUSY',
  RESOURCE_LIMIT_EXCEEDED: 'EBUSY',
  PERMISSION_DENIED: 'EACCES',
  NO_RESERVATION: 'EIO',
  CONNECTION_FAILED: 'EIO',
  CIRCUIT_BYTE_LIMIT: 'ESHUTDOWN',
  CIRCUIT_TIME_LIMIT: 'ESHUTDOWN',
};

export function isRefusal(x: unknown): x is Refusal {
  return typeof x === 'string' && Object.hasOwn(REFUSAL_CODES, x);
}

/** A refusal by a relay, as a QuicmapError (code per kind) that still names the kind. */
export class RelayRefusal extends QuicmapError {
  readonly refusal: Refusal;
  constructor(refusal: Refusal, message: string) {
    super(REFUSAL_CODES[refusal], `relay: ${refusal.toLowerCase().replaceAll('_', ' ')}: ${message}`);
    this.refusal = refusal;
  }
}

export interface CircuitLimits {
  /** Bytes both directions together may carry; 0: no limit. */
  bytes: number;
  /** Milliseconds a circuit may last; 0: no limit. */
  durationMs: number;
}

/**
 * `tag` (0–32 bytes) names a service of the reserved peer: a node sharing
 * several regions holds one reservation per region (tag = region id) and a
 * circuit asks for the one it wants. Empty: the peer's only one.
 */
export type ClientMessage =
  | { t: 'reserve'; rid: number; tag: Uint8Array }
  | { t: 'connect'; rid: number; target: Uint8Array; tag: Uint8Array }
  | { t: 'punch'; rid: number; target: Uint8Array; port: number; tag: Uint8Array; quic: boolean }
  | { t: 'punch-answer'; id: number; port: number }
  | { t: 'observe'; rid: number; token: Uint8Array };

export type RelayMessage =
  | { t: 'reserved'; rid: number; expiresAt: number; limits: CircuitLimits }
  | { t: 'circuit'; rid: number; id: number; token: Uint8Array; limits: CircuitLimits }
  | { t: 'refused'; rid: number; refusal: Refusal; message: string }
  | { t: 'incoming'; id: number; token: Uint8Array; from: Uint8Array }
  | { t: 'closed'; id: number; refusal: Refusal; message: string }
  | { t: 'punch'; id: number; from: Uint8Array; ip: string; port: number; quic: boolean }
  | { t: 'punch-go'; rid: number; ip: string; port: number }
  | { t: 'observed'; rid: number; ip: string; port: number };

export function encodeControl(m: ClientMessage | RelayMessage): Buffer {
  const body: Buffer = packr.pack(m);
  if (body.length > MAX_CONTROL_MESSAGE) throw new QuicmapError('EOVERFLOW', `relay control message of ${body.length} bytes`);
  const out = Buffer.allocUnsafe(4 + body.length);
  out.writeUInt32BE(body.length, 0);
  body.copy(out, 4);
  return out;
}

function bytes(x: unknown, n: number): Uint8Array {
  if (!(x instanceof Uint8Array) || x.length !== n) throw new QuicmapError('EPROTO', 'relay: malformed control message');
  return Uint8Array.from(x);
}

function int(x: unknown): number {
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) throw new QuicmapError('EPROTO', 'relay: malformed control message');
  return x;
}

export const MAX_TAG = 32;

function tag(x: unknown): Uint8Array {
  if (x === undefined || x === null) return new Uint8Array(0);
  if (!(x instanceof Uint8Array) || x.length > MAX_TAG) throw new QuicmapError('EPROTO', 'relay: malformed service tag');
  return Uint8Array.from(x);
}

function port(x: unknown): number {
  const n = int(x);
  if (n > 65535) throw new QuicmapError('EPROTO', 'relay: malformed port');
  return n;
}

function ip(x: unknown): string {
  if (typeof x !== 'string' || x.length > 64 || !/^[0-9a-fA-F.:]+$/.test(x)) throw new QuicmapError('EPROTO', 'relay: malformed address');
  return x;
}

function limits(x: unknown): CircuitLimits {
  const o = x as Record<string, unknown> | null;
  if (!o || typeof o !== 'object') throw new QuicmapError('EPROTO', 'relay: malformed limits');
  return { bytes: int(o.bytes), durationMs: int(o.durationMs) };
}

function decodeBody(body: Uint8Array): Record<string, unknown> {
  let o: unknown;
  try {
    o = packr.unpack(body);
  } catch {
    throw new QuicmapError('EPROTO', 'relay: control message is not msgpack');
  }
  if (!o || typeof o !== 'object' || Array.isArray(o)) throw new QuicmapError('EPROTO', 'relay: control message is not an object');
  return o as Record<string, unknown>;
}

export function decodeClientMessage(body: Uint8Array): ClientMessage {
  const o = decodeBody(body);
  if (o.t === 'reserve') return { t: 'reserve', rid: int(o.rid), tag: tag(o.tag) };
  if (o.t === 'connect') return { t: 'connect', rid: int(o.rid), target: bytes(o.target, 32), tag: tag(o.tag) };
  if (o.t === 'punch') return { t: 'punch', rid: int(o.rid), target: bytes(o.target, 32), port: port(o.port), tag: tag(o.tag), quic: o.quic === true };
  if (o.t === 'punch-answer') return { t: 'punch-answer', id: int(o.id), port: port(o.port) };
  if (o.t === 'observe') return { t: 'observe', rid: int(o.rid), token: bytes(o.token, TOKEN_BYTES) };
  throw new QuicmapError('EPROTO', `relay: unknown request "${String(o.t)}"`);
}

export function decodeRelayMessage(body: Uint8Array): RelayMessage {
  const o = decodeBody(body);
  const text = (x: unknown) => (typeof x === 'string' ? x.slice(0, 500) : '');
  const refusal = (x: unknown): Refusal => {
    if (!isRefusal(x)) throw new QuicmapError('EPROTO', `relay: unknown refusal "${String(x)}"`);
    return x;
  };
  switch (o.t) {
    case 'reserved':
      return { t: 'reserved', rid: int(o.rid), expiresAt: int(o.expiresAt), limits: limits(o.limits) };
    case 'circuit':
      return { t: 'circuit', rid: int(o.rid), id: int(o.id), token: bytes(o.token, TOKEN_BYTES), limits: limits(o.limits) };
    case 'refused':
      return { t: 'refused', rid: int(o.rid), refusal: refusal(o.refusal), message: text(o.message) };
    case 'incoming':
      return { t: 'incoming', id: int(o.id), token: bytes(o.token, TOKEN_BYTES), from: bytes(o.from, 32) };
    case 'closed':
      return { t: 'closed', id: int(o.id), refusal: refusal(o.refusal), message: text(o.message) };
    case 'punch':
      return { t: 'punch', id: int(o.id), from: bytes(o.from, 32), ip: ip(o.ip), port: port(o.port), quic: o.quic === true };
    case 'punch-go':
      return { t: 'punch-go', rid: int(o.rid), ip: ip(o.ip), port: port(o.port) };
    case 'observed':
      return { t: 'observed', rid: int(o.rid), ip: ip(o.ip), port: port(o.port) };
    default:
      throw new QuicmapError('EPROTO', `relay: unknown message "${String(o.t)}"`);
  }
}
