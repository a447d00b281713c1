/**
 * The migration calls on the wire (loopback transport): migrate.throttle
 * (auto-converge's writer throttle at the source, with its lease) and
 * migrate.suspend's answer carrying the final dirty list.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { generateIdentity } from '../../crypto/identity.ts';
import { LoopbackNetwork, LoopbackTransport } from '../../transports/loopback.ts';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { FeedLayer } from '../../engine/layers/feed.ts';
import { WriteGate } from '../../engine/layers/write-gate.ts';
import { WriteThrottle } from '../../engine/layers/write-throttle.ts';
import { shareRegion } from '../../p2p/share.ts';
import { mountTicket } from '../../p2p/mount.ts';
import { openManaged } from '../../p2p/sync/managed.ts';
import { RemoteMigrationControl, serveMigration } from '../../p2p/sync/migrate-calls.ts';
import { decodeChanges } from '../../p2p/sync/change-calls.ts';
import { withTimeout } from '../helpers/env.ts';

const CS = 64 * 1024;
const SIZE = 16 * CS;

async function setup(opts: { throttle?: boolean; readOnly?: boolean } = {}) {
  const net = new LoopbackNetwork();
  const a = await generateIdentity();
  const b = await generateIdentity();
  const store = new MemoryBackend(SIZE);
  await store.writeAt(new Uint8Array(SIZE).fill(0x11), 0);
  const gate = new WriteGate();
  const throttle = opts.throttle === false ? undefined : new WriteThrottle();
  const shared = await shareRegion({ identity: a, store: gate.wrap(store), transport: new LoopbackTransport(a, { network: net }), listen: 'sharer:0', readOnly: opts.readOnly === true });
  const app = (throttle ? (s: ReturnType<WriteGate['wrap']>) => throttle.wrap(s) : (s: ReturnType<WriteGate['wrap']>) => s)(gate.wrap(new FeedLayer(store, shared.feed)));
  const src = serveMigration(shared.server, { gate, feed: shared.feed, flush: () => store.flush(), ...(throttle ? { throttle } : {}) });
  const m = await mountTicket({ identity: b, ticket: shared.ticket, transport: new LoopbackTransport(b, { network: net }) });
  const mm = await openManaged(m.region, { pullWorkers: 2, push: false });
  const control = new RemoteMigrationControl(m.region, mm.source, mm.synced);
  const close = async () => {
    src.close();
    await mm.close();
    await m.close();
    await shared.close();
  };
  return { store, gate, throttle, shared, app, src, m, mm, control, close };
}

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('migrate.throttle sets the source writer throttle and reports it; without renewal the lease lifts it; the commit lifts it', () =>
  withTimeout(30_000, 'throttle', async () => {
    const s = await setup();
    try {
      const st = await s.control.throttle(60, 400);
      assert.is(st.pct, 60);
      assert.is(s.throttle!.pct, 60);
      // The lease runs out (the target stopped renewing: it died): the application runs at full speed again.
      await until('the lease to lift the throttle', () => s.throttle!.pct === 0);
      await s.control.throttle(70, 20_000);
      assert.is(s.throttle!.pct, 70);
      await s.control.suspend();
      await s.control.commit();
      assert.is(s.throttle!.pct, 0, 'handed over: nothing left to throttle');
      assert.is(s.src.ownership.phase, 'handed-over');
    } finally {
      await s.close();
    }
  }),
);

test('migrate.throttle: ENOTSUP from a source without a throttle, EPERM with a read-only ticket', () =>
  withTimeout(30_000, 'throttle refusals', async () => {
    for (const [opts, code] of [
      [{ throttle: false }, 'ENOTSUP'],
      [{ readOnly: true }, 'EPERM'],
    ] as const) {
      const s = await setup(opts);
      try {
        let err: unknown;
        await s.control.throttle(50, 1000).catch((e) => (err = e));
        assert.is((err as { code?: string })?.code, code, String(err));
        if (s.throttle) assert.is(s.throttle.pct, 0);
      } finally {
        await s.close();
      }
    }
  }),
);

test('migrate.suspend answers with the final dirty list since the version the target names; the target applies it and pulls only those chunks', () =>
  withTimeout(30_000, 'final dirty list', async () => {
    const s = await setup();
    try {
      await s.mm.synced.whenComplete();
      const since = s.shared.feed.current;
      await s.app.writeAt(new Uint8Array(CS).fill(0x5a), 5 * CS);
      await s.app.writeAt(new Uint8Array(CS).fill(0x6b), 9 * CS);
      // The raw answer: the chunks changed since `since`, with the final version.
      const raw = (await s.m.region.call('migrate.suspend', { feed: s.shared.feed.id, since })) as Record<string, unknown>;
      const ans = decodeChanges({ feed: raw.feed, version: raw.version, chunks: raw.chunks });
      assert.equal(ans.chunks, [5, 9]);
      assert.is(ans.version, s.shared.feed.current);
      let refused: unknown;
      await s.app.writeAt(new Uint8Array(1), 0).catch((e) => (refused = e));
      assert.is((refused as { code?: string })?.code, 'EPERM', 'writes are closed once suspended');
      await s.control.abort();
      assert.is(s.src.ownership.phase, 'owner');

      // Through the control: the list rides on the answer and lands as invalidations.
      await s.app.writeAt(new Uint8Array(CS).fill(0x7c), 3 * CS);
      const r = await s.control.suspend();
      assert.ok(r && typeof r === 'object', 'the answer carried the list');
      assert.ok(s.mm.source.feedVersion >= s.shared.feed.current, 'the target is at the final version');
      const pulledBefore = s.mm.synced.progress().pulledBytes;
      await s.mm.synced.pullRemote(8);
      await s.mm.synced.whenComplete();
      const got = new Uint8Array(CS);
      await s.mm.synced.readAt(got, 3 * CS);
      assert.is(got[0], 0x7c);
      assert.is(got[CS - 1], 0x7c);
      await s.mm.synced.readAt(got, 9 * CS);
      assert.is(got[0], 0x6b, 'the earlier change arrived too');
      // Only changed chunks were pulled again (3, and 5 and 9 unless the long poll got them before).
      assert.ok(s.mm.synced.progress().pulledBytes - pulledBefore <= 3 * CS);
      await s.control.commit();
    } finally {
      await s.close();
    }
  }),
);

test.run();
