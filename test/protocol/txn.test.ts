/**
 * Transaction channels (p2p/protocol/txn-channel.ts) and the session table
 * (p2p/protocol/session-table.ts), on a virtual clock.
 *
 * The model test drives a client and a server channel over a link that
 * drops, duplicates and reorders records and is cut at random moments (a
 * cut loses everything in flight, as a connection that dies mid-record
 * does: the decoder discards the partial record); after a cut both sides
 * resume by exchanging what they have applied. Against a sequential model
 * it checks that every write is applied exactly once and in order, every
 * read is answered exactly once with what the model says, and nothing is
 * left unacknowledged at the end.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { QuicmapError } from '../../base/errors.ts';
import { TxnChannel, type TxnRecord } from '../../p2p/protocol/txn-channel.ts';
import { SessionTable } from '../../p2p/protocol/session-table.ts';
import { rng } from '../engine/model.ts';


type Op = { kind: 'write'; off: number; data: number[] } | { kind: 'read'; off: number; len: number };
type Reply = { replyTo: number; data?: number[] };

interface LinkOpts {
  drop: number;
  dup: number;
  reorder: number;
  cut: number;
  window: number;
}

function runCase(seed: number, o: LinkOpts): void {
  const r = rng(seed);
  const STORE = 64;
  const lossy = o.drop > 0 || o.reorder > 0;
  const limits = { maxUnacked: o.window, maxUnackedBytes: 1 << 20, ackDelayMs: 3, ackEvery: 4, retransmitMs: lossy ? 40 : Infinity };
  const client = new TxnChannel<Op, Reply>(limits);
  const server = new TxnChannel<Reply, Op>(limits);
  const store = new Uint8Array(STORE);
  const applied = new Map<number, number>(); // server: client txn id -> times applied
  const replies = new Map<number, number[] | undefined>(); // client: op id -> reply data
  const sentOps = new Map<number, Op>();
  const totalOps = 10 + Math.floor(r() * 40);
  let made = 0;
  let now = 0;
  let linkUp = true;
  let downUntil = 0;
  const toServer: TxnRecord<Op>[] = [];
  const toClient: TxnRecord<Reply>[] = [];

  const makeOp = (): Op => {
    const off = Math.floor(r() * (STORE - 8));
    if (r() < 0.6) return { kind: 'write', off, data: Array.from({ length: 1 + Math.floor(r() * 8) }, () => Math.floor(r() * 256)) };
    return { kind: 'read', off, len: 1 + Math.floor(r() * 8) };
  };

  const shake = <T>(q: T[]) => {
    if (q.length === 0) return;
    if (r() < o.drop) q.splice(Math.floor(r() * q.length), 1);
    if (q.length && r() < o.dup) {
      const i = Math.floor(r() * q.length);
      q.splice(i, 0, q[i]!);
    }
    if (q.length > 1 && r() < o.reorder) {
      const i = Math.floor(r() * (q.length - 1));
      [q[i], q[i + 1]] = [q[i + 1]!, q[i]!];
    }
  };

  for (let step = 0; step < 20_000; step++) {
    now += 1;
    // Link events.
    if (linkUp && r() < o.cut) {
      linkUp = false;
      downUntil = now + 1 + Math.floor(r() * 30);
      toServer.length = 0;
      toClient.length = 0;
      client.linkDown();
      server.linkDown();
    } else if (!linkUp && now >= downUntil) {
      linkUp = true;
      // The resume handshake: each side tells the other what it has applied.
      const c = client.receivedId;
      const s = server.receivedId;
      client.resume(s, now);
      server.resume(c, now);
    }
    // The client issues work while its window allows.
    while (made < totalOps && client.canSend(8) && r() < 0.7) {
      const op = makeOp();
      const id = client.send(op, 8);
      sentOps.set(id, op);
      made++;
    }
    client.handleTimeout(now);
    server.handleTimeout(now);
    for (let rec; (rec = client.poll(now)); ) toServer.push(rec);
    for (let rec; (rec = server.poll(now)); ) toClient.push(rec);
    shake(toServer);
    shake(toClient);
    // Deliver some of what is in flight, in queue order.
    // The server reads only while it has room to queue the answer (as an
    // adapter stops reading its stream): that is the backpressure.
    for (let n = Math.floor(r() * 4); n > 0 && toServer.length && server.canSend(8); n--) {
      const rec = toServer.shift()!;
      const op = server.receive(rec, now);
      if (op) {
        applied.set(rec.id, (applied.get(rec.id) ?? 0) + 1);
        if (op.kind === 'write') {
          store.set(op.data, op.off);
          server.send({ replyTo: rec.id }, 0);
        } else server.send({ replyTo: rec.id, data: Array.from(store.subarray(op.off, op.off + op.len)) }, op.len);
      }
    }
    for (let n = Math.floor(r() * 4); n > 0 && toClient.length; n--) {
      const rec = toClient.shift()!;
      const reply = client.receive(rec, now);
      if (reply) {
        assert.not.ok(replies.has(reply.replyTo), `seed ${seed}: reply to ${reply.replyTo} delivered twice`);
        replies.set(reply.replyTo, reply.data);
      }
    }
    const done = made === totalOps && replies.size === totalOps && client.unackedCount === 0 && server.unackedCount === 0;
    if (done) break;
  }

  assert.is(replies.size, totalOps, `seed ${seed}: ${replies.size} of ${totalOps} replies arrived`);
  assert.is(client.unackedCount, 0, `seed ${seed}: client still holds unacked records`);
  assert.is(server.unackedCount, 0, `seed ${seed}: server still holds unacked records`);
  // Exactly once, and the same result as applying the ops in id order.
  const model = new Uint8Array(STORE);
  for (let id = 1; id <= totalOps; id++) {
    assert.is(applied.get(id), 1, `seed ${seed}: op ${id} applied ${applied.get(id) ?? 0} times`);
    const op = sentOps.get(id)!;
    if (op.kind === 'write') {
      model.set(op.data, op.off);
      assert.is(replies.get(id), undefined);
    } else assert.equal(replies.get(id), Array.from(model.subarray(op.off, op.off + op.len)), `seed ${seed}: read ${id}`);
  }
  assert.equal(Array.from(store), Array.from(model), `seed ${seed}: final store differs from the model`);
}

test('exactly once over a reliable link that is cut and resumed (1500 cases)', () => {
  for (let seed = 1; seed <= 1500; seed++) runCase(seed, { drop: 0, dup: 0, reorder: 0, cut: 0.03, window: 1 + (seed % 16) });
});

test('exactly once over a link that drops, duplicates and reorders records, and is cut (1500 cases)', () => {
  for (let seed = 10_001; seed <= 11_500; seed++) runCase(seed, { drop: 0.1, dup: 0.1, reorder: 0.1, cut: 0.02, window: 1 + (seed % 8) });
});

test('the unacked window bounds what a sender keeps, and one record always fits', () => {
  const ch = new TxnChannel<string>({ maxUnacked: 2, maxUnackedBytes: 100 });
  assert.ok(ch.canSend(1000), 'an empty window takes a record larger than the byte bound');
  ch.send('a', 1000);
  assert.not.ok(ch.canSend(1));
  const peer = new TxnChannel<string>();
  const rec = ch.poll(0)!;
  assert.is(peer.receive(rec, 0), 'a');
  const ack = peer.poll(10)!; // after ackDelayMs
  assert.is(ack.id, 0);
  assert.is(ack.ack, 1);
  ch.receive(ack, 10);
  assert.is(ch.unackedCount, 0);
  assert.is(ch.unackedByteCount, 0);
  assert.ok(ch.canSend(60));
});

test('a pure ack waits for ackDelayMs, and nextTimeout says when', () => {
  const a = new TxnChannel<number>({ ackDelayMs: 7, ackEvery: 100 });
  const b = new TxnChannel<number>({ ackDelayMs: 7, ackEvery: 100 });
  a.send(1, 1);
  b.receive(a.poll(100)!, 100);
  assert.is(b.poll(101), undefined, 'no ack before the delay');
  assert.is(b.nextTimeout(), 107);
  assert.equal(b.poll(107), { id: 0, ack: 1 });
  assert.is(b.nextTimeout(), undefined);
});

test('a duplicate is dropped and acknowledged at once', () => {
  const a = new TxnChannel<string>();
  const b = new TxnChannel<string>({ ackDelayMs: 1000 });
  a.send('x', 1);
  const rec = a.poll(0)!;
  assert.is(b.receive(rec, 0), 'x');
  b.poll(1000); // the ack that then gets lost
  assert.is(b.receive(rec, 1001), undefined, 'the duplicate is not applied again');
  assert.equal(b.poll(1001), { id: 0, ack: 1 }, 'and the receiver re-acks without waiting');
});

test('an ack of a transaction never sent is a protocol error', () => {
  const a = new TxnChannel<string>();
  a.send('x', 1);
  try {
    a.receive({ id: 0, ack: 2 }, 0);
    assert.unreachable('accepted an ack of id 2');
  } catch (e) {
    assert.instance(e, QuicmapError);
    assert.is((e as QuicmapError).code, 'EPROTO');
  }
});

test('nothing is sent while the link is down; resume sends what the peer lacks', () => {
  const a = new TxnChannel<string>();
  for (const p of ['1', '2', '3']) a.send(p, 1);
  a.poll(0);
  a.poll(0);
  a.linkDown();
  assert.is(a.poll(1), undefined);
  a.resume(1, 2); // the peer had applied id 1 only
  assert.is(a.unackedCount, 2);
  assert.equal([a.poll(2)?.id, a.poll(2)?.id], [2, 3]);
});

test('sessions resume only with the same key, id and token, and expire', () => {
  const t = new SessionTable<string>({ maxSessions: 2, ttlMs: 1000 });
  const key = new Uint8Array(32).fill(1);
  const other = new Uint8Array(32).fill(2);
  const c = t.open(key, 'state-a', 0);
  t.suspend(c.sessionId, 10);
  const refused = (f: () => unknown, code: string) => {
    try {
      f();
      assert.unreachable('accepted');
    } catch (e) {
      assert.instance(e, QuicmapError);
      assert.is((e as QuicmapError).code, code);
    }
  };
  refused(() => t.resume(other, c.sessionId, c.token, 20), 'EACCES');
  const badToken = Uint8Array.from(c.token);
  badToken[0]! ^= 1;
  refused(() => t.resume(key, c.sessionId, badToken, 20), 'EACCES');
  refused(() => t.resume(key, new Uint8Array(16), c.token, 20), 'EACCES');
  assert.is(t.resume(key, c.sessionId, c.token, 20), 'state-a');
  t.suspend(c.sessionId, 30);
  assert.is(t.nextTimeout(), 1030);
  refused(() => t.resume(key, c.sessionId, c.token, 1030), 'EACCES');
  assert.is(t.size, 0);
});

test('a full session table evicts a suspended session, never a live one', () => {
  const t = new SessionTable<number>({ maxSessions: 2, ttlMs: 1000 });
  const key = new Uint8Array(32);
  const a = t.open(key, 1, 0);
  t.open(key, 2, 0);
  t.suspend(a.sessionId, 5);
  t.open(key, 3, 6); // evicts a
  assert.is(t.size, 2);
  try {
    t.open(key, 4, 7);
    assert.unreachable('grew past the bound');
  } catch (e) {
    assert.is((e as QuicmapError).code, 'EBUSY');
  }
});

test('the session table is bounded per peer too, and says which sessions it dropped', () => {
  const dropped: Array<[number, string]> = [];
  const t = new SessionTable<number>({ maxSessions: 10, maxPerPeer: 2, ttlMs: 100, onDrop: (s, why) => dropped.push([s, why]) });
  const k1 = new Uint8Array(32).fill(1);
  const k2 = new Uint8Array(32).fill(2);
  const a = t.open(k1, 1, 0);
  t.open(k1, 2, 0);
  try {
    t.open(k1, 3, 1);
    assert.unreachable('a peer grew past its bound');
  } catch (e) {
    assert.is((e as QuicmapError).code, 'EBUSY');
  }
  t.open(k2, 20, 1); // another peer is not affected
  t.suspend(a.sessionId, 2);
  t.open(k1, 3, 3); // evicts k1's suspended session, not k2's
  assert.equal(dropped, [[1, 'evicted']]);
  assert.is(t.countFor(k1), 2);
  assert.is(t.countFor(k2), 1);
  const b = t.open(k2, 21, 4);
  t.suspend(b.sessionId, 5);
  t.handleTimeout(105);
  assert.equal(dropped, [[1, 'evicted'], [21, 'expired']]);
});

test.run();
