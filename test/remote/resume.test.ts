/**
 * Resumable sessions on the wire (loopback transport): a RemoteRegion whose
 * link is cut again and again mid-transfer keeps its session — every write
 * applied exactly once, every read answered, calls answered once — and a
 * resume the sharer cannot honour (expired, another key, a wrong token)
 * falls back to a new session, failing only what cannot be known.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { generateIdentity, type Identity } from '../../crypto/identity.ts';
import { newRegionId, signGrant } from '../../crypto/grant.ts';
import { LoopbackNetwork, LoopbackTransport } from '../../transports/loopback.ts';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { RegionServer, type RegionServerOptions } from '../../p2p/remote/server.ts';
import { RemoteRegion, type RemoteRegionOptions } from '../../p2p/remote/region.ts';
import { ClientLink } from '../../p2p/remote/link.ts';
import { QuicmapError } from '../../base/errors.ts';
import type { ReadWriterAt } from '../../engine/rwat.ts';
import { withTimeout } from '../helpers/env.ts';
import { turn } from '../../base/clock.ts';
import { rng, assertBytes } from '../engine/model.ts';

async function until(cond: () => boolean, what: string, ms = 8000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await turn();
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** A memory store that counts the writes applied to it. */
function countingStore(size: number): { store: ReadWriterAt; applied: () => number; gate: (g: Promise<void> | undefined) => void; entered: () => number } {
  const inner = new MemoryBackend(size);
  let applied = 0;
  let gate: Promise<void> | undefined;
  let entered = 0;
  const store: ReadWriterAt = Object.assign(Object.create(inner), {
    caps: inner.caps,
    size: () => inner.size(),
    async writeAt(data: Uint8Array, off: number, o?: { fua?: boolean }) {
      applied++;
      if (gate) {
        entered++;
        await gate;
      }
      return inner.writeAt(data, off, o);
    },
    async readAt(buf: Uint8Array, off: number) {
      if (gate) {
        entered++;
        await gate;
      }
      return inner.readAt(buf, off);
    },
  });
  return { store, applied: () => applied, gate: (g) => (gate = g), entered: () => entered };
}

async function setup(store: ReadWriterAt, server: Partial<RegionServerOptions> = {}) {
  const network = new LoopbackNetwork();
  const sharer = await generateIdentity();
  const client = await generateIdentity();
  const regionId = newRegionId();
  const logs: string[] = [];
  const srv = new RegionServer({ identity: sharer, store, regionId, log: (m) => logs.push(m), ...server });
  const st = new LoopbackTransport(sharer, { network });
  const listener = await st.listen('sharer:0');
  void srv.serveListener(listener);
  const transports: LoopbackTransport[] = [st];
  const grantFor = async () => (await signGrant(sharer, { regionId, transport: 'tcp', addresses: [listener.address], rights: 'rw', expiresAt: 0 })).bytes;
  const grant = await grantFor();
  const open = (id: Identity = client, o: Partial<RemoteRegionOptions> = {}) => {
    const ct = new LoopbackTransport(id, { network });
    transports.push(ct);
    return RemoteRegion.open({
      connect: () => ct.dial(listener.address, sharer.publicKey),
      grant,
      sharer: sharer.publicKey,
      regionId,
      livenessMs: 5000,
      waitForLinkMs: 5000,
      backoff: { minMs: 5, maxMs: 20 },
      ...o,
    });
  };
  return {
    srv, sharer, client, regionId, grant, listener, network, logs, open,
    transport: (id: Identity) => {
      const t = new LoopbackTransport(id, { network });
      transports.push(t);
      return t;
    },
    async close() {
      await srv.close();
      for (const t of transports) await t.close();
    },
  };
}

