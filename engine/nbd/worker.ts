/**
 * An NBD worker thread (see workers.ts): serves connections in transmission
 * that the main thread negotiated and handed over, each on this thread's
 * own copy of the export's stack (opened once per export from its thread
 * descriptor, over the same bytes as the main thread's).
 */
import { Socket } from 'node:net';
import { parentPort } from 'node:worker_threads';
import type { ReadWriterAt } from '../rwat.ts';
import { openSharedStore } from '../shared-store.ts';
import { BufferPool } from './buffer-pool.ts';
import { ByteBudget } from '../../base/byte-budget.ts';
import { NbdConnection, type ConnectionHost, type ConnectionLimits } from './connection.ts';
import type { ExportEntry } from './export.ts';
import type { NbdHandshake } from './handshake.ts';
import type { FromWorker, ToWorker, WorkerStats } from './workers.ts';

const port = parentPort!;
const post = (m: FromWorker) => port.postMessage(m);

const stores = new Map<string, Promise<ReadWriterAt>>();
const connections = new Map<number, NbdConnection>();
/** Shut down before their store had opened: not to be served. */
const cancelled = new Set<number>();
const buffers = new BufferPool();
/** This thread's view of the server's memory budget (the total is shared with every thread). */
let budget: ByteBudget | undefined;

class WorkerConnectionHost implements ConnectionHost {
  readonly limits: ConnectionLimits;
  readonly buffers = buffers;
  readonly budget: ByteBudget;
  readonly stats: WorkerStats = { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0 };
  private readonly entryOf: ExportEntry;

  constructor(limits: ConnectionLimits, entry: ExportEntry, budget: ByteBudget) {
    this.limits = limits;
    this.budget = budget;
    this.entryOf = entry;
  }
  handshake(): NbdHandshake {
    throw new Error('worker connections start in transmission');
  }
  entry(name: string): ExportEntry | undefined {
    return name === this.entryOf.name ? this.entryOf : undefined;
  }
  log(message: string): void {
    post({ type: 'log', message });
  }
}

async function serve(m: Extract<ToWorker, { type: 'serve' }>): Promise<void> {
  let socket: Socket | undefined;
  try {
    socket = new Socket({ fd: m.fd, readable: true, writable: true });
    let store = stores.get(m.storeKey);
    if (!store) {
      store = openSharedStore(m.store);
      stores.set(m.storeKey, store);
    }
    budget ??= new ByteBudget(m.budget);
    const host = new WorkerConnectionHost(m.limits, { ...m.info, store: await store }, budget);
    if (cancelled.delete(m.id)) throw new Error('shut down before it started');
    if (m.rest.length) socket.unshift(Buffer.from(m.rest.buffer, m.rest.byteOffset, m.rest.byteLength));
    const conn = new NbdConnection(host, socket, { name: m.info.name, structured: m.structured, blockStatus: m.blockStatus });
    connections.set(m.id, conn);
    await conn.done;
    connections.delete(m.id);
    post({ type: 'closed', id: m.id, stats: host.stats });
  } catch (e) {
    post({ type: 'log', message: `nbd: worker could not serve a connection: ${(e as Error).message}` });
    socket?.destroy();
    post({ type: 'closed', id: m.id, stats: { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0 } });
  }
}

port.on('message', (m: ToWorker) => {
  switch (m.type) {
    case 'serve':
      void serve(m);
      break;
    case 'shutdown':
      for (const id of m.ids) if (!connections.has(id)) cancelled.add(id);
      void Promise.all(m.ids.map((id) => connections.get(id)?.shutdown(m.graceMs))).then(() => post({ type: 'shutdown-done', token: m.token }));
      break;
    case 'drop-store': {
      const s = stores.get(m.storeKey);
      stores.delete(m.storeKey);
      // Only this thread's view goes: the owner closes the real store.
      void s?.then((st) => st.close()).catch(() => {});
      break;
    }
  }
});

// Loaded: the pool may now hand connections over without a client waiting for this thread to boot.
post({ type: 'ready' });
