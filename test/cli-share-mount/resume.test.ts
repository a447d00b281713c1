/**
 * Resumable sessions with real processes: a `quicmap share` process, a
 * `quicmap mount` process whose link to the sharer is cut from inside again
 * and again mid-transfer (the test hook QUICMAP_TEST_CUT_LINK_EVERY resets
 * the link's stream after every N-th request), and `nbdcopy` writing a
 * pattern through the mount and reading it back. nbdcopy completes, the
 * bytes are right, and the sharer applied each write exactly once: its
 * `writesApplied` equals the writes the mount issued (both from
 * `quicmap status --json`). Over TCP and QUIC (through the Transport
 * interface, whichever QUIC implementation is built in). And the same
 * with the network doing it: the sharer's port firewalled for 2 s (TCP:
 * answered with resets, so the link dies; QUIC: dropped) in a network
 * namespace the test creates.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { closeSync, ftruncateSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { needCondition, needTools, hasTool, Scope, withTimeout, run, SYSTEM_PATH } from '../helpers/env.ts';
import { canUseNetns, netns } from '../helpers/netns.ts';
import { start, quicmap, tool, env } from './procs.ts';
import type { NodeStatus } from '../../p2p/node/status.ts';
import { askControl } from '../../p2p/node/control.ts';

const test = suite('cli-share-mount/resume');
const MiB = 1024 * 1024;
const SIZE = 24 * MiB;

/** The pattern written: each 8-byte block holds its own offset, big-endian (a misplaced or stale block shows). */
function pattern(size: number): Buffer {
  const b = Buffer.alloc(size);
  for (let off = 0; off < size; off += 8) b.writeBigUInt64BE(BigInt(off), off);
  return b;
}

