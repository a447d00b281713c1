/** `quicmap nbd`: serve one local region over NBD, optionally mounted for mmap. */
import { type Command, UsageError, log, parseFlags, parseHostPort, untilSignal } from '../command.ts';
import { buildStack } from '../../engine/stack.ts';
import { forFlag } from '../errors.ts';
import { nbdLimitsHelp } from '../limits-help.ts';
import { NbdServer, type NbdEndpoint } from '../../engine/nbd/server.ts';
import { attachExport, type Attached } from '../../engine/attach/attach.ts';
import { formatSize, parseSize } from '../../base/size.ts';
import { availableParallelism } from 'node:os';

const usage = () => `Usage: quicmap nbd --size SIZE [options]

Serve one region over NBD. Once it accepts connections, the first line of
stdout is its NBD URI; with --mount, the second line is the mmap-able path.
Logs go to stderr. Ctrl-C or SIGTERM unmounts, flushes and exits.

Options:
  --size SIZE          region size, e.g. 256MiB, 4G (required unless the
                       backend already has a size)
  --backend SPEC       memory (default, sparse) | file:PATH | dir:PATH |
                       nbd:URI (any NBD server, e.g. an nbdkit plugin)
  --listen HOST:PORT   TCP address to serve on (default 127.0.0.1:10809;
                       port 0 picks a free one)
  --socket PATH        serve on a unix socket instead of TCP
  --name NAME          export name (default "region")
  --description TEXT   export description shown by nbdinfo
  --read-only          refuse writes, trims and zeroes
  --force              with dir:PATH, make a region in a non-empty
                       directory that is not one yet
  --mount DIR          also make the region mmap-able: kernel NBD where the
                       kernel has it, else DIR/region through nbdfuse
  --workers N          threads serving connections' requests (default: one
                       per core; 0 serves everything on the main thread).
                       memory and file regions are served on workers; the
                       handshake always runs on the main thread
  --data-path native|js
                       with workers, how a memory region is served: native
                       (default; the addon's recv/copy/send loop, a thread
                       per connection) or js (on the worker threads; for
                       comparison)
  --max-memory SIZE    memory the server may hold for its clients (see
                       Limits)
  --json               print one JSON object instead of plain lines
  -h, --help           this help

${nbdLimitsHelp()}
Examples:
  quicmap nbd --size 1GiB --listen 127.0.0.1:10809
  quicmap nbd --size 256MiB --socket /tmp/q.sock --mount /mnt/q
  nbdinfo nbd://127.0.0.1:10809/region
`;

export const nbd: Command = {
  name: 'nbd',
  get usage() {
    return usage();
  },
  async run(argv) {
    const { values } = parseFlags('nbd', argv, {
      size: { type: 'string' },
      backend: { type: 'string', default: 'memory' },
      listen: { type: 'string' },
      socket: { type: 'string' },
      name: { type: 'string', default: 'region' },
      description: { type: 'string' },
      'read-only': { type: 'boolean', default: false },
      mount: { type: 'string' },
      workers: { type: 'string' },
      'data-path': { type: 'string', default: 'native' },
      force: { type: 'boolean', default: false },
      'max-memory': { type: 'string' },
      json: { type: 'boolean', default: false },
    });
    const workers = values.workers === undefined ? availableParallelism() : Number(values.workers);
    if (!Number.isInteger(workers) || workers < 0 || workers > 256) throw new UsageError(`nbd: --workers: expected a whole number from 0 to 256, got "${values.workers}"`);
    const dataPath = values['data-path'];
    if (dataPath !== 'native' && dataPath !== 'js') throw new UsageError(`nbd: --data-path: expected native or js, got "${dataPath}"`);
    if (values.listen && values.socket) throw new UsageError('nbd: use --listen or --socket, not both');
    const size = values.size !== undefined ? parseSizeFlag(values.size) : undefined;
    const readOnly = values['read-only'];
    const memoryBudget = values['max-memory'] !== undefined ? parseSizeFlag(values['max-memory'], '--max-memory') : undefined;
    const server = new NbdServer({ log, workers, nativeDataPath: dataPath === 'native', ...(memoryBudget ? { memoryBudget } : {}) });
    const store = await forFlag('nbd', '--backend', values.backend, () =>
      buildStack({
        backend: values.backend,
        backendOptions: { size, readOnly, create: true, shareable: workers > 0, force: values.force },
        maxRequest: server.limits.maxPayload,
        readOnly,
      }),
    );
    let endpoint: NbdEndpoint | undefined;
    let mounted: Attached | undefined;
    try {
      await store.start();
      const info = await forFlag('nbd', '--name', values.name, () =>
        server.addExport({
          name: values.name,
          store,
          readOnly,
          description: values.description ?? `quicmap ${values.backend} region`,
        }),
      );
      const where = values.socket ? { path: values.socket } : parseHostPort(values.listen ?? '127.0.0.1:10809');
      endpoint = await forFlag('nbd', values.socket ? '--socket' : '--listen', values.socket ?? values.listen ?? '127.0.0.1:10809', () => server.listen(where));
      const uri = endpoint.uri(values.name);
      if (values.mount) mounted = await forFlag('nbd', '--mount', values.mount, () => attachExport({ server, exportName: values.name, dir: values.mount!, readOnly, log }));
      // Handle SIGINT/SIGTERM from before the first line is out: whoever reads it may signal at once.
      const signalled = untilSignal();
      if (values.json) {
        process.stdout.write(
          `${JSON.stringify({ uri, name: values.name, size: info.size, readOnly: info.readOnly, backend: values.backend, mount: mounted ? { method: mounted.method, path: mounted.path } : null })}\n`,
        );
      } else {
        process.stdout.write(`${uri}\n`);
        if (mounted) process.stdout.write(`${mounted.path}\n`);
      }
      log(`serving ${formatSize(info.size)} (${values.backend}${info.readOnly ? ', read-only' : ''}) at ${uri}: ${store.describe()}`);
      if (mounted) log(`mounted through ${mounted.method} at ${mounted.path}`);
      const sig = await signalled;
      log(`${sig}: shutting down`);
      return 0;
    } finally {
      if (mounted) await mounted.unmount().catch((e) => log(`unmount failed: ${(e as Error).message}`));
      await server.close();
      await store.close();
      if (mounted || endpoint) log(`flushed and closed (served ${server.stats.reads} reads, ${server.stats.writes} writes)`);
    }
  },
};

function parseSizeFlag(text: string, flag = '--size'): number {
  try {
    return parseSize(text);
  } catch (e) {
    throw new UsageError(`nbd: ${flag}: ${(e as Error).message}`);
  }
}
