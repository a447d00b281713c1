/**
 * The NBD server on every core. The main thread accepts clients and runs
 * the handshake (it has the export table); once a client has negotiated an
 * export whose stack can be shared between threads (engine/shared-store.ts),
 * the connection moves to one of N worker threads, which serve its
 * requests against their own copy of the stack over the same bytes. So
 * nbdcopy's four connections run on two cores, as they do on nbdkit's
 * threads; a stack that cannot be shared (a remote region, the chunked
 * layer's locks) keeps being served on the main thread.
 *
 * The move: the main thread stops reading, waits until its last handshake
 * bytes are with the kernel, dups the socket's descriptor, hands the
 * duplicate to the worker and closes its own handle (a close of one of two
 * descriptors ends nothing). The worker wraps the descriptor in a
 * net.Socket, gives back the bytes read past the handshake, and serves the
 * connection in transmission as the main thread would have.
 *
 * Shutdown and removeExport ask the workers to drain the affected
 * connections (in-flight requests answered, then closed) and wait for them.
 *
 * A region in shared memory (guards over a SharedMemoryBackend) is not
 * served by a worker but by the addon's native loop (native-serve.ts,
 * native/src/nbd_serve.cc), a thread per connection that receives WRITE
 * payloads straight into the shared pages and sends READ replies from
 * them; the move is the same, and so are shutdown and the stats.
 */
import type { Socket } from 'node:net';
import { Worker } from 'node:worker_threads';
import { loadNative, nativeAvailable } from '../../native/index.ts';
import type { ExportEntry } from './export.ts';
import type { ConnectionLimits, Negotiated } from './connection.ts';
import type { SharedStoreDescriptor } from '../shared-store.ts';
import type { ExportInfo } from './export.ts';
import type { ByteBudget, ByteBudgetDescription } from '../../base/byte-budget.ts';
import { nativePlan, nativeServeAvailable, nativeServeOptions } from './native-serve.ts';
import type { NativeNbdStats } from '../../native/index.ts';

/** Main → worker. */
export type ToWorker =
  | {
      type: 'serve';
      id: number;
      fd: number;
      storeKey: string;
      store: SharedStoreDescriptor;
      info: ExportInfo;
      structured: boolean;
      blockStatus: boolean;
      rest: Uint8Array;
      limits: ConnectionLimits;
      /** The server's memory budget, shared across threads. */
      budget: ByteBudgetDescription;
    }
  | { type: 'shutdown'; ids: number[]; graceMs: number; token: number }
  | { type: 'drop-store'; storeKey: string };

/** Worker → main. */
export type FromWorker =
  | { type: 'closed'; id: number; stats: WorkerStats }
  | { type: 'log'; message: string }
  | { type: 'shutdown-done'; token: number }
  | { type: 'ready' };

export interface WorkerStats {
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
}

interface Served {
  /** The JS worker serving it; undefined when the native loop does. */
  worker?: PoolWorker;
  /** The native loop's connection id, once started. */
  nativeId?: number;
  /** Called once it is forgotten (shutdown waits on these). */
  gone: Array<() => void>;
  /** Shutdown asked for it before it started. */
  stopping?: boolean;
  exportName: string;
  /** Frees the connection's admission slot in the main thread. */
  onClosed?: () => void;
}

interface PoolWorker {
  thread: Worker;
  active: number;
  /** Settles once the thread has loaded its code (or failed to). */
  ready: Promise<void>;
}

/** What the pool needs from the server it belongs to. */
export interface WorkerHost {
  readonly limits: ConnectionLimits;
  readonly budget: ByteBudget;
  readonly stats: WorkerStats;
  log(message: string): void;
}

export interface PoolOptions {
  /** Serve shared-memory regions with the addon's native loop when it is built (default true). */
  nativeDataPath?: boolean;
}

export class NbdWorkerPool {
  private readonly size: number;
  private readonly host: WorkerHost;
  private readonly workers: PoolWorker[] = [];
  private readonly served = new Map<number, Served>();
  private readonly waiters = new Map<number, { worker: PoolWorker; done: () => void }>();
  private nextId = 1;
  private nextToken = 1;
  private closed = false;
  private readonly native: boolean;
  /** Connections handed off so far, by where they went. */
  readonly handedOff = { native: 0, worker: 0 };

  constructor(host: WorkerHost, size: number, opts: PoolOptions = {}) {
    this.host = host;
    this.size = size;
    this.native = (opts.nativeDataPath ?? true) && nativeServeAvailable();
  }

