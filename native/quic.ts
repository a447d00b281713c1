/**
 * Typed access to the ngtcp2 QUIC data path, quicmap's second addon
 * (native/src/quic.cc → native/build/Release/quicmap_quic.node). It is
 * optional: it is not built where Debian's libngtcp2-dev /
 * libngtcp2-crypto-gnutls-dev / libgnutls28-dev are missing, and
 * native/build/QUIC_UNAVAILABLE.txt says why.
 *
 * It lives beside native/index.ts (the main addon's loader) and is imported
 * by transports/ngtcp2.ts (transports/ may import native/).
 *
 * Events arrive in batches as a flat array, EVENT_FIELDS entries per event:
 * [type, conn, stream, n, text | undefined, data | undefined].
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

export const EV_READY = 1;
export const EV_CLOSED = 2;
export const EV_OPENED = 3;
export const EV_INCOMING = 4;
export const EV_DATA = 5;
export const EV_FIN = 6;
export const EV_RESET = 7;
export const EV_ACKED = 8;
export const EV_STREAM_CLOSED = 9;
/** n = bidirectional streams the peer allows us in total so far (cumulative). */
export const EV_CREDIT = 10;
export const EVENT_FIELDS = 6;

export interface QuicEndpointOptions {
  /** IP literal to bind ("0.0.0.0", "::", "127.0.0.1"). */
  host: string;
  port: number;
  /** Accept connections (a listener) or only dial. */
  server: boolean;
  /** Ed25519 identity: 32-byte seed and public key. */
  seed: Uint8Array;
  publicKey: Uint8Array;
  idleTimeoutMs: number;
  handshakeTimeoutMs: number;
  keepAliveMs: number;
  maxStreams: number;
  streamWindow: number;
  connectionWindow: number;
  /** Largest UDP payload sent; 0 = the route MTU's (loopback: ~64 KiB). */
  maxUdpPayload: number;
  /** Batch datagrams with UDP_SEGMENT. */
  gso: boolean;
  udpBufferBytes: number;
  maxPendingHandshakes: number;
  /** Handshakes one source (IPv4 address, IPv6 /64) may have in progress; its own oldest is evicted beyond. */
  maxPendingPerSource: number;
  maxConnections: number;
  /** Congestion control: bbr, cubic, reno, bbr2 (the addon takes cubic when absent; Ngtcp2Transport always passes one, bbr by default). */
  cc: string;
}

export interface QuicEndpointStats {
  datagramsIn: number;
  datagramsOut: number;
  sendCalls: number;
  recvCalls: number;
  bytesIn: number;
  bytesOut: number;
  dropped: number;
  maxDatagramOut: number;
  gso: boolean;
  /** Listener admission: handshakes evicted to make room for another source's, Initials refused at the connection cap. */
  evicted: number;
  refused: number;
  /** Stateless resets sent for packets of connections this endpoint does not have. */
  statelessResets: number;
  /** Hole-punch datagrams sent, received (and dropped), refused by the rate limit. */
  punchOut: number;
  punchIn: number;
  punchLimited: number;
}

export type QuicEvents = Array<number | string | Uint8Array | undefined>;

export interface NativeQuicEndpoint {
  port(): number;
  /** Dial; returns the connection id. EV_READY or EV_CLOSED follows for it. */
  connect(ip: string, port: number, expectedKey: Uint8Array): number;
  /**
   * Ask for a new stream; EV_OPENED with this token follows once ngtcp2 gave
   * it an id. Until then (and after) the stream can be addressed as
   * `-(token + 1)` in write/consume/resetStream.
   */
  open(conn: number, token: number): void;
  /** Queue bytes (copied) and/or the FIN; `stream` is an id or `-(token + 1)`. */
  write(conn: number, stream: number, data: Uint8Array | null, fin: boolean): void;
  /** The application consumed n bytes of the stream: extend stream and connection credit. */
  consume(conn: number, stream: number, n: number): void;
  resetStream(conn: number, stream: number, code?: number): void;
  closeConnection(conn: number): void;
  /**
   * Send one hole-punch datagram from this endpoint's socket (transports/udp-punch.ts's
   * format; anything else throws), at most 32 a second: false when limited or not sent.
   */
  sendDatagram(ip: string, port: number, data: Uint8Array): boolean;
  stats(): QuicEndpointStats;
  /** Close every connection (CONNECTION_CLOSE), stop and join the thread. */
  close(): void;
}

export interface NativeQuic {
  available: boolean;
  version?: string;
  QuicEndpoint: new (opts: QuicEndpointOptions, onEvents: (ev: QuicEvents) => void) => NativeQuicEndpoint;
  /**
   * The native libp2p certificate check on one certificate (DER): the proven
   * key, or throws the reason. Only for the test that holds it to
   * crypto/peer-cert.ts's verdicts (connections are decided in JS).
   */
  verifyCertificate(der: Uint8Array): Uint8Array;
}

const ADDON = fileURLToPath(new URL('./build/Release/quicmap_quic.node', import.meta.url));
const MAIN_ADDON = fileURLToPath(new URL('./build/Release/quicmap_native.node', import.meta.url));
const WHY = fileURLToPath(new URL('./build/QUIC_UNAVAILABLE.txt', import.meta.url));
const FAILED = fileURLToPath(new URL('./build/BUILD_FAILED.txt', import.meta.url));

let cached: NativeQuic | undefined;
let reason: string | undefined;

function readReason(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** The ngtcp2 binding, or undefined (then `ngtcp2UnavailableReason()` says why). */
export function loadNgtcp2(): NativeQuic | undefined {
  if (cached || reason) return cached;
  if (process.platform !== 'linux') {
    reason = `the ngtcp2 QUIC data path is Linux-only (this is ${process.platform})`;
    return undefined;
  }
  if (!existsSync(ADDON)) {
    if (!existsSync(MAIN_ADDON)) reason = `quicmap's native addons are not built (${readReason(FAILED) ?? 'run `node native/build.mjs`'})`;
    else
      reason = `the ngtcp2 QUIC data path was not built: ${
        readReason(WHY) ?? 'apt-get install libngtcp2-dev libngtcp2-crypto-gnutls-dev libgnutls28-dev, then `node native/build.mjs`'
      }`;
    return undefined;
  }
  try {
    cached = createRequire(import.meta.url)(ADDON) as NativeQuic;
  } catch (e) {
    reason = `the ngtcp2 QUIC addon failed to load (${(e as Error).message}); rebuild with \`node native/build.mjs\``;
  }
  return cached;
}

/** Why the ngtcp2 transport cannot run here, or undefined when it can. */
export function ngtcp2UnavailableReason(): string | undefined {
  loadNgtcp2();
  return cached ? undefined : reason;
}
