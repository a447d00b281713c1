/**
 * What one `quicmap` subcommand is. Each lives in bin/commands/<name>.ts and
 * is listed in cli.ts; the CLI stays thin: parse flags, call into the
 * library, print.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { LogWriter } from '../base/log-writer.ts';
import { CliError, EXIT } from './errors.ts';

export interface Command {
  name: string;
  /** Full help text, printed for --help. */
  usage: string;
  /** Runs the command; resolves to the process exit code. */
  run(argv: string[]): Promise<number>;
}

/** A bad command line: printed without a stack trace, exit code 2 (EXIT.usage). */
export class UsageError extends CliError {
  constructor(message: string) {
    super(message, EXIT.usage);
  }
}

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

/**
 * Logs go to stderr so stdout stays for results (URIs, tickets, JSON),
 * through a writer that never blocks serving when stderr is slow (lines are
 * dropped, and counted, instead). cli.ts flushes it before exiting.
 */
export const stderrLog = new LogWriter({ fd: 2 });

export function log(message: string): void {
  stderrLog.line(message);
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

/**
 * A duration flag: "500ms", "90" (seconds), "30s", "15m", "12h", "7d" →
 * milliseconds. Anything else, or less than `minMs`, is a UsageError naming
 * the command and the flag the user typed.
 */
export function parseDurationFlag(command: string, flag: string, text: string, minMs = 1): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/i.exec(text);
  if (!m) throw new UsageError(`${command}: ${flag}: not a duration: "${text}" (try 500ms, 30s, 15m, 12h, 7d)`);
  const mult = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[(m[2] ?? 's').toLowerCase() as 's']!;
  const ms = Number(m[1]) * mult;
  if (!(ms >= minMs)) {
    throw new UsageError(`${command}: ${flag}: "${text}" is too short (at least ${minMs >= 1000 ? `${minMs / 1000}s` : `${minMs}ms`})`);
  }
  return Math.ceil(ms);
}
