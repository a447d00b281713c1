/**
 * The NBD server: many named exports, many clients, TCP and unix-socket
 * listeners. Each export is a ReadWriterAt; this file only keeps the export
 * table and the listeners — the protocol lives in handshake.ts / requests.ts
 * and the per-client glue in connection.ts.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { existsSync, lstatSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { PathError, QuicmapError } from '../../base/errors.ts';
import type { ReadWriterAt } from '../rwat.ts';
import { transmissionFlags, type ExportCatalog, type ExportEntry, type ExportInfo } from './export.ts';
import { NbdConnection, type ConnectionHost, type ConnectionLimits, type Negotiated } from './connection.ts';
import { NbdWorkerPool } from './workers.ts';
import { threadDescriptor, type SharedStoreDescriptor } from '../shared-store.ts';
import { NbdHandshake } from './handshake.ts';
import { BufferPool } from './buffer-pool.ts';
import { AdmissionGate, sourceOf } from '../../base/admission.ts';
import { ByteBudget } from '../../base/byte-budget.ts';
import { RateLimitedLog } from '../../base/rate-limited-log.ts';

/** The defaults, in one place: --help and the README quote them. */
export const NBD_DEFAULTS = {
  maxPayload: 32 * 1024 * 1024,
  maxInFlight: 128,
  maxInFlightBytes: 64 * 1024 * 1024,
  memoryBudget: 256 * 1024 * 1024,
  stallMs: 2000,
  handshakeTimeoutMs: 10_000,
  maxHandshakes: 64,
  maxHandshakesPerSource: 16,
  maxConnections: 1024,
  maxConnectionsPerSource: 256,
} as const;

export interface NbdServerOptions {
  /** Largest READ/WRITE payload accepted (advertised as the maximum block size). Default 32 MiB. */
  maxPayload?: number;
  /** Requests one connection may have in flight before its socket is paused. Default 128. */
  maxInFlight?: number;
  /** Bytes one connection may hold: requests in progress, undecoded input, unsent replies at their cost. Default 64 MiB. */
  maxInFlightBytes?: number;
  /**
   * Bytes all connections together may hold (server-wide budget). Beyond it
   * only connections that hold nothing get one request through (up to one
   * maxPayload more), and connections whose clients have stalled for
   * `stallMs` are dropped, largest first. Default 256 MiB.
   */
  memoryBudget?: number;
  /** See memoryBudget. Default 2 000 ms. */
  stallMs?: number;
  /** A client must finish the handshake within this. Default 10 000 ms. */
  handshakeTimeoutMs?: number;
  /** Connections in the handshake, in total and per source address (the oldest of the fullest source makes room for a newcomer). Defaults 64 and 16. */
  maxHandshakes?: number;
  maxHandshakesPerSource?: number;
  /** Connections in transmission, in total and per source address (refused beyond). Defaults 1024 and 256. */
  maxConnections?: number;
  maxConnectionsPerSource?: number;
  /** Where diagnostics go (refusals, dropped clients). Default: nowhere. */
  log?: (message: string) => void;
  /**
   * Worker threads that serve connections in transmission, for exports whose
   * stack can be shared between threads (engine/nbd/workers.ts). 0 (the
   * default) serves everything on the calling thread.
   */
  workers?: number;
  /**
   * With workers: serve regions in shared memory on the addon's native loop
   * (engine/nbd/native-serve.ts) rather than on a JS worker. Default true;
   * false is for comparison and for tests of the JS path.
   */
  nativeDataPath?: boolean;
}

/** An export entry, with what a worker needs to serve it when it can be shared. */
type ServerEntry = ExportEntry & { shared?: { key: string; store: SharedStoreDescriptor } };

export interface AddExportOptions {
  name: string;
  store: ReadWriterAt;
  description?: string;
  /** Serve read-only even if the store is writable. */
  readOnly?: boolean;
}

export type ListenSpec = { host?: string; port: number } | { path: string };

export interface NbdEndpoint {
  /** "tcp" or "unix". */
  kind: 'tcp' | 'unix';
  host?: string;
  port?: number;
  path?: string;
  /** The NBD URI a client uses for `exportName` on this endpoint. */
  uri(exportName: string): string;
  /** Stop this listener (connections already made stay). */
  close(): Promise<void>;
}

export class NbdServer implements ExportCatalog, ConnectionHost {
  readonly limits: ConnectionLimits;
  readonly buffers = new BufferPool();
  readonly budget: ByteBudget;
  readonly admission: AdmissionGate;
  private readonly refusals: RateLimitedLog;
  readonly stats = { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, connections: 0 };
  private readonly exports = new Map<string, ServerEntry>();
  private readonly pool: NbdWorkerPool | undefined;
  private exportSerial = 0;
  private readonly listeners: Array<{ server: Server; path?: string }> = [];
  private readonly connections = new Set<NbdConnection>();
  private readonly logFn: (message: string) => void;
  private closing = false;

