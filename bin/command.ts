/**
 * What one `quicmap` subcommand is. Each lives in bin/commands/<name>.ts and
 * is listed in cli.ts; the CLI stays thin: parse flags, call into the
 * library, print.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';

export interface Command {
  name: string;
  /** One line for the command list. */
  summary: string;
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
