/** Entry point of the `quicmap` command: dispatches to bin/commands/*. */
import { stderrLog, type Command } from './command.ts';
import { CliError, EXIT, classify } from './errors.ts';
import { QuicmapError } from '../base/errors.ts';

// One entry per subcommand: its line in the top-level help, and the module
// behind it, loaded only when the command runs (so `--help` stays fast and
// does not load the QUIC native library).
const COMMANDS: Record<string, { summary: string; load: () => Promise<Command> }> = {
  demo: { summary: 'run a local demo swarm on loopback and print a summary (npm start)', load: async () => (await import('./commands/demo.ts')).demo },
  nbd: { summary: 'serve a local region over NBD (and optionally mount it for mmap)', load: async () => (await import('./commands/nbd.ts')).nbd },
  share: { summary: 'share a region with peers; prints a ticket for `quicmap mount`', load: async () => (await import('./commands/share.ts')).share },
  mount: { summary: "mount a peer's shared region from its ticket, as a local NBD export", load: async () => (await import('./commands/mount.ts')).mount },
  dht: { summary: 'run a DHT node for a private swarm (a bootstrap node)', load: async () => (await import('./commands/dht.ts')).dht },
  relay: { summary: 'relay circuits for peers that cannot reach each other directly', load: async () => (await import('./commands/relay.ts')).relay },
  status: { summary: 'show what a running share, mount, relay or dht is doing', load: async () => (await import('./commands/status.ts')).status },
  store: { summary: "hold sealed chunks for other nodes' encrypted RAM; prints a ticket for `quicmap ram`", load: async () => (await import('./commands/store.ts')).store },
  ram: { summary: 'encrypted remote RAM: a local NBD export sealed on storage peers', load: async () => (await import('./commands/ram.ts')).ram },
  copy: { summary: 'copy between two sharers; the bytes go from source to destination directly, not through here', load: async () => (await import('./commands/copy.ts')).copy },
  migrate: { summary: 'live-migrate a shared region and its ownership to this node', load: async () => (await import('./commands/migrate.ts')).migrate },
};

function topHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((n) => n.length));
  const lines = Object.entries(COMMANDS).map(([n, c]) => `  ${n.padEnd(width)}  ${c.summary}`);
  return `quicmap — share Linux memory regions and block devices peer to peer

Usage: quicmap <command> [options]

Commands:
${lines.join('\n')}

Run 'quicmap <command> --help' for a command's options.
`;
}

/**
 * A reader that goes away (`quicmap migrate --json | head -1`) must not end a
 * running command with a stack trace halfway through a migration or copy:
 * Node ignores SIGPIPE and reports EPIPE on stdout instead; from then on the
 * output is dropped and the work goes on.
 */
function dropOutputWhenReaderLeaves(): void {
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE' || e.code === 'ERR_STREAM_DESTROYED') return;
    process.stderr.write(`quicmap: stdout: ${e.message}\n`);
  });
}

export async function main(argv: string[]): Promise<number> {
  dropOutputWhenReaderLeaves();
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(topHelp());
    return name ? 0 : 2;
  }
  if (name === '--version') {
    const pkg = await import('../package.json', { with: { type: 'json' } });
    process.stdout.write(`${pkg.default.version}\n`);
    return 0;
  }
  const entry = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!entry) {
    process.stderr.write(`quicmap: unknown command "${name}"\n\n${topHelp()}`);
    return 2;
  }
  const cmd = await entry.load();
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(cmd.usage.endsWith('\n') ? cmd.usage : `${cmd.usage}\n`);
    return 0;
  }
  let code: number;
  try {
    code = await cmd.run(rest);
  } catch (e) {
    // User errors: one line naming the command (and the flag, where one is
    // to blame) and a distinct exit code; anything else is a bug: its stack.
    const c = classify(e);
    if (e instanceof CliError) stderrLog.line(`quicmap ${e.message}`);
    else if (c) stderrLog.line(`quicmap ${name}: ${c.reason}${e instanceof QuicmapError ? ` [${e.code}]` : ''}`);
    else stderrLog.line(`quicmap ${name}: internal error (a bug; please report it):\n${(e as Error)?.stack ?? String(e)}`);
    code = c ? c.exitCode : EXIT.internal;
  }
  await stderrLog.flush();
  return code;
}
