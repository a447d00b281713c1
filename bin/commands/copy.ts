/** `quicmap copy`: a third-party copy between two sharers, orchestrated from here; the bytes go directly from the source to the destination. */
import cliProgress from 'cli-progress';
import { type Command, UsageError, log, parseDurationFlag, parseFlags } from '../command.ts';
import { forFlag } from '../errors.ts';
import { defaultIdentityPath, loadOrCreateIdentity } from '../../crypto/identity.ts';
import { formatSize, parseSize } from '../../base/size.ts';
import { runCopy } from '../../p2p/copy/orchestrate.ts';
import { DhtClient } from '../../p2p/dht/client.ts';
import { parseDht } from '../swarm-flags.ts';

const usage = `Usage: quicmap copy SRC_TICKET[:OFFSET[+LENGTH]] DST_TICKET[:OFFSET] [options]

Copy bytes from one shared region to another without carrying them: the
source sends references (cache IDs) to this node, which forwards them to the
destination with a delegation of its read grant (bound to the destination's
key, limited to the range and --valid-for); the destination fetches the
bytes from the source directly and writes them. This node sees a few dozen
bytes per 512 KiB piece. When source and destination are the same node, the
bytes never leave it. SRC_TICKET needs read rights, DST_TICKET read-write.

A link cut between source and destination is ridden out: the destination
retries for a minute, then this node asks for the unacknowledged ranges
again; every range is written exactly once it is acknowledged (writes are
idempotent by range). A full cache at the source degrades to sending the
bytes through this node (reported as inlineBytes), never to failure.

  OFFSET, LENGTH         sizes: 4096, 64KiB, 1GiB (default: from 0, to the
                         end of the source)

Options:
  --batch SIZE           bytes asked of the source per reference batch
                         (default 8MiB)
  --window N             batches in flight (default 4)
  --valid-for DURATION   how long the destination's delegation is valid
                         (default 1h; never past the source ticket's expiry)
  --through-here         carry the bytes through this node instead (read
                         from the source, write to the destination): the
                         plain copy, for comparison
  --dht HOST:PORT[,...]  find sharers of tickets without addresses in this
                         DHT swarm (their signed records, as mount --dht);
                         the destination is told where the source is
  --dht-listen HOST:PORT this node's DHT socket (default 0.0.0.0:0)
  --identity PATH        identity file (default ${defaultIdentityPath()})
  --json                 print a JSON summary: bytes, ms, throughC (bytes
                         this node sent and received), inlineBytes,
                         retriedBatches, sameNode, sourceRefs (references
                         left at the source: 0)
  -h, --help             this help

A progress bar goes to stderr when it is a terminal.

Example:
  quicmap copy qm1aaa...:1GiB+256MiB qm1bbb...:0 --json
`;

const TICKET = /^(qm1[a-z2-7]+)(?::(.*))?$/i;

/** "qm1…[:OFFSET[+LENGTH]]" → ticket, offset, length; the argument's name in errors. */
export function parseTicketArg(arg: string | undefined, name: string, lengthAllowed: boolean): { ticket: string; offset: number; length: number | undefined } {
  if (arg === undefined) throw new UsageError(`copy: ${name} is missing (usage: quicmap copy SRC_TICKET[:OFFSET[+LENGTH]] DST_TICKET[:OFFSET])`);
  const m = TICKET.exec(arg.trim());
  if (!m) throw new UsageError(`copy: ${name}: not a ticket ("qm1...", as quicmap share prints it), got "${arg.slice(0, 20)}${arg.length > 20 ? '...' : ''}"`);
  const rest = m[2];
  if (rest === undefined) return { ticket: m[1]!, offset: 0, length: undefined };
  const [off, len, ...more] = rest.split('+');
  if (more.length > 0 || (len !== undefined && !lengthAllowed)) throw new UsageError(`copy: ${name}: expected ${lengthAllowed ? ':OFFSET[+LENGTH]' : ':OFFSET'} after the ticket, got ":${rest}"`);
  const size = (text: string, what: string) => {
    try {
      return parseSize(text);
    } catch (e) {
      throw new UsageError(`copy: ${name}: ${what}: ${(e as Error).message}`);
    }
  };
  const offset = size(off!, 'OFFSET');
  const length = len === undefined ? undefined : size(len, 'LENGTH');
  if (length === 0) throw new UsageError(`copy: ${name}: LENGTH must be more than 0`);
  return { ticket: m[1]!, offset, length };
}

