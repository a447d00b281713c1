/**
 * Typed errors shared by every layer. Each carries an errno-style `code` so the
 * NBD server (and later the wire protocol) can map it to an answer for the
 * client without string matching.
 */
export type ErrorCode =
  | 'EINVAL' // bad argument: out of range, misaligned where alignment is required
  | 'EPERM' // operation not permitted (write to a read-only export or grant)
  | 'EACCES' // peer not authorised
  | 'EIO' // the store (or the peer behind it) failed
  | 'ENOSPC' // out of space
  | 'EOVERFLOW' // request larger than the negotiated maximum
  | 'ENOTSUP' // operation not supported by this store
  | 'ESHUTDOWN' // the store or connection is closed
  | 'ETIMEDOUT' // a deadline passed
  | 'EBUSY' // held by someone else (a region directory another process has open)
  | 'EPROTO'; // the peer broke the protocol

export class QuicmapError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A request touches bytes outside [0, size). */
export class OutOfRangeError extends QuicmapError {
  constructor(offset: number, length: number, size: number) {
    super('EINVAL', `request [${offset}, +${length}) is outside the region of ${size} bytes`);
  }
}

/** A write, trim or zero reached a read-only store. */
export class ReadOnlyError extends QuicmapError {
  constructor(what = 'region') {
    super('EPERM', `${what} is read-only`);
  }
}

/** A request is above the advertised maximum; it was refused without buffering it. */
export class RequestTooLargeError extends QuicmapError {
  constructor(length: number, max: number) {
    super('EOVERFLOW', `request of ${length} bytes exceeds the maximum of ${max} bytes`);
  }
}

/** The store, connection or node has been closed. */
export class ClosedError extends QuicmapError {
  constructor(what = 'store') {
    super('ESHUTDOWN', `${what} is closed`);
  }
}

/** The other side sent bytes that do not follow the protocol. */
export class ProtocolError extends QuicmapError {
  constructor(message: string) {
    super('EPROTO', message);
  }
}

/** A path the user named cannot be used as asked: missing, of the wrong kind, not empty, not a socket. */
export class PathError extends QuicmapError {
  readonly path: string;
  constructor(path: string, why: string, options?: { cause?: unknown }) {
    super('EINVAL', `${path}: ${why}`, options);
    this.path = path;
  }
}

/** A file holds something other than what it should (a damaged identity file, say). */
export class DamagedFileError extends QuicmapError {
  readonly path: string;
  constructor(path: string, why: string) {
    super('EINVAL', `${path}: ${why}`);
    this.path = path;
  }
}

/** Anything thrown by a store, whatever its type, as the code a client should see. */
export function errorCode(err: unknown): ErrorCode {
  if (err instanceof QuicmapError) return err.code;
  const sys = (err as NodeJS.ErrnoException | undefined)?.code;
  switch (sys) {
    case 'ENOSPC':
    case 'EDQUOT':
      return 'ENOSPC';
    case 'EPERM':
    case 'EROFS':
      return 'EPERM';
    case 'EACCES':
      return 'EACCES';
    case 'EINVAL':
      return 'EINVAL';
    default:
      return 'EIO';
  }
}
