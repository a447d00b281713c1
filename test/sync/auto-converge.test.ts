/**
 * Auto-converge on a virtual clock: the step policy (engine/migrate/auto-converge.ts),
 * the source's write throttle (engine/layers/write-throttle.ts), and runMigration
 * driving a throttle until a writer that outruns the copy converges.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryBackend } from '../../engine/backends/memory.ts';
import { SyncedLayer } from '../../engine/layers/synced.ts';
import { WriteGate } from '../../engine/layers/write-gate.ts';
import { WriteThrottle } from '../../engine/layers/write-throttle.ts';
import { AutoConverge, type RoundObservation } from '../../engine/migrate/auto-converge.ts';
import { runMigration, type MigrationControl } from '../../engine/migrate/target.ts';
import { VirtualClock, settle } from '../../engine/sync/clock.ts';
import { GatedSource } from './gated-source.ts';

const MiB = 1024 * 1024;

/** Feed `periods` periods of 1 s (10 rounds each) to the policy; returns the steps seen, with their period. */
function drive(ac: AutoConverge, periods: number, round: (t: number) => Omit<RoundObservation, 'now' | 'maxDowntimeMs'>): Array<{ period: number; pct: number }> {
  const steps: Array<{ period: number; pct: number }> = [];
  for (let t = 0; t <= periods * 1000; t += 100) {
    const s = ac.observe({ now: t, maxDowntimeMs: 50, ...round(t) });
    if (s) steps.push({ period: t / 1000, pct: s.pct });
  }
  return steps;
}

test('policy: a writer that outruns the copy steps the throttle up as QEMU does (20, +10 ... 99), every second non-converging period', () => {
  const ac = new AutoConverge();
  // 30 MiB/s dirtied, 20 MiB/s copied, the prediction stuck at 2 s.
  const steps = drive(ac, 24, (t) => ({ dirtiedBytes: 30 * MiB * (t / 1000), transferredBytes: 20 * MiB * (t / 1000), predictedMs: 2000, firstPassDone: true }));
  assert.equal(
    steps.map((s) => s.pct),
    [20, 30, 40, 50, 60, 70, 80, 90, 99],
  );
  // Two periods per step (the first period only opens the window).
  assert.equal(
    steps.map((s) => s.period),
    [2, 4, 6, 8, 10, 12, 14, 16, 18],
  );
  assert.ok(ac.saturated);
  assert.is(ac.steps, 9);
});

test('policy: no step before the first pass, when the prediction fits, or when the copy outruns the writer and the prediction falls', () => {
  const before = new AutoConverge();
  assert.equal(drive(before, 10, (t) => ({ dirtiedBytes: 30 * MiB * t, transferredBytes: MiB * t, predictedMs: 5000, firstPassDone: false })), []);
  const fits = new AutoConverge();
  assert.equal(drive(fits, 10, (t) => ({ dirtiedBytes: 30 * MiB * t, transferredBytes: MiB * t, predictedMs: 40, firstPassDone: true })), []);
  const converging = new AutoConverge();
  // 5 MiB/s dirtied vs 40 MiB/s copied (12 %, under the 50 % trigger), the prediction falling every period.
  assert.equal(drive(converging, 10, (t) => ({ dirtiedBytes: 5 * MiB * (t / 1000), transferredBytes: 40 * MiB * (t / 1000), predictedMs: 5000 - t / 10, firstPassDone: true })), []);
  assert.is(converging.pct, 0);
  // The same low dirty share, but the prediction does not fall: that is not converging either.
  const stuck = new AutoConverge({ initialPct: 30, incrementPct: 20 });
  assert.equal(
    drive(stuck, 8, (t) => ({ dirtiedBytes: 5 * MiB * (t / 1000), transferredBytes: 40 * MiB * (t / 1000), predictedMs: 900, firstPassDone: true })).map((s) => s.pct),
    [30, 50, 70],
  );
});

