/**
 * Typed access to the native layer of @chainsafe/libp2p-quic 1.1.8
 * (quinn + rustls, NAPI-RS). The package exports only its libp2p wrapper and
 * types this module `any`, so we load `dist/src/napi.js` next to the resolved
 * entry point and declare the subset we use, as observed on 1.1.8:
 *
 * - `Connection.remoteMultiaddr()` ends in `/p2p/<peer id>`: the libp2p-TLS
 *   verifier already checked that the peer's certificate is signed by that
 *   Ed25519 key, so the peer id is the proven identity.
 * - `Stream.read(max)` resolves to a new buffer of at most `max` bytes, or
 *   null at the end of the stream. `write` resolves once quinn accepted all
 *   bytes (it waits on stream and connection flow control: backpressure).
 * - Every error is a plain Error with code "Unknown"; only the message says
 *   what happened (reset, closed, timed out).
 */

export interface NativeConfigInit {
  /** libp2p protobuf encoding of the Ed25519 private key. */
  privateKeyProto: Uint8Array;
  /** ms; the effective limit is min(this, maxIdleTimeout). */
  handshakeTimeout: number;
  /** ms of silence after which the connection is dropped. */
  maxIdleTimeout: number;
  /** ms between keep-alive pings; must be below both peers' idle timeouts. */
  keepAliveInterval: number;
  /** Streams the peer may have open at once (bidirectional). */
  maxConcurrentStreamLimit: number;
  /** Receive window per stream, bytes. */
  maxStreamData: number;
  /** Receive window per connection, bytes. */
  maxConnectionData: number;
  /** UDP socket buffer sizes, bytes. */
  receiveBufferSize: number;
  sendBufferSize: number;
}

export interface NativeStream {
  id(): string;
  read(max: number): Promise<Uint8Array | null>;
  write(data: Uint8Array): Promise<void>;
  finishWrite(): Promise<void> | void;
  resetWrite(): Promise<void> | void;
  stopRead(): Promise<void> | void;
}

export interface NativeConnection {
  inboundStream(): Promise<NativeStream>;
  outboundStream(): Promise<NativeStream>;
  /** Close immediately (application code 0); the peer sees "closed by peer". */
  abort(): void;
  rtt(): number;
  id(): string;
  remoteMultiaddr(): string;
  closed(): Promise<void>;
}

export interface NativeServer {
  port(): number;
  inboundConnection(): Promise<NativeConnection>;
  abort(): Promise<void>;
}

export interface NativeClient {
  outboundConnection(ip: string, port: number): Promise<NativeConnection>;
  abort(): void;
}

export interface NativeQuic {
  QuinnConfig: new (init: NativeConfigInit) => object;
  Server: new (config: object, ip: string, port: number) => NativeServer;
  /** family: 0 = IPv4, 1 = IPv6 */
  Client: new (config: object, family: 0 | 1) => NativeClient;
}

let loaded: Promise<NativeQuic> | undefined;

/** Load the native binding once. */
export function loadNativeQuic(): Promise<NativeQuic> {
  loaded ??= (async () => {
    const entry = import.meta.resolve('@chainsafe/libp2p-quic');
    const mod = (await import(new URL('./napi.js', entry).href)) as Partial<NativeQuic>;
    if (typeof mod.QuinnConfig !== 'function' || typeof mod.Server !== 'function' || typeof mod.Client !== 'function') {
      throw new Error('@chainsafe/libp2p-quic native layer not found or changed shape (expected 1.1.x)');
    }
    return mod as NativeQuic;
  })();
  return loaded;
}
