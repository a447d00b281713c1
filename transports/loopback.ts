/**
 * An in-memory Transport for unit tests of the code above transports (wire
 * protocol, remote regions, the node). It keeps the semantics the real
 * transports have, so code tested against it behaves the same over QUIC/TCP:
 *
 * - dial names the expected public key; a listener holding another identity
 *   is refused with EACCES (the listener never sees that connection);
 * - each stream direction buffers at most `streamWindow` bytes before
 *   `write` waits for the reader (backpressure);
 * - closeWrite is a half-close; reset rejects pending and later reads/writes
 *   on both ends; closing a connection ends every stream on it on both ends.
 *
 * Data is copied on write, as a socket would: the caller may reuse its buffer
 * as soon as write() returns.
 *
 * Addresses are free-form "name:port" strings within one LoopbackNetwork;
 * listening on "name:0" picks an unused port. Closing a listener closes the
 * connections it accepted, as with QUIC and TCP.
 */
import type { ByteStream, Connection, Listener, Transport } from './transport.ts';
import type { Identity } from '../crypto/identity.ts';
import { ClosedError, QuicmapError } from '../base/errors.ts';
import { AsyncQueue } from '../base/async-queue.ts';
import { InboundBuffer } from './inbound.ts';
import { equalBytes } from './util.ts';

export interface LoopbackTransportOptions {
  /** The address space listeners live in; defaults to one shared by the whole process. */
  network?: LoopbackNetwork;
  /** Bytes one stream direction may hold unread before write() waits. Default 256 KiB. */
  streamWindow?: number;
}

/** A namespace of in-memory listeners; tests that want isolation make their own. */
export class LoopbackNetwork {
  readonly listeners = new Map<string, MemoryListener>();
  private nextPort = 1;

  bind(address: string, listener: MemoryListener): string {
    let addr = address;
    const colon = address.lastIndexOf(':');
    const host = colon >= 0 ? address.slice(0, colon) : address;
    if (colon < 0 || address.slice(colon + 1) === '0') {
      do addr = `${host || 'loopback'}:${this.nextPort++}`;
      while (this.listeners.has(addr));
    }
    if (this.listeners.has(addr)) throw new QuicmapError('EINVAL', `memory address ${addr} is in use`);
    this.listeners.set(addr, listener);
    return addr;
  }

  unbind(address: string, listener: MemoryListener): void {
    if (this.listeners.get(address) === listener) this.listeners.delete(address);
  }
}

const defaultNetwork = new LoopbackNetwork();
const DEFAULT_WINDOW = 256 * 1024;

function copyOf(b: Uint8Array): Uint8Array {
  return Uint8Array.prototype.slice.call(b);
}

class MemoryStream implements ByteStream {
  peer!: MemoryStream;
  readonly inbound: InboundBuffer;
  private writeClosed = false;
  private error: Error | undefined;

  private readonly onDone: (s: MemoryStream) => void;
  constructor(
    window: number,
    onDone: (s: MemoryStream) => void,
  ) {
    this.onDone = onDone;
    this.inbound = new InboundBuffer(window);
  }

  read(): Promise<Uint8Array | null> {
    return this.inbound.read();
  }

  async write(data: Uint8Array | readonly Uint8Array[]): Promise<void> {
    if (this.error) throw this.error;
    if (this.writeClosed) throw new QuicmapError('EINVAL', 'write after closeWrite');
    const list = data instanceof Uint8Array ? [data] : data;
    for (const b of list) this.peer.inbound.push(copyOf(b));
    await this.peer.inbound.drained();
    if (this.error) throw this.error;
  }

  async closeWrite(): Promise<void> {
    if (this.error) throw this.error;
    if (this.writeClosed) return;
    this.writeClosed = true;
    this.peer.inbound.end();
    this.maybeDone();
  }

  reset(reason?: Error): void {
    this.fail(reason ?? new QuicmapError('EIO', 'stream reset'));
    this.peer.fail(new QuicmapError('EIO', 'stream reset by peer', { cause: reason }));
  }

  /** Both directions die with `err` on this end. */
  fail(err: Error): void {
    if (this.error) return;
    this.error = err;
    this.writeClosed = true;
    this.inbound.fail(err);
    this.onDone(this);
  }

  private maybeDone(): void {
    if (this.writeClosed && this.peer.writeClosed) {
      this.onDone(this);
      this.peer.onDone(this.peer);
    }
  }
}

