/**
 * The region server under idle and hostile peers (issue 8). Peers that pass
 * the transport handshake (keys cost nothing) and then never send HELLO used
 * to fill every connection slot (256) until the HELLO deadline; now they
 * stay in a per-source pending pool where a newcomer evicts the oldest. And
 * peers that flood READs without reading the replies are held to the
 * server-wide memory budget while a good peer is still served.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { generateIdentity } from '../../crypto/identity.ts';
import { newRegionId, signGrant } from '../../crypto/grant.ts';
import { TcpTransport } from '../../transports/tcp.ts';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { DEFAULT_LIMITS, RegionServer } from '../../p2p/remote/server.ts';
import { RemoteRegion } from '../../p2p/remote/region.ts';
import { ClientSession } from '../../p2p/protocol/client-session.ts';
import { encodeRead } from '../../p2p/protocol/messages.ts';
import type { Connection } from '../../transports/transport.ts';
import { Scope, withTimeout } from '../helpers/env.ts';

const test = suite('remote/admission');
const MiB = 1024 * 1024;

async function setup(s: Scope, opts: Partial<ConstructorParameters<typeof RegionServer>[0]> = {}) {
  const sharer = await generateIdentity();
  const regionId = newRegionId();
  const store = new MemoryBackend(16 * MiB);
  const logs: string[] = [];
  const server = new RegionServer({ identity: sharer, store, regionId, helloTimeoutMs: 60_000, log: (m) => logs.push(m), ...opts });
  const t = new TcpTransport(sharer);
  const l = await t.listen('127.0.0.1:0');
  void server.serveListener(l);
  s.defer(() => t.close());
  s.defer(() => server.close());
  const grant = (await signGrant(sharer, { regionId, transport: 'tcp', addresses: [l.address], rights: 'rw', expiresAt: 0 })).bytes;
  const client = new TcpTransport(await generateIdentity());
  s.defer(() => client.close());
  const goodRead = async () => {
    const r = await RemoteRegion.open({ connect: () => client.dial(l.address, sharer.publicKey), grant, sharer: sharer.publicKey, regionId, readOnlyGrant: false });
    try {
      await r.writeAt(Buffer.alloc(4096, 7), 4096);
      const b = Buffer.alloc(4096);
      await r.readAt(b, 4096);
      assert.ok(b.every((x) => x === 7));
    } finally {
      await r.close();
    }
  };
  return { sharer, regionId, server, address: l.address, grant, goodRead, logs };
}

test('300 authenticated peers that never send HELLO do not lock a real peer out', async () => {
  const s = new Scope();
  try {
    await withTimeout(90_000, 'idle peers', async () => {
      const x = await setup(s);
      const attacker = new TcpTransport(await generateIdentity());
      s.defer(() => attacker.close());
      const idle: Connection[] = [];
      for (let i = 0; i < 300; i++) idle.push(await attacker.dial(x.address, x.sharer.publicKey));
      await withTimeout(15_000, 'a good peer is served', x.goodRead());
      assert.ok(x.logs.some((m) => m.includes('evicted')), 'idle peers were evicted');
    });
  } finally {
    await s.close();
  }
});

test('peers flooding READs without reading replies stay within the memory budget; a good peer is served', async () => {
  const s = new Scope();
  try {
    await withTimeout(90_000, 'read flood', async () => {
      const budget = 16 * MiB;
      const x = await setup(s, { memoryBudget: budget, stallMs: 1000 });
      let peak = 0;
      const sampler = setInterval(() => (peak = Math.max(peak, x.server.budget.used)), 5);
      s.defer(() => clearInterval(sampler));
      for (let k = 0; k < 6; k++) {
        const attacker = new TcpTransport(await generateIdentity());
        s.defer(() => attacker.close());
        const conn = await attacker.dial(x.address, x.sharer.publicKey);
        const st = await conn.openStream();
        const session = new ClientSession(DEFAULT_LIMITS);
        await st.write(session.hello(x.grant, [], 'flood'));
        // Read the WELCOME, then never read again.
        for (let welcomed = false; !welcomed; ) {
          const c = await st.read();
          if (!c) throw new Error('closed before WELCOME');
          for (const ev of session.receive(c)) if (ev.kind === 'welcome') welcomed = true;
        }
        for (let i = 0; i < 64; i++) await st.write(encodeRead(i + 1, (i % 15) * MiB, MiB));
      }
      await new Promise((r) => setTimeout(r, 1500));
      await withTimeout(15_000, 'a good peer is served', x.goodRead());
      const bound = budget + 2 * MiB + MiB; // limit + reserve + one frame
      assert.ok(peak <= bound, `held ${peak} bytes, bound ${bound}`);
    });
  } finally {
    await s.close();
  }
});

test.run();