test('links cut every few requests mid-transfer: every write applied exactly once, every read answered right', () =>
  withTimeout(60_000, 'test', async () => {
    const CHUNK = 16 * 1024;
    const SIZE = 64 * CHUNK;
    const c = countingStore(SIZE);
    const s = await setup(c.store, { limits: { maxFrame: 64 * 1024, maxInFlight: 16 } });
    try {
      const r = await s.open(s.client, { cutLinkEvery: { every: 5, max: 40 } });
      const model = new Uint8Array(SIZE);
      const rand = rng(7);
      for (let round = 0; round < 12; round++) {
        // Each round rewrites some chunks (distinct within the round, so the
        // order within it does not matter) and reads others, all in flight
        // together; a write of an earlier round replayed late would show.
        const ops: Promise<void>[] = [];
        const chunks = [...Array(64).keys()].sort(() => rand() - 0.5).slice(0, 24);
        for (const [i, ch] of chunks.entries()) {
          const off = ch * CHUNK;
          if (i % 3 === 2) {
            const expect = model.slice(off, off + CHUNK);
            const buf = new Uint8Array(CHUNK);
            ops.push(r.readAt(buf, off).then(() => assertBytes(buf, expect, `round ${round} read of chunk ${ch}`)));
          } else {
            const data = new Uint8Array(CHUNK).map(() => Math.floor(rand() * 256));
            model.set(data, off);
            ops.push(r.writeAt(data, off));
          }
        }
        await Promise.all(ops);
      }
      await r.flush();
      const back = new Uint8Array(SIZE);
      await c.store.readAt(back, 0);
      assertBytes(back, model, 'the sharer store after all rounds');
      assert.ok(r.stats.linkFailures >= 20, `links cut: ${JSON.stringify(r.stats)}`);
      assert.is(r.stats.resumes, r.stats.linkFailures, 'every cut was resumed');
      assert.is(r.stats.lost, 0, 'nothing failed');
      assert.is(c.applied(), r.stats.writes, `writes applied ${c.applied()} == writes issued ${r.stats.writes}`);
      assert.is(s.srv.stats.writesApplied, r.stats.writes);
      assert.is(s.srv.stats.resumes, r.stats.resumes);
      console.log(`    ${r.stats.linkFailures} cuts, ${r.stats.writes} writes applied once each, ${r.stats.resent} requests sent again, ${s.srv.stats.duplicates} duplicates dropped`);
      await r.close();
    } finally {
      await s.close();
    }
  }));

test('a write and a call in progress when the link dies are answered after the resume, run once', () =>
  withTimeout(20_000, 'test', async () => {
    const c = countingStore(1 << 20);
    const s = await setup(c.store);
    let calls = 0;
    let releaseCall = () => {};
    const callGate = new Promise<void>((r) => (releaseCall = r));
    s.srv.handle('test.slow', async (args) => {
      calls++;
      await callGate;
      return { echo: args };
    });
    try {
      const r = await s.open();
      let release = () => {};
      c.gate(new Promise<void>((res) => (release = res)));
      const w = r.writeAt(new Uint8Array(4096).fill(9), 8192);
      const call = r.call('test.slow', { n: 1 });
      await until(() => c.entered() === 1 && calls === 1, 'the write and the call to reach the sharer');
      // The link dies while both are in progress at the sharer.
      (r as unknown as { link: ClientLink }).link.kill(new QuicmapError('EIO', 'cut by the test'));
      await until(() => r.stats.resumes === 1, 'the resume');
      c.gate(undefined);
      release();
      releaseCall();
      await w;
      assert.equal(await call, { echo: { n: 1 } });
      assert.is(calls, 1, 'the call ran once');
      assert.is(c.applied(), 1, 'the write was applied once');
      assert.is(r.stats.resent, 0, 'nothing needed sending again: the sharer had both');
      const back = new Uint8Array(4096);
      await r.readAt(back, 8192);
      assert.ok(back.every((b) => b === 9));
      await r.close();
    } finally {
      await s.close();
    }
  }));

