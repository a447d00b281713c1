/** Entry point of the `quicmap` command: dispatches to bin/commands/*. */
import { UsageError, type Command } from './command.ts';
import { QuicmapError } from '../engine/errors.ts';

// One entry per subcommand; each module is loaded only when its command runs.
const loaders: Record<string, () => Promise<Command>> = {
  demo: async () => (await import('./commands/demo.ts')).demo,
  nbd: async () => (await import('./commands/nbd.ts')).nbd,
  share: async () => (await import('./commands/share.ts')).share,
  mount: async () => (await import('./commands/mount.ts')).mount,
};

const SUMMARIES: Record<string, string> = {
  demo: 'run a local demo swarm on loopback and print a summary (npm start)',
  nbd: 'serve a local region over NBD (and optionally mount it for mmap)',
  share: 'share a region with peers; prints a ticket for `quicmap mount`',
  mount: "mount a peer's shared region from its ticket, as a local NBD export",
};

function topHelp(): string {
  const width = Math.max(...Object.keys(SUMMARIES).map((n) => n.length));
  const lines = Object.entries(SUMMARIES).map(([n, s]) => `  ${n.padEnd(width)}  ${s}`);
  return `quicmap — share Linux memory regions and block devices peer to peer

Usage: quicmap <command> [options]

Commands:
${lines.join('\n')}

Run 'quicmap <command> --help' for a command's options.
`;
}

export async function main(argv: string[]): Promise<number> {
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
  const load = loaders[name];
  if (!load) {
    process.stderr.write(`quicmap: unknown command "${name}"\n\n${topHelp()}`);
    return 2;
  }
  const cmd = await load();
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(cmd.usage.endsWith('\n') ? cmd.usage : `${cmd.usage}\n`);
    return 0;
  }
  try {
    return await cmd.run(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`quicmap ${e.message}\n`);
      return 2;
    }
    if (e instanceof QuicmapError) {
      process.stderr.write(`quicmap ${name}: ${e.message} [${e.code}]\n`);
      return 1;
    }
    throw e;
  }
}
