/**
 * How the CLI reports errors. A user error prints one line naming the
 * command and the flag (`quicmap nbd: --backend file:/x: /x: is a
 * directory`) and exits with a code that says which kind of error it was;
 * only a real bug prints a stack trace. The codes are documented in
 * bin/README.md and must never be renumbered.
 */
import { DamagedFileError, PathError, QuicmapError } from '../base/errors.ts';

export const EXIT = {
  ok: 0,
  /** The operation failed at run time: peer refused or unreachable, I/O error, timeout. */
  failed: 1,
  /** Bad command line: unknown flag, bad or missing value, conflicting flags. */
  usage: 2,
  /** A path given cannot be used as asked: missing, wrong kind, not empty, in use. */
  path: 3,
  /** Permission denied on a path or address. */
  permission: 4,
  /** A listen address cannot be used: in use, or not an address of this machine. */
  address: 5,
  /** A file holds damaged content (identity file, region metadata). */
  damaged: 6,
  /** A bug in quicmap: the stack trace is printed. */
  internal: 70,
} as const;

/** An error for the user: `message` already names the command and the flag. */
export class CliError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode: number, options?: { cause?: unknown }) {
    super(message, options);
    this.exitCode = exitCode;
  }
}

const PATH_CODES: Record<string, string> = {
  ENOENT: 'no such file or directory',
  ENOTDIR: 'a part of the path is not a directory',
  EISDIR: 'is a directory',
  EEXIST: 'already exists',
  ENOTEMPTY: 'directory is not empty',
  ELOOP: 'too many symbolic links',
  ENAMETOOLONG: 'name too long',
  ENXIO: 'no such device',
  ENODEV: 'no such device',
  ENOTSOCK: 'not a socket',
  EBUSY: 'in use',
};
const PERMISSION_CODES: Record<string, string> = {
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
};
const ADDRESS_CODES: Record<string, string> = {
  EADDRINUSE: 'address already in use',
  EADDRNOTAVAIL: 'not an address of this machine',
  EAFNOSUPPORT: 'address family not supported',
};

/** The errors behind `e` (itself, then its causes). */
function chain(e: unknown): unknown[] {
  const out: unknown[] = [];
  for (let x: unknown = e; x !== undefined && x !== null && out.length < 8; x = (x as { cause?: unknown }).cause) out.push(x);
  return out;
}

/** A system error code in the chain, also recognised from the QUIC layer's bare messages. */
function systemCode(e: unknown): string | undefined {
  for (const x of chain(e)) {
    // A QuicmapError's code is ours (EACCES: a peer refused us), not the system's.
    const code = x instanceof QuicmapError ? undefined : (x as NodeJS.ErrnoException).code;
    if (typeof code === 'string' && (code in PATH_CODES || code in PERMISSION_CODES || code in ADDRESS_CODES)) return code;
    const m = x instanceof Error ? x.message : '';
    if (/os error 98\b|address already in use/i.test(m)) return 'EADDRINUSE';
    if (/os error 99\b|cannot assign requested address/i.test(m)) return 'EADDRNOTAVAIL';
    if (/os error 13\b/i.test(m)) return 'EACCES';
  }
  return undefined;
}

/**
 * Classify an error for the user, or undefined if it is a bug. `forFlag`:
 * the error came from using a flag's value, so a QuicmapError EINVAL means
 * the value was bad (usage); elsewhere a QuicmapError is a run-time failure
 * (a ticket refused, a peer unreachable: exit 1).
 */
export function classify(e: unknown, forFlag = false): { exitCode: number; reason: string } | undefined {
  if (e instanceof CliError) return { exitCode: e.exitCode, reason: e.message };
  // Our own path and file errors say more than the system error behind them.
  if (e instanceof DamagedFileError) return { exitCode: EXIT.damaged, reason: e.message };
  if (e instanceof PathError) return { exitCode: EXIT.path, reason: e.message };
  // Outside a flag's step a QuicmapError is a run-time failure, whatever system error lies behind it.
  if (!forFlag && e instanceof QuicmapError) return { exitCode: EXIT.failed, reason: e.message };
  const sys = systemCode(e);
  const path = (chain(e).find((x) => typeof (x as NodeJS.ErrnoException).path === 'string') as NodeJS.ErrnoException | undefined)?.path;
  if (sys) {
    const human = PATH_CODES[sys] ?? PERMISSION_CODES[sys] ?? ADDRESS_CODES[sys]!;
    const exitCode = sys in PATH_CODES ? EXIT.path : sys in PERMISSION_CODES ? EXIT.permission : EXIT.address;
    return { exitCode, reason: path ? `${path}: ${human}` : human };
  }
  if (e instanceof QuicmapError) {
    const exitCode = !forFlag ? EXIT.failed : e.code === 'EINVAL' ? EXIT.usage : e.code === 'EBUSY' ? EXIT.path : EXIT.failed;
    return { exitCode, reason: e.message };
  }
  return undefined;
}

/**
 * Run one step that uses the value of `flag`; an error it raises that is the
 * user's (bad value, unusable path or address) becomes a CliError naming the
 * command, the flag and the value. Bugs pass through untouched.
 */
export async function forFlag<T>(
  command: string,
  flag: string,
  value: string | undefined,
  step: () => T | Promise<T>,
  /** Only these exit codes are the flag's fault; other errors pass through (a step that does more than use the flag). */
  only?: readonly number[],
): Promise<T> {
  try {
    return await step();
  } catch (e) {
    if (e instanceof CliError) throw e;
    const c = classify(e, true);
    if (!c || (only && !only.includes(c.exitCode))) throw e;
    const shown = value === undefined ? flag : `${flag} ${value.length > 80 ? `${value.slice(0, 77)}...` : value}`;
    throw new CliError(`${command}: ${shown}: ${c.reason}`, c.exitCode, { cause: e });
  }
}
