import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { generateIdentity, type Identity } from '../../crypto/identity.ts';
import { newRegionId, signGrant } from '../../crypto/grant.ts';
import { LoopbackNetwork, LoopbackTransport } from '../../transports/loopback.ts';
import type { Connection, Listener } from '../../transports/transport.ts';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { RegionServer } from '../../p2p/remote/server.ts';
import { RemoteRegion, type RemoteRegionOptions } from '../../p2p/remote/region.ts';
import { QuicmapError } from '../../base/errors.ts';
import type { ReadWriterAt } from '../../engine/rwat.ts';
import { withTimeout } from '../helpers/env.ts';
import { VirtualClock, turn } from '../../base/clock.ts';
import { RegionChangedError } from '../../p2p/remote/link-supervisor.ts';

/** Let loopback I/O run until `cond` holds (no clock involved). */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await turn();
}

interface Setup {
  sharer: Identity;
  server: RegionServer;
  listener: Listener;
  store: ReadWriterAt;
  regionId: Uint8Array;
  address: string;
  network: LoopbackNetwork;
  sharerTransport: LoopbackTransport;
  clientTransport: LoopbackTransport;
  logs: string[];
  open(opts?: Partial<RemoteRegionOptions> & { rights?: 'ro' | 'rw'; expiresAt?: number; grant?: Uint8Array }): Promise<RemoteRegion>;
  close(): Promise<void>;
}

async function setup(opts: { size?: number; store?: ReadWriterAt; limits?: { maxFrame?: number; maxInFlight?: number } } = {}): Promise<Setup> {
  const network = new LoopbackNetwork();
  const sharer = await generateIdentity();
  const client = await generateIdentity();
  const store = opts.store ?? new MemoryBackend(opts.size ?? 4 << 20);
  const regionId = newRegionId();
  const logs: string[] = [];
  const server = new RegionServer({ identity: sharer, store, regionId, limits: opts.limits, log: (m) => logs.push(m) });
  const sharerTransport = new LoopbackTransport(sharer, { network });
  const clientTransport = new LoopbackTransport(client, { network });
  const listener = await sharerTransport.listen('sharer:0');
  void server.serveListener(listener);
  const s: Setup = {
    sharer, server, listener, store, regionId, address: listener.address, network, sharerTransport, clientTransport, logs,
    async open(o = {}) {
      const grant = o.grant ?? (await signGrant(sharer, { regionId, transport: 'tcp', addresses: [listener.address], rights: o.rights ?? 'rw', expiresAt: o.expiresAt ?? 0 })).bytes;
      return RemoteRegion.open({
        connect: () => clientTransport.dial(s.address, sharer.publicKey),
        grant,
        sharer: sharer.publicKey,
        regionId,
        readOnlyGrant: false,
        livenessMs: 600,
        waitForLinkMs: 300,
        backoff: { minMs: 20, maxMs: 100 },
        ...o,
      });
    },
    async close() {
      await server.close();
      await sharerTransport.close();
      await clientTransport.close();
    },
  };
  return s;
}

const code = (c: string) => (e: unknown) => e instanceof QuicmapError && e.code === c;
async function rejects(p: Promise<unknown>, check: (e: unknown) => boolean, what: string): Promise<Error> {
  try {
    await p;
  } catch (e) {
    assert.ok(check(e), `${what}: unexpected ${(e as Error).message}`);
    return e as Error;
  }
  throw new Error(`${what}: did not reject`);
}

test('a remote region reads and writes the sharer store, splitting large requests', () =>
  withTimeout(10_000, 'test', async () => {
    const s = await setup({ limits: { maxFrame: 64 * 1024, maxInFlight: 4 } });
    try {
      const r = await s.open();
      assert.is(await r.size(), 4 << 20);
      assert.equal(r.limits, { maxFrame: 64 * 1024, maxInFlight: 4 });
      const data = new Uint8Array(1 << 20).map((_, i) => (i * 7) & 255);
      await r.writeAt(data, 12345, { fua: true });
      const back = new Uint8Array(1 << 20);
      await s.store.readAt(back, 12345);
      assert.ok(Buffer.compare(back, data) === 0, 'sharer store has the bytes');
      const viaRemote = new Uint8Array(1 << 20);
      await r.readAt(viaRemote, 12345);
      assert.ok(Buffer.compare(viaRemote, data) === 0, 'remote read matches');
      await r.flush();
      await r.writeZeroes(12345, 4096);
      await r.trim(1 << 20, 1 << 20);
      const z = new Uint8Array(4096);
      await r.readAt(z, 12345);
      assert.ok(z.every((b) => b === 0));
      assert.ok(s.logs.some((l) => l.includes('read-write')), 'sharer logged the session');
      await r.close();
      await rejects(r.readAt(new Uint8Array(1), 0), code('ESHUTDOWN'), 'after close');
    } finally {
      await s.close();
    }
  }));

