/**
 * Many seeders as real processes: the owner and three `quicmap share
 * --read-only` seeders of copies — one killed mid-pull, one lying (every
 * chunk altered) — and `quicmap mount --managed --seeder ...`: the mount
 * completes with the owner's bytes (checked with nbdcopy) and drops the liar.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { needTools, Scope, withTimeout, killTree } from '../helpers/env.ts';
import { quicmap, start, tool } from './procs.ts';

const test = suite('swarm');
const MiB = 1024 * 1024;

async function waitFor(what: string, cond: () => boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

needTools(test, ['nbdcopy'])('three seeders, one killed mid-pull, one lying: the mount completes with correct data', async () => {
  const s = new Scope();
  try {
    await withTimeout(90_000, 'swarm', async () => {
      const dir = s.tmpdir();
      const img = join(dir, 'owner.img');
      const data = Buffer.alloc(16 * MiB);
      for (let i = 0; i < data.length; i++) data[i] = (i * 13 + (i >> 12)) & 0xff;
      writeFileSync(img, data);
      const lie = Buffer.from(data);
      for (let at = 0; at < lie.length; at += 64 * 1024) lie[at + 7]! ^= 0x55;
      copyFileSync(img, join(dir, 'good.img'));
      copyFileSync(img, join(dir, 'doomed.img'));
      writeFileSync(join(dir, 'liar.img'), lie);
      const owner = await start(s, ['share', '--backend', `file:${img}`, '--listen', '127.0.0.1:0', '--transport', 'tcp'], join(dir, 'o'));
      const seeders = [];
      for (const n of ['good', 'doomed', 'liar']) {
        seeders.push(await start(s, ['share', '--backend', `file:${join(dir, `${n}.img`)}`, '--read-only', '--listen', '127.0.0.1:0', '--transport', 'tcp'], join(dir, n)));
      }
      const mount = await start(
        s,
        ['mount', owner.first, '--managed', '--pull-workers', '4', '--listen', '127.0.0.1:0', '--json', ...seeders.flatMap((x) => ['--seeder', x.first])],
        join(dir, 'm'),
      );
      let out = mount.lines.join('\n') + '\n';
      mount.child.stdout!.on('data', (d: string) => (out += d));
      const uri = (JSON.parse(mount.first) as { uri: string }).uri;
      await new Promise((r) => setTimeout(r, 150));
      await killTree(seeders[1]!.child, 'SIGKILL');
      await waitFor('pull-complete', () => /"event":"pull-complete"/.test(out), 60_000);
      const copy = join(dir, 'copy.img');
      const r = await tool('nbdcopy', ['--no-extents', uri, copy]);
      assert.is(r.code, 0, r.stderr);
      assert.ok(Buffer.compare(readFileSync(copy), data) === 0, "the mount's bytes are the owner's");
      assert.match(mount.stderr(), /dropped: \d+ chunks failed verification/);
      await waitFor('a progress event showing the ban', () => /"banned":true/.test(out), 5_000);
    });
  } finally {
    await s.close();
  }
});

needTools(test, ['nbdcopy'])('a managed mount seeds its copy (--seed-listen): a second mounter pulls from it, verified', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'mount as seeder', async () => {
      const dir = s.tmpdir();
      const img = join(dir, 'owner.img');
      const data = Buffer.alloc(8 * MiB);
      for (let i = 0; i < data.length; i++) data[i] = (i * 5 + 3) & 0xff;
      writeFileSync(img, data);
      const owner = await start(s, ['share', '--backend', `file:${img}`, '--listen', '127.0.0.1:0', '--transport', 'tcp'], join(dir, 'o'));
      const a = await start(s, ['mount', owner.first, '--managed', '--seed-listen', '127.0.0.1:0', '--listen', '127.0.0.1:0', '--json'], join(dir, 'a'));
      const seedTicket = (JSON.parse(a.first) as { seedTicket: string }).seedTicket;
      assert.match(seedTicket, /^qm1/);
      let outA = a.lines.join('\n') + '\n';
      a.child.stdout!.on('data', (d: string) => (outA += d));
      await waitFor('A complete', () => /"event":"pull-complete"/.test(outA));
      const b = await start(s, ['mount', owner.first, '--managed', '--seeder', seedTicket, '--pull-workers', '4', '--listen', '127.0.0.1:0', '--json'], join(dir, 'b'));
      let outB = b.lines.join('\n') + '\n';
      b.child.stdout!.on('data', (d: string) => (outB += d));
      await waitFor('B complete', () => /"event":"pull-complete"/.test(outB));
      await waitFor('B reports chunks from the seeder', () =>
        outB.split('\n').some((l) => {
          if (!l.includes('"peers"')) return false;
          const peers = (JSON.parse(l) as { peers: Array<{ owner: boolean; fetched: number }> }).peers;
          return peers.some((p) => !p.owner && p.fetched > 0);
        }), 5_000);
      const copy = join(dir, 'b.img');
      const r = await tool('nbdcopy', ['--no-extents', (JSON.parse(b.first) as { uri: string }).uri, copy]);
      assert.is(r.code, 0, r.stderr);
      assert.ok(Buffer.compare(readFileSync(copy), data) === 0);
    });
  } finally {
    await s.close();
  }
});

needTools(test, ['nbdcopy'])('--dht: a managed mount announces itself as a seeder, and a second one finds it in the DHT and pulls from it', async () => {
  const s = new Scope();
  try {
    await withTimeout(90_000, 'dht seeders', async () => {
      const dir = s.tmpdir();
      const img = join(dir, 'owner.img');
      const data = Buffer.alloc(8 * MiB);
      for (let i = 0; i < data.length; i++) data[i] = (i * 11 + (i >> 13)) & 0xff;
      writeFileSync(img, data);
      // A private DHT on loopback: one bootstrap node the test starts.
      const boot = await start(s, ['dht', '--listen', '127.0.0.1:0'], join(dir, 'd'));
      const dht = ['--dht', boot.first.trim(), '--dht-listen', '127.0.0.1:0'];
      const owner = await start(s, ['share', '--backend', `file:${img}`, '--listen', '127.0.0.1:0', '--transport', 'tcp', ...dht], join(dir, 'o'));
      const a = await start(s, ['mount', owner.first, '--managed', ...dht, '--seed-listen', '127.0.0.1:0', '--listen', '127.0.0.1:0', '--json'], join(dir, 'a'));
      let outA = a.lines.join('\n') + '\n';
      a.child.stdout!.on('data', (d: string) => (outA += d));
      await waitFor('A complete', () => /"event":"pull-complete"/.test(outA));
      await waitFor('A announced as a seeder', () => /dht: seeding region/.test(a.stderr()));
      const b = await start(s, ['mount', owner.first, '--managed', ...dht, '--seed-listen', 'off', '--pull-workers', '4', '--listen', '127.0.0.1:0', '--json'], join(dir, 'b'));
      let outB = b.lines.join('\n') + '\n';
      b.child.stdout!.on('data', (d: string) => (outB += d));
      await waitFor('B complete', () => /"event":"pull-complete"/.test(outB));
      assert.match(b.stderr(), /dht: pulling from seeder/);
      await waitFor('B reports chunks from the seeder', () =>
        outB.split('\n').some((l) => {
          if (!l.includes('"peers"')) return false;
          const peers = (JSON.parse(l) as { peers: Array<{ owner: boolean; fetched: number }> | null }).peers ?? [];
          return peers.some((p) => !p.owner && p.fetched > 0);
        }), 10_000);
      const copy = join(dir, 'b.img');
      const r = await tool('nbdcopy', ['--no-extents', (JSON.parse(b.first) as { uri: string }).uri, copy]);
      assert.is(r.code, 0, r.stderr);
      assert.ok(Buffer.compare(readFileSync(copy), data) === 0);
    });
  } finally {
    await s.close();
  }
});

needTools(test, ['nbdcopy'])('--by-reference: the sharer names the seeding mount as the holder, and a second mount pulls every chunk from it', async () => {
  const s = new Scope();
  try {
    await withTimeout(60_000, 'by reference', async () => {
      const dir = s.tmpdir();
      const img = join(dir, 'owner.img');
      const data = Buffer.alloc(8 * MiB);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 11)) & 0xff;
      writeFileSync(img, data);
      const ctlO = join(dir, 'o.sock');
      const ctlB = join(dir, 'b.sock');
      const owner = await start(s, ['share', '--backend', `file:${img}`, '--listen', '127.0.0.1:0', '--transport', 'tcp', '--control', ctlO], join(dir, 'o'));
      const a = await start(s, ['mount', owner.first, '--managed', '--seed-listen', '127.0.0.1:0', '--listen', '127.0.0.1:0', '--json'], join(dir, 'a'));
      let outA = a.lines.join('\n') + '\n';
      a.child.stdout!.on('data', (d: string) => (outA += d));
      await waitFor('A complete', () => /"event":"pull-complete"/.test(outA));
      const status = async (ctl: string, home: string) => {
        const r = await quicmap(['status', '--control', ctl, '--json'], home);
        assert.is(r.code, 0, r.stderr);
        return JSON.parse(r.stdout) as { regions: Array<{ bytesRead: number }>; holders?: { holders: Array<{ chunks: number }> }; managed?: { complete: boolean; references: { holderBytes: number; ownerBytes: number } | null } };
      };
      const chunks = 8 * MiB / (64 * 1024);
      const end = Date.now() + 30_000;
      while (!((await status(ctlO, join(dir, 'o'))).holders?.holders.some((h) => h.chunks >= chunks))) {
        if (Date.now() > end) throw new Error(`the sharer never listed A as a holder of every chunk\n${a.stderr()}`);
        await new Promise((r) => setTimeout(r, 200));
      }
      const readBefore = (await status(ctlO, join(dir, 'o'))).regions[0]!.bytesRead;
      const b = await start(s, ['mount', owner.first, '--managed', '--by-reference', '--seed-listen', 'off', '--pull-workers', '4', '--listen', '127.0.0.1:0', '--json', '--control', ctlB], join(dir, 'b'));
      let outB = b.lines.join('\n') + '\n';
      b.child.stdout!.on('data', (d: string) => (outB += d));
      await waitFor('B complete', () => /"event":"pull-complete"/.test(outB));
      const st = await status(ctlB, join(dir, 'b'));
      assert.ok(st.managed?.references, `B pulls by reference\n${b.stderr()}`);
      const refs = st.managed!.references!;
      // A chunk the holder is slow to send (a loaded machine) comes from the sharer instead: both ends must agree on how many.
      assert.is(refs.holderBytes + refs.ownerBytes, 8 * MiB, JSON.stringify(refs));
      assert.ok(refs.holderBytes >= 6 * MiB, `most bytes from the holder: ${JSON.stringify(refs)}`);
      assert.is((await status(ctlO, join(dir, 'o'))).regions[0]!.bytesRead - readBefore, refs.ownerBytes, 'the sharer sent B only what B counts as from it');
      const copy = join(dir, 'b.img');
      const r = await tool('nbdcopy', ['--no-extents', (JSON.parse(b.first) as { uri: string }).uri, copy]);
      assert.is(r.code, 0, r.stderr);
      assert.ok(Buffer.compare(readFileSync(copy), data) === 0, "B's bytes are the owner's");
    });
  } finally {
    await s.close();
  }
});

test.run();
