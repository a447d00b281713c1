/**
 * The one stack builder: a description (a backend, the layers above it, the
 * guard's limits) becomes the store a frontend serves. Every frontend —
 * `quicmap nbd`, `share`, `mount`, the demo — builds its store here, so a
 * GuardLayer is always on top and a stack always reads the same way, bottom
 * to top: backend → layers → guard.
 *
 * The Stack it returns is itself a ReadWriterAt (the guard's view), plus:
 * - `layers`: every store of the stack, bottom (backend) to top (guard);
 * - `describe()`: the stack as one line for logs ("GuardLayer → ... → MemoryBackend");
 * - a lifecycle: `start()` starts each layer that has background work
 *   bottom-up (a puller needs the cache below it running), `stop()` stops
 *   them top-down; `close()` stops, then closes from the top down.
 *
 * Capability queries (`stack.capability(EXTENTS)`) go through the guard and
 * travel down until a store answers.
 */
import { ClosedError } from '../base/errors.ts';
import { openBackend, type OpenBackendOptions } from './backends/open.ts';
import { hasLifecycle } from './capability.ts';
import { ChunkedLayer } from './layers/chunked.ts';
import { GuardLayer } from './layers/guard.ts';
import { PassThroughLayer } from './layers/pass-through.ts';
import { TrackingLayer } from './layers/tracking.ts';
import type { ReadWriterAt } from './rwat.ts';
import { threadDescriptor, type SharedStoreDescriptor, type ThreadShareable } from './shared-store.ts';

/** One layer of a description: how to wrap the store below. */
export interface LayerSpec {
  /** Shown by describe() when the layer's class name would not say enough. */
  readonly name: string;
  wrap(inner: ReadWriterAt): ReadWriterAt | Promise<ReadWriterAt>;
}

export interface StackSpec {
  /** A backend spec (`memory`, `file:PATH`, `dir:PATH`, `nbd:URI`: engine/backends/open.ts) or an open store. */
  backend: string | ReadWriterAt;
  /** How to open a backend given as a spec (size, create, read-only, chunk size). */
  backendOptions?: OpenBackendOptions;
  /** Layers above the backend, bottom to top. */
  layers?: readonly LayerSpec[];
  /** Largest read or write the guard lets through: the frontend's own maximum. */
  maxRequest: number;
  /** Serve read-only even if the store below could take writes. */
  readOnly?: boolean;
  /**
   * Whether closing the stack closes a backend given as a store (default
   * true). False when the caller keeps using the store after the stack.
   */
  ownsBackend?: boolean;
}

/** ChunkedLayer: unaligned I/O split into whole chunks of `chunkSize` for the store below. */
export function chunked(chunkSize: number): LayerSpec {
  return { name: `chunked(${chunkSize})`, wrap: (inner) => new ChunkedLayer(inner, chunkSize) };
}

/** TrackingLayer: marks the chunks of `chunkSize` that writes through the stack touch (the TRACKING capability). */
export function tracking(chunkSize: number): LayerSpec {
  return { name: `tracking(${chunkSize})`, wrap: (inner) => new TrackingLayer(inner, chunkSize) };
}

/** Keeps a store open when the stack above it closes (a store the caller goes on using). */
class Borrowed extends PassThroughLayer implements ThreadShareable {
  override async close(): Promise<void> {}
  /** Borrowing changes nothing a worker thread would do. */
  threadDescriptor(): SharedStoreDescriptor | undefined {
    return threadDescriptor(this.inner);
  }
}

export class Stack extends PassThroughLayer implements ThreadShareable {
  /** Every store of the stack, bottom (the backend) to top (the guard). */
  readonly layers: readonly ReadWriterAt[];
  private readonly names: readonly string[];
  private state: 'built' | 'started' | 'stopped' | 'closed' = 'built';
  private closing: Promise<void> | undefined;

  constructor(guard: GuardLayer, layers: readonly ReadWriterAt[], names: readonly string[]) {
    super(guard);
    this.layers = layers;
    this.names = names;
  }

  /** The guard on top. */
  get guard(): GuardLayer {
    return this.inner as GuardLayer;
  }

  /** Shareable with other threads when its guard (and so every layer under it) says so. */
  threadDescriptor(): SharedStoreDescriptor | undefined {
    return threadDescriptor(this.inner);
  }

  /** The stack top to bottom, for logs. */
  describe(): string {
    return [...this.names].reverse().join(' → ');
  }

  /** Start background work, bottom-up. Idempotent. */
  override async start(): Promise<void> {
    if (this.state === 'closed') throw new ClosedError('stack');
    if (this.state === 'started') return;
    this.state = 'started';
    for (const l of this.layers) if (hasLifecycle(l)) await l.start();
  }

  /** Stop background work, top-down; foreground I/O keeps working. Idempotent. */
  override async stop(): Promise<void> {
    if (this.state !== 'started') return;
    this.state = 'stopped';
    for (const l of [...this.layers].reverse()) if (hasLifecycle(l)) await l.stop();
  }

  /** Stop, then close every store from the top down. Idempotent. */
  override close(): Promise<void> {
    this.closing ??= (async () => {
      await this.stop();
      this.state = 'closed';
      await this.inner.close();
    })();
    return this.closing;
  }
}

/** Build the stack `spec` describes: open the backend, wrap each layer, put the guard on top. */
export async function buildStack(spec: StackSpec): Promise<Stack> {
  const given = typeof spec.backend !== 'string';
  const backend = typeof spec.backend === 'string' ? await openBackend(spec.backend, spec.backendOptions) : spec.backend;
  const layers: ReadWriterAt[] = [backend];
  const names: string[] = [typeof spec.backend === 'string' ? `${backend.constructor.name}(${spec.backend})` : backend.constructor.name];
  let top: ReadWriterAt = given && spec.ownsBackend === false ? new Borrowed(backend) : backend;
  try {
    for (const l of spec.layers ?? []) {
      top = await l.wrap(top);
      layers.push(top);
      names.push(l.name);
    }
    const guard = await GuardLayer.open(top, { maxRequest: spec.maxRequest, readOnly: spec.readOnly });
    layers.push(guard);
    names.push('GuardLayer');
    return new Stack(guard, layers, names);
  } catch (e) {
    await top.close().catch(() => {});
    throw e;
  }
}