test('many requests in flight, bounded by the negotiated maximum', () =>
  withTimeout(10_000, 'test', async () => {
    let inFlight = 0;
    let peak = 0;
    const inner = new MemoryBackend(1 << 20);
    const slow: ReadWriterAt = Object.assign(Object.create(inner), {
      caps: inner.caps,
      async readAt(buf: Uint8Array, off: number) {
        inFlight++;
        peak = Math.max(peak, inFlight);
        await new Promise((r) => setTimeout(r, 5));
        inFlight--;
        return inner.readAt(buf, off);
      },
      size: () => inner.size(),
    });
    const s = await setup({ store: slow, limits: { maxInFlight: 8 } });
    try {
      const r = await s.open();
      await Promise.all(Array.from({ length: 100 }, (_, i) => r.readAt(new Uint8Array(4096), i * 4096)));
      assert.is(peak, 8, `peak in flight ${peak}`);
      await r.close();
    } finally {
      await s.close();
    }
  }));

test('a read-only grant gets EPERM from the sharer on write, trim and zero', () =>
  withTimeout(10_000, 'test', async () => {
    const s = await setup();
    try {
      // readOnlyGrant: false so the client does not refuse locally: the sharer must.
      const r = await s.open({ rights: 'ro' });
      const e = await rejects(r.writeAt(new Uint8Array(10), 0), code('EPERM'), 'write');
      assert.match(e.message, /read-only/);
      await rejects(r.writeZeroes(0, 10), code('EPERM'), 'zero');
      await rejects(r.trim(0, 4096), code('EPERM'), 'trim');
      await r.readAt(new Uint8Array(10), 0);
      await r.close();
      const local = await s.open({ rights: 'ro', readOnlyGrant: true });
      assert.ok(local.caps.readOnly);
      await rejects(local.writeAt(new Uint8Array(1), 0), code('EPERM'), 'local');
      await local.close();
    } finally {
      await s.close();
    }
  }));

test('missing, foreign, expired and wrong-region grants are refused with clear errors', () =>
  withTimeout(10_000, 'test', async () => {
    const s = await setup();
    try {
      let e = await rejects(s.open({ grant: new Uint8Array(0) }), code('EACCES'), 'none');
      assert.match(e.message, /sharer refused: no grant presented/);
      const stranger = await generateIdentity();
      const foreign = await signGrant(stranger, { regionId: s.regionId, transport: 'tcp', addresses: [], rights: 'rw', expiresAt: 0 });
      e = await rejects(s.open({ grant: foreign.bytes }), code('EACCES'), 'foreign');
      assert.match(e.message, /not by this sharer/);
      e = await rejects(s.open({ expiresAt: Math.floor(Date.now() / 1000) - 1 }), code('EACCES'), 'expired');
      assert.match(e.message, /expired/);
      const other = await signGrant(s.sharer, { regionId: newRegionId(), transport: 'tcp', addresses: [], rights: 'rw', expiresAt: 0 });
      e = await rejects(s.open({ grant: other.bytes }), code('EACCES'), 'region');
      assert.match(e.message, /does not serve/);
      // Dialing with the wrong expected key never reaches the sharer.
      await rejects(
        RemoteRegion.open({ connect: () => s.clientTransport.dial(s.address, stranger.publicKey), grant: foreign.bytes, sharer: stranger.publicKey, regionId: s.regionId }),
        code('EACCES'),
        'wrong key',
      );
      assert.is(s.server.stats.refused, 4);
    } finally {
      await s.close();
    }
  }));