export const copy: Command = {
  name: 'copy',
  usage,
  async run(argv) {
    const { values, positionals } = parseFlags(
      'copy',
      argv,
      {
        batch: { type: 'string', default: '8MiB' },
        window: { type: 'string', default: '4' },
        'valid-for': { type: 'string', default: '1h' },
        identity: { type: 'string' },
        json: { type: 'boolean', default: false },
        'through-here': { type: 'boolean', default: false },
        dht: { type: 'string' },
        'dht-listen': { type: 'string' },
      },
      true,
    );
    if (positionals.length > 2) throw new UsageError(`copy: one source and one destination, got ${positionals.length} arguments`);
    const src = parseTicketArg(positionals[0], 'SRC_TICKET', true);
    const dst = parseTicketArg(positionals[1], 'DST_TICKET', false);
    let batchBytes: number;
    try {
      batchBytes = parseSize(values.batch);
    } catch (e) {
      throw new UsageError(`copy: --batch: ${(e as Error).message}`);
    }
    if (batchBytes < 64 * 1024 || batchBytes > 64 << 20) throw new UsageError('copy: --batch must be between 64KiB and 64MiB');
    const window = Number(values.window);
    if (!Number.isInteger(window) || window < 1 || window > 64) throw new UsageError(`copy: --window must be a whole number from 1 to 64, not "${values.window}"`);
    const validFor = Math.ceil(parseDurationFlag('copy', '--valid-for', values['valid-for'], 1000) / 1000);
    const bootstrap = parseDht('copy', values.dht);
    if (values['dht-listen'] !== undefined && !bootstrap) throw new UsageError('copy: --dht-listen needs --dht');
    const identityPath = values.identity ?? defaultIdentityPath();
    const identity = await forFlag('copy', '--identity', identityPath, () => loadOrCreateIdentity(identityPath));
    if (bootstrap === 'public') log('copy: joining the public Mainline DHT, as asked (--dht public)');
    const dhtListen = values['dht-listen'] ?? '0.0.0.0:0';
    const dht = bootstrap ? await forFlag('copy', '--dht-listen', dhtListen, () => DhtClient.open({ bootstrap, listen: dhtListen, log })) : undefined;
    const tty = process.stderr.isTTY === true && !values.json;
    let bar: cliProgress.SingleBar | undefined;
    const summary = await runCopy({
      identity,
      src: src.ticket,
      dst: dst.ticket,
      srcOffset: src.offset,
      ...(src.length !== undefined ? { length: src.length } : {}),
      dstOffset: dst.offset,
      batchBytes,
      window,
      validFor,
      through: values['through-here'],
      ...(dht ? { dht } : {}),
      log,
      onProgress: (done, total) => {
        if (!tty) return;
        if (!bar) {
          bar = new cliProgress.SingleBar({ format: 'copy [{bar}] {percentage}% | {done} of {all} | {eta_formatted} left', stream: process.stderr, hideCursor: false }, cliProgress.Presets.shades_classic);
          bar.start(total, 0, { done: '0 B', all: formatSize(total) });
        }
        bar.update(done, { done: formatSize(done), all: formatSize(total) });
      },
    }).finally(async () => {
      bar?.stop();
      await dht?.destroy();
    });
    if (values.json) {
      process.stdout.write(`${JSON.stringify({ ...summary, ms: Math.round(summary.ms) })}\n`);
    } else {
      const secs = summary.ms / 1000;
      process.stdout.write(
        `copied ${formatSize(summary.bytes)} in ${secs.toFixed(2)} s (${formatSize(summary.bytes / Math.max(secs, 1e-3))}/s); through this node: ${formatSize(summary.throughC)}${summary.inlineBytes ? ` (${formatSize(summary.inlineBytes)} inline: the source's cache was full)` : ''}${summary.sameNode ? '; source and destination on one node' : ''}\n`,
      );
    }
    return 0;
  },
};
