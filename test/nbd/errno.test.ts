/** engine/nbd/errno.ts: the one NBD errno table, both directions. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { ErrorCode } from '../../base/errors.ts';
import { NBD_ERRNO } from '../../engine/nbd/constants.ts';
import { codeOfNbdErrno, nbdErrnoOf } from '../../engine/nbd/errno.ts';

test('codes NBD has an errno for go there and back; the others map to what a client acts on', () => {
  const native: ErrorCode[] = ['EINVAL', 'EPERM', 'EIO', 'ENOSPC', 'EOVERFLOW', 'ENOTSUP', 'ESHUTDOWN'];
  for (const c of native) assert.is(codeOfNbdErrno(nbdErrnoOf(c)), c, c);
  assert.is(nbdErrnoOf('EACCES'), NBD_ERRNO.EPERM);
  for (const c of ['ETIMEDOUT', 'EPROTO', 'EBUSY'] as const) assert.is(nbdErrnoOf(c), NBD_ERRNO.EIO, c);
  assert.is(codeOfNbdErrno(NBD_ERRNO.ENOMEM), 'EIO');
  assert.is(codeOfNbdErrno(12345), 'EIO', 'unknown errno');
});

test.run();