test('when the sharer goes away, pending requests wait for its session at most resumeWaitMs, then fail with EIO; the region recovers', () =>
  withTimeout(15_000, 'test', async () => {
    const clock = new VirtualClock();
    let hold: Promise<void> | undefined;
    let release = () => {};
    let entered = false;
    const inner = new MemoryBackend(1 << 20);
    const gated: ReadWriterAt = Object.assign(Object.create(inner), {
      caps: inner.caps,
      size: () => inner.size(),
      async readAt(buf: Uint8Array, off: number) {
        if (hold) {
          entered = true;
          await hold;
        }
        return inner.readAt(buf, off);
      },
    });
    const s = await setup({ store: gated });
    try {
      const r = await s.open({ clock, resumeWaitMs: 500 });
      await r.writeAt(new Uint8Array([1, 2, 3]), 0);
      hold = new Promise((r) => (release = r));
      const pending = r.readAt(new Uint8Array(3), 0);
      pending.catch(() => {});
      await until(() => entered); // the sharer holds the read
      // The sharer goes away: its connections close. The read waits for a
      // link that could resume its session, at most resumeWaitMs.
      await s.listener.close();
      await s.server.close();
      await until(() => !r.connected);
      await clock.advance(499);
      let settled = false;
      pending.then(() => (settled = true), () => (settled = true));
      await turn();
      assert.not.ok(settled, 'still waiting for the session before waitForLinkMs');
      await clock.advance(1);
      await rejects(pending, code('EIO'), 'pending');
      hold = undefined;
      release();
      // While nothing listens, requests wait for a link at most waitForLinkMs, then fail: never hang.
      const down = r.readAt(new Uint8Array(3), 0);
      down.catch(() => {});
      await turn(); // the request reaches the table
      await clock.advance(300);
      await rejects(down, code('EIO'), 'while down');
      // The sharer returns on the same address with the same identity and region.
      const server2 = new RegionServer({ identity: s.sharer, store: gated, regionId: s.regionId });
      const l2 = await s.sharerTransport.listen(s.address);
      void server2.serveListener(l2);
      await clock.advance(200); // past the longest backoff (100 ms)
      await until(() => r.connected);
      const buf = new Uint8Array(3);
      await r.readAt(buf, 0);
      assert.equal(Array.from(buf), [1, 2, 3]);
      assert.ok(r.stats.connects >= 2);
      await r.close();
      await server2.close();
    } finally {
      await s.close();
    }
  }));

test('a hung store fails its request with ETIMEDOUT, not a hang', () =>
  withTimeout(10_000, 'test', async () => {
    const clock = new VirtualClock();
    const inner = new MemoryBackend(1 << 20);
    const s = await setup({ store: inner });
    try {
      const r = await s.open({ requestTimeoutMs: 300, clock });
      let asked = false;
      (inner as unknown as { readAt: unknown }).readAt = () => ((asked = true), new Promise(() => {}));
      const hung = r.readAt(new Uint8Array(1), 0);
      hung.catch(() => {});
      await until(() => asked);
      await clock.advance(299);
      assert.is(r.stats.linkFailures, 0, 'nothing fails before the deadline');
      await clock.advance(1);
      const e = await rejects(hung, code('ETIMEDOUT'), 'hung store');
      assert.match(e.message, /did not answer within 300 ms/);
      await r.close();
    } finally {
      await s.close();
    }
  }));

