import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { generateIdentity } from '../../crypto/identity.ts';
import { decodeRecordValue, encodeRecordValue, recordReady, signRecord, validateRecord, type RegionRecord } from '../../p2p/dht/record.ts';
import { QuicmapError } from '../../base/errors.ts';

const regionId = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
const record: RegionRecord = {
  regionId,
  size: 1 << 30,
  chunkSize: 1 << 20,
  version: 7,
  endpoints: [{ transport: 'quic', address: '10.0.0.1:4433' }],
  relays: [{ address: '10.0.0.9:4000', key: new Uint8Array(32).fill(9) }],
};

test('a signed record validates and decodes to what was published', async () => {
  await recordReady();
  const id = await generateIdentity();
  const v = encodeRecordValue(record);
  const sig = signRecord(id, 42, v, regionId);
  const verdict = validateRecord({ k: id.publicKey, v, sig, seq: 42, salt: regionId }, { sharer: id.publicKey, regionId });
  assert.ok(verdict.ok, JSON.stringify(verdict));
  if (verdict.ok) {
    assert.is(verdict.seq, 42);
    assert.equal(verdict.record, decodeRecordValue(v));
    assert.is(verdict.record.endpoints[0]!.address, '10.0.0.1:4433');
    assert.equal([...verdict.record.relays[0]!.key], [...record.relays[0]!.key]);
  }
});

test('a bad signature, another key, an old seq, another region are refused with a reason', async () => {
  await recordReady();
  const id = await generateIdentity();
  const other = await generateIdentity();
  const v = encodeRecordValue(record);
  const sig = signRecord(id, 42, v, regionId);
  const expect = { sharer: id.publicKey, regionId };
  const tampered = Buffer.from(v);
  tampered[tampered.length - 1]! ^= 1;
  const cases: Array<[string, ReturnType<typeof validateRecord>]> = [
    ['bad signature', validateRecord({ k: id.publicKey, v: tampered, sig, seq: 42, salt: regionId }, expect)],
    ['bad signature', validateRecord({ k: id.publicKey, v, sig, seq: 43, salt: regionId }, expect)],
    ['another key', validateRecord({ k: other.publicKey, v, sig: signRecord(other, 42, v, regionId), seq: 42, salt: regionId }, expect)],
    ['old seq', validateRecord({ k: id.publicKey, v, sig, seq: 42, salt: regionId }, { ...expect, minSeq: 43 })],
  ];
  const elsewhere = { ...record, regionId: new Uint8Array(16).fill(0xee) };
  const v2 = encodeRecordValue(elsewhere);
  cases.push(['another region', validateRecord({ k: id.publicKey, v: v2, sig: signRecord(id, 50, v2, regionId), seq: 50, salt: regionId }, expect)]);
  for (const [what, verdict] of cases) {
    assert.is(verdict.ok, false, what);
    if (!verdict.ok) assert.ok(verdict.reason.length > 0, what);
  }
  const reasons = cases.map(([, v]) => (v.ok ? '' : v.reason));
  assert.match(reasons[0]!, /signature/);
  assert.match(reasons[2]!, /another key/);
  assert.match(reasons[3]!, /old seq/);
  assert.match(reasons[4]!, /another region/);
});

test('a record too large for BEP44 is refused at encoding (EOVERFLOW)', () => {
  const big = { ...record, endpoints: Array.from({ length: 60 }, (_, i) => ({ transport: 'tcp' as const, address: `192.168.100.${i}:65000` })) };
  try {
    encodeRecordValue(big);
    assert.unreachable('should throw');
  } catch (e) {
    assert.instance(e, QuicmapError);
    assert.is((e as QuicmapError).code, 'EOVERFLOW');
  }
});

test.run();
