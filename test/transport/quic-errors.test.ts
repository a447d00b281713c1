/** transports/quic.ts mapNativeError: the native layer's messages become typed codes. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { QuicmapError } from '../../base/errors.ts';
import { mapNativeError } from '../../transports/quic.ts';

const native = (message: string) => Object.assign(new Error(message), { code: 'Unknown' });

test('quinn texts map to the codes callers act on', () => {
  const cases: Array<[string, string]> = [
    ['timed out', 'ETIMEDOUT'],
    ['stream reset by peer: error 0', 'EIO'],
    ['reset by peer', 'EIO'],
    ['sending stopped by peer: error 0', 'EIO'],
    ['closed by peer: 0', 'ESHUTDOWN'],
    ['aborted by peer: the cryptographic handshake failed', 'EIO'],
    ['connection lost', 'ESHUTDOWN'],
    ['closed', 'ESHUTDOWN'],
    ['something new', 'EIO'],
  ];
  for (const [msg, code] of cases) {
    const e = mapNativeError(native(msg), 'read');
    assert.is(e.code, code, msg);
    assert.ok(e.message.startsWith('read: '), e.message);
    assert.is((e as { cause?: unknown }).cause instanceof Error, true);
  }
  const typed = new QuicmapError('EACCES', 'already typed');
  assert.is(mapNativeError(typed, 'dial'), typed, 'a typed error passes unchanged');
});

test.run();