test('a sharer that goes silent (no close, no data) is detected by liveness pings', () =>
  withTimeout(10_000, 'test', async () => {
    const clock = new VirtualClock();
    const s = await setup();
    // Streams opened so far can be silenced; streams opened later work (the sharer "returns").
    const streams: Array<{ silent: boolean }> = [];
    const silenceAll = () => streams.forEach((x) => (x.silent = true));
    const wrap = (c: Connection): Connection => ({
      remotePublicKey: c.remotePublicKey,
      remoteAddress: c.remoteAddress,
      closed: c.closed,
      close: (r) => c.close(r),
      acceptStream: () => c.acceptStream(),
      async openStream() {
        const st = await c.openStream();
        const me = { silent: false };
        streams.push(me);
        return {
          async read() {
            const chunk = await st.read();
            return me.silent ? new Promise<never>(() => {}) : chunk;
          },
          write: (d) => (me.silent ? Promise.resolve() : st.write(d)),
          closeWrite: () => st.closeWrite(),
          reset: (e) => st.reset(e),
        };
      },
    });
    try {
      const rlogs: string[] = [];
      const r = await s.open({ clock, log: (m) => rlogs.push(m), livenessMs: 400, idlePingMs: 200, connect: async () => wrap(await s.clientTransport.dial(s.address, s.sharer.publicKey)) });
      await r.readAt(new Uint8Array(1), 0);
      silenceAll();
      const stuck = r.readAt(new Uint8Array(1), 0);
      stuck.catch(() => {});
      await turn();
      await clock.advance(399);
      assert.ok(r.connected, 'still up before the liveness limit');
      await clock.advance(1);
      // The link is declared dead and replaced at once (the sharer still
      // listens); the new link resumes the session and the read is answered.
      await until(() => r.stats.linkFailures === 1);
      assert.ok(rlogs.some((l) => /stopped answering/.test(l)), rlogs.join('\n'));
      await stuck;
      assert.is(r.stats.resumes, 1, 'the session was resumed');
      await until(() => r.connected);
      // Idle now: the background idle ping must notice a silent link by itself.
      const failures = r.stats.linkFailures;
      silenceAll();
      await clock.advance(199);
      assert.is(r.stats.linkFailures, failures, 'no ping before idlePingMs');
      await clock.advance(1 + 400); // the idle ping, then its liveness limit
      assert.is(r.stats.linkFailures, failures + 1, 'idle detection');
      await until(() => r.connected);
      await r.readAt(new Uint8Array(1), 0);
      await r.close();
    } finally {
      await s.close();
    }
  }));

test('a healthy link left quiet past the liveness limit serves the next request (and its idle ping) without a reconnect', () =>
  withTimeout(10_000, 'test', async () => {
    const clock = new VirtualClock();
    const inner = new MemoryBackend(1 << 20);
    let gate: Promise<void> | undefined;
    let open = () => {};
    let asked = 0;
    const slow: ReadWriterAt = Object.assign(Object.create(inner), {
      caps: inner.caps,
      size: () => inner.size(),
      async readAt(buf: Uint8Array, off: number) {
        asked++;
        if (gate) await gate;
        return inner.readAt(buf, off);
      },
    });
    const s = await setup({ store: slow });
    try {
      const r = await s.open({ clock, livenessMs: 400, idlePingMs: 1000 });
      await r.writeAt(new Uint8Array([7]), 0);
      await clock.advance(700); // quiet: over the liveness limit, before the idle ping
      gate = new Promise((x) => (open = x));
      const read = r.readAt(new Uint8Array(1), 0);
      read.catch(() => {}); // awaited below; a kill here must fail the assertion, not the process
      await until(() => asked === 1); // the sharer has it and takes its time (under the limit)
      await clock.advance(1);
      assert.is(r.stats.linkFailures, 0, 'a request after a quiet spell is not declared dead at once');
      gate = undefined;
      open();
      await read;
      // Quiet until the idle ping goes out; the sharer answers it (no clock moves meanwhile).
      await clock.advance(1000);
      await clock.advance(1);
      assert.is(r.stats.linkFailures, 0, 'the idle ping does not kill the link it probes');
      const buf = new Uint8Array(1);
      await r.readAt(buf, 0);
      assert.is(buf[0], 7);
      assert.is(r.stats.connects, 1);
      await r.close();
    } finally {
      await s.close();
    }
  }));