test('throttle: open 10 ms of every 10 / (1 - pct) ms; a held write waits for the next open slice; set(0) releases it', async () => {
  const clock = new VirtualClock();
  const t = new WriteThrottle({ clock });
  assert.is(t.delayMs(12345), 0, 'off: never waits');
  t.set(50, 0);
  assert.is(t.cycleMs, 20);
  assert.is(t.delayMs(5), 0);
  assert.is(t.delayMs(10), 10);
  assert.is(t.delayMs(15), 5);
  assert.is(t.delayMs(25), 0);
  t.set(99, 0);
  assert.is(Math.round(t.cycleMs), 1000);
  assert.is(Math.round(t.delayMs(10)), 990);

  const store = t.wrap(new MemoryBackend(4096));
  await clock.advance(20); // now 20: in the closed part of the 99 % cycle
  let done = false;
  const w = store.writeAt(new Uint8Array(1).fill(7), 0).then(() => (done = true));
  await settle();
  await clock.advance(500);
  await settle();
  assert.is(done, false, 'held while closed');
  const r = new Uint8Array(1);
  await store.readAt(r, 0); // reads pass
  assert.is(r[0], 0, 'the held write did not reach the store');
  t.set(0);
  await w;
  assert.ok(done);
  assert.is(t.stats().delayedWrites, 1);
  assert.is(t.stats().delayedMs, 500);
});

test('throttle: a writer that waits for its writes makes about (100 - pct) % of its unthrottled writes', async () => {
  const count = async (pct: number) => {
    const clock = new VirtualClock();
    const t = new WriteThrottle({ clock });
    t.set(pct, 0);
    const store = t.wrap(new MemoryBackend(4096));
    let writes = 0;
    let stop = false;
    // Queue depth 1, one write per virtual millisecond when not held.
    const writer = (async () => {
      while (!stop) {
        await store.writeAt(new Uint8Array(1), 0);
        writes++;
        await new Promise<void>((r) => clock.schedule(clock.now() + 1, r));
      }
    })();
    for (let ms = 0; ms < 10_000; ms += 1) await clock.advance(1);
    stop = true;
    t.set(0);
    await clock.advance(10);
    await writer;
    return writes;
  };
  const free = await count(0);
  for (const pct of [50, 80, 95]) {
    const n = await count(pct);
    const share = n / free;
    assert.ok(Math.abs(share - (100 - pct) / 100) < 0.03, `${pct} %: ${n} of ${free} writes (${(share * 100).toFixed(1)} %)`);
  }
});

/**
 * A writer at the source that dirties `base` chunks per 100 ms round, fewer by the
 * throttle asked; fetches answer at once (the copy is never the limit, the writer is:
 * with any chunk pending at a check the prediction is over the limit).
 */
function throttledWriterControl(
  source: GatedSource,
  synced: () => SyncedLayer,
  base: number,
  calls: Array<{ pct: number; leaseMs: number }>,
  throttling = true,
  dirtyFor: (pct: number, round: number) => number = (pct) => Math.floor(base * (1 - pct / 100)),
): MigrationControl {
  let pct = 0;
  let next = 0;
  let round = 0;
  const c: MigrationControl = {
    rtt: async () => 1,
    syncDirty: async () => {
      const n = dirtyFor(pct, round++);
      const chunks = Array.from({ length: n }, () => next++ % synced().states.count);
      for (const i of chunks) source.ownerWrite(i * source.chunkSize, new Uint8Array(source.chunkSize).fill(1 + (next % 250)));
      synced().ownerChanged(chunks);
      return n;
    },
    suspend: async () => {},
    commit: async () => {},
    abort: async () => {},
  };
  if (throttling) {
    c.throttle = async (p, leaseMs) => {
      calls.push({ pct: p, leaseMs });
      pct = p;
      return { pct: p, delayedWrites: 0, delayedMs: 0 };
    };
  }
  return c;
}