class MemoryConnection implements Connection {
  peer!: MemoryConnection;
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  private readonly streams = new Set<MemoryStream>();
  private readonly incoming = new AsyncQueue<MemoryStream>((s) => s.reset(new ClosedError('connection')));
  private isClosed = false;

  readonly remotePublicKey: Uint8Array;
  readonly remoteAddress: string;
  private readonly window: number;
  private readonly onClose: (c: MemoryConnection) => void;
  constructor(
    remotePublicKey: Uint8Array,
    remoteAddress: string,
    window: number,
    onClose: (c: MemoryConnection) => void,
  ) {
    this.remotePublicKey = remotePublicKey;
    this.remoteAddress = remoteAddress;
    this.window = window;
    this.onClose = onClose;
    this.closed = new Promise((r) => (this.resolveClosed = r));
  }

  private newStream(): MemoryStream {
    const s = new MemoryStream(this.window, (x) => this.streams.delete(x));
    this.streams.add(s);
    return s;
  }

  async openStream(): Promise<ByteStream> {
    if (this.isClosed) throw new ClosedError('connection');
    const local = this.newStream();
    const remote = this.peer.newStream();
    local.peer = remote;
    remote.peer = local;
    this.peer.incoming.push(remote);
    return local;
  }

  acceptStream(): Promise<ByteStream | null> {
    return this.incoming.shift();
  }

  async close(reason?: Error): Promise<void> {
    this.shutdown(reason ?? new ClosedError('connection'));
    this.peer.shutdown(new QuicmapError('ESHUTDOWN', 'connection closed by peer', { cause: reason }));
  }

  shutdown(err: Error): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.incoming.closeAndDrain();
    for (const s of [...this.streams]) s.fail(err);
    this.onClose(this);
    this.resolveClosed();
  }
}

class MemoryListener implements Listener {
  address = '';
  readonly queue = new AsyncQueue<MemoryConnection>((c) => void c.close());
  /** Accepted connections, closed with the listener (as QUIC must, since they share its socket). */
  readonly accepted = new Set<MemoryConnection>();

  readonly transport: LoopbackTransport;
  private readonly network: LoopbackNetwork;
  constructor(
    transport: LoopbackTransport,
    network: LoopbackNetwork,
  ) {
    this.transport = transport;
    this.network = network;
  }

  accept(): Promise<Connection | null> {
    return this.queue.shift();
  }

  async close(): Promise<void> {
    this.network.unbind(this.address, this);
    this.queue.closeAndDrain();
    for (const c of [...this.accepted]) await c.close();
  }
}

export class LoopbackTransport implements Transport {
  readonly name = 'loopback' as const;
  private readonly network: LoopbackNetwork;
  private readonly window: number;
  private readonly listeners = new Set<MemoryListener>();
  private readonly connections = new Set<MemoryConnection>();
  private isClosed = false;

  readonly identity: Identity;
  constructor(
    identity: Identity,
    opts: LoopbackTransportOptions = {},
  ) {
    this.identity = identity;
    this.network = opts.network ?? defaultNetwork;
    this.window = opts.streamWindow ?? DEFAULT_WINDOW;
  }

  async listen(address: string): Promise<Listener> {
    if (this.isClosed) throw new ClosedError('transport');
    const l = new MemoryListener(this, this.network);
    l.address = this.network.bind(address, l);
    this.listeners.add(l);
    return l;
  }

  async dial(address: string, expectedPublicKey: Uint8Array): Promise<Connection> {
    if (this.isClosed) throw new ClosedError('transport');
    const l = this.network.listeners.get(address);
    if (!l || l.queue.isEnded) throw new QuicmapError('EIO', `nothing listens at ${address}`);
    const remoteKey = l.transport.identity.publicKey;
    if (!equalBytes(remoteKey, expectedPublicKey)) {
      throw new QuicmapError('EACCES', `peer at ${address} is not the expected one`);
    }
    const local = new MemoryConnection(Uint8Array.from(remoteKey), address, this.window, (c) => this.connections.delete(c));
    const remote = new MemoryConnection(Uint8Array.from(this.identity.publicKey), `${this.identity.id.slice(0, 8)}:dialer`, l.transport.window, (c) => {
      l.transport.connections.delete(c);
      l.accepted.delete(c);
    });
    l.accepted.add(remote);
    local.peer = remote;
    remote.peer = local;
    this.connections.add(local);
    l.transport.connections.add(remote);
    l.queue.push(remote);
    return local;
  }

  async close(): Promise<void> {
    this.isClosed = true;
    for (const l of [...this.listeners]) await l.close();
    for (const c of [...this.connections]) await c.close();
  }
}
