/**
 * A private 20-node Mainline DHT in one process, all on 127.0.0.1: the first
 * node bootstraps to nobody, the others to it. Never the public routers.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { generateIdentity, type Identity } from '../../crypto/identity.ts';
import { DhtClient } from '../../p2p/dht/client.ts';
import { RecordPublisher } from '../../p2p/dht/publisher.ts';
import { encodeRecordValue, signRecord, type RegionRecord } from '../../p2p/dht/record.ts';
import { recordTarget, topicFor } from '../../p2p/dht/topic.ts';
import { withTimeout } from '../helpers/env.ts';

const QUERY_TIMEOUT = 250;

async function testnet(n: number): Promise<DhtClient[]> {
  const first = await DhtClient.open({ bootstrap: 'none', queryTimeoutMs: QUERY_TIMEOUT });
  const rest = await Promise.all(Array.from({ length: n - 1 }, () => DhtClient.open({ bootstrap: [first.address], queryTimeoutMs: QUERY_TIMEOUT })));
  return [first, ...rest];
}

function recordFor(regionId: Uint8Array, address: string): RegionRecord {
  return { regionId, size: 64 << 20, chunkSize: 1 << 20, version: 1, endpoints: [{ transport: 'quic', address }], relays: [] };
}

async function withNet(fn: (nodes: DhtClient[], sharer: Identity, regionId: Uint8Array) => Promise<void>): Promise<void> {
  const nodes = await testnet(20);
  try {
    const sharer = await generateIdentity();
    const regionId = Uint8Array.from({ length: 16 }, () => Math.floor(Math.random() * 256));
    await withTimeout(30_000, 'testnet case', fn(nodes, sharer, regionId));
  } finally {
    await Promise.all(nodes.map((d) => d.destroy()));
  }
}

test('a published record and announce are found from another node; an update wins with a higher seq', () =>
  withNet(async (nodes, sharer, regionId) => {
    const pub = new RecordPublisher({ dht: nodes[3]!, identity: sharer, record: recordFor(regionId, '127.0.0.1:5000'), port: 5000 });
    await pub.start();
    assert.is(pub.published, 1, `published (last error: ${pub.lastError})`);
    const got = await nodes[17]!.get({ sharer: sharer.publicKey, regionId });
    assert.ok(got?.ok, JSON.stringify(got));
    if (got?.ok) assert.is(got.record.endpoints[0]!.address, '127.0.0.1:5000');
    const peers = await nodes[11]!.lookup(topicFor(regionId, sharer.publicKey), 3_000);
    assert.ok(peers.some((p) => p.port === 5000), `announcer found: ${JSON.stringify(peers)}`);
    const firstSeq = pub.currentSeq;
    await pub.update(recordFor(regionId, '127.0.0.1:6000'));
    assert.ok(pub.currentSeq > firstSeq);
    const again = await nodes[17]!.get({ sharer: sharer.publicKey, regionId });
    assert.ok(again?.ok);
    if (again?.ok) {
      assert.is(again.record.endpoints[0]!.address, '127.0.0.1:6000');
      assert.is(again.seq, pub.currentSeq);
    }
    pub.stop();
  }),
);

test('re-publication on the interval keeps succeeding (each takes a higher seq)', () =>
  withNet(async (nodes, sharer, regionId) => {
    const pub = new RecordPublisher({ dht: nodes[4]!, identity: sharer, record: recordFor(regionId, '127.0.0.1:5000'), port: 5000, intervalMs: 150 });
    await pub.start();
    const firstSeq = pub.currentSeq;
    while (pub.published < 3) await new Promise((r) => setTimeout(r, 50));
    pub.stop();
    assert.is(pub.lastError, undefined, `a re-publication failed: ${pub.lastError}`);
    assert.ok(pub.currentSeq > firstSeq);
    const got = await nodes[13]!.get({ sharer: sharer.publicKey, regionId });
    assert.ok(got?.ok && got.seq >= firstSeq);
  }),
);

test('a forged record with a higher seq served by a lying node is ignored', () =>
  withNet(async (nodes, sharer, regionId) => {
    const pub = new RecordPublisher({ dht: nodes[2]!, identity: sharer, record: recordFor(regionId, '127.0.0.1:5000'), port: 5000 });
    await pub.start();
    pub.stop();
    // Every node that might answer now holds a forged copy: the attacker's address, seq far ahead, a signature by nobody.
    const forged = encodeRecordValue(recordFor(regionId, '6.6.6.6:666'));
    const keyHex = recordTarget(sharer.publicKey, regionId).toString('hex');
    for (const d of nodes.slice(4)) {
      d.dht._values.set(keyHex, { v: forged, k: Buffer.from(sharer.publicKey), salt: Buffer.from(regionId), sig: Buffer.alloc(64, 1), seq: pub.currentSeq + 1000, id: d.dht.nodeId });
    }
    const got = await nodes[1]!.get({ sharer: sharer.publicKey, regionId });
    assert.ok(got?.ok, JSON.stringify(got));
    if (got?.ok) {
      assert.is(got.record.endpoints[0]!.address, '127.0.0.1:5000');
      assert.is(got.seq, pub.currentSeq);
    }
  }),
);

test('an old seq is ignored once a newer one was seen; a manifest for another region is ignored', () =>
  withNet(async (nodes, sharer, regionId) => {
    const reader = nodes[9]!;
    const pub = new RecordPublisher({ dht: nodes[5]!, identity: sharer, record: recordFor(regionId, '127.0.0.1:5000'), port: 5000 });
    await pub.start();
    pub.stop();
    const first = await reader.get({ sharer: sharer.publicKey, regionId });
    assert.ok(first?.ok);
    // The reader has now seen this seq; a record older than a seq it must not go below is refused.
    const stale = await reader.get({ sharer: sharer.publicKey, regionId, minSeq: pub.currentSeq + 1 });
    assert.is(stale?.ok, false);
    if (stale && !stale.ok) assert.match(stale.reason, /old seq/);

    // Properly signed by the sharer, salted by this region, but its manifest names another region.
    const otherRegion = Uint8Array.from(regionId, (b) => b ^ 0xff);
    const region2 = Uint8Array.from({ length: 16 }, (_, i) => i);
    const v = encodeRecordValue(recordFor(otherRegion, '127.0.0.1:7000'));
    const salt = Buffer.from(region2);
    await new Promise<void>((resolve, reject) =>
      nodes[6]!.dht.put({ k: Buffer.from(sharer.publicKey), v, seq: 1, salt, sign: () => signRecord(sharer, 1, v, salt) }, (err) => (err ? reject(err) : resolve())),
    );
    const mismatched = await reader.get({ sharer: sharer.publicKey, regionId: region2 });
    assert.is(mismatched?.ok, false);
    if (mismatched && !mismatched.ok) assert.match(mismatched.reason, /another region/);
  }),
);

test('lookups with half the nodes dead still settle within their deadline', () =>
  withNet(async (nodes, sharer, regionId) => {
    const pub = new RecordPublisher({ dht: nodes[1]!, identity: sharer, record: recordFor(regionId, '127.0.0.1:5000'), port: 5000 });
    await pub.start();
    pub.stop();
    await Promise.all(nodes.slice(8, 18).map((d) => d.destroy()));
    const started = Date.now();
    const got = await nodes[19]!.get({ sharer: sharer.publicKey, regionId }, 5_000).catch((e: Error) => e);
    const peers = await nodes[19]!.lookup(topicFor(regionId, sharer.publicKey), 5_000);
    // Both calls returned (a result or a timeout error), neither hung.
    assert.ok(got === null || got instanceof Error || typeof got.ok === 'boolean');
    assert.ok(Array.isArray(peers));
    assert.ok(Date.now() - started < 12_000, 'each call is bounded by its own deadline');
  }),
);

test.run();