test('runMigration: rounds that do not converge throttle the source step by step until they do; the give-up rule waits for the throttle', async () => {
  const CS = 4096;
  const N = 64;
  const source = new GatedSource(N * CS, CS, (i) => i & 0xff);
  const clock = new VirtualClock();
  const synced = new SyncedLayer({ cache: new MemoryBackend(N * CS), source, clock, pullWorkers: 4, push: false });
  const calls: Array<{ pct: number; leaseMs: number }> = [];
  const phases: string[] = [];
  const gate = new WriteGate(false);
  let result: Awaited<ReturnType<typeof runMigration>> | undefined;
  const run = runMigration({
    synced,
    control: throttledWriterControl(source, () => synced, 40, calls),
    finalize: { kind: 'auto' },
    maxDowntimeMs: 50,
    clock,
    throttleLeaseMs: 1000,
    resume: async () => gate.open(),
    onPhase: (p) => phases.push(p),
  }).then((r) => (result = r));
  for (let i = 0; i < 400 && !result; i++) await clock.advance(100);
  await run;
  assert.ok(result, 'the migration finalized');
  const asked = [...new Set(calls.map((c) => c.pct))];
  assert.equal(asked, [20, 30, 40, 50, 60, 70, 80, 90, 99]);
  assert.ok(calls.every((c) => c.leaseMs > 0));
  assert.ok(calls.length > asked.length, 'the lease was renewed between steps');
  assert.is(result!.throttle.pct, 99);
  assert.is(result!.throttle.steps, 9);
  // 40 chunks a round until 99 %: the old rule would have given up after 30 dirty rounds; this one waited.
  assert.ok(result!.dirtyRounds > 30, `${result!.dirtyRounds} dirty rounds`);
  assert.match(result!.why, /predicted stop-and-copy/);
  assert.ok(phases.includes('converge'));
  await synced.stop();
});

test('runMigration at full throttle: a pending set that still shrinks is waited for; one that stalls is finalized anyway after 30 rounds', async () => {
  const CS = 4096;
  const N = 64;
  for (const kind of ['shrinking', 'stalled'] as const) {
    const source = new GatedSource(N * CS, CS);
    const clock = new VirtualClock();
    const synced = new SyncedLayer({ cache: new MemoryBackend(N * CS), source, clock, pullWorkers: 4, push: false });
    const calls: Array<{ pct: number; leaseMs: number }> = [];
    let saturatedAt = -1;
    // A writer the throttle does not slow (it dirties 8 chunks a round); once the throttle is at 99 %,
    // 'shrinking' dirties one chunk fewer every four rounds (the copy gains on it slowly: 32 rounds to
    // converge, more than the 30 the give-up rule allows), 'stalled' stays at 8.
    const dirtyFor = (pct: number, round: number) => {
      if (pct < 99) return 8;
      if (saturatedAt < 0) saturatedAt = round;
      return kind === 'stalled' ? 8 : Math.max(0, 8 - Math.floor((round - saturatedAt) / 4));
    };
    let result: Awaited<ReturnType<typeof runMigration>> | undefined;
    const run = runMigration({
      synced,
      control: throttledWriterControl(source, () => synced, 40, calls, true, dirtyFor),
      finalize: { kind: 'auto' },
      maxDowntimeMs: 50,
      clock,
      resume: async () => {},
    }).then((r) => (result = r));
    for (let i = 0; i < 600 && !result; i++) await clock.advance(100);
    await run;
    assert.ok(result, `${kind}: finalized`);
    assert.is(result!.throttle.pct, 99);
    if (kind === 'shrinking') {
      assert.match(result!.why, /predicted stop-and-copy/, `waited until it fit: ${JSON.stringify(result)}`);
    } else {
      assert.match(result!.why, /finalizing anyway/);
    }
    await synced.stop();
  }
});

test('runMigration without a throttle (an older source, or --auto-converge off) gives up after 30 dirty rounds as before', async () => {
  const CS = 4096;
  const N = 64;
  for (const mode of ['no-throttle', 'off'] as const) {
    const source = new GatedSource(N * CS, CS);
    const clock = new VirtualClock();
    const synced = new SyncedLayer({ cache: new MemoryBackend(N * CS), source, clock, pullWorkers: 4, push: false });
    const calls: Array<{ pct: number; leaseMs: number }> = [];
    let result: Awaited<ReturnType<typeof runMigration>> | undefined;
    const run = runMigration({
      synced,
      control: throttledWriterControl(source, () => synced, 40, calls, mode === 'off'),
      finalize: { kind: 'auto' },
      maxDowntimeMs: 50,
      clock,
      converge: mode === 'off' ? false : {},
      resume: async () => {},
    }).then((r) => (result = r));
    for (let i = 0; i < 200 && !result; i++) await clock.advance(100);
    await run;
    assert.ok(result, `${mode}: finalized`);
    assert.is(calls.length, 0, `${mode}: never throttled`);
    assert.is(result!.throttle.steps, 0);
    assert.match(result!.why, /finalizing anyway/);
    await synced.stop();
  }
});

test.run();
