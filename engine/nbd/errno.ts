/**
 * The one errno table of the NBD wire: how a typed QuicmapError code becomes
 * the errno of an NBD error reply (server side) and how an errno from a
 * server becomes a code again (client side). The numbers themselves are the
 * protocol's (NBD_ERRNO in constants.ts, Linux values). Codes NBD has no
 * errno for map to the closest one a client acts on: EACCES to EPERM, the
 * rest (a timeout, a broken peer behind the store, a busy region) to EIO.
 */
import type { ErrorCode } from '../../base/errors.ts';
import { NBD_ERRNO } from './constants.ts';

const ERRNO_OF: Record<ErrorCode, number> = {
  EINVAL: NBD_ERRNO.EINVAL,
  EPERM: NBD_ERRNO.EPERM,
  EACCES: NBD_ERRNO.EPERM,
  EIO: NBD_ERRNO.EIO,
  ENOSPC: NBD_ERRNO.ENOSPC,
  EOVERFLOW: NBD_ERRNO.EOVERFLOW,
  ENOTSUP: NBD_ERRNO.ENOTSUP,
  ESHUTDOWN: NBD_ERRNO.ESHUTDOWN,
  ETIMEDOUT: NBD_ERRNO.EIO,
  EPROTO: NBD_ERRNO.EIO,
  EBUSY: NBD_ERRNO.EIO,
};

const CODE_OF = new Map<number, ErrorCode>([
  [NBD_ERRNO.EPERM, 'EPERM'],
  [NBD_ERRNO.EIO, 'EIO'],
  [NBD_ERRNO.ENOMEM, 'EIO'],
  [NBD_ERRNO.EINVAL, 'EINVAL'],
  [NBD_ERRNO.ENOSPC, 'ENOSPC'],
  [NBD_ERRNO.EOVERFLOW, 'EOVERFLOW'],
  [NBD_ERRNO.ENOTSUP, 'ENOTSUP'],
  [NBD_ERRNO.ESHUTDOWN, 'ESHUTDOWN'],
]);

/** The errno an NBD error reply carries for `code`. */
export function nbdErrnoOf(code: ErrorCode): number {
  return ERRNO_OF[code];
}

/** The code for an errno an NBD server answered with (unknown ones: EIO). */
export function codeOfNbdErrno(errno: number): ErrorCode {
  return CODE_OF.get(errno) ?? 'EIO';
}
