/**
 * Sans-IO pieces of third-party copy: CopyPlan against a model (batches
 * covered in part, failed, retried, acknowledged twice, in any order: each
 * byte is completed exactly once and the plan ends exactly when the whole
 * range is acknowledged), and the origin cache's flush bookkeeping that
 * follows a reference to whoever holds it after a claim.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { CopyPlan, type Batch } from '../../p2p/copy/copy-plan.ts';
import { OriginCache } from '../../p2p/protocol/cache-refs.ts';
import { idBytes, idOf, decodeRefPieces } from '../../p2p/copy/wire.ts';
import { makeCacheId } from '../../p2p/protocol/cache-id.ts';
import { rng } from '../engine/model.ts';

test('CopyPlan completes every byte exactly once whatever the batches go through (2000 seeded cases)', () => {
  for (let seed = 1; seed <= 2000; seed++) {
    const rand = rng(seed);
    const length = 1 + Math.floor(rand() * 5000);
    const srcOffset = Math.floor(rand() * 1000);
    const dstOffset = Math.floor(rand() * 1000);
    const plan = new CopyPlan({ srcOffset, dstOffset, length, batchBytes: 1 + Math.floor(rand() * 700), maxAttempts: 1000 });
    const applied = new Uint8Array(length); // the model: how often each byte was completed
    const out: Batch[] = [];
    const acked: Batch[] = [];
    let steps = 0;
    while (!plan.done) {
      assert.ok(++steps < 100_000, `seed ${seed}: no progress`);
      const r = rand();
      if (out.length < 4 && r < 0.4) {
        const b = plan.next();
        if (b) {
          assert.is(b.dst - dstOffset, b.src - srcOffset, 'destination follows the source');
          out.push(b);
          continue;
        }
      }
      if (out.length === 0) {
        // Nothing out and nothing pending would be a stuck plan.
        const b = plan.next();
        assert.ok(b, `seed ${seed}: not done, yet nothing to hand out`);
        out.push(b!);
        continue;
      }
      const b = out.splice(Math.floor(rand() * out.length), 1)[0]!;
      const action = rand();
      if (action < 0.2) {
        plan.fail(b, new Error('link cut'));
      } else {
        if (action < 0.4 && b.length > 1) plan.covered(b, 1 + Math.floor(rand() * (b.length - 1)));
        const fresh = plan.ack(b);
        assert.ok(fresh, `seed ${seed}: a batch handed out once is new when first acked`);
        for (let i = b.src - srcOffset; i < b.src - srcOffset + b.length; i++) applied[i]!++;
        acked.push(b);
        // Now and then an acknowledgement arrives twice (a reply replayed after a resume).
        if (rand() < 0.1) {
          const again = acked[Math.floor(rand() * acked.length)]!;
          assert.not.ok(plan.ack(again), 'a second ack of the same bytes adds nothing');
        }
      }
    }
    assert.ok(applied.every((n) => n === 1), `seed ${seed}: every byte completed exactly once`);
    assert.is(plan.ackedBytes, length);
    assert.equal(plan.ackedRanges(), [[srcOffset, srcOffset + length]]);
    assert.is(plan.next(), undefined);
  }
});

test('CopyPlan gives up on a batch after its attempts, with the last error', () => {
  const plan = new CopyPlan({ srcOffset: 0, dstOffset: 0, length: 10, batchBytes: 10, maxAttempts: 2 });
  plan.fail(plan.next()!, new Error('one'));
  const b = plan.next()!;
  assert.is(b.attempt, 2);
  assert.throws(() => plan.fail(b, new Error('two')), /failed 2 times; last: two/);
});

test('a forced flush follows a reference to its new holder after a claim', () => {
  const o = new OriginCache<string>({ machine: 3, slot: 0, maxLines: 4, maxBytes: 100 });
  const id = o.reference('C', 'piece', 60)!;
  assert.is(o.reference('C', 'other', 60), undefined, 'full: the caller goes inline');
  assert.equal(o.forceFlush(60), [{ holder: 'C', refs: [{ id, n: 1 }] }]);
  assert.equal(o.flushingHeldBy('C'), [{ id, n: 1 }]);
  o.transfer('C', 'B', id, 1);
  assert.equal(o.flushingHeldBy('C'), []);
  assert.equal(o.flushingHeldBy('B'), [{ id, n: 1 }], 'B holds it now, so B is asked');
  assert.is(o.heldBy('B', id), 1);
  assert.is(o.totalRefs, 1);
  o.deref('B', id, 1);
  assert.is(o.totalRefs, 0);
  assert.is(o.lineCount, 0);
  assert.ok(o.reference('C', 'other', 60) !== undefined, 'room again');
});

test('wire: cache ids travel as 8 bytes, whole 64 bits; a piece is a reference or data, never both', () => {
  const id = makeCacheId(0xffffff, 0xffff, 0xffffff);
  assert.is(idOf(idBytes(id), 't'), id);
  assert.throws(() => idOf(new Uint8Array(7), 't'), /8 bytes/);
  assert.throws(() => decodeRefPieces({ refs: [{ offset: 0, length: 4, id: idBytes(id), data: new Uint8Array(4) }] }, 't'), /exactly one/);
  assert.throws(() => decodeRefPieces({ refs: [{ offset: 0, length: 5, data: new Uint8Array(4) }] }, 't'), /declared/);
  assert.equal(decodeRefPieces({ refs: [{ offset: 8, length: 4, id: idBytes(id) }] }, 't'), [{ offset: 8, length: 4, id }]);
});

test.run();
