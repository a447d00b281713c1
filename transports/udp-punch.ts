/**
 * UDP hole punching from a QUIC endpoint's own socket: the datagram format
 * and the small interface the relay's punch coordination (p2p/relay/) uses.
 *
 * A punch datagram is PUNCH_MAGIC (8 bytes, first byte 0: the QUIC fixed bit
 * is clear, so no QUIC endpoint takes it for a packet) and at most 56 bytes
 * of payload (a relay's observation token, or random bytes). Our native
 * endpoint drops such datagrams before parsing and will send nothing else
 * through `send` (native/src/quic.cc, IsPunchDatagram), at most 32 a second:
 * a punch can never turn an endpoint into an amplifier.
 *
 * Sent from the socket QUIC dials or listens on, a punch datagram opens the
 * NAT mapping and filter entry the following QUIC handshake uses.
 */
import { randomBytes } from 'node:crypto';
import { QuicmapError } from '../base/errors.ts';

export const PUNCH_MAGIC = Uint8Array.from([0x00, 0x51, 0x4d, 0x50, 0x55, 0x4e, 0x43, 0x48]); // "\0QMPUNCH"
export const PUNCH_MAX = 64;

/** A UDP socket a hole punch can send from. */
export interface PunchSocket {
  /** The socket's local port (logs). */
  readonly localPort: number;
  readonly family: 4 | 6;
  /** Send one punch datagram; false when rate limited or the endpoint is closed. */
  send(ip: string, port: number, datagram: Uint8Array): boolean;
}

/** A listener whose socket can punch (the ngtcp2 `quic` listener). */
export interface PunchListener {
  punchSocket(): PunchSocket | undefined;
}

/** A transport whose dialing socket can punch (the ngtcp2 `quic` transport). */
export interface PunchTransport {
  /** The socket `dial` uses for this family (opened if it is not yet). */
  dialerPunchSocket(family: 4 | 6): PunchSocket | undefined;
}

export function canPunchListener(x: unknown): x is PunchListener {
  return typeof (x as PunchListener | null)?.punchSocket === 'function';
}

export function canPunchTransport(x: unknown): x is PunchTransport {
  return typeof (x as PunchTransport | null)?.dialerPunchSocket === 'function';
}

/** A punch datagram carrying `payload` (default 16 random bytes). */
export function punchDatagram(payload: Uint8Array = randomBytes(16)): Uint8Array {
  if (payload.length > PUNCH_MAX - PUNCH_MAGIC.length) throw new QuicmapError('EINVAL', `punch payload of ${payload.length} bytes (at most ${PUNCH_MAX - PUNCH_MAGIC.length})`);
  const out = new Uint8Array(PUNCH_MAGIC.length + payload.length);
  out.set(PUNCH_MAGIC, 0);
  out.set(payload, PUNCH_MAGIC.length);
  return out;
}

/** The payload of a punch datagram, or undefined if `b` is not one. */
export function punchPayload(b: Uint8Array): Uint8Array | undefined {
  if (b.length < PUNCH_MAGIC.length || b.length > PUNCH_MAX) return undefined;
  for (let i = 0; i < PUNCH_MAGIC.length; i++) if (b[i] !== PUNCH_MAGIC[i]) return undefined;
  return b.subarray(PUNCH_MAGIC.length);
}
