/**
 * The one small interface every transport implements (QUIC, TCP, relay, an
 * in-process loopback pair for tests). The engine talks only to this; it never imports
 * a transport library.
 *
 * Identity: every endpoint has an Ed25519 key. `dial` names the public key it
 * expects and fails with an EACCES QuicmapError if the peer proves another;
 * `Connection.remotePublicKey` is the key the peer proved.
 */

/** A reliable, ordered, bidirectional byte stream with backpressure. */
export interface ByteStream {
  /** The next chunk of bytes, or null once the peer has closed its side. Rejects if the stream was reset. */
  read(): Promise<Uint8Array | null>;
  /**
   * Queue bytes for sending; resolves once the transport can take more
   * (await it to get backpressure). Several buffers are sent in order without
   * being concatenated first.
   */
  write(data: Uint8Array | readonly Uint8Array[]): Promise<void>;
  /** Half-close: no more writes; reads go on. */
  closeWrite(): Promise<void>;
  /** Abort both directions at once; pending reads and writes reject. */
  reset(reason?: Error): void;
}

export interface Connection {
  /** Ed25519 public key (32 bytes) the peer proved during the handshake. */
  readonly remotePublicKey: Uint8Array;
  /** Human-readable address of the other end, e.g. "127.0.0.1:4433". */
  readonly remoteAddress: string;
  /** Open a new stream; rejects with ETIMEDOUT if the peer does not grant one in time. */
  openStream(): Promise<ByteStream>;
  /** The next stream the peer opened, or null once the connection is closed. */
  acceptStream(): Promise<ByteStream | null>;
  /** Close the connection and every stream on it. Idempotent. */
  close(reason?: Error): Promise<void>;
  /** Settles when the connection is gone, for whatever reason. */
  readonly closed: Promise<void>;
}

export interface Listener {
  /** The bound address, "host:port" (port resolved if 0 was asked for). */
  readonly address: string;
  /** The next authenticated incoming connection, or null once closed. */
  accept(): Promise<Connection | null>;
  close(): Promise<void>;
}

export interface Transport {
  readonly name: 'quic' | 'tcp' | 'webtransport' | 'loopback' | 'relay';
  listen(address: string): Promise<Listener>;
  dial(address: string, expectedPublicKey: Uint8Array, opts?: { timeoutMs?: number }): Promise<Connection>;
  close(): Promise<void>;
}
