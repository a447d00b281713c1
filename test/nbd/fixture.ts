/**
 * Shared set-up for the NBD tests that use sockets: a real NbdServer in this
 * process listening on 127.0.0.1 (port 0) and on a unix socket in a Scope
 * tmpdir, closed (with a time limit) when the scope closes.
 */
import { join } from 'node:path';
import { NbdServer, type AddExportOptions, type NbdEndpoint, type NbdServerOptions } from '../../engine/nbd/server.ts';
import { run, SYSTEM_PATH, withTimeout, type RunResult, type Scope } from '../helpers/env.ts';
import type { Target } from '../helpers/nbd-raw.ts';

export interface Fixture {
  server: NbdServer;
  tcp: NbdEndpoint;
  unix: NbdEndpoint;
  tcpTarget: Target;
  unixTarget: Target;
  logs: string[];
  dir: string;
}

export async function startServer(scope: Scope, exports: AddExportOptions[], opts: NbdServerOptions = {}): Promise<Fixture> {
  const logs: string[] = [];
  const server = new NbdServer({ ...opts, log: (m) => logs.push(m) });
  for (const e of exports) await server.addExport(e);
  const dir = scope.tmpdir('quicmap-nbd-');
  scope.defer(() => withTimeout(10_000, 'NbdServer.close at cleanup', server.close()));
  const tcp = await server.listen({ host: '127.0.0.1', port: 0 });
  const unix = await server.listen({ path: join(dir, 'nbd.sock') });
  return {
    server,
    tcp,
    unix,
    tcpTarget: { host: tcp.host!, port: tcp.port! },
    unixTarget: { path: unix.path! },
    logs,
    dir,
  };
}

/** The environment for libnbd/qemu tools: system python first (nbdsh), no proxies. */
export const TOOL_ENV = { ...process.env, PATH: SYSTEM_PATH, LIBNBD_DEBUG: '0' };

export async function tool(cmd: string, args: string[], timeoutMs = 30_000, input?: string): Promise<RunResult> {
  return run(cmd, args, { env: TOOL_ENV, timeoutMs, input });
}

/** Run a tool and fail with its output unless it exits 0. */
export async function ok(cmd: string, args: string[], timeoutMs = 30_000): Promise<RunResult> {
  const r = await tool(cmd, args, timeoutMs);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** qemu-io on a raw NBD export; fails on a non-zero exit or any "failed" line. */
export async function qemuIo(uri: string, cmds: string[], timeoutMs = 30_000): Promise<string> {
  const args = ['-f', 'raw', uri];
  for (const c of cmds) args.push('-c', c);
  const r = await tool('qemu-io', args, timeoutMs);
  const out = r.stdout + r.stderr;
  if (r.code !== 0 || /failed|error|Pattern verification/i.test(out)) {
    throw new Error(`qemu-io ${cmds.join(' ; ')} on ${uri}: exit ${r.code}\n${out}`);
  }
  return out;
}

/** nbdsh -u URI -c SCRIPT (with the system python); returns stdout. */
export async function nbdsh(uri: string, script: string, timeoutMs = 30_000): Promise<RunResult> {
  return tool('nbdsh', ['-u', uri, '-c', script], timeoutMs);
}
