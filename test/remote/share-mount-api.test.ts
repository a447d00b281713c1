/** The library API behind the CLI (p2p/share.ts, p2p/mount.ts) over the loopback transport. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { generateIdentity } from '../../crypto/identity.ts';
import { LoopbackNetwork, LoopbackTransport } from '../../transports/loopback.ts';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { shareRegion } from '../../p2p/share.ts';
import { mountTicket } from '../../p2p/mount.ts';
import { QuicmapError } from '../../base/errors.ts';
import { RegionServer } from '../../p2p/remote/server.ts';
import { newRegionId } from '../../crypto/grant.ts';
import { withTimeout } from '../helpers/env.ts';
import { VirtualClock, turn } from '../../base/clock.ts';

async function rejects(p: Promise<unknown>, code: string, re: RegExp): Promise<void> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof QuicmapError && e.code === code, `expected ${code}, got ${(e as Error).message}`);
    assert.match((e as Error).message, re);
    return;
  }
  assert.unreachable('did not reject');
}

test('shareRegion → ticket → mountTicket gives a working RemoteRegion; extra tickets carry their own rights', () =>
  withTimeout(10_000, 'api', async () => {
    const net = new LoopbackNetwork();
    const a = await generateIdentity();
    const b = await generateIdentity();
    const c = await generateIdentity();
    const store = new MemoryBackend(8 << 20);
    const logs: string[] = [];
    const shared = await shareRegion({ identity: a, store, transport: new LoopbackTransport(a, { network: net }), listen: 'sharer:0', log: (m) => logs.push(m) });
    assert.match(shared.ticket, /^qm1/);
    assert.ok(logs.some((l) => l.includes(a.id)), 'the sharer id is logged');
    const m = await mountTicket({ identity: b, ticket: shared.ticket, transport: new LoopbackTransport(b, { network: net }) });
    assert.is(m.sharerId, a.id);
    assert.is(await m.region.size(), 8 << 20);
    await m.region.writeAt(new Uint8Array(4096).fill(7), 4096);
    const back = new Uint8Array(4096);
    await store.readAt(back, 4096);
    assert.is(back[100], 7);

    const ro = await shared.issue({ readOnly: true });
    const m2 = await mountTicket({ identity: b, ticket: ro, transport: new LoopbackTransport(b, { network: net }) });
    assert.ok(m2.region.caps.readOnly);
    await rejects(m2.region.writeAt(new Uint8Array(1), 0), 'EPERM', /read-only/);

    // A ticket bound to peer c: b cannot use it, c can.
    const bound = await shared.issue({ grantee: c.publicKey });
    await rejects(mountTicket({ identity: b, ticket: bound, transport: new LoopbackTransport(b, { network: net }) }), 'EACCES', /bound to peer/);
    const m3 = await mountTicket({ identity: c, ticket: bound, transport: new LoopbackTransport(c, { network: net }) });
    await m3.region.readAt(back, 4096);
    assert.is(back[0], 7);

    const short = await shared.issue({ expiresIn: 1 });
    await new Promise((r) => setTimeout(r, 1100));
    await rejects(mountTicket({ identity: b, ticket: short, transport: new LoopbackTransport(b, { network: net }) }), 'EACCES', /expired/);

    await Promise.all([m.close(), m2.close(), m3.close()]);
    await shared.close();
    await rejects(m.region.readAt(back, 0), 'ESHUTDOWN', /closed/);
  }));

test('a peer that connects but never says HELLO is dropped', () =>
  withTimeout(10_000, 'hello timeout', async () => {
    const net = new LoopbackNetwork();
    const a = await generateIdentity();
    const b = await generateIdentity();
    const ta = new LoopbackTransport(a, { network: net });
    const tb = new LoopbackTransport(b, { network: net });
    const logs: string[] = [];
    const clock = new VirtualClock();
    const server = new RegionServer({ identity: a, store: new MemoryBackend(1 << 20), regionId: newRegionId(), helloTimeoutMs: 150, clock, log: (m) => logs.push(m) });
    const l = await ta.listen('x:0');
    void server.serveListener(l);
    const conn = await tb.dial(l.address, a.publicKey);
    let dropped = false;
    void conn.closed.then(() => (dropped = true));
    while (server.stats.connections === 0) await turn();
    await clock.advance(149);
    assert.is(dropped, false, 'kept until the deadline');
    await clock.advance(1);
    await withTimeout(2000, 'dropped', conn.closed);
    assert.ok(logs.some((m) => /no valid HELLO/.test(m)));
    await server.close();
    await ta.close();
    await tb.close();
  }));

test.run();
