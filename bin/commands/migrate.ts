/** `quicmap migrate TICKET`: live-migrate a shared region (and ownership of it) to this node. */
import { readFileSync } from 'node:fs';
import { type Command, UsageError, log, parseFlags, untilSignal } from '../command.ts';
import { defaultIdentityPath, loadOrCreateIdentity } from '../../crypto/identity.ts';
import { regionIdText } from '../../crypto/grant.ts';
import { QuicmapError } from '../../base/errors.ts';
import { formatSize } from '../../base/size.ts';
import { parseBackendSpec } from '../../engine/backends/open.ts';
import { WriteGate } from '../../engine/layers/write-gate.ts';
import type { FinalizeMode } from '../../engine/migrate/finalize-policy.ts';
import { MigrationError, runMigration } from '../../engine/migrate/target.ts';
import { parsePullOrder } from '../../engine/sync/pull-order.ts';
import { mountTicket } from '../../p2p/mount.ts';
import { openManaged, type ManagedMount } from '../../p2p/sync/managed.ts';
import { RemoteMigrationControl } from '../../p2p/sync/migrate-calls.ts';
import { parseDurationMs } from '../duration.ts';
import { runHook } from '../hook.ts';
import { localExportSpec, serveLocalExport, type LocalExport } from '../local-export.ts';

const usage = `Usage: quicmap migrate TICKET [options]

Move a shared region — its bytes and its ownership — to this node while
the application keeps running at the source (\`quicmap share ...
--on-suspend CMD\`), with as little downtime as possible:

  track, pre-copy   the region is copied in the background; the source
                    records what its application changes meanwhile
  dirty rounds      changed chunks are copied again until the predicted
                    stop-and-copy time is under --max-downtime
  finalize          the source runs its --on-suspend CMD and closes
                    writes, the last changed chunks are copied, ownership
                    moves here in one step (two-phase: exactly one node is
                    ever writable), and this node runs --on-resume CMD and
                    accepts writes. The source stays as a read-only seeder.

The first stdout line is this node's NBD URI (writes are refused until the
handover); with --json the last is one JSON object with downtimeMs,
totalMs, bytes, rounds. After the migration it keeps serving the region
until Ctrl-C / SIGTERM. Needs a read-write ticket.

Options:
  --socket PATH          serve the region over NBD on this unix socket
  --listen HOST:PORT     ... or over TCP (default 127.0.0.1:10809)
  --on-resume CMD        run CMD (sh -c) once this node owns the region;
                         env QUICMAP_NBD_URI is this node's NBD URI
  --finalize WHEN        auto (default) | now | after:DUR
  --max-downtime DUR     target for auto (default 300ms)
  --auto-converge on|off when dirty rounds do not converge (the writer
                         outruns the copy, or the predicted stop-and-copy
                         time does not fall), ask the source to throttle its
                         application's writes, stepping up as QEMU's
                         auto-converge does (default on)
  --throttle-initial PCT first throttle step (default 20)
  --throttle-increment PCT
                         each further step (default 10; at most 99 in all)
  --post-copy            resume here before the last chunks are copied;
                         missing chunks are fetched on first access (needs
                         the source to stay up until the copy completes)
  --cache SPEC           memory (default) | file:PATH | dir:PATH: where
                         this node keeps the region
  --pull-workers N       background pull workers (default 8)
  --pull-order ORDER     as for quicmap mount --managed (default volatility:
                         least-changed chunks first)
  --identity PATH        identity file (default ${defaultIdentityPath()})
  --json                 progress events and the final result as JSON lines
  -h, --help             this help

Example:
  host A$ quicmap share --backend file:/srv/app.img --socket /run/app.sock \\
              --on-suspend 'kill -STOP $(cat /run/app.pid)' --listen 0.0.0.0:4433
  host B$ quicmap migrate qm1... --socket /run/app.sock \\
              --on-resume 'start-app --nbd "$QUICMAP_NBD_URI"' --json
`;

function parseFinalize(text: string): FinalizeMode {
  if (text === 'auto') return { kind: 'auto' };
  if (text === 'now') return { kind: 'now' };
  if (text.startsWith('after:')) return { kind: 'after', ms: parseDurationMs(text.slice(6), 'migrate: --finalize after') };
  throw new UsageError(`migrate: --finalize must be auto, now or after:DUR, not "${text}"`);
}

