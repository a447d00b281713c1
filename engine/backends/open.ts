/**
 * openBackend: turn the CLI's `--backend memory|file:PATH|dir:PATH|nbd:URI`
 * into a store, so every command opens backends the same way and fails the
 * same way (a typed EINVAL error naming the accepted forms, or the missing
 * size).
 *
 * `nbd:URI` (nbd://HOST[:PORT]/NAME or nbd+unix:///NAME?socket=PATH; the
 * bare URI works too) makes any NBD server the backend — any nbdkit plugin,
 * qemu-nbd, another quicmap — through NbdClient.
 */
import { QuicmapError } from '../../base/errors.ts';
import type { ReadWriterAt } from '../rwat.ts';
import { DirectoryBackend } from './directory.ts';
import { FileBackend, MissingSizeError } from './file.ts';
import { MemoryBackend } from './memory.ts';
import { SharedMemoryBackend } from './shared-memory.ts';
import { NbdClient, parseNbdUri } from '../nbd/client.ts';

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
  /** dir: make a region in a non-empty directory that is not one yet. */
  force?: boolean;
}

export type BackendSpec =
  | { kind: 'memory' }
  | { kind: 'file'; path: string }
  | { kind: 'dir'; path: string }
  | { kind: 'nbd'; uri: string };

/** The spec was not `memory`, `file:PATH`, `dir:PATH` or `nbd:URI`. */
export class BackendSpecError extends QuicmapError {
  constructor(spec: string, why: string) {
    super('EINVAL', `bad backend "${spec}": ${why} (use memory, file:PATH or dir:PATH, or nbd:URI for any NBD server)`);
  }
}

/** Parse a backend spec without opening anything (for early CLI validation). */
export function parseBackendSpec(spec: string): BackendSpec {
  if (spec === 'memory') return { kind: 'memory' };
  if (/^nbd(\+unix)?:\/\//.test(spec) || spec.startsWith('nbd:')) {
    const uri = /^nbd:nbd/.test(spec) ? spec.slice(4) : spec;
    if (!/^nbd(\+unix)?:\/\//.test(uri)) throw new BackendSpecError(spec, 'nbd needs a URI (nbd://HOST:PORT/NAME or nbd+unix:///NAME?socket=PATH)');
    try {
      parseNbdUri(uri);
    } catch (e) {
      throw new BackendSpecError(spec, (e as Error).message);
    }
    return { kind: 'nbd', uri };
  }
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
        force: opts.force,
      });
    case 'nbd': {
      let client: NbdClient;
      try {
        client = await NbdClient.connect(parsed.uri);
      } catch (e) {
        if (e instanceof QuicmapError) throw e;
        throw new QuicmapError('EIO', `backend ${parsed.uri}: ${(e as Error).message}`, { cause: e });
      }
      if (opts.size !== undefined && opts.size !== client.exportSize) {
        await client.close();
        throw new QuicmapError('EINVAL', `backend ${parsed.uri} has ${client.exportSize} bytes, not the ${opts.size} asked for`);
      }
      return client;
    }
  }
}
