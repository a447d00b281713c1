import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { TraceRecorder, parseTrace, rescaleTrace } from '../../engine/sync/access-trace.ts';
import { ChunkStates } from '../../engine/sync/chunk-states.ts';
import { parsePullOrder, priorityOrder, reverseOrder, sequentialOrder, traceOrder, volatilityOrder } from '../../engine/sync/pull-order.ts';
import { Puller } from '../../engine/sync/puller.ts';
import { PushSchedule } from '../../engine/sync/push-schedule.ts';
import { VirtualClock, settle } from '../../engine/sync/clock.ts';

const ctx = (chunks: number, changes: (i: number) => number = () => 0) => ({ chunks, chunkSize: 100, changes });

test('static orders: sequential, reverse, priority (higher first, ties by index), trace (first touches, bounded, deduplicated)', () => {
  assert.equal(sequentialOrder.plan(ctx(4)), [0, 1, 2, 3]);
  assert.equal(reverseOrder.plan(ctx(4)), [3, 2, 1, 0]);
  // r3map-style: prefer the last 200 bytes (an index at the end), then the start.
  const p = priorityOrder((off) => (off >= 300 ? 10 : off === 0 ? 5 : 1));
  assert.equal(p.plan(ctx(5)), [3, 4, 0, 1, 2]);
  assert.equal(traceOrder([3, 1, 3, 99, -1, 0]).plan(ctx(4)), [3, 1, 0]);
});

test('volatility order: least-changed first, re-planned as changes arrive', () => {
  const counts = [5, 0, 2, 0];
  const v = volatilityOrder(2);
  assert.equal(v.plan(ctx(4, (i) => counts[i]!)), [1, 3, 2, 0]);
  assert.is(v.replanEvery, 2);
});

test('puller with a dynamic order re-plans; every remote chunk is pulled exactly once; chunks left out of a trace come after it', async () => {
  const states = new ChunkStates(6);
  const pulled: number[] = [];
  const clock = new VirtualClock();
  const puller = new Puller(
    {
      chunks: 6,
      isRemote: (i) => states.isRemote(i),
      pullBackground: async (i) => {
        states.beginFetch(i);
        states.fetched(i);
        pulled.push(i);
      },
      planContext: () => ctx(6),
    },
    { workers: 1, order: traceOrder([4, 2]), clock },
  );
  states.wrote(5); // made local by a write: skipped
  puller.start();
  await settle(10);
  await puller.stop();
  assert.equal(pulled, [4, 2, 0, 1, 3]);
});

test('a scattered order keeps a run of chunks in flight per worker (not one chunk per round trip)', async () => {
  const n = 64;
  const states = new ChunkStates(n);
  let inFlight = 0;
  let most = 0;
  const pending: Array<() => void> = [];
  const pulled: number[] = [];
  // Every other chunk, so no two picks are adjacent: each is a run of one.
  const order = traceOrder(Array.from({ length: n / 2 }, (_, k) => 2 * k));
  const puller = new Puller(
    {
      chunks: n,
      isRemote: (i) => states.isRemote(i),
      pullBackground: (i) => {
        states.beginFetch(i);
        inFlight++;
        most = Math.max(most, inFlight);
        return new Promise<void>((r) =>
          pending.push(() => {
            inFlight--;
            states.fetched(i);
            pulled.push(i);
            r();
          }),
        );
      },
      pullRun: async (first, count) => {
        for (let k = first; k < first + count; k++) if (states.isRemote(k)) (states.beginFetch(k), states.fetched(k), pulled.push(k));
      },
      planContext: () => ctx(n),
    },
    { workers: 2, order, maxRun: 8, clock: new VirtualClock() },
  );
  puller.start();
  await settle(10);
  assert.is(most, 16, 'two workers, eight single chunks each in flight');
  while (pending.length) {
    for (const f of pending.splice(0)) f();
    await settle(10);
  }
  await puller.stop();
  assert.equal([...pulled].sort((a, b) => a - b), Array.from({ length: n }, (_, i) => i), 'every chunk once');
});