async function status(control: string, home: string): Promise<NodeStatus> {
  const r = await quicmap(['status', '--control', control, '--json'], home);
  assert.is(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as NodeStatus;
}

for (const transport of ['tcp', 'quic'] as const) {
  needTools(test, ['nbdcopy'])(`${transport}: nbdcopy through a mount whose link is cut mid-transfer completes with the right bytes; each write applied once`, async () => {
    const s = new Scope();
    try {
      await withTimeout(120_000, 'resume', async () => {
        const dir = s.tmpdir();
        const img = join(dir, 'disk.img');
        const fd = openSync(img, 'w+');
        ftruncateSync(fd, SIZE);
        closeSync(fd);
        const homeA = join(dir, 'a');
        const homeB = join(dir, 'b');
        const ctlA = join(dir, 'a.sock');
        const ctlB = join(dir, 'b.sock');
        const share = await start(s, ['share', '--backend', `file:${img}`, '--listen', '127.0.0.1:0', '--transport', transport, '--control', ctlA], homeA);
        // Only the mount runs with the hook: its link is reset after every 16th request, 8 times.
        process.env.QUICMAP_TEST_CUT_LINK_EVERY = '16x8';
        let mount;
        try {
          mount = await start(s, ['mount', share.first, '--listen', '127.0.0.1:0', '--control', ctlB], homeB);
        } finally {
          delete process.env.QUICMAP_TEST_CUT_LINK_EVERY;
        }
        const uri = mount.first;

        const want = pattern(SIZE);
        const src = join(dir, 'pattern.img');
        writeFileSync(src, want);
        const w = await tool('nbdcopy', ['--flush', '--request-size=262144', src, uri], 90_000);
        assert.is(w.code, 0, `nbdcopy write: ${w.stderr}\nmount log:\n${mount.stderr()}`);
        const copy = join(dir, 'back.img');
        const r = await tool('nbdcopy', ['--no-extents', '--request-size=262144', uri, copy], 90_000);
        assert.is(r.code, 0, `nbdcopy read: ${r.stderr}\nmount log:\n${mount.stderr()}`);

        assert.ok(Buffer.compare(readFileSync(img), want) === 0, "the sharer's file holds the pattern");
        assert.ok(Buffer.compare(readFileSync(copy), want) === 0, 'the copy read back through the mount holds the pattern');

        const m = (await status(ctlB, homeB)).mounts[0]!;
        const a = (await status(ctlA, homeA)).regions[0]!;
        console.log(`    ${transport}: ${m.linkFailures} links cut, ${m.resumes} resumed, ${m.resent} requests sent again; ${m.writes} writes issued, ${a.writesApplied} applied; ${a.duplicates} duplicates dropped`);
        assert.ok(m.linkFailures >= 4, `links cut: ${m.linkFailures}\n${mount.stderr()}`);
        assert.is(m.resumes, m.linkFailures, `every cut resumed its session\n${mount.stderr()}`);
        assert.is(m.lost, 0, 'no request failed');
        assert.ok(m.writes >= SIZE / MiB, `writes issued: ${m.writes}`);
        assert.is(a.writesApplied, m.writes, 'the sharer applied each write exactly once');
        // The sharer may count a resume whose WELCOME the mount never got (that link died in its handshake; the next one resumed).
        assert.ok(a.resumes >= m.resumes, `sharer resumes ${a.resumes} >= mount resumes ${m.resumes}`);
      });
    } finally {
      await s.close();
    }
  });
}

const fwOk = canUseNetns() && hasTool('iptables') && hasTool('tc') && hasTool('nbdcopy');
for (const transport of ['tcp', 'quic'] as const) {
  needCondition(test, fwOk, 'needs root, ip netns, iptables, tc and nbdcopy')(`${transport}: the sharer's port firewalled for 2 s in the middle of an nbdcopy write: it completes, bytes right, each write applied once`, async () => {
    const s = new Scope();
    try {
      await withTimeout(120_000, 'firewall', async () => {
        const ns = netns(s, `fw${transport[0]}`);
        // Slow the namespace's loopback so the copy lasts long enough to be cut in the middle.
        ns.run('tc', ['qdisc', 'add', 'dev', 'lo', 'root', 'tbf', 'rate', '100mbit', 'burst', '256kb', 'latency', '100ms']);
        const dir = s.tmpdir();
        const img = join(dir, 'disk.img');
        const fd = openSync(img, 'w+');
        ftruncateSync(fd, SIZE);
        closeSync(fd);
        const homeA = join(dir, 'a');
        const homeB = join(dir, 'b');
        const ctlA = join(dir, 'a.sock');
        const ctlB = join(dir, 'b.sock');
        const share = await start(s, ['share', '--backend', `file:${img}`, '--listen', '127.0.0.1:0', '--transport', transport, '--control', ctlA, '--json'], homeA, 1, 30_000, ns.prefix);
        const info = JSON.parse(share.first) as { ticket: string; address: string };
        const port = info.address.split(':').pop()!;
        const mount = await start(s, ['mount', info.ticket, '--listen', '127.0.0.1:0', '--control', ctlB], homeB, 1, 30_000, ns.prefix);
        const want = pattern(SIZE);
        const src = join(dir, 'pattern.img');
        writeFileSync(src, want);
        const copying = run('ip', ['netns', 'exec', ns.name, 'nbdcopy', '--flush', '--request-size=262144', src, mount.first], { env: { ...env(dir), PATH: SYSTEM_PATH }, timeoutMs: 90_000 });
        // Wait until the sharer has applied a few writes, then firewall its port for 2 s.
        const applied = async () => ((await askControl(ctlA, { op: 'status' })) as NodeStatus).regions[0]!.writesApplied;
        const end = Date.now() + 60_000;
        while ((await applied()) < 8) {
          if (Date.now() > end) throw new Error('the copy never started');
          await new Promise((r) => setTimeout(r, 10));
        }
        const rule = transport === 'tcp' ? ['INPUT', '-p', 'tcp', '--dport', port, '-j', 'REJECT', '--reject-with', 'tcp-reset'] : ['INPUT', '-p', 'udp', '--dport', port, '-j', 'DROP'];
        ns.run('iptables', ['-I', ...rule]);
        const cutAt = await applied();
        await new Promise((r) => setTimeout(r, 2000)); // the outage itself
        ns.run('iptables', ['-D', ...rule]);
        const w = await copying;
        assert.is(w.code, 0, `nbdcopy write: ${w.stderr}\nmount log:\n${mount.stderr()}`);
        assert.ok(Buffer.compare(readFileSync(img), want) === 0, "the sharer's file holds the pattern");
        const m = (await status(ctlB, homeB)).mounts[0]!;
        const a = (await status(ctlA, homeA)).regions[0]!;
        console.log(`    ${transport}: firewalled after ${cutAt} writes; ${m.linkFailures} links lost, ${m.resumes} resumed, ${m.resent} sent again; ${m.writes} writes issued, ${a.writesApplied} applied`);
        assert.ok(cutAt < m.writes, 'the outage came in the middle of the copy');
        if (transport === 'tcp') assert.ok(m.linkFailures >= 1, `the reset killed the link\n${mount.stderr()}`);
        assert.is(m.resumes, m.linkFailures, 'every lost link resumed its session');
        assert.is(m.lost, 0);
        assert.is(a.writesApplied, m.writes, 'the sharer applied each write exactly once');
      });
    } finally {
      await s.close();
    }
  });
}

test.run();
