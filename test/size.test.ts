import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { formatSize, parseSize } from '../base/size.ts';

test('parseSize reads binary and decimal units', () => {
  assert.is(parseSize('4096'), 4096);
  assert.is(parseSize('64KiB'), 65536);
  assert.is(parseSize('256MiB'), 256 * 1024 * 1024);
  assert.is(parseSize('1G'), 1024 ** 3);
  assert.is(parseSize('1GB'), 1e9);
  assert.is(parseSize('1.5 MiB'), 1.5 * 1024 * 1024);
});

test('parseSize rejects nonsense with a hint', () => {
  assert.throws(() => parseSize('lots'), /not a size/);
  assert.throws(() => parseSize('12 parsecs'), /not a size/);
  assert.throws(() => parseSize('-5'), /not a size/);
});

test('formatSize picks a readable unit', () => {
  assert.is(formatSize(512), '512 B');
  assert.is(formatSize(65536), '64 KiB');
  assert.is(formatSize(1.5 * 1024 ** 3), '1.50 GiB');
  assert.is(formatSize(256 * 1024 ** 2), '256 MiB');
});

test.run();
