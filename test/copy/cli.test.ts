/** `quicmap copy` on the command line: --help, and user errors as one line naming the argument or flag, exit 2 (bin/README.md). */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { run } from '../helpers/env.ts';
import { QUICMAP } from '../helpers/cli.ts';
import { EXIT } from '../../bin/errors.ts';

const T = `qm1${'a'.repeat(60)}`;

async function copy(args: string[]) {
  return run(process.execPath, [QUICMAP, 'copy', ...args], { timeoutMs: 60_000 });
}

test('--help describes the command and its arguments', async () => {
  const r = await copy(['--help']);
  assert.is(r.code, 0);
  assert.match(r.stdout, /Usage: quicmap copy SRC_TICKET\[:OFFSET\[\+LENGTH\]\] DST_TICKET\[:OFFSET\]/);
  assert.match(r.stdout, /--json/);
});

test('user errors: one line naming the argument or flag, exit 2, no stack', async () => {
  const cases: Array<[string[], RegExp]> = [
    [[], /^quicmap copy: SRC_TICKET is missing/],
    [[T], /^quicmap copy: DST_TICKET is missing/],
    [['nope', T], /^quicmap copy: SRC_TICKET: not a ticket/],
    [[`${T}:12x`, T], /^quicmap copy: SRC_TICKET: OFFSET: not a size: "12x"/],
    [[T, `${T}:0+4096`], /^quicmap copy: DST_TICKET: expected :OFFSET after the ticket/],
    [[T, T, '--window', '0'], /^quicmap copy: --window must be a whole number from 1 to 64/],
    [[T, T, '--batch', '1'], /^quicmap copy: --batch must be between 64KiB and 64MiB/],
    [[T, T, '--valid-for', 'soon'], /^quicmap copy: --valid-for: not a duration/],
    [[T, T, '--bogus'], /^quicmap copy: .*bogus/],
    [[T, T, '--dht', 'nowhere'], /^quicmap copy: --dht: expected HOST:PORT/],
    [[T, T, '--dht-listen', '127.0.0.1:0'], /^quicmap copy: --dht-listen needs --dht/],
  ];
  const results = await Promise.all(cases.map(([args]) => copy(args)));
  results.forEach((r, i) => {
    const [args, says] = cases[i]!;
    const lines = r.stderr.trim().split('\n');
    assert.is(r.code, EXIT.usage, `${args.join(' ')}: exit ${r.code}: ${r.stderr}`);
    assert.is(lines.length, 1, `${args.join(' ')}: one line, got ${r.stderr}`);
    assert.match(lines[0]!, says);
    assert.not.match(r.stderr, /at .*\.ts:\d+/, 'no stack trace');
  });
});

test('a damaged ticket is a run-time refusal (exit 1), one line', async () => {
  const r = await copy([T, T]);
  assert.is(r.code, EXIT.failed, r.stderr);
  assert.match(r.stderr.trim(), /^quicmap copy: ticket refused: .*\[EACCES\]$/);
});

test.run();
