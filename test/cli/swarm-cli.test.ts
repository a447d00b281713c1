/**
 * The swarm commands on loopback, as a user runs them: `quicmap dht`,
 * `quicmap relay`, `share --dht --relay` (a ticket without addresses),
 * `mount --dht`, `quicmap status`; and their usage errors (one line naming
 * the command and the flag, exit 2).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { Scope, SYSTEM_PATH, needTools, run, withTimeout } from '../helpers/env.ts';
import { QUICMAP, startCli } from '../helpers/cli.ts';
import { parseTicket } from '../../crypto/ticket.ts';

const withTools = needTools(test, ['qemu-io'], 'swarm CLI test');

withTools('dht + relay + share --dht --relay + mount --dht + status, on loopback', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'swarm cli', async () => {
      const home = s.tmpdir();
      const env = { ...process.env, PATH: SYSTEM_PATH, QUICMAP_HOME: home };
      const dht = await startCli(s, ['dht', '--listen', '127.0.0.1:0', '--query-timeout', '250ms'], env).line();
      assert.match(dht, /^127\.0\.0\.1:\d+$/);
      const relay = await startCli(s, ['relay', '--listen', '127.0.0.1:0', '--identity', join(home, 'relay.id')], env).line();
      assert.match(relay, /^[a-z2-7]{52}@127\.0\.0\.1:\d+$/);
      const share = startCli(s, ['share', '--size', '8MiB', '--listen', '127.0.0.1:0', '--transport', 'tcp', '--dht', dht, '--relay', relay, '--identity', join(home, 'a.id'), '--control', join(home, 'a.sock')], env);
      const ticket = await share.line();
      assert.equal((await parseTicket(ticket)).claims.endpoints, [], 'a ticket without addresses');
      const noDht = await run(process.execPath, [QUICMAP, 'mount', ticket, '--listen', '127.0.0.1:0', '--identity', join(home, 'b.id')], { env, timeoutMs: 20_000 });
      assert.is(noDht.code, 1);
      assert.match(noDht.stderr, /holds no address.*--dht/);
      const mount = startCli(s, ['mount', ticket, '--dht', dht, '--listen', '127.0.0.1:0', '--identity', join(home, 'b.id'), '--control', join(home, 'b.sock')], env);
      const uri = await mount.line();
      const q = await run('qemu-io', ['-f', 'raw', uri, '-c', 'write -P 0x6b 0 1M', '-c', 'read -P 0x6b 0 1M'], { env, timeoutMs: 30_000 });
      assert.is(q.code, 0, q.stderr);
      assert.not.match(q.stdout, /failed/i);
      const st = await run(process.execPath, [QUICMAP, 'status', '--control', join(home, 'b.sock'), '--json'], { env, timeoutMs: 20_000 });
      assert.is(st.code, 0, st.stderr);
      const j = JSON.parse(st.stdout);
      assert.match(j.mounts[0].path, /^direct tcp:\/\/127\.0\.0\.1:\d+$/);
      assert.ok(j.peers[0].sent >= 1 << 20);
      // Without --control: every command in $QUICMAP_HOME/run answers (here dht and relay).
      const all = await run(process.execPath, [QUICMAP, 'status'], { env, timeoutMs: 20_000 });
      assert.is(all.code, 0, all.stderr);
      assert.match(all.stdout, /^dht dht 127\.0\.0\.1/m);
      assert.match(all.stdout, /^relay [a-z2-7]{52}/m);
      assert.match(mount.stderr(), /control socket: /);
      assert.not.match(mount.stderr(), /record is stale/, 'the DHT record matches the signed manifest');
    });
  } finally {
    await s.close();
  }
});

test('usage errors: one line naming the command and the flag, exit 2', async () => {
  const cases: Array<[string[], RegExp]> = [
    [['relay', '--circuit-bytes', 'lots'], /^quicmap relay: --circuit-bytes: not a size/],
    [['relay', '--max-reservations', '0'], /^quicmap relay: --max-reservations must be a positive integer/],
    [['relay', '--reservation-ttl', '1s'], /^quicmap relay: --reservation-ttl must be at least 2s/],
    [['relay', '--allow', 'nobody'], /^quicmap relay: --allow: not a peer id/],
    [['dht', '--listen', 'nowhere'], /^quicmap dht: --listen: expected HOST:PORT/],
    [['dht', '--bootstrap', 'public'], /^quicmap dht: --bootstrap public is not allowed/],
    [['share', '--size', '1MiB', '--dht', 'x'], /^quicmap share: --dht: expected HOST:PORT/],
    [['share', '--size', '1MiB', '--relay', 'r@1.2.3.4:5'], /^quicmap share: --relay: not a relay address/],
    [['mount', 'qm1aaaa', '--relay', 'x'], /^quicmap mount: Unknown option '--relay'/],
    [['mount', 'qm1aaaa', '--by-reference'], /^quicmap mount: --by-reference needs --managed/],
    [['status', '--control', '/nonexistent/quicmap.sock'], /^quicmap status: cannot reach control socket/],
  ];
  const s = new Scope();
  try {
    const env = { ...process.env, QUICMAP_HOME: s.tmpdir() };
    for (const [args, re] of cases) {
      const r = await run(process.execPath, [QUICMAP, ...args], { env, timeoutMs: 20_000 });
      assert.ok(r.code === 2 || (args[0] === 'status' && r.code === 1), `${args.join(' ')}: exit ${r.code}`);
      assert.match(r.stderr, re, args.join(' '));
      assert.is(r.stderr.trim().split('\n').length, 1, `one line for ${args.join(' ')}: ${r.stderr}`);
    }
  } finally {
    await s.close();
  }
});

test.run();
