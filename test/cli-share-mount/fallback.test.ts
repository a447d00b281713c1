/**
 * A sharer reachable only over TCP: its ticket lists a QUIC endpoint that
 * never answers (UDP dropped on the way, here: nothing listens on that UDP
 * port), a WebTransport endpoint that refuses, and TCP. The mount tries QUIC
 * first, falls back by itself, says which path it took, and real NBD
 * clients read and write through it.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { needTools, Scope, withTimeout } from '../helpers/env.ts';
import { start, tool } from './procs.ts';

const test = suite('cli-share-mount/fallback');

/** A port nothing listens on (bound and released at once). */
async function deadPort(kind: 'udp' | 'tcp'): Promise<number> {
  if (kind === 'udp') {
    const s = createSocket('udp4');
    await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
    const port = s.address().port;
    await new Promise<void>((r) => s.close(() => r()));
    return port;
  }
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

needTools(test, ['qemu-io'])('the mount falls back from a silent QUIC endpoint and a refusing WebTransport one to TCP, and says so', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'fallback', async () => {
      const dir = s.tmpdir();
      const [udp, wt, tcp] = [await deadPort('udp'), await deadPort('tcp'), await deadPort('tcp')];
      const share = await start(
        s,
        ['share', '--size', '8MiB', '--transport', 'tcp', '--listen', `127.0.0.1:${tcp}`, '--advertise', `quic://127.0.0.1:${udp}`, '--advertise', `webtransport://127.0.0.1:${wt}`, '--advertise', `tcp://127.0.0.1:${tcp}`],
        join(dir, 'a'),
      );
      const mount = await start(s, ['mount', share.first, '--listen', '127.0.0.1:0', '--json'], join(dir, 'b'), 1, 30_000);
      const info = JSON.parse(mount.first) as { uri: string; transport: string; endpoint: string };
      assert.is(info.transport, 'tcp');
      assert.is(info.endpoint, `tcp://127.0.0.1:${tcp}`);
      const log = mount.stderr();
      console.log(`    ${log.split("\n").find((l) => l.includes("path to sharer")) ?? ""}`);
      assert.match(log, new RegExp(`path to sharer: direct tcp://127\\.0\\.0\\.1:${tcp} \\(.*fell back: quic://127\\.0\\.0\\.1:${udp}: .*; webtransport://127\\.0\\.0\\.1:${wt}: `), 'the mount says which path it took and why');
      const w = await tool('qemu-io', ['-f', 'raw', info.uri, '-c', 'write -P 0x3c 1M 64k', '-c', 'read -P 0x3c 1M 64k']);
      assert.is(w.code, 0, w.stdout + w.stderr);
      assert.not.match(w.stdout, /Pattern verification failed/);
    });
  } finally {
    await s.close();
  }
});

needTools(test, ['qemu-io'])('a sharer on quic, webtransport and tcp: the mount takes quic when it answers', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'all three', async () => {
      const dir = s.tmpdir();
      const share = await start(s, ['share', '--size', '8MiB', '--transport', 'quic,webtransport,tcp', '--listen', '127.0.0.1:0', '--json'], join(dir, 'a'));
      const shared = JSON.parse(share.first) as { ticket: string; endpoints: string[] };
      assert.is(shared.endpoints.length, 3);
      assert.equal(shared.endpoints.map((e) => e.split(':')[0]), ['quic', 'webtransport', 'tcp']);
      const mount = await start(s, ['mount', shared.ticket, '--listen', '127.0.0.1:0', '--json'], join(dir, 'b'));
      const info = JSON.parse(mount.first) as { uri: string; transport: string };
      assert.is(info.transport, 'quic');
      assert.match(mount.stderr(), /path to sharer: direct quic:\/\/127\.0\.0\.1:\d+ \([\d.]+ ms to connect\)\n/);
      const r = await tool('qemu-io', ['-f', 'raw', info.uri, '-c', 'read -P 0 0 64k']);
      assert.is(r.code, 0, r.stdout + r.stderr);
    });
  } finally {
    await s.close();
  }
});

test.run();
