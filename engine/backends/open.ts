/**
 * openBackend: turn the CLI's `--backend memory|file:PATH|dir:PATH` into a
 * store, so every command opens backends the same way and fails the same way
 * (a typed EINVAL error naming the accepted forms, or the missing size).
 */
import { QuicmapError } from '../../base/errors.ts';
import type { ReadWriterAt } from '../rwat.ts';
import { DirectoryBackend } from './directory.ts';
import { FileBackend, MissingSizeError } from './file.ts';
import { MemoryBackend } from './memory.ts';
import { SharedMemoryBackend } from './shared-memory.ts';

export interface OpenBackendOptions {
  /** Region size in bytes: required for memory and to create a file or directory. */
  size?: number;
  readOnly?: boolean;
  /** Create the file or directory if it does not exist. */
  create?: boolean;
  /** Chunk size for memory (allocation unit) or a new directory. */
  chunkSize?: number;
  /**
   * The store will be served from several threads: `memory` then lives in
   * shared memory (SharedMemoryBackend) where the native addon is present.
   */
  shareable?: boolean;
}

export type BackendSpec = { kind: 'memory' } | { kind: 'file'; path: string } | { kind: 'dir'; path: string };

/** The spec was not `memory`, `file:PATH` or `dir:PATH`. */
export class BackendSpecError extends QuicmapError {
  constructor(spec: string, why: string) {
    super('EINVAL', `bad backend "${spec}": ${why} (use memory, file:PATH or dir:PATH)`);
  }
}

/** Parse a backend spec without opening anything (for early CLI validation). */
export function parseBackendSpec(spec: string): BackendSpec {
  if (spec === 'memory') return { kind: 'memory' };
  const colon = spec.indexOf(':');
  const kind = colon < 0 ? spec : spec.slice(0, colon);
  const path = colon < 0 ? '' : spec.slice(colon + 1);
  if (kind === 'file' || kind === 'dir') {
    if (path === '') throw new BackendSpecError(spec, `${kind} needs a path`);
    return { kind, path };
  }
  throw new BackendSpecError(spec, `unknown kind "${kind}"`);
}

export async function openBackend(spec: string, opts: OpenBackendOptions = {}): Promise<ReadWriterAt> {
  const parsed = parseBackendSpec(spec);
  switch (parsed.kind) {
    case 'memory':
      if (opts.size === undefined) throw new MissingSizeError('memory backend');
      if (opts.shareable && SharedMemoryBackend.available()) return SharedMemoryBackend.create(opts.size, { readOnly: opts.readOnly });
      return new MemoryBackend(opts.size, { readOnly: opts.readOnly, chunkSize: opts.chunkSize });
    case 'file':
      return FileBackend.open(parsed.path, { size: opts.size, readOnly: opts.readOnly, create: opts.create });
    case 'dir':
      return DirectoryBackend.open(parsed.path, {
        size: opts.size,
        readOnly: opts.readOnly,
        create: opts.create,
        chunkSize: opts.chunkSize,
      });
  }
}