test('a sharer that returns with another size or refuses the grant ends the mount with a clear error', () =>
  withTimeout(10_000, 'test', async () => {
    const clock = new VirtualClock();
    const s = await setup({ size: 1 << 20 });
    try {
      const r = await s.open({ clock });
      await s.listener.close();
      await s.server.close();
      await until(() => !r.connected);
      const server2 = new RegionServer({ identity: s.sharer, store: new MemoryBackend(2 << 20), regionId: s.regionId });
      void server2.serveListener(await s.sharerTransport.listen(s.address));
      const first = r.readAt(new Uint8Array(1), 0);
      first.catch(() => {});
      await turn();
      await clock.advance(200);
      const e = await rejects(first, (x) => x instanceof QuicmapError, 'final');
      assert.match(e.message, /changed size/);
      assert.is((e as QuicmapError).code, 'EIO');
      await r.close();
      await server2.close();

      // Same address, same sharer, but the region is gone (a new one took its place): refused, final.
      const s2 = await setup();
      const r2 = await s2.open({ clock });
      await s2.listener.close();
      await s2.server.close();
      await until(() => !r2.connected);
      const server3 = new RegionServer({ identity: s2.sharer, store: new MemoryBackend(4 << 20), regionId: newRegionId() });
      void server3.serveListener(await s2.sharerTransport.listen(s2.address));
      const second = r2.readAt(new Uint8Array(1), 0);
      second.catch(() => {});
      await turn();
      await clock.advance(200);
      const e2 = await rejects(second, code('EACCES'), 'refused');
      assert.match(e2.message, /does not serve/);
      await r2.close();
      await server3.close();
      await s2.close();
    } finally {
      await s.close();
    }
  }));

test('a sharer restarted read-only or with another chunk size ends the mount with a typed error', () =>
  withTimeout(10_000, 'test', async () => {
    for (const change of ['chunk size', 'read-only'] as const) {
      const clock = new VirtualClock();
      const store = new MemoryBackend(1 << 20);
      const s = await setup({ store });
      try {
        const r = await s.open({ clock, waitForLinkMs: 10_000 });
        await r.writeAt(new Uint8Array([9]), 0);
        await s.listener.close();
        await s.server.close();
        await until(() => !r.connected);
        // The same sharer, identity and region id: only the store's facts differ.
        const server2 =
          change === 'chunk size'
            ? new RegionServer({ identity: s.sharer, store, regionId: s.regionId, chunkSize: 256 * 1024 })
            : new RegionServer({ identity: s.sharer, store: new MemoryBackend(1 << 20, { readOnly: true }), regionId: s.regionId });
        void server2.serveListener(await s.sharerTransport.listen(s.address));
        const pending = r.readAt(new Uint8Array(1), 0);
        pending.catch(() => {});
        await turn();
        await clock.advance(1_000); // past the reconnect backoff
        const e = await rejects(pending, (x) => x instanceof RegionChangedError && (x as QuicmapError).code === 'EIO', change);
        assert.match(e.message, change === 'chunk size' ? /chunk size 65536 → 262144/ : /now read-only/);
        await rejects(r.readAt(new Uint8Array(1), 0), (x) => x instanceof RegionChangedError, 'final');
        await r.close();
        await server2.close();
      } finally {
        await s.close();
      }
    }
  }));

test('a CALL body up to the negotiated frame is one call (charged to the budget while served); a larger one is EOVERFLOW before it is sent', () =>
  withTimeout(20_000, 'large call', async () => {
    const s = await setup({ limits: { maxFrame: 256 * 1024 } });
    try {
      let heldWhileServing = 0;
      const sizes: number[] = [];
      s.server.handle('echo.len', async (args) => {
        heldWhileServing = Math.max(heldWhileServing, s.server.budget.used);
        const data = (args as { data: Uint8Array }).data;
        sizes.push(data.length);
        return { len: data.length, tail: data.subarray(data.length - 4) };
      });
      const r = await s.open();
      try {
        assert.is(r.maxCallBody, 256 * 1024);
        const data = new Uint8Array(200 * 1024).fill(7);
        data.set([1, 2, 3, 4], data.length - 4);
        const out = (await r.call('echo.len', { data })) as { len: number; tail: Uint8Array };
        assert.is(out.len, data.length);
        assert.equal([...out.tail], [1, 2, 3, 4]);
        assert.equal(sizes, [data.length], 'one call, the whole body');
        assert.ok(heldWhileServing >= data.length, `the body was charged to the node's budget (${heldWhileServing} bytes held)`);
        const err = await rejects(r.call('echo.len', { data: new Uint8Array(256 * 1024) }), code('EOVERFLOW'), 'a body above the frame');
        assert.match(err.message, /exceeds the maximum/);
        assert.equal(sizes.length, 1, 'the oversized call never reached the sharer');
        assert.ok((await r.call('echo.len', { data: new Uint8Array(10) })) !== null, 'the session goes on');
      } finally {
        await r.close();
      }
    } finally {
      await s.close();
    }
  }));

test.run();
