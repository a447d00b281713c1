/**
 * What one `quicmap` subcommand is. Each lives in bin/commands/<name>.ts and
 * is listed in cli.ts; the CLI stays thin: parse flags, call into the
 * library, print.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';

export interface Command {
  name: string;
  /** Full help text, printed for --help. */
  usage: string;
  /** Runs the command; resolves to the process exit code. */
  run(argv: string[]): Promise<number>;
}

/** A user error: printed without a stack trace, exit code 2. */
export class UsageError extends Error {}

/** parseArgs with strict checking; unknown flags become a UsageError naming the command. */
export function parseFlags<T extends NonNullable<ParseArgsConfig['options']>>(
  command: string,
  argv: string[],
  options: T,
  allowPositionals = false,
) {
  try {
    return parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals, strict: true });
  } catch (e) {
    throw new UsageError(`${command}: ${(e as Error).message} (see quicmap ${command} --help)`);
  }
}

/** Logs go to stderr so stdout stays for results (URIs, tickets, JSON). */
export function log(message: string): void {
  process.stderr.write(`${message}\n`);
}

/** Parse "HOST:PORT", "[v6]:PORT" or ":PORT" (host defaults to 127.0.0.1: nothing is exposed unless asked). */
export function parseHostPort(text: string, flag = '--listen'): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new UsageError(`${flag}: expected HOST:PORT, got "${text}"`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

/** Resolve once SIGINT or SIGTERM arrives (a second signal exits at once). */
export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const onSignal = (sig: NodeJS.Signals) => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      process.once('SIGINT', () => process.exit(130));
      process.once('SIGTERM', () => process.exit(143));
      resolve(sig);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}
