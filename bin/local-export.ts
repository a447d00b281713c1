/**
 * A local NBD export of a store (export name `region` by default), for
 * `quicmap share --socket/--nbd-listen` (an application on the sharer's host
 * uses the shared region, its writes tracked) and `quicmap migrate`.
 */
import { GuardLayer } from '../engine/layers/guard.ts';
import { NbdServer } from '../engine/nbd/server.ts';
import type { ReadWriterAt } from '../engine/rwat.ts';
import { UsageError, parseHostPort } from './command.ts';

export interface LocalExportSpec {
  socket?: string;
  listen?: { host: string; port: number };
}

/** From `--socket PATH` / `--<flag> HOST:PORT` (at most one). */
export function localExportSpec(command: string, socket: string | undefined, listen: string | undefined, listenFlag: string): LocalExportSpec | undefined {
  if (socket !== undefined && listen !== undefined) throw new UsageError(`${command}: use --socket or ${listenFlag}, not both`);
  if (socket !== undefined) {
    if (socket === '') throw new UsageError(`${command}: --socket needs a path`);
    return { socket };
  }
  if (listen !== undefined) return { listen: parseHostPort(listen, `${command}: ${listenFlag}`) };
  return undefined;
}

export interface LocalExport {
  uri: string;
  server: NbdServer;
  close(): Promise<void>;
}

export async function serveLocalExport(store: ReadWriterAt, spec: LocalExportSpec, opts: { name?: string; readOnly?: boolean; description?: string; log?: (m: string) => void }): Promise<LocalExport> {
  const name = opts.name ?? 'region';
  const server = new NbdServer({ log: opts.log });
  try {
    const guarded = await GuardLayer.open(store, { maxRequest: server.limits.maxPayload, readOnly: opts.readOnly });
    await server.addExport({ name, store: guarded, readOnly: opts.readOnly ?? false, description: opts.description });
    const ep = await server.listen(spec.socket ? { path: spec.socket } : spec.listen!);
    return { uri: ep.uri(name), server, close: () => server.close() };
  } catch (e) {
    await server.close().catch(() => {});
    throw e;
  }
}
