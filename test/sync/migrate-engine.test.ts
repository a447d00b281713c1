import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { SyncedLayer } from '../../engine/layers/synced.ts';
import { WriteGate } from '../../engine/layers/write-gate.ts';
import { decideFinalize, predictStopCopyMs } from '../../engine/migrate/finalize-policy.ts';
import { Ownership } from '../../engine/migrate/ownership.ts';
import { MigrationError, runMigration, type MigrationControl } from '../../engine/migrate/target.ts';
import { ChangeFeed } from '../../engine/tracking/change-feed.ts';
import { VirtualClock, settle } from '../../engine/sync/clock.ts';
import { GatedSource } from './gated-source.ts';

test('ownership: prepare → commit moves it once; a second finalize is EBUSY naming the owner; a prepare times out back to the source', () => {
  const o = new Ownership(1000);
  assert.is(o.isWritable, true);
  o.prepare('T', 0);
  assert.is(o.isWritable, false, 'nobody writes between prepare and commit');
  assert.throws(() => o.prepare('U', 1), /already finalizing/);
  assert.throws(() => o.commit('U'), /not U's/);
  o.commit('T');
  o.commit('T'); // retried commit: same answer
  assert.is(o.phase, 'handed-over');
  assert.throws(() => o.prepare('T', 2), /ownership moved to T/);
  const p = new Ownership(1000);
  p.prepare('T', 0);
  assert.is(p.handleTimeout(999), false);
  assert.is(p.handleTimeout(1000), true);
  assert.is(p.isWritable, true, 'the source is the owner again');
  assert.throws(() => p.commit('T'), /still the owner/);
});

test('finalize policy: auto waits for the predicted stop-and-copy to fit; now and after:DUR', () => {
  const base = { now: 0, startedAt: 0, pendingBytes: 10_000_000, bytesPerMs: 100_000, rttMs: 1, rounds: 1 };
  assert.is(predictStopCopyMs(base), 102);
  assert.is(decideFinalize({ kind: 'auto' }, 50, base).finalize, false);
  assert.is(decideFinalize({ kind: 'auto' }, 200, base).finalize, true);
  assert.is(decideFinalize({ kind: 'auto' }, 50, { ...base, bytesPerMs: 0 }).predictedMs, Infinity);
  assert.is(decideFinalize({ kind: 'auto' }, 50, { ...base, rounds: 30 }).finalize, true, 'gives up waiting after max rounds');
  // Giving up waits for a round near the least pending seen (not a peak of the writer), for at most twice as long.
  assert.is(decideFinalize({ kind: 'auto' }, 50, { ...base, rounds: 30, minPendingBytes: 4_000_000 }).finalize, false, 'pending 2.5x the best seen: not now');
  assert.is(decideFinalize({ kind: 'auto' }, 50, { ...base, rounds: 30, minPendingBytes: 9_000_000 }).finalize, true, 'near the best seen');
  assert.is(decideFinalize({ kind: 'auto' }, 50, { ...base, rounds: 60, minPendingBytes: 1_000_000 }).finalize, true, 'after twice max rounds in any case');
  assert.is(decideFinalize({ kind: 'now' }, 1, base).finalize, true);
  assert.is(decideFinalize({ kind: 'after', ms: 500 }, 1, { ...base, now: 499 }).finalize, false);
  assert.is(decideFinalize({ kind: 'after', ms: 500 }, 1, { ...base, now: 500 }).finalize, true);
});

test('change feed: since a version, without the asker\'s own writes; another feed id gets "all"; the long poll wakes on a change', async () => {
  const clock = new VirtualClock();
  const f = new ChangeFeed(10 * 100, 100, { clock, id: 7 });
  const first = await f.next({ feed: null, since: 0, waitMs: 1000 });
  assert.equal(first, { feed: 7, version: 0, chunks: [] });
  f.record(150, 100, 1); // chunks 1, 2 by session 1
  f.record(950, 10, 0); // chunk 9 locally
  assert.equal(f.changedSince(0), [1, 2, 9]);
  assert.equal(f.changedSince(0, 1), [9], 'session 1 is not told about its own writes');
  assert.equal(f.changedSince(1), [9]);
  assert.equal((await f.next({ feed: 8, since: 2, waitMs: 0 })).chunks, 'all');
  let got: unknown;
  void f.next({ feed: 7, since: 2, waitMs: 5000 }).then((a) => (got = a));
  await settle();
  assert.is(got, undefined, 'nothing new: the poll waits');
  f.record(0, 1, 2);
  await settle();
  assert.equal(got, { feed: 7, version: 3, chunks: [0] });
  let empty: unknown;
  void f.next({ feed: 7, since: 3, waitMs: 1000 }).then((a) => (empty = a));
  await clock.advance(1000);
  assert.equal(empty, { feed: 7, version: 3, chunks: [] }, 'times out empty');
});

test('write gate: close waits for admitted writes, then refuses with the reason', async () => {
  const g = new WriteGate();
  const store = g.wrap(new MemoryBackend(4096));
  let release!: () => void;
  const slow = g.admit(() => new Promise<void>((r) => (release = r)));
  let closed = false;
  const c = g.close('suspended for migration').then(() => (closed = true));
  await settle();
  assert.is(closed, false, 'a write is still inside');
  release();
  await slow;
  await c;
  try {
    await store.writeAt(new Uint8Array(1), 0);
    assert.unreachable();
  } catch (e) {
    assert.match((e as Error).message, /suspended for migration/);
  }
  const b = new Uint8Array(1);
  await store.readAt(b, 0); // reads pass
});

function fakeControl(source: GatedSource, synced: () => SyncedLayer, log: string[], fail: Partial<Record<keyof MigrationControl, boolean>> = {}): MigrationControl {
  return {
    rtt: async () => 1,
    syncDirty: async () => {
      if (fail.syncDirty) throw new Error('source gone');
      log.push('sync');
      return 0;
    },
    suspend: async () => {
      log.push('suspend');
      source.ownerWrite(0, new Uint8Array(4096).fill(0xee)); // the last write before writes close
      synced().ownerChanged([0]);
    },
    commit: async () => {
      if (fail.commit) throw Object.assign(new Error('no answer'), { code: 'EIO' });
      log.push('commit');
    },
    abort: async () => void log.push('abort'),
  };
}

test('runMigration: precopy, rounds, suspend, final dirty chunk re-pulled, handover, resume; the result is measured on the clock', async () => {
  const CS = 4096;
  const source = new GatedSource(16 * CS, CS, (i) => i & 0xff);
  const clock = new VirtualClock();
  const synced = new SyncedLayer({ cache: new MemoryBackend(16 * CS), source, clock, pullWorkers: 2, push: false });
  const log: string[] = [];
  const phases: string[] = [];
  const gate = new WriteGate(false);
  const run = runMigration({
    synced,
    control: fakeControl(source, () => synced, log),
    finalize: { kind: 'auto' },
    maxDowntimeMs: 50,
    clock,
    resume: async () => gate.open(),
    onPhase: (p) => phases.push(p),
  });
  for (let i = 0; i < 50 && gate.isOpen === false; i++) await clock.advance(100);
  const r = await run;
  assert.ok(gate.isOpen);
  assert.equal([...new Set(phases)], ['track', 'precopy', 'rounds', 'suspend', 'final-sync', 'final-pull', 'handover', 'resumed']);
  assert.equal(log.slice(-3), ['suspend', 'sync', 'commit']);
  const b = new Uint8Array(CS);
  await synced.readAt(b, 0);
  assert.is(b[0], 0xee, 'the final dirty chunk was pulled before the handover');
  assert.is(r.postCopy, false);
  assert.ok(r.rounds >= 1 && r.bytes >= 17 * CS);
  await synced.stop();
});

test('runMigration failures: the source lost in pre-copy, or the commit unanswered: the target does not resume and says the source owns it', async () => {
  const CS = 4096;
  for (const fail of [{ syncDirty: true }, { commit: true }] as const) {
    const source = new GatedSource(4 * CS, CS);
    const clock = new VirtualClock();
    const synced = new SyncedLayer({ cache: new MemoryBackend(4 * CS), source, clock, pullWorkers: 1, push: false });
    let resumed = false;
    const run = runMigration({ synced, control: fakeControl(source, () => synced, [], fail), finalize: { kind: 'now' }, maxDowntimeMs: 50, clock, sourceLostMs: 1000, resume: async () => void (resumed = true) });
    let err: unknown;
    run.catch((e) => (err = e));
    for (let i = 0; i < 40 && !err; i++) await clock.advance(100);
    assert.ok(err instanceof MigrationError, String(err));
    assert.is((err as MigrationError).owner, 'source');
    assert.match((err as Error).message, /source (still )?owns the region/);
    assert.is(resumed, false);
    await synced.stop();
  }
});

test('runMigration finalizes even when a busy writer keeps some chunk remote at every check (regression: auto never finalized)', async () => {
  const CS = 4096;
  const source = new GatedSource(8 * CS, CS);
  const clock = new VirtualClock();
  const synced = new SyncedLayer({ cache: new MemoryBackend(8 * CS), source, clock, pullWorkers: 2, push: false });
  const control = fakeControl(source, () => synced, []);
  // Every dirty round finds chunk 0 changed again, right before the check.
  control.syncDirty = async () => {
    synced.ownerChanged([0]);
    return 1;
  };
  const gate = new WriteGate(false);
  const run = runMigration({ synced, control, finalize: { kind: 'auto' }, maxDowntimeMs: 50, clock, resume: async () => gate.open() });
  let done = false;
  void run.then(() => (done = true));
  for (let i = 0; i < 100 && !done; i++) await clock.advance(100);
  assert.ok(done, 'the migration finalized');
  await synced.stop();
});

test('runMigration: a long pre-copy does not count as non-convergence (auto does not give up the moment the first pass ends)', async () => {
  const CS = 4096;
  const N = 16;
  const source = new GatedSource(N * CS, CS, (i) => i & 0xff);
  const clock = new VirtualClock();
  const synced = new SyncedLayer({ cache: new MemoryBackend(N * CS), source, clock, pullWorkers: 2, push: false });
  const log: string[] = [];
  const gate = new WriteGate(false);
  let result: Awaited<ReturnType<typeof runMigration>> | undefined;
  // maxDowntime 1 ms: with chunks pending the prediction never fits, so only the give-up rule can finalize.
  const run = runMigration({ synced, control: fakeControl(source, () => synced, log), finalize: { kind: 'auto' }, maxDowntimeMs: 1, clock, resume: async () => gate.open() }).then((r) => (result = r));
  // A pre-copy 40 rounds long: every fetch held.
  source.holdFetches = true;
  for (let i = 0; i < 40; i++) await clock.advance(100);
  assert.ok(log.filter((l) => l === 'sync').length >= 35, 'many rounds during the pre-copy');
  // The first pass completes, and right away a writer dirties 4 chunks that cannot be re-pulled yet.
  source.holdFetches = false;
  source.release();
  await settle(20);
  assert.ok(synced.progress().complete, 'first pass done');
  source.holdFetches = true;
  for (let i = 0; i < 4; i++) source.ownerWrite(i * CS, new Uint8Array(CS).fill(0xa0 + i));
  for (let i = 0; i < 5; i++) await clock.advance(100);
  assert.not.ok(log.includes('suspend'), 'no finalize yet: 5 dirty rounds, not 45');
  // Not converging: after 30 dirty rounds auto finalizes anyway.
  for (let i = 0; i < 40 && !log.includes('suspend'); i++) await clock.advance(100);
  assert.ok(log.includes('suspend'), 'gave up after the dirty rounds');
  source.holdFetches = false;
  source.release();
  for (let i = 0; i < 50 && !result; i++) (source.release(), await clock.advance(100));
  await run;
  assert.ok(result!.dirtyRounds >= 30 && result!.dirtyRounds < 40, `dirty rounds ${result!.dirtyRounds}`);
  assert.ok(result!.rounds >= result!.dirtyRounds + 35);
  const b = new Uint8Array(CS);
  await synced.readAt(b, 2 * CS);
  assert.is(b[0], 0xa2, 'the dirtied chunks were pulled before the handover');
  await synced.stop();
});

test.run();