export const migrate: Command = {
  name: 'migrate',
  usage,
  async run(argv) {
    const { values, positionals } = parseFlags(
      'migrate',
      argv,
      {
        socket: { type: 'string' },
        listen: { type: 'string' },
        'on-resume': { type: 'string' },
        finalize: { type: 'string', default: 'auto' },
        'max-downtime': { type: 'string', default: '300ms' },
        'auto-converge': { type: 'string', default: 'on' },
        'throttle-initial': { type: 'string', default: '20' },
        'throttle-increment': { type: 'string', default: '10' },
        'post-copy': { type: 'boolean', default: false },
        cache: { type: 'string' },
        'pull-workers': { type: 'string', default: '8' },
        'pull-order': { type: 'string', default: 'volatility' },
        identity: { type: 'string' },
        json: { type: 'boolean', default: false },
      },
      true,
    );
    if (positionals.length > 1) throw new UsageError('migrate: give one ticket (see quicmap migrate --help)');
    let ticketText = positionals[0] ?? '';
    if (ticketText === '-') ticketText = readFileSync(0, 'utf8').split('\n')[0] ?? '';
    if (ticketText === '') throw new UsageError('migrate: missing TICKET (the "qm1..." line `quicmap share` printed)');
    const spec = localExportSpec('migrate', values.socket, values.listen, '--listen') ?? { listen: { host: '127.0.0.1', port: 10809 } };
    const finalize = parseFinalize(values.finalize);
    const maxDowntimeMs = parseDurationMs(values['max-downtime'], 'migrate: --max-downtime');
    if (values['auto-converge'] !== 'on' && values['auto-converge'] !== 'off') throw new UsageError(`migrate: --auto-converge must be on or off, not "${values['auto-converge']}"`);
    const pctFlag = (flag: string, text: string) => {
      if (!/^\d+$/.test(text) || Number(text) < 1 || Number(text) > 99) throw new UsageError(`migrate: ${flag} must be a whole number from 1 to 99, not "${text}"`);
      return Number(text);
    };
    const converge = values['auto-converge'] === 'off' ? (false as const) : { initialPct: pctFlag('--throttle-initial', values['throttle-initial']), incrementPct: pctFlag('--throttle-increment', values['throttle-increment']) };
    if (!/^\d+$/.test(values['pull-workers']) || Number(values['pull-workers']) < 1 || Number(values['pull-workers']) > 256) {
      throw new UsageError(`migrate: --pull-workers must be a whole number from 1 to 256, not "${values['pull-workers']}"`);
    }
    try {
      parsePullOrder(values['pull-order']);
      if (values.cache !== undefined) parseBackendSpec(values.cache);
    } catch (e) {
      throw new UsageError(`migrate: ${(e as Error).message}`);
    }
    const identity = await loadOrCreateIdentity(values.identity ?? defaultIdentityPath());
    log(`this node is ${identity.id}`);
    const mounted = await mountTicket({ identity, ticket: ticketText, log });
    let mm: ManagedMount | undefined;
    let local: LocalExport | undefined;
    const emit = (o: Record<string, unknown>) => {
      if (values.json) process.stdout.write(`${JSON.stringify(o)}\n`);
    };
    try {
      if (mounted.ticket.claims.rights !== 'rw') throw new QuicmapError('EPERM', 'migrate needs a read-write ticket (this one is read-only)');
      mm = await openManaged(mounted.region, { cache: values.cache, pullWorkers: Number(values['pull-workers']), pullOrder: values['pull-order'], push: false, log });
      const gate = new WriteGate(false, 'not the owner yet: the migration has not finished');
      local = await serveLocalExport(gate.wrap(mm.store), spec, { description: `quicmap region ${regionIdText(mounted.ticket.claims.regionId)} (migrated)`, log });
      process.stdout.write(`${local.uri}\n`);
      const uri = local.uri;
      const control = new RemoteMigrationControl(mounted.region, mm.source, mm.synced);
      const onResume = values['on-resume'];
      const result = await runMigration({
        synced: mm.synced,
        control,
        finalize,
        maxDowntimeMs,
        postCopy: values['post-copy'],
        converge,
        resume: async () => gate.open(),
        ...(onResume ? { afterResume: () => runHook('migrate: --on-resume', onResume, { QUICMAP_NBD_URI: uri }) } : {}),
        onPhase: (phase, detail) => {
          emit({ event: 'phase', phase, ...detail });
          if (phase === 'converge') log(`migrate: auto-converge: ${String(detail.why)}`);
          else if (phase !== 'rounds') log(`migrate: ${phase}${Object.keys(detail).length ? ` ${JSON.stringify(detail)}` : ''}`);
        },
      });
      if (result.throttle.steps > 0) log(`migrate: auto-converge throttled the source's writer to ${result.throttle.pct} % in ${result.throttle.steps} steps (${result.throttle.delayedWrites} writes delayed, ${(result.throttle.delayedMs / 1000).toFixed(1)} s in all)`);
      log(`migrated ${formatSize(mm.synced.progress().size)} from ${mounted.sharerId}: downtime ${result.downtimeMs.toFixed(1)} ms, total ${(result.totalMs / 1000).toFixed(2)} s, ${formatSize(result.bytes)} pulled, ${result.rounds} rounds, ${result.dirtyRounds} after the first pass (${result.why}); this node owns the region, serving ${uri}`);
      if (values.json) emit({ downtimeMs: Number(result.downtimeMs.toFixed(3)), totalMs: Number(result.totalMs.toFixed(3)), bytes: result.bytes, rounds: result.rounds, dirtyRounds: result.dirtyRounds, predictedMs: Number.isFinite(result.predictedMs) ? Number(result.predictedMs.toFixed(3)) : null, postCopy: result.postCopy, stopMs: roundAll(result.stopMs), finalChunks: result.finalChunks, throttle: { ...result.throttle, delayedMs: Number(result.throttle.delayedMs.toFixed(1)) }, uri, source: mounted.sharerId });
      const sig = await untilSignal();
      log(`${sig}: stopping`);
      return 0;
    } catch (e) {
      if (e instanceof MigrationError) {
        emit({ event: 'failed', phase: e.phase, owner: e.owner, error: e.message });
      }
      throw e;
    } finally {
      // The region's retry and deadline timers do not hold the process open; this does, until shutdown is done.
      const alive = setInterval(() => {}, 60_000);
      await local?.close();
      await mm?.close().catch((e) => log(`closing the cache: ${(e as Error).message}`));
      await mounted.close();
      clearInterval(alive);
    }
  },
};

function roundAll(o: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, Number(v.toFixed(3))]));
}
