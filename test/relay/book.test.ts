/** RelayBook on a virtual clock: reservations, circuits, quotas, expiry. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { RelayBook } from '../../p2p/relay/book.ts';

test('reservations: renewal keeps the slot, the maximum refuses newcomers, expiry frees it', () => {
  const b = new RelayBook({ maxReservations: 2, reservationTtlMs: 1000 });
  assert.ok(b.reserve('a', 0).ok);
  assert.ok(b.reserve('b', 0).ok);
  const c = b.reserve('c', 10);
  assert.is(c.ok, false);
  if (!c.ok) assert.is(c.refusal, 'RESERVATION_REFUSED');
  const renewed = b.reserve('a', 500);
  assert.ok(renewed.ok && renewed.expiresAt === 1500, 'renewal moves the expiry');
  assert.is(b.nextTimeout(), 1000);
  assert.equal(b.handleTimeout(1000), [{ kind: 'reservation', peer: 'b' }]);
  assert.ok(b.reserve('c', 1000).ok, 'slot free after expiry');
  assert.ok(b.hasReservation('a', 1499));
  assert.not.ok(b.hasReservation('a', 1500));
});

test('circuits: need a reservation, respect per-peer and total limits, are counted back on close', () => {
  const b = new RelayBook({ maxCircuitsPerPeer: 2, maxCircuits: 3 });
  const none = b.openCircuit('x', 't', 0);
  assert.is(none.ok, false);
  if (!none.ok) assert.is(none.refusal, 'NO_RESERVATION');
  b.reserve('t', 0);
  b.reserve('u', 0);
  const c1 = b.openCircuit('x', 't', 0);
  const c2 = b.openCircuit('y', 't', 0);
  assert.ok(c1.ok && c2.ok);
  const c3 = b.openCircuit('z', 't', 0);
  assert.is(c3.ok, false);
  if (!c3.ok) assert.is(c3.refusal, 'RESOURCE_LIMIT_EXCEEDED');
  assert.ok(b.openCircuit('z', 'u', 0).ok);
  const c5 = b.openCircuit('w', 'u', 0);
  assert.is(c5.ok, false, 'total limit');
  if (c1.ok) b.closeCircuit(c1.id);
  assert.ok(b.openCircuit('z', 't', 0).ok, 'a closed circuit frees its slots');
  const self = b.openCircuit('t', 't', 0);
  assert.is(self.ok, false);
  if (!self.ok) assert.is(self.refusal, 'PERMISSION_DENIED');
});

test('byte quota: bytes up to the cap pass, the chunk that would cross it is refused', () => {
  const b = new RelayBook({ circuitBytes: 100 });
  b.reserve('t', 0);
  const c = b.openCircuit('x', 't', 0);
  assert.ok(c.ok);
  if (!c.ok) return;
  assert.ok(b.carry(c.id, 60).ok);
  assert.ok(b.carry(c.id, 40).ok);
  const over = b.carry(c.id, 1);
  assert.is(over.ok, false);
  if (!over.ok) assert.is(over.refusal, 'CIRCUIT_BYTE_LIMIT');
});

test('time limits: setup deadline until spliced, then the duration limit', () => {
  const b = new RelayBook({ circuitSetupMs: 100, circuitDurationMs: 1000, reservationTtlMs: 10_000 });
  b.reserve('t', 0);
  const slow = b.openCircuit('x', 't', 0);
  const fast = b.openCircuit('y', 't', 0);
  assert.ok(slow.ok && fast.ok);
  if (!slow.ok || !fast.ok) return;
  b.spliced(fast.id, 50);
  const at100 = b.handleTimeout(100);
  assert.is(at100.length, 1);
  assert.equal(at100[0], { kind: 'circuit', id: slow.id, refusal: 'CONNECTION_FAILED', message: at100[0]!.kind === 'circuit' ? at100[0]!.message : '' });
  assert.is(b.nextTimeout(), 1050);
  const later = b.handleTimeout(1050);
  assert.is(later.length, 1);
  assert.ok(later[0]!.kind === 'circuit' && later[0]!.refusal === 'CIRCUIT_TIME_LIMIT');
  assert.is(b.circuitCount, 0);
});

test('an allow list refuses other peers with PERMISSION_DENIED', () => {
  const b = new RelayBook({ allow: new Set(['a', 't']) });
  const r = b.reserve('m', 0);
  assert.is(r.ok, false);
  if (!r.ok) assert.is(r.refusal, 'PERMISSION_DENIED');
  b.reserve('t', 0);
  const c = b.openCircuit('m', 't', 0);
  assert.is(c.ok, false);
  if (!c.ok) assert.is(c.refusal, 'PERMISSION_DENIED');
  assert.ok(b.openCircuit('a', 't', 0).ok);
});

test.run();