test('an expired session is refused with a typed reason: a new session; a write on the wire fails (unknown), a read is asked again', () =>
  withTimeout(20_000, 'test', async () => {
    const c = countingStore(1 << 20);
    const s = await setup(c.store, { sessionTtlMs: 0 });
    const logs: string[] = [];
    try {
      const r = await s.open(s.client, { log: (m) => logs.push(m) });
      await r.writeAt(new Uint8Array([5, 6, 7]), 0);
      let release = () => {};
      c.gate(new Promise<void>((res) => (release = res)));
      const w = r.writeAt(new Uint8Array([1, 1, 1]), 100);
      w.catch(() => {});
      const rd = new Uint8Array(3);
      const read = r.readAt(rd, 0);
      await until(() => c.entered() === 2, 'both to reach the sharer');
      (r as unknown as { link: ClientLink }).link.kill(new QuicmapError('EIO', 'cut by the test'));
      await until(() => r.stats.resumesRefused === 1, 'the refused resume');
      c.gate(undefined);
      release();
      try {
        await w;
        assert.unreachable('the write of a lost session should fail');
      } catch (e) {
        assert.is((e as QuicmapError).code, 'EIO');
        assert.match((e as Error).message, /may or may not have been applied/);
      }
      await read;
      assert.equal(Array.from(rd), [5, 6, 7], 'the read was asked again on the new session');
      assert.is(r.stats.lost, 1);
      assert.ok(logs.some((l) => /session not resumed \(EACCES: no such session/.test(l)), logs.join('\n'));
      assert.is(s.srv.stats.resumesRefused, 1);
      await r.close();
    } finally {
      await s.close();
    }
  }));

test('a resume with a wrong token or from another key is refused (EACCES) and gets a new session', () =>
  withTimeout(20_000, 'test', async () => {
    const c = countingStore(1 << 20);
    const s = await setup(c.store);
    try {
      const open = async (id: Identity, resume?: { session: Uint8Array; token: Uint8Array }, received = 0) => {
        const t = s.transport(id);
        const conn = await t.dial(s.listener.address, s.sharer.publicKey);
        return ClientLink.open(conn, {
          grant: s.grant, sharer: s.sharer.publicKey, regionId: s.regionId, limits: { maxFrame: 1 << 20, maxInFlight: 8 }, caps: ['ping', 'call'],
          txn: { counter: { received, acked: 0 }, ...(resume ? { resume } : {}) },
        });
      };
      const first = await open(s.client);
      const g = first.granted!;
      assert.ok(g && !g.resumed && g.session.length === 16 && g.token.length === 32 && g.refused === undefined, 'a new session');
      await first.close();
      await until(() => s.logs.some((l) => /disconnected/.test(l)), 'the sharer to notice');
      const bad = Uint8Array.from(g.token);
      bad[3]! ^= 0x40;
      const wrongToken = await open(s.client, { session: g.session, token: bad });
      assert.is(wrongToken.granted!.resumed, false);
      assert.is(wrongToken.granted!.refused?.code, 'EACCES');
      assert.not.equal(Buffer.from(wrongToken.granted!.session), Buffer.from(g.session));
      await wrongToken.close();
      const stranger = await generateIdentity();
      const otherKey = await open(stranger, { session: g.session, token: g.token });
      assert.is(otherKey.granted!.resumed, false);
      assert.is(otherKey.granted!.refused?.code, 'EACCES');
      await otherKey.close();
      // The rightful owner still gets it back.
      const back = await open(s.client, { session: g.session, token: g.token });
      assert.is(back.granted!.resumed, true);
      await back.close();
      assert.is(s.srv.stats.resumesRefused, 2);
      assert.is(s.srv.stats.resumes, 1);
    } finally {
      await s.close();
    }
  }));

test('a sharer without resume (or resume off) keeps the old rule: requests on a dead link fail with EIO at once', () =>
  withTimeout(20_000, 'test', async () => {
    const c = countingStore(1 << 20);
    const s = await setup(c.store, { resumable: false });
    try {
      const r = await s.open();
      let release = () => {};
      c.gate(new Promise<void>((res) => (release = res)));
      const w = r.writeAt(new Uint8Array([1]), 0);
      w.catch(() => {});
      await until(() => c.entered() === 1, 'the write to reach the sharer');
      (r as unknown as { link: ClientLink }).link.kill(new QuicmapError('EIO', 'cut by the test'));
      try {
        await w;
        assert.unreachable('should fail');
      } catch (e) {
        assert.is((e as QuicmapError).code, 'EIO');
      }
      c.gate(undefined);
      release();
      assert.is(s.srv.sessionCount, 0, 'no session kept');
      await r.close();
    } finally {
      await s.close();
    }
  }));

test.run();