  /** Start the threads now, so the first client does not wait for one to boot. */
  async warm(): Promise<void> {
    while (!this.closed && this.workers.length < this.size) this.spawn();
    await Promise.all(this.workers.map((w) => w.ready));
  }

  /** A connection to this stack would be served by a JS worker thread (not by the native loop). */
  needsWorker(store: SharedStoreDescriptor): boolean {
    return !(this.native && nativePlan(store));
  }

  /** Connections being served on workers now. */
  get connectionCount(): number {
    return this.served.size;
  }

  /**
   * Take over a socket that has negotiated `entry`. False (and the socket
   * untouched) when the export cannot be served off the main thread.
   */
  handOff(socket: Socket, entry: ExportEntry & { shared?: { key: string; store: SharedStoreDescriptor } }, neg: Negotiated): boolean {
    if (this.closed || !entry.shared) return false;
    const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) return false;
    // No addon, or one built before dupFd existed: serve here rather than fail the client.
    if (!nativeAvailable()) return false;
    const native = loadNative();
    if (typeof native.dupFd !== 'function') return false;
    const shared = entry.shared;
    socket.pause();
    // Anything the stream has buffered beyond the handshake goes along.
    const extra: Uint8Array[] = [neg.rest];
    for (let b; (b = socket.read() as Buffer | null) !== null; ) extra.push(b);
    const id = this.nextId++;
    const plan = this.native ? nativePlan(shared.store) : undefined;
    const worker = plan ? undefined : this.pick();
    if (worker) worker.active++;
    const served: Served = { worker, exportName: entry.name, onClosed: neg.onClosed, gone: [] };
    this.handedOff[plan ? 'native' : 'worker']++;
    this.served.set(id, served);
    const moveNative = () => {
      if (served.stopping) {
        this.forget(id);
        return socket.destroy();
      }
      try {
        const options = nativeServeOptions(plan!, {
          fd,
          name: entry.name,
          readOnly: entry.readOnly,
          structured: neg.structured,
          blockStatus: neg.blockStatus,
          maxPayload: this.host.limits.maxPayload,
          rest: Buffer.concat(extra),
        });
        // The addon takes its own descriptor; the socket's goes with it below.
        served.nativeId = native.nbdServe!(options, (kind, value) => this.onNative(id, kind, value));
      } catch (e) {
        this.host.log(`nbd: cannot serve a connection natively: ${(e as Error).message}`);
        this.forget(id);
      }
      socket.destroy();
    };
    const move = () => {
      if (plan) return moveNative();
      let dup: number;
      try {
        dup = native.dupFd(fd);
      } catch (e) {
        this.host.log(`nbd: cannot move a connection to a worker: ${(e as Error).message}`);
        this.forget(id);
        socket.destroy();
        return;
      }
      socket.destroy();
      const msg: ToWorker = {
        type: 'serve',
        id,
        fd: dup,
        storeKey: shared.key,
        store: shared.store,
        info: {
          name: entry.name,
          description: entry.description,
          size: entry.size,
          readOnly: entry.readOnly,
          flags: entry.flags,
          minBlock: entry.minBlock,
          preferredBlock: entry.preferredBlock,
          maxBlock: entry.maxBlock,
        },
        structured: neg.structured,
        blockStatus: neg.blockStatus,
        rest: Buffer.concat(extra),
        limits: this.host.limits,
        budget: this.host.budget.describe(),
      };
      worker!.thread.postMessage(msg);
    };
    // The handshake's last reply must be with the kernel before the descriptor moves.
    const flushed = () => socket.writableLength === 0 && ((socket as unknown as { _handle?: { writeQueueSize?: number } })._handle?.writeQueueSize ?? 0) === 0;
    const whenFlushed = (tries: number) => {
      if (socket.destroyed) return this.forget(id);
      if (flushed()) return move();
      if (tries > 2000) {
        this.host.log('nbd: client does not read its handshake reply; dropping it');
        this.forget(id);
        return socket.destroy();
      }
      setTimeout(() => whenFlushed(tries + 1), 1);
    };
    whenFlushed(0);
    return true;
  }

  /** Drain and close the worker connections on `exportName` (all when undefined). */
  async shutdown(exportName?: string, graceMs = 5000): Promise<void> {
    const byWorker = new Map<PoolWorker, number[]>();
    const natives: Served[] = [];
    for (const [id, s] of this.served) {
      if (exportName !== undefined && s.exportName !== exportName) continue;
      if (!s.worker) {
        natives.push(s);
        continue;
      }
      const list = byWorker.get(s.worker) ?? [];
      list.push(id);
      byWorker.set(s.worker, list);
    }
    await Promise.all([
      this.stopNative(natives, graceMs),
      ...[...byWorker].map(
        ([w, ids]) =>
          new Promise<void>((resolve) => {
            const token = this.nextToken++;
            // Someone waits for this answer: keep the process alive until it comes.
            w.thread.ref();
            this.waiters.set(token, {
              worker: w,
              done: () => {
                w.thread.unref();
                resolve();
              },
            });
            w.thread.postMessage({ type: 'shutdown', ids, graceMs, token } satisfies ToWorker);
          }),
      ),
    ]);
  }

  /** Native connections: stop before their next request, at once after graceMs. */
  private async stopNative(list: Served[], graceMs: number): Promise<void> {
    if (!list.length) return;
    const native = loadNative();
    const gone = list.map((s) => new Promise<void>((r) => s.gone.push(r)));
    // One still waiting for its handshake reply to leave is not started at all.
    for (const s of list) s.stopping = true;
    for (const s of list) if (s.nativeId !== undefined) native.nbdServeStop!(s.nativeId, false);
    // Referenced: it also keeps the process alive while we wait (the native threads do not).
    const force = setTimeout(() => {
      for (const s of list) if (s.nativeId !== undefined) native.nbdServeStop!(s.nativeId, true);
    }, graceMs);
    try {
      await Promise.all(gone);
    } finally {
      clearTimeout(force);
    }
  }

  private onNative(id: number, kind: 'log' | 'closed', value: string | NativeNbdStats): void {
    if (kind === 'log') return this.host.log(value as string);
    const st = value as NativeNbdStats;
    const s = this.host.stats;
    s.reads += st.reads;
    s.writes += st.writes;
    s.bytesRead += st.bytesRead;
    s.bytesWritten += st.bytesWritten;
    this.forget(id);
  }

  /** The export's stack is gone: workers drop their copies of it. */
  dropStore(storeKey: string): void {
    for (const w of this.workers) w.thread.postMessage({ type: 'drop-store', storeKey } satisfies ToWorker);
  }

  async close(graceMs = 5000): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.shutdown(undefined, graceMs);
    await Promise.all(this.workers.map((w) => w.thread.terminate()));
    this.workers.length = 0;
  }

  private pick(): PoolWorker {
    const idle = this.workers.find((w) => w.active === 0);
    if (idle) return idle;
    if (this.workers.length < this.size) return this.spawn();
    return this.workers.reduce((a, b) => (b.active < a.active ? b : a));
  }

  private spawn(): PoolWorker {
    const thread = new Worker(new URL('./worker-boot.mjs', import.meta.url));
    let ready!: () => void;
    const w: PoolWorker = { thread, active: 0, ready: new Promise<void>((r) => (ready = r)) };
    // Referenced while it boots (someone may be waiting for it), then not:
    // the pool does not keep a process alive; listeners and sockets do.
    const booted = () => {
      thread.unref();
      ready();
    };
    thread.once('message', booted);
    thread.once('exit', booted);
    thread.on('message', (m: FromWorker) => this.onMessage(m));
    thread.on('error', (e) => this.host.log(`nbd: worker thread failed: ${e.message}`));
    thread.on('exit', () => {
      const i = this.workers.indexOf(w);
      if (i >= 0) this.workers.splice(i, 1);
      for (const [id, s] of this.served) if (s.worker === w) this.forget(id);
      // A thread that died answers no shutdown: whoever waited on it is done waiting.
      for (const [token, waiter] of this.waiters) {
        if (waiter.worker !== w) continue;
        this.waiters.delete(token);
        waiter.done();
      }
    });
    this.workers.push(w);
    return w;
  }

  private onMessage(m: FromWorker): void {
    switch (m.type) {
      case 'closed': {
        const s = this.host.stats;
        s.reads += m.stats.reads;
        s.writes += m.stats.writes;
        s.bytesRead += m.stats.bytesRead;
        s.bytesWritten += m.stats.bytesWritten;
        this.forget(m.id);
        break;
      }
      case 'log':
        this.host.log(m.message);
        break;
      case 'ready':
        break;
      case 'shutdown-done': {
        const r = this.waiters.get(m.token);
        this.waiters.delete(m.token);
        r?.done();
        break;
      }
    }
  }

  private forget(id: number): void {
    const s = this.served.get(id);
    if (!s) return;
    this.served.delete(id);
    if (s.worker) s.worker.active--;
    s.onClosed?.();
    for (const g of s.gone.splice(0)) g();
  }
}
