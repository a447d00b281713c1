/**
 * A reader of a command's stdout that goes away (`quicmap migrate --json |
 * head -1`) must not crash the command with a stack trace halfway through:
 * the migration still completes, and the command serves on until SIGTERM.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { eventually, Scope, withTimeout } from '../helpers/env.ts';
import { startCli } from '../helpers/cli.ts';

test('migrate --json whose stdout reader has gone still completes, without a stack trace', async () => {
  const s = new Scope();
  try {
    await withTimeout(90_000, 'migrate with a closed stdout', async () => {
      const dir = s.tmpdir();
      const share = startCli(s, ['share', '--size', '4MiB', '--listen', '127.0.0.1:0', '--transport', 'tcp', '--socket', join(dir, 'src.sock')], { ...process.env, QUICMAP_HOME: join(dir, 'a') });
      const ticket = await share.line(60_000);
      const mig = startCli(s, ['migrate', ticket, '--socket', join(dir, 'dst.sock'), '--json', '--finalize', 'now'], { ...process.env, QUICMAP_HOME: join(dir, 'b') });
      assert.match(await mig.line(60_000), /^nbd\+unix:/);
      // The reader leaves: every later write to stdout gets EPIPE.
      mig.child.stdout!.destroy();
      // It goes on to own and serve the region (its summary goes to stderr too), then stops on SIGTERM like any server.
      await eventually(60_000, () => `no "migrated" line; stderr:\n${mig.stderr()}`, () => /migrated /.test(mig.stderr()) || mig.child.exitCode !== null);
      assert.is(mig.child.exitCode, null, `migrate exited early:\n${mig.stderr()}`);
      mig.child.kill('SIGTERM');
      const code = await mig.exited;
      assert.not.match(mig.stderr(), /\n\s+at /, `a stack trace on stderr:\n${mig.stderr()}`);
      assert.is(code, 0, mig.stderr());
    });
  } finally {
    await s.close();
  }
});

test.run();
