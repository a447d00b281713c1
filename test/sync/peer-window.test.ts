/**
 * Per-peer windows from measured throughput (PeerWindow, sans-IO) on a
 * virtual clock: a simulated peer is a serial server (service time per
 * chunk) behind a round trip; the window the estimator gives converges to
 * about twice the path's bandwidth-delay product; a slow peer gets a
 * shallow window; a SwarmSource pulling from a fast and a slow seeder
 * finishes in about the time the fast one alone needs.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { PeerWindow } from '../../engine/sync/peer-window.ts';
import { SwarmSource } from '../../engine/sync/swarm-source.ts';
import { HashListVerifier, chunkHash } from '../../engine/sync/hash-list.ts';
import { VirtualClock, settle } from '../../engine/sync/clock.ts';

const CS = 64 * 1024;

/** Closed loop against a serial server: returns the window after `ms` of virtual time. */
function simulate(serviceMs: number, rttMs: number, ms: number, maxWindow = 64): { w: PeerWindow; completed: number } {
  const w = new PeerWindow({ chunkBytes: CS, maxWindow });
  let now = 0;
  let serverFree = 0;
  const inflight: Array<{ id: number; doneAt: number }> = [];
  let completed = 0;
  while (now < ms) {
    while (w.hasRoom(now)) {
      const arrive = now + rttMs / 2;
      const start = Math.max(arrive, serverFree);
      serverFree = start + serviceMs;
      inflight.push({ id: w.start(now), doneAt: serverFree + rttMs / 2 });
    }
    inflight.sort((a, b) => a.doneAt - b.doneAt);
    const next = inflight.shift()!;
    now = next.doneAt;
    w.done(next.id, now, CS);
    completed++;
  }
  return { w, completed };
}

test('the window follows the bandwidth-delay product: deep for a fast path, shallow for a slow one', () => {
  // Fast: 1 ms per chunk at 20 ms RTT → BDP ≈ 21 chunks. Slow: 10 ms per chunk → BDP ≈ 3.
  const fast = simulate(1, 20, 2_000);
  const slow = simulate(10, 20, 2_000);
  const wf = fast.w.window(2_000);
  const ws = slow.w.window(2_000);
  assert.ok(wf >= 21 && wf <= 64, `fast window ${wf}`);
  assert.ok(ws >= 3 && ws <= 12, `slow window ${ws}`);
  // Rate estimates are the servers' rates (bytes per ms).
  assert.ok(Math.abs(fast.w.rate(2_000) - CS / 1) / (CS / 1) < 0.1, `fast rate ${fast.w.rate(2_000)}`);
  assert.ok(Math.abs(slow.w.rate(2_000) - CS / 10) / (CS / 10) < 0.1, `slow rate ${slow.w.rate(2_000)}`);
  // The fast path was kept busy: close to one chunk per ms.
  assert.ok(fast.completed >= 1_800, `fast completed ${fast.completed}`);
});

test('a window of 1 at 20 ms RTT would starve the fast path: the estimator does better than a fixed small window', () => {
  const fixed = Math.floor(2_000 / 21); // one request per round trip
  const fast = simulate(1, 20, 2_000);
  assert.ok(fast.completed > 10 * fixed);
});

test('failures halve the window until a good sample; old samples age out', () => {
  const { w } = simulate(1, 20, 1_000);
  const before = w.window(1_000);
  const a = w.start(1_000);
  const b = w.start(1_000);
  w.failed(a, 1_001);
  assert.is(w.window(1_001), Math.max(1, Math.floor(before / 2)));
  w.failed(b, 1_002);
  assert.is(w.window(1_002), Math.max(1, Math.floor(before / 4)));
  const c = w.start(1_010);
  w.done(c, 1_031, CS);
  assert.is(w.window(1_031), before, 'a good sample lifts the penalty');
  // The peer slows down: after the filter window only slow samples count.
  let now = 1_031;
  for (let i = 0; i < 40; i++) {
    const id = w.start(now);
    now += 400;
    w.done(id, now, CS);
  }
  assert.ok(w.window(now) <= 2, `window after slowing down ${w.window(now)}`);
});

test('an unmeasured peer starts at the initial window and is expected soon (it gets tried)', () => {
  const w = new PeerWindow({ chunkBytes: CS, initial: 3 });
  assert.is(w.window(0), 3);
  assert.is(w.expectedMs(0), 0);
});

test('SwarmSource: a slow seeder does not hold the pull back (virtual clock)', async () => {
  const N = 200;
  const clock = new VirtualClock();
  const content = new Uint8Array(N * CS);
  for (let i = 0; i < content.length; i += 4096) content[i] = (i >> 12) & 0xff;
  const v = new HashListVerifier(N);
  const hashes = new Uint8Array(N * 32);
  for (let i = 0; i < N; i++) hashes.set(chunkHash(content.subarray(i * CS, (i + 1) * CS)), i * 32);
  v.set(0, hashes, new Uint8Array(N).fill(1));
  // A seeder: a serial server with `serviceMs` per chunk behind a 10 ms round trip, on the virtual clock.
  const seeder = (serviceMs: number) => {
    let free = 0;
    const served: number[] = [];
    return {
      served,
      source: {
        fetch(i: number, buf: Uint8Array): Promise<void> {
          const start = Math.max(clock.now() + 5, free);
          free = start + serviceMs;
          return new Promise<void>((r) =>
            clock.schedule(free + 5, () => {
              buf.set(content.subarray(i * CS, i * CS + buf.length));
              served.push(i);
              r();
            }),
          );
        },
      },
    };
  };
  const fast = seeder(1);
  const slow = seeder(40);
  const owner = {
    size: N * CS,
    chunkSize: CS,
    readOnly: true,
    fetch: () => Promise.reject(new Error('owner unreachable')),
    push: () => Promise.reject(new Error('read-only')),
    flush: () => Promise.resolve(),
  };
  const swarm = new SwarmSource({ owner, seeders: [{ name: 'fast', source: fast.source }, { name: 'slow', source: slow.source }], verifier: v, clock, slowMs: 1e9 });
  // 16 pull workers, each taking the next chunk when its last one lands.
  let next = 0;
  let done = 0;
  const workers = Array.from({ length: 16 }, async () => {
    for (;;) {
      const i = next++;
      if (i >= N) return;
      const buf = new Uint8Array(CS);
      await swarm.fetch(i, buf, false);
      assert.is(buf[0], content[i * CS]);
      done++;
    }
  });
  const all = Promise.all(workers);
  while (done < N && clock.now() < 60_000) await clock.advance(1, () => settle(2));
  await all;
  assert.is(done, N);
  // The fast seeder alone needs ~N ms; an even split would take the slow one 100 × 40 ms = 4 s.
  assert.ok(clock.now() < 1.6 * N + 100, `pull took ${clock.now()} virtual ms`);
  assert.ok(slow.served.length < fast.served.length / 4, `slow served ${slow.served.length}, fast ${fast.served.length}`);
  const st = swarm.status();
  assert.ok(st.find((p) => p.name === 'fast')!.window > st.find((p) => p.name === 'slow')!.window);
});

test.run();
