/**
 * The sans-IO parts of a RemoteRegion on plain numbers for time: the
 * LinkSupervisor (liveness, backoff, final errors, the full manifest check)
 * and the RequestTable (deadlines, link loss, ids across links).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { QuicmapError } from '../../base/errors.ts';
import { LinkSupervisor, RegionChangedError, regionChanges, type SessionFacts } from '../../p2p/remote/link-supervisor.ts';
import { RequestTable } from '../../p2p/remote/request-table.ts';

const facts = (over: Partial<SessionFacts['manifest']> = {}, limits = { maxFrame: 1 << 20, maxInFlight: 64 }, caps = ['trim', 'zero']): SessionFacts => ({
  manifest: {
    regionId: new Uint8Array(16),
    sharer: new Uint8Array(32),
    size: 1 << 20,
    chunkSize: 65536,
    generation: 1,
    readOnly: false,
    canTrim: true,
    fastZero: true,
    multiConn: true,
    preferredBlockSize: 4096,
    ...over,
  },
  limits,
  caps: new Set(caps),
});

const timing = { livenessMs: 400, idlePingMs: 1000, minBackoffMs: 100, maxBackoffMs: 400 };

test('busy link: ping at half the liveness limit, dead at the limit; activity pushes both back', () => {
  const s = new LinkSupervisor(timing, facts(), 0);
  assert.is(s.nextTimeout(true), 200);
  assert.is(s.handleTimeout(199, true), undefined);
  assert.equal(s.handleTimeout(200, true), { kind: 'ping' });
  assert.is(s.nextTimeout(true), 300, 'the next ping a quarter later');
  s.received(250);
  assert.is(s.handleTimeout(300, true), undefined, 'an answer resets the silence');
  assert.is(s.nextTimeout(true), 450);
  assert.equal(s.handleTimeout(450, true), { kind: 'ping' });
  const dead = s.handleTimeout(650, true);
  assert.is(dead?.kind, 'kill');
  assert.match((dead as { reason: Error }).reason.message, /nothing received for 400 ms/);
});

test('idle link: one ping after idlePingMs of silence, then the busy rules apply', () => {
  const s = new LinkSupervisor(timing, facts(), 0);
  assert.is(s.nextTimeout(false), 1000);
  assert.is(s.handleTimeout(999, false), undefined);
  assert.equal(s.handleTimeout(1000, false), { kind: 'ping' });
  assert.is(s.nextTimeout(false), 2000, 'no second idle ping before another idlePingMs');
  // The ping is pending now: the sharer has the full liveness limit to answer it.
  s.sent(1000);
  assert.is(s.handleTimeout(1001, true), undefined, 'a quiet link is not dead the moment its idle ping goes out');
  assert.is(s.nextTimeout(true), 1200);
  assert.equal(s.handleTimeout(1200, true), { kind: 'ping' });
  assert.is(s.handleTimeout(1250, true), undefined, 'the next ping a quarter later');
  assert.is(s.handleTimeout(1400, true)?.kind, 'kill', 'the ping unanswered for the limit');
});

test('a request after a quiet spell longer than the liveness limit gets the full limit to be answered', () => {
  const s = new LinkSupervisor(timing, facts(), 0);
  s.received(100);
  // 700 ms of quiet (over the 400 ms limit, under the idle ping): a new request goes out.
  s.sent(800);
  assert.is(s.handleTimeout(801, true), undefined, 'not dead at once');
  assert.is(s.nextTimeout(true), 1000, 'ping at half the limit after the send');
  s.sent(900); // more requests do not move the start of the wait
  s.received(950);
  assert.is(s.handleTimeout(1000, true), undefined, 'answered');
  assert.is(s.nextTimeout(true), 1150, 'a request still pending: silence counts from the last arrival');
  assert.is(s.handleTimeout(1350, true)?.kind, 'kill');
});

test('reconnect: at once, then backoff doubling up to the maximum; success resets it', () => {
  const s = new LinkSupervisor(timing, facts(), 0);
  assert.equal(s.linkDown(), { kind: 'dial' });
  assert.is(s.linkDown(), undefined, 'one dial at a time');
  const down = new QuicmapError('EIO', 'nothing listens');
  const retries: number[] = [];
  let now = 10;
  for (let i = 0; i < 4; i++) {
    assert.is(s.dialFailed(now, down), undefined);
    const at = s.nextTimeout(false)!;
    retries.push(at - now);
    assert.is(s.handleTimeout(at - 1, false), undefined);
    assert.equal(s.handleTimeout(at, false), { kind: 'dial' });
    now = at;
  }
  assert.equal(retries, [100, 200, 400, 400]);
  assert.is(s.linkUp(now, facts({ generation: 2 })), undefined, 'a restarted sharer (new generation) is fine');
  assert.is(s.state, 'up');
  s.linkDown();
  s.dialFailed(now, down);
  assert.is(s.nextTimeout(false)! - now, 100);
});

test('a refusal or a changed region is final, and typed', () => {
  const refused = new LinkSupervisor(timing, facts(), 0);
  refused.linkDown();
  const err = new QuicmapError('EACCES', 'grant expired');
  assert.is(refused.dialFailed(5, err), err);
  assert.is(refused.state, 'failed');
  assert.is(refused.failure, err);
  assert.is(refused.nextTimeout(true), undefined);

  const changed = new LinkSupervisor(timing, facts(), 0);
  changed.linkDown();
  const e = changed.linkUp(5, facts({ readOnly: true, chunkSize: 131072 }));
  assert.instance(e, RegionChangedError);
  assert.is(e!.code, 'EIO');
  assert.equal((e as RegionChangedError).changes, ['chunk size 65536 → 131072', 'now read-only']);
  assert.is(changed.failure, e);
});

test('regionChanges compares everything a mount relies on', () => {
  const a = facts();
  assert.equal(regionChanges(a, facts({ generation: 9 })), []);
  assert.equal(regionChanges(a, facts({ size: 2 << 20 })), ['changed size: 1048576 → 2097152 bytes']);
  assert.equal(regionChanges(a, facts({ canTrim: false, fastZero: false, multiConn: false, preferredBlockSize: 512 })), [
    'canTrim true → false',
    'fastZero true → false',
    'multiConn true → false',
    'preferred block size 4096 → 512',
  ]);
  assert.equal(regionChanges(a, facts({}, { maxFrame: 65536, maxInFlight: 8 }, ['zero'])), ['trim offered true → false', 'max frame 1048576 → 65536', 'max in flight 64 → 8']);
  assert.equal(regionChanges(a, facts({}, { maxFrame: 2 << 20, maxInFlight: 128 })), [], 'larger limits are fine');
});

test('request table: waiting requests time out with EIO, sent ones with ETIMEDOUT, link loss fails only its own', async () => {
  const t = new RequestTable<string>({ waitMs: 100, requestMs: 1000 });
  const outcome = (p: Promise<void>) => p.then(() => 'ok', (e: QuicmapError) => e.code);
  const a = t.add('a', 0);
  const b = t.add('b', 10);
  assert.is(t.nextTimeout(), 100);
  const sent: Array<[number, string]> = [];
  t.dispatch(1, 50, (id, op) => sent.push([id, op]));
  assert.equal(sent, [[a.id, 'a'], [b.id, 'b']]);
  assert.is(t.nextTimeout(), 1050);
  const c = t.add('c', 60);
  assert.is(t.nextTimeout(), 160, 'the waiting one is due first');
  assert.equal(t.handleTimeout(160), []);
  assert.is(await outcome(c.done), 'EIO');
  t.settle(a.id);
  assert.is(await outcome(a.done), 'ok');
  t.settle(a.id, new Error('late duplicate')); // ignored
  const d = t.add('d', 200);
  t.dispatch(2, 200, () => {});
  t.linkLost(1, new QuicmapError('EIO', 'link 1 died'));
  assert.is(await outcome(b.done), 'EIO');
  assert.is(t.size, 1, 'd, on link 2, survives link 1');
  assert.equal(t.handleTimeout(1200), [{ id: d.id, link: 2 }]);
  assert.is(await outcome(d.done), 'ETIMEDOUT');
  assert.is(t.size, 0);
  assert.ok(new Set([a.id, b.id, c.id, d.id]).size === 4, 'ids are unique across links');
});

test.run();
