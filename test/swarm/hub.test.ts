/**
 * Hub topology in network namespaces the test creates: A and B each linked
 * only to R, R does not forward. R runs `quicmap dht` and `quicmap relay` on
 * an address both reach (10.77.0.1 on R's loopback, routed to by A and B).
 * Links are veth pairs shaped by tc tbf. B mounts A's region from a ticket
 * without addresses: the DHT names the
 * relay, the circuit carries the data, real NBD clients (nbdcopy, qemu-io)
 * read and write A's bytes through B's export, and a capture on R holds
 * none of the plaintext written through B. With a direct A–B link as well,
 * the mount goes direct and R relays nothing.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync, writeFileSync, existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { Scope, SYSTEM_PATH, eventually, killTree, needCondition, needTools, run, withTimeout } from '../helpers/env.ts';
import { startCli, type CliProcess } from '../helpers/cli.ts';
import { canUseNetns, link, netns, type Ns } from '../helpers/netns.ts';

const test = suite('swarm/hub');
const tools = needTools(test, ['ip', 'tc', 'tcpdump', 'nbdcopy', 'qemu-io'], 'hub topology test');
const root = canUseNetns();

const env = (home: string) => ({ ...process.env, PATH: SYSTEM_PATH, QUICMAP_HOME: home });
const CANARY = 'QUICMAP-CANARY-plaintext-must-not-cross-the-relay-';

interface Hub {
  a: Ns;
  b: Ns;
  r: Ns;
  dir: string;
  dht: string;
  relayAddress: string;
  relay: CliProcess;
}

async function hub(s: Scope, directLink: boolean, relayFlags: string[] = []): Promise<Hub> {
  const r = netns(s, 'r');
  const a = netns(s, 'a');
  const b = netns(s, 'b');
  // tbf-shaped links, as between real hosts.
  link(a, '10.77.1.2/24', r, '10.77.1.1/24', '400mbit');
  link(b, '10.77.2.2/24', r, '10.77.2.1/24', '400mbit');
  if (directLink) link(a, '10.77.3.1/24', b, '10.77.3.2/24', '400mbit');
  r.run('sysctl', ['-qw', 'net.ipv4.ip_forward=0']);
  r.run('ip', ['addr', 'add', '10.77.0.1/32', 'dev', 'lo']);
  a.run('ip', ['route', 'add', '10.77.0.1/32', 'via', '10.77.1.1']);
  b.run('ip', ['route', 'add', '10.77.0.1/32', 'via', '10.77.2.1']);
  const dir = s.tmpdir('quicmap-hub-');
  const dhtProc = startCli(s, ['dht', '--listen', '10.77.0.1:6881', '--query-timeout', '300ms'], env(join(dir, 'r')), r.prefix);
  const dht = await dhtProc.line();
  const relay = startCli(s, ['relay', '--listen', '10.77.0.1:4000', '--identity', join(dir, 'relay.id'), ...relayFlags], env(join(dir, 'r')), r.prefix);
  const relayAddress = await relay.line();
  assert.match(relayAddress, /^[a-z2-7]{52}@10\.77\.0\.1:4000$/);
  return { a, b, r, dir, dht, relayAddress, relay };
}

async function status(ns: Ns, home: string, control: string): Promise<Record<string, any>> {
  const rr = await run('ip', ['netns', 'exec', ns.name, process.execPath, join(import.meta.dirname, '../../bin/quicmap.js'), 'status', '--control', control, '--json'], { env: env(home), timeoutMs: 20_000 });
  assert.is(rr.code, 0, rr.stderr);
  return JSON.parse(rr.stdout);
}

function startCapture(s: Scope, r: Ns, file: string): Promise<() => Promise<void>> {
  const child = spawn('ip', ['netns', 'exec', r.name, 'tcpdump', '-i', 'any', '-U', '-s', '0', '-w', file, 'tcp or udp'], { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    const exited = new Promise((res) => child.once('exit', res));
    try {
      process.kill(-child.pid!, 'SIGINT');
    } catch {}
    await Promise.race([exited, new Promise((res) => setTimeout(res, 3000))]);
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {}
  };
  s.defer(stop);
  return withTimeout(20_000, 'tcpdump start', new Promise<() => Promise<void>>((resolve, reject) => {
    let err = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      err += d;
      if (/listening on/.test(err)) resolve(stop);
    });
    child.once('exit', (code) => reject(new Error(`tcpdump exited ${code}: ${err}`)));
  }));
}

const run1 = (name: string, fn: (s: Scope) => Promise<void>) =>
  root
    ? tools(name, async () => {
        const s = new Scope();
        try {
          await withTimeout(120_000, name, fn(s));
        } finally {
          await withTimeout(20_000, `${name} cleanup`, s.close());
        }
      })
    : needCondition(test, false, 'root and ip netns (network namespaces)')(name, () => {});

run1('hub A—R—B: B mounts A by a ticket without addresses through the relay; NBD clients read and write A; R sees no plaintext', async (s) => {
  const h = await hub(s, false);
  const pcap = join(h.dir, 'r.pcap');
  const stopCapture = await startCapture(s, h.r, pcap);
  // A's region is a file, so the test can check A's bytes directly.
  const aImage = join(h.dir, 'a.img');
  const seed = Buffer.alloc(8 << 20);
  for (let i = 0; i < seed.length; i += 4) seed.writeUInt32LE(i * 2654435761 >>> 0, i);
  writeFileSync(aImage, seed);
  const share = startCli(
    s,
    ['share', '--backend', `file:${aImage}`, '--listen', '10.77.1.2:4433', '--dht', h.dht, '--dht-listen', '10.77.1.2:0', '--relay', h.relayAddress, '--control', join(h.dir, 'a.sock'), '--json'],
    env(join(h.dir, 'a')),
    h.a.prefix,
  );
  const shared = JSON.parse(await share.line(30_000)) as { ticket: string };
  const mount = startCli(
    s,
    ['mount', shared.ticket, '--dht', h.dht, '--dht-listen', '10.77.2.2:0', '--listen', '127.0.0.1:0', '--control', join(h.dir, 'b.sock')],
    env(join(h.dir, 'b')),
    h.b.prefix,
  );
  const uri = await mount.line(40_000);
  assert.match(uri, /^nbd:\/\/127\.0\.0\.1:\d+\/region$/);
  // Read A's data through B.
  const out = join(h.dir, 'read.bin');
  const rd = await run('ip', ['netns', 'exec', h.b.name, 'nbdcopy', uri, out], { env: env(h.dir), timeoutMs: 60_000 });
  assert.is(rd.code, 0, rd.stderr);
  assert.ok(readFileSync(out).equals(seed), 'B reads exactly A\'s bytes');
  // Write a recognisable pattern through B; it lands in A's file.
  const canary = Buffer.from(CANARY.repeat(Math.ceil((1 << 20) / CANARY.length)).slice(0, 1 << 20));
  const src = join(h.dir, 'canary.bin');
  writeFileSync(src, canary);
  const wr = await run('ip', ['netns', 'exec', h.b.name, 'nbdcopy', src, uri], { env: env(h.dir), timeoutMs: 60_000 });
  assert.is(wr.code, 0, wr.stderr);
  const q = await run('ip', ['netns', 'exec', h.b.name, 'qemu-io', '-f', 'raw', uri, '-c', 'write -P 0x5a 2M 64k', '-c', 'read -P 0x5a 2M 64k'], { env: env(h.dir), timeoutMs: 60_000 });
  assert.is(q.code, 0, q.stderr + q.stdout);
  assert.not.match(q.stdout, /Pattern verification failed/);
  const a = readFileSync(aImage);
  assert.ok(a.subarray(0, 1 << 20).equals(canary), 'the canary is in A\'s file');
  assert.ok(a.subarray(2 << 20, (2 << 20) + 65536).every((x) => x === 0x5a), 'qemu-io\'s write is in A\'s file');
  // Paths and counters.
  const sb = await status(h.b, join(h.dir, 'b'), join(h.dir, 'b.sock'));
  assert.match(sb.mounts[0].path, /^relay /, JSON.stringify(sb.mounts));
  assert.ok(sb.peers[0].sent > 1 << 20, 'bytes per peer');
  assert.is(sb.peers[0].via, 'relayed');
  assert.is(sb.peers[0].bytes.relayed.sent, sb.peers[0].sent, 'every byte counted as relayed');
  const relayStatus = await status(h.r, join(h.dir, 'r'), (await import('node:fs')).readdirSync(join(h.dir, 'r', 'run')).map((f) => join(h.dir, 'r', 'run', f)).find((f) => f.includes('relay-'))!);
  assert.ok(relayStatus.relay.bytesRelayed > 9 << 20, `relay carried the traffic (${relayStatus.relay.bytesRelayed})`);
  await stopCapture();
  assert.ok(existsSync(pcap) && statSync(pcap).size > 9 << 20, 'the capture holds the relayed traffic');
  const captured = readFileSync(pcap);
  assert.is(captured.indexOf(CANARY), -1, 'no plaintext of the canary in R\'s capture');
  assert.is(captured.indexOf(seed.subarray(4096, 4096 + 64)), -1, 'no plaintext of A\'s data in R\'s capture');
});

run1('with a direct A–B link the mount goes direct and R relays nothing', async (s) => {
  const h = await hub(s, true);
  const share = startCli(
    s,
    ['share', '--size', '16MiB', '--listen', '0.0.0.0:4433', '--dht', h.dht, '--dht-listen', '10.77.1.2:0', '--relay', h.relayAddress, '--control', join(h.dir, 'a.sock')],
    env(join(h.dir, 'a')),
    h.a.prefix,
  );
  const ticket = await share.line(30_000);
  const mount = startCli(
    s,
    ['mount', ticket, '--dht', h.dht, '--dht-listen', '10.77.2.2:0', '--listen', '127.0.0.1:0', '--control', join(h.dir, 'b.sock')],
    env(join(h.dir, 'b')),
    h.b.prefix,
  );
  const uri = await mount.line(40_000);
  const q = await run('ip', ['netns', 'exec', h.b.name, 'qemu-io', '-f', 'raw', uri, '-c', 'write -P 0x33 0 4M', '-c', 'read -P 0x33 0 4M'], { env: env(h.dir), timeoutMs: 60_000 });
  assert.is(q.code, 0, q.stderr + q.stdout);
  const sb = await status(h.b, join(h.dir, 'b'), join(h.dir, 'b.sock'));
  assert.match(sb.mounts[0].path, /^direct quic:\/\/10\.77\.3\.1:4433$/, JSON.stringify(sb.mounts));
  assert.is(sb.peers[0].via, 'direct');
  assert.is(sb.peers[0].bytes.relayed.sent + sb.peers[0].bytes.relayed.received, 0, 'status: no byte relayed');
  assert.ok(sb.mounts[0].sent > 4 << 20);
  const sa = await status(h.a, join(h.dir, 'a'), join(h.dir, 'a.sock'));
  assert.ok(sa.regions[0].relays[0].expiresAt > 0, 'A holds its reservation all the same');
  const relaySock = (await import('node:fs')).readdirSync(join(h.dir, 'r', 'run')).map((f) => join(h.dir, 'r', 'run', f)).find((f) => f.includes('relay-'))!;
  const rs = await status(h.r, join(h.dir, 'r'), relaySock);
  assert.is(rs.relay.bytesRelayed, 0, 'no byte went through R');
  assert.is(rs.relay.circuitsOpened, 0);
});

run1('relay quotas and restart: a circuit over its byte cap is closed (typed, logged on all sides), reservations beyond the maximum are refused, a relay restart is survived', async (s) => {
  const relayFlags = ['--circuit-bytes', '6MiB', '--max-reservations', '1'];
  const h = await hub(s, false, relayFlags);
  const share = startCli(
    s,
    ['share', '--size', '16MiB', '--listen', '10.77.1.2:4433', '--dht', h.dht, '--dht-listen', '10.77.1.2:0', '--relay', h.relayAddress, '--control', join(h.dir, 'a.sock')],
    env(join(h.dir, 'a')),
    h.a.prefix,
  );
  const ticket = await share.line(30_000);
  // A second sharer on the same relay: the one reservation is taken.
  const second = startCli(s, ['share', '--size', '1MiB', '--listen', '10.77.1.2:4434', '--relay', h.relayAddress, '--identity', join(h.dir, 'c.id')], env(join(h.dir, 'c')), h.a.prefix);
  assert.is(await second.exited, 1);
  assert.match(second.stderr(), /reservation refused: the relay holds its maximum of 1 reservations \[EBUSY\]/);
  const mount = startCli(
    s,
    ['mount', ticket, '--dht', h.dht, '--dht-listen', '10.77.2.2:0', '--listen', '127.0.0.1:0', '--control', join(h.dir, 'b.sock')],
    env(join(h.dir, 'b')),
    h.b.prefix,
  );
  const uri = await mount.line(40_000);
  // 8 MiB read + writes cannot fit one 6 MiB circuit.
  const big = await run('ip', ['netns', 'exec', h.b.name, 'qemu-io', '-f', 'raw', uri, '-c', 'write -P 0x11 0 8M'], { env: env(h.dir), timeoutMs: 60_000 });
  void big;
  await eventually(30_000, () => `mount never logged the byte limit: ${mount.stderr()}`, () => /circuit \d+ closed by the relay: relay: circuit byte limit/.test(mount.stderr()));
  assert.match(share.stderr(), /circuit byte limit/);
  assert.match(h.relay.stderr(), /CIRCUIT_BYTE_LIMIT/);
  // The mount recovers on a new circuit: small I/O works again.
  const readSmall = async () => {
    let last = '';
    await eventually(40_000, () => `mount did not recover: ${last}\n${mount.stderr().slice(-2000)}`, async () => {
      const q = await run('ip', ['netns', 'exec', h.b.name, 'qemu-io', '-f', 'raw', uri, '-c', 'write -P 0x22 0 64k', '-c', 'read -P 0x22 0 64k'], { env: env(h.dir), timeoutMs: 30_000 });
      last = `${q.stdout}${q.stderr}`;
      return q.code === 0 && !/failed|error/i.test(q.stdout);
    }, 500);
  };
  await readSmall();
  // Relay restart: same identity, same address.
  await killTree(h.relay.child);
  const again = startCli(s, ['relay', '--listen', '10.77.0.1:4000', '--identity', join(h.dir, 'relay.id'), ...relayFlags], env(join(h.dir, 'r')), h.r.prefix);
  assert.is(await again.line(), h.relayAddress);
  await eventually(30_000, () => `A did not reserve again: ${share.stderr().slice(-1500)}`, () => /reserved until/.test(again.stderr()) || /reservation for/.test(again.stderr()), 100);
  assert.match(share.stderr(), /control connection lost; reserving again/);
  await readSmall();
  const sb = await status(h.b, join(h.dir, 'b'), join(h.dir, 'b.sock'));
  assert.match(sb.mounts[0].path, /^relay /);
  assert.ok(sb.mounts[0].connected);
});

run1('two relays, the one in use dies mid-mount: the mount moves to the other relay and no acknowledged write is lost', async (s) => {
  const h = await hub(s, false);
  const relay2 = startCli(s, ['relay', '--listen', '10.77.0.1:4001', '--identity', join(h.dir, 'relay2.id')], env(join(h.dir, 'r2')), h.r.prefix);
  const relay2Address = await relay2.line();
  const aImage = join(h.dir, 'a.img');
  writeFileSync(aImage, Buffer.alloc(16 << 20));
  const share = startCli(
    s,
    ['share', '--backend', `file:${aImage}`, '--listen', '10.77.1.2:4433', '--dht', h.dht, '--dht-listen', '10.77.1.2:0', '--relay', h.relayAddress, '--relay', relay2Address, '--control', join(h.dir, 'a.sock')],
    env(join(h.dir, 'a')),
    h.a.prefix,
  );
  const ticket = await share.line(30_000);
  await eventually(30_000, () => `A did not reserve on both relays: ${share.stderr().slice(-1500)}`, async () => {
    const sa = await status(h.a, join(h.dir, 'a'), join(h.dir, 'a.sock'));
    return sa.regions[0].relays.length === 2 && sa.regions[0].relays.every((r: { expiresAt: number }) => r.expiresAt > 0);
  });
  const mount = startCli(
    s,
    ['mount', ticket, '--dht', h.dht, '--dht-listen', '10.77.2.2:0', '--listen', '127.0.0.1:0', '--control', join(h.dir, 'b.sock')],
    env(join(h.dir, 'b')),
    h.b.prefix,
  );
  const uri = await mount.line(40_000);
  const path = async () => (await status(h.b, join(h.dir, 'b'), join(h.dir, 'b.sock'))).mounts[0].path as string;
  const first = await path();
  assert.match(first, /^relay /);
  const [dying, other] = first.includes(h.relayAddress) ? [h.relay, relay2Address] : [relay2, h.relayAddress];
  // 256 KiB pieces, each its own pattern; a piece counts once qemu-io says its write went through (the NBD reply: acknowledged).
  const PIECE = 256 << 10;
  const write = (k: number) =>
    run('ip', ['netns', 'exec', h.b.name, 'qemu-io', '-f', 'raw', uri, '-c', `write -P ${0x10 + k} ${k * PIECE} ${PIECE}`], { env: env(h.dir), timeoutMs: 60_000 })
      .then((q) => q.code === 0 && /wrote \d+\/\d+ bytes/.test(q.stdout) && !/error|failed/i.test(q.stdout + q.stderr));
  const acked = new Set<number>();
  for (let k = 0; k < 4; k++) if (await write(k)) acked.add(k);
  assert.is(acked.size, 4, 'writes through the first relay are acknowledged');
  // Kill the relay in use while the next write is on its way.
  const inFlight = write(4);
  await killTree(dying.child);
  if (await inFlight) acked.add(4);
  // Pieces after it: each retried until acknowledged (the mount reconnects through the other relay meanwhile).
  for (let k = 5; k < 10; k++) {
    await eventually(60_000, () => `piece ${k} never acknowledged after the relay died:\n${mount.stderr().slice(-2500)}`, () => write(k), 500);
    acked.add(k);
  }
  assert.ok((await path()).includes(other), `the mount moved to the other relay: ${await path()}`);
  // Every acknowledged piece is in A's file.
  const a = readFileSync(aImage);
  for (const k of acked) {
    assert.ok(a.subarray(k * PIECE, (k + 1) * PIECE).every((x) => x === 0x10 + k), `acknowledged piece ${k} is in A's file`);
  }
  // And reads through the new path see them.
  const checks = [...acked].flatMap((k) => ['-c', `read -P ${0x10 + k} ${k * PIECE} ${PIECE}`]);
  const q = await run('ip', ['netns', 'exec', h.b.name, 'qemu-io', '-f', 'raw', uri, ...checks], { env: env(h.dir), timeoutMs: 60_000 });
  assert.is(q.code, 0, q.stderr + q.stdout);
  assert.not.match(q.stdout, /Pattern verification failed|error/i);
  assert.match(mount.stderr(), /link to sharer lost/);
});

test.run();
