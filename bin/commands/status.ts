/** `quicmap status`: ask a running quicmap (share, mount, relay, dht, store, ram) what it is doing. */
import { type Command, UsageError, parseFlags } from '../command.ts';
import { QuicmapError } from '../../base/errors.ts';
import { askControl, controlDir, listControlSockets } from '../../p2p/node/control.ts';
import { formatStatus, type NodeStatus } from '../../p2p/node/status.ts';

const usage = `Usage: quicmap status [--control PATH] [--json]

Print what a running quicmap command is doing: the regions it shares
(sessions, bytes, relay reservations, DHT record), its mounts (path to the
sharer: direct or through which relay, upgrades), its peers (path, RTT
estimate, bytes sent and received, path changes) and operations in
progress. Asks the command's control socket: the one given, or every one
in ${controlDir()}.

Options:
  --control PATH   the control socket (printed in the command's log)
  --json           print the status as JSON (one object; an array when
                   several commands answer)
  -h, --help       this help
`;

export const status: Command = {
  name: 'status',
  usage,
  async run(argv) {
    const { values } = parseFlags('status', argv, { control: { type: 'string' }, json: { type: 'boolean', default: false } });
    const paths = values.control ? [values.control] : listControlSockets();
    if (paths.length === 0) throw new UsageError(`status: no running quicmap command found in ${controlDir()} (give --control PATH)`);
    const results: NodeStatus[] = [];
    for (const p of paths) {
      try {
        results.push((await askControl(p, { op: 'status' })) as NodeStatus);
      } catch (e) {
        if (values.control) throw e;
        // A socket left by a command that was killed: skip it.
      }
    }
    if (results.length === 0) throw new QuicmapError('EIO', `no quicmap command answers in ${controlDir()}`);
    if (values.json) process.stdout.write(`${JSON.stringify(results.length === 1 && values.control ? results[0] : results.length === 1 ? results[0] : results)}\n`);
    else process.stdout.write(results.map(formatStatus).join('\n'));
    return 0;
  },
};