test('puller retries a failed pull after a backoff on the clock, and reports completion', async () => {
  const states = new ChunkStates(2);
  const clock = new VirtualClock();
  let fail = true;
  let complete = 0;
  const puller = new Puller(
    {
      chunks: 2,
      isRemote: (i) => states.isRemote(i),
      pullBackground: async (i) => {
        if (fail && i === 1) throw new Error('down');
        states.beginFetch(i);
        states.fetched(i);
      },
      planContext: () => ctx(2),
    },
    { workers: 1, order: sequentialOrder, clock, minBackoffMs: 100, onComplete: () => complete++ },
  );
  puller.start();
  await settle(10);
  assert.is(states.isLocal(0), true);
  assert.is(states.isLocal(1), false);
  assert.is(puller.failures, 1);
  fail = false;
  await clock.advance(100);
  assert.is(states.isLocal(1), true);
  assert.is(complete, 1);
  await puller.stop();
});

test('chunk states: generations make a re-write during a push stay dirty; invalidation spares dirty chunks and stales fetches', () => {
  const s = new ChunkStates(3);
  s.wrote(0);
  const g = s.beginPush(0);
  assert.is(s.beginPush(0), -1, 'one push at a time');
  s.wrote(0);
  s.pushed(0, g);
  assert.is(s.isDirty(0), true, 'newer write still dirty');
  assert.is(s.ackedAtLeast(0, g), true);
  assert.is(s.ackedAtLeast(0, s.generation(0)), false);
  const g2 = s.beginPush(0);
  s.pushed(0, g2);
  assert.is(s.isDirty(0), false);
  assert.is(s.counts().dirty, 0);
  const e = s.beginFetch(1);
  assert.is(s.invalidate(1), false);
  assert.is(s.fetchStillValid(1, e), false, 'stale fetch');
  s.fetchAbandoned(1);
  assert.is(s.isRemote(1), true);
  s.wrote(2);
  assert.is(s.invalidate(2), false, 'dirty chunk keeps its bytes');
  assert.is(s.isLocal(2), true);
});

test('chunk states: nextPending walks the remote and fetching chunks in order, skipping local ones', () => {
  const st = new ChunkStates(40);
  for (let i = 0; i < 40; i++) if (![3, 17, 18, 39].includes(i)) { st.beginFetch(i); st.fetched(i); }
  st.beginFetch(17); // in flight: pending too
  const seen: number[] = [];
  for (let i = st.nextPending(0); i >= 0; i = st.nextPending(i + 1)) seen.push(i);
  assert.equal(seen, [3, 17, 18, 39]);
  st.fetched(17);
  st.beginFetch(3);
  st.fetched(3);
  assert.is(st.nextPending(0), 18);
  assert.is(st.nextPending(40), -1);
});

test('push schedule: interval from the oldest unpushed write, threshold at once, nothing when clean', () => {
  const p = new PushSchedule({ intervalMs: 1000, maxDirtyBytes: 300 });
  assert.is(p.nextTimeout(), undefined);
  p.dirtied(50);
  p.dirtied(700);
  assert.is(p.nextTimeout(), 1050);
  assert.is(p.due(1049, 100), false);
  assert.is(p.due(1050, 100), true);
  assert.is(p.due(60, 300), true, 'threshold');
  p.roundStarted();
  assert.is(p.nextTimeout(), undefined);
  assert.is(p.due(5000, 0), false);
});

test('trace recorder and parser round-trip; a trace at another chunk size is rescaled by offset', () => {
  const r = new TraceRecorder(10, 4096);
  for (const i of [7, 7, 2, 9, 2, 0]) r.touch(i);
  const text = r.header() + r.takeNewLines();
  assert.is(r.takeNewLines(), '');
  const t = parseTrace(text);
  assert.is(t.chunkSize, 4096);
  assert.equal(t.chunks, [7, 2, 9, 0]);
  assert.equal(rescaleTrace(t, 8192), [3, 1, 4, 0]);
  assert.equal(rescaleTrace({ chunkSize: 8192, chunks: [1] }, 4096), [2, 3]);
  assert.throws(() => parseTrace('1\nfoo\n'), /line 2/);
});

test('pull order specs', () => {
  assert.equal(parsePullOrder('reverse'), { kind: 'reverse' });
  assert.equal(parsePullOrder('trace:/tmp/t'), { kind: 'trace', path: '/tmp/t' });
  assert.equal(parsePullOrder('priority:./p.mjs'), { kind: 'priority', path: './p.mjs' });
  assert.throws(() => parsePullOrder('random'), /unknown pull order/);
  assert.throws(() => parsePullOrder('trace:'), /unknown pull order/);
});

test.run();
