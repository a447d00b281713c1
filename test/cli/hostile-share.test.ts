/**
 * The issue-8 scenario on the real CLI: a TCP sharer with ~80 idle
 * connections held open (before: 64 pending handshakes of 5 s each, and 0 of
 * 5 new mounts got in). New mounts must connect while the idle ones are held.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect, type Socket } from 'node:net';
import { Scope, withTimeout } from '../helpers/env.ts';
import { startCli } from '../helpers/cli.ts';
import { join } from 'node:path';

const test = suite('cli/hostile-share');

test('tcp sharer: 80 idle connections do not lock new mounts out', async () => {
  const s = new Scope();
  try {
    await withTimeout(120_000, 'idle flood on a sharer', async () => {
      const dir = s.tmpdir();
      const share = startCli(s, ['share', '--size', '4MiB', '--transport', 'tcp', '--listen', '127.0.0.1:0', '--json'], { ...process.env, QUICMAP_HOME: join(dir, 'a') });
      const { ticket, address } = JSON.parse(await share.line(30_000)) as { ticket: string; address: string };
      const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];
      const idle: Socket[] = [];
      s.defer(() => idle.forEach((x) => x.destroy()));
      for (let i = 0; i < 80; i++) {
        idle.push(await new Promise<Socket>((resolve, reject) => {
          const x = connect(port, host, () => resolve(x));
          x.on('error', reject);
        }));
      }
      const mounts = [0, 1, 2].map((i) => startCli(s, ['mount', ticket, '--listen', '127.0.0.1:0'], { ...process.env, QUICMAP_HOME: join(dir, `b${i}`) }));
      for (const m of mounts) assert.match(await m.line(60_000), /^nbd:\/\/127\.0\.0\.1:\d+\/region$/);
    });
  } finally {
    await s.close();
  }
});

test.run();
