/** base/clock.ts (VirtualClock, Wakeup) and base/deadline.ts (withDeadline), on virtual time. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { VirtualClock, Wakeup } from '../../base/clock.ts';
import { DeadlineError, withDeadline } from '../../base/deadline.ts';

test('VirtualClock fires due timers in deadline order; cancelled ones never', async () => {
  const c = new VirtualClock(100);
  const fired: string[] = [];
  c.schedule(300, () => fired.push(`b@${c.now()}`));
  c.schedule(150, () => fired.push(`a@${c.now()}`));
  const cancel = c.schedule(200, () => fired.push('cancelled'));
  cancel();
  await c.advance(150);
  assert.equal(fired, ['a@150']);
  assert.is(c.now(), 250);
  await c.advance(50);
  assert.equal(fired, ['a@150', 'b@300']);
  assert.is(c.pending, 0);
});

test('Wakeup keeps one timer: re-arming replaces it, stop cancels it', async () => {
  const c = new VirtualClock();
  const at: number[] = [];
  const w = new Wakeup(c, (now) => at.push(now));
  w.arm(100);
  w.arm(50);
  assert.is(c.pending, 1);
  await c.advance(200);
  assert.equal(at, [50]);
  w.arm(300);
  w.stop();
  await c.advance(200);
  assert.equal(at, [50]);
});

test('withDeadline: in time resolves; late rejects with typed ETIMEDOUT, runs onTimeout, releases a late value', async () => {
  const c = new VirtualClock();
  assert.is(await withDeadline(Promise.resolve(7), 100, 'quick', { clock: c }), 7);
  assert.is(c.pending, 0, 'the timer is cancelled once the work settles');
  let finish!: (v: string) => void;
  const slow = new Promise<string>((r) => (finish = r));
  const released: string[] = [];
  let timedOut = false;
  const p = withDeadline(slow, 100, 'slow work', { clock: c, onTimeout: () => (timedOut = true), late: (v) => released.push(v) });
  const outcome = p.then(() => 'resolved', (e: Error) => e);
  await c.advance(100);
  const e = await outcome;
  assert.instance(e, DeadlineError);
  assert.is((e as DeadlineError).code, 'ETIMEDOUT');
  assert.match((e as Error).message, /slow work did not finish within 100 ms/);
  assert.ok(timedOut);
  finish('connection');
  await new Promise((r) => setImmediate(r));
  assert.equal(released, ['connection']);
});

test.run();