  constructor(opts: NbdServerOptions = {}) {
    const d = NBD_DEFAULTS;
    this.limits = {
      maxPayload: opts.maxPayload ?? d.maxPayload,
      maxInFlight: opts.maxInFlight ?? d.maxInFlight,
      maxInFlightBytes: opts.maxInFlightBytes ?? d.maxInFlightBytes,
      handshakeTimeoutMs: opts.handshakeTimeoutMs ?? d.handshakeTimeoutMs,
    };
    // The reserve lets a client that holds nothing get one maximum-size request through at the limit.
    this.budget = new ByteBudget({ limit: opts.memoryBudget ?? d.memoryBudget, reserve: this.limits.maxPayload, stallMs: opts.stallMs ?? d.stallMs });
    this.admission = new AdmissionGate({
      maxPending: opts.maxHandshakes ?? d.maxHandshakes,
      maxPendingPerSource: opts.maxHandshakesPerSource ?? d.maxHandshakesPerSource,
      maxActive: opts.maxConnections ?? d.maxConnections,
      maxActivePerSource: opts.maxConnectionsPerSource ?? d.maxConnectionsPerSource,
    });
    this.logFn = opts.log ?? (() => {});
    const workers = opts.workers ?? 0;
    if (!Number.isInteger(workers) || workers < 0) throw new RangeError(`workers must be a whole number ≥ 0, not ${workers}`);
    if (workers > 0) this.pool = new NbdWorkerPool(this, workers, { nativeDataPath: opts.nativeDataPath });
    this.refusals = new RateLimitedLog((m) => this.logFn(m), { burst: 5, windowMs: 10_000 });
  }

  log(message: string): void {
    this.logFn(message);
  }

  async addExport(opts: AddExportOptions): Promise<ExportInfo> {
    if (this.exports.has(opts.name)) throw new QuicmapError('EINVAL', `export "${opts.name}" already exists`);
    if (Buffer.byteLength(opts.name) > 4096) throw new QuicmapError('EINVAL', `export names are at most 4096 bytes (this one has ${Buffer.byteLength(opts.name)})`);
    const size = await opts.store.size();
    const readOnly = opts.readOnly === true || opts.store.caps.readOnly;
    const preferred = Math.max(512, opts.store.caps.preferredBlockSize);
    const descriptor = this.pool ? threadDescriptor(opts.store) : undefined;
    const entry: ServerEntry = {
      name: opts.name,
      description: opts.description ?? '',
      size,
      readOnly,
      flags: transmissionFlags(opts.store.caps, readOnly),
      // Any alignment is accepted (minimum 1); unaligned I/O is split below.
      minBlock: 1,
      preferredBlock: Math.min(preferred, this.limits.maxPayload),
      maxBlock: this.limits.maxPayload,
      store: opts.store,
      shared: descriptor && { key: `${opts.name}#${++this.exportSerial}`, store: { ...descriptor, readOnly: descriptor.readOnly || readOnly } },
    };
    this.exports.set(opts.name, entry);
    return entry;
  }

  /** Remove an export; its clients are disconnected once their requests finish. */
  async removeExport(name: string): Promise<void> {
    const entry = this.exports.get(name);
    if (!entry) return;
    this.exports.delete(name);
    await Promise.all([
      ...[...this.connections].filter((c) => c.exportName === name).map((c) => c.shutdown()),
      this.pool?.shutdown(name),
    ]);
    if (entry.shared) this.pool?.dropStore(entry.shared.key);
  }

  /** ConnectionHost: a connection that negotiated a shareable export moves to a worker thread. */
  handOff(socket: Socket, entry: ExportEntry, negotiated: Negotiated): boolean {
    return this.pool?.handOff(socket, entry, negotiated) ?? false;
  }

  exportInfo(name: string): ExportInfo | undefined {
    return this.exports.get(name);
  }

  // ExportCatalog, for the handshake.
  get(name: string): ExportInfo | undefined {
    return this.exports.get(name);
  }
  list(): ExportInfo[] {
    return [...this.exports.values()];
  }
  defaultName(): string | undefined {
    return this.exports.size === 1 ? [...this.exports.keys()][0] : this.exports.has('') ? '' : undefined;
  }
  entry(name: string): ExportEntry | undefined {
    return this.exports.get(name);
  }
  handshake(): NbdHandshake {
    return new NbdHandshake(this);
  }

