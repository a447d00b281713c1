/**
 * The control socket of a long-running command that is not a swarm node
 * (`store`, `ram`, `relay`, `dht`; `share` and `mount` get theirs from
 * `QuicmapNode`): one place for the socket's default path and for the
 * fields every `quicmap status` answer has, so each command supplies only
 * what is its own (`store: {...}`, `ram: {...}`, ...).
 */
import { ControlServer, defaultControlPath } from '../p2p/node/control.ts';
import type { NodeStatus } from '../p2p/node/status.ts';
import { log } from './command.ts';

/** What a command adds to (or overrides in) the common status fields. */
export type StatusSection = Partial<NodeStatus> & Record<string, unknown>;

/**
 * Open the control socket at `path` (the --control flag), else at
 * `$QUICMAP_HOME/run/<role>-<pid>.sock`. `section()` is asked on every status
 * request.
 */
export async function startControl(role: string, path: string | undefined, id: string, section: () => StatusSection): Promise<ControlServer> {
  const startedAt = Date.now();
  const socket = path ?? defaultControlPath(role);
  return ControlServer.start(socket, (): NodeStatus => ({
    id,
    role,
    pid: process.pid,
    uptimeMs: Date.now() - startedAt,
    control: socket,
    dht: null,
    regions: [],
    mounts: [],
    peers: [],
    operations: [],
    ...section(),
  }));
}

/** Wait for SIGINT/SIGTERM (as `untilSignal()` promised it) and log that the command stops. */
export async function stopOnSignal(signalled: Promise<NodeJS.Signals>): Promise<void> {
  const sig = await signalled;
  log(`${sig}: stopping`);
}