  /** Bytes all connections hold now (the server-wide budget's use). */
  get memoryHeld(): number {
    return this.budget.used;
  }

  /** Connections handed off so far, by where they were served: the native loop or a JS worker thread. */
  get handedOff(): { native: number; worker: number } {
    return { ...(this.pool?.handedOff ?? { native: 0, worker: 0 }) };
  }

  /** Clients connected now, on this thread and on workers. */
  get connectionCount(): number {
    return this.connections.size + (this.pool?.connectionCount ?? 0);
  }

  /** Listen on TCP ({host, port}; port 0 picks one) or a unix socket ({path}, replaced if stale). */
  async listen(spec: ListenSpec): Promise<NbdEndpoint> {
    // Boot the worker threads before the socket exists: the first client
    // must not wait for a thread to load its code.
    // (Exports the native loop serves need none.)
    if ([...this.exports.values()].some((e) => e.shared && this.pool?.needsWorker(e.shared.store))) await this.pool?.warm();
    const server = createServer({ noDelay: true }, (socket) => this.serveConnection(socket));
    const isUnix = 'path' in spec;
    if (isUnix) {
      // bind() reports a missing directory as EACCES; say what is wrong.
      if (!existsSync(dirname(spec.path))) throw new PathError(spec.path, `directory ${dirname(spec.path)} does not exist`);
      removeStaleSocket(spec.path);
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if (isUnix) server.listen(spec.path, resolve);
      else server.listen(spec.port, spec.host ?? '127.0.0.1', resolve);
    });
    server.on('error', (e) => this.log(`nbd: listener error: ${e.message}`));
    const listener = { server, path: isUnix ? spec.path : undefined };
    this.listeners.push(listener);
    const close = () => {
      const i = this.listeners.indexOf(listener);
      if (i < 0) return Promise.resolve();
      this.listeners.splice(i, 1);
      return closeListener(listener);
    };
    if (isUnix) {
      const path = spec.path;
      return { kind: 'unix', path, close, uri: (name) => `nbd+unix:///${encodeURIComponent(name)}?socket=${path}` };
    }
    const addr = server.address() as { address: string; port: number };
    const hostPart = addr.address.includes(':') ? `[${addr.address}]` : addr.address;
    return {
      kind: 'tcp',
      host: addr.address,
      port: addr.port,
      close,
      uri: (name) => `nbd://${hostPart}:${addr.port}/${encodeURIComponent(name)}`,
    };
  }

  /**
   * Serve one already-connected socket. With `preNegotiated` the handshake is
   * skipped and the socket starts in transmission on that export — what the
   * kernel NBD client expects after userspace negotiated for it.
   */
  serveConnection(socket: Socket, opts: { preNegotiated?: string } = {}): NbdConnection | undefined {
    if (this.closing) {
      socket.destroy();
      return undefined;
    }
    const source = sourceOf(socket.remoteAddress);
    let conn: NbdConnection | undefined;
    const ticket = this.admission.admit(source, () => conn?.evict('making room for a newer connection (too many handshakes from its address or in total)'));
    if (!ticket) {
      this.refusals.log(`nbd: refusing a connection from ${source}: ${this.admission.held(source).active} connections from there already (or ${this.admission.activeConnections} in total)`);
      socket.destroy();
      return undefined;
    }
    conn = new NbdConnection(this, socket, opts.preNegotiated, ticket);
    this.connections.add(conn);
    this.stats.connections++;
    void conn.done.then(() => this.connections.delete(conn));
    return conn;
  }

  /**
   * Stop listening, let in-flight requests finish (for `graceMs` at most),
   * disconnect clients, flush every export.
   */
  async close(graceMs = 5000): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    await Promise.all(this.listeners.splice(0).map(closeListener));
    await Promise.all([...[...this.connections].map((c) => c.shutdown(graceMs)), this.pool?.close(graceMs)]);
    for (const e of this.exports.values()) {
      try {
        await e.store.flush();
      } catch (err) {
        this.log(`nbd: flush of "${e.name}" at close failed: ${(err as Error).message}`);
      }
    }
  }
}

/** Remove a leftover unix socket at `path`; refuse to replace anything that is not a socket. */
function removeStaleSocket(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new PathError(path, 'exists and is not a socket; refusing to replace it');
  rmSync(path, { force: true });
}

function closeListener({ server, path }: { server: Server; path?: string }): Promise<void> {
  // close() stops accepting at once; its callback waits until every connection
  // accepted on this listener has ended, so waiting for it would hang while
  // clients stay connected (and NbdServer.close shuts them down only after).
  server.close();
  if (path) rmSync(path, { force: true });
  return Promise.resolve();
}
