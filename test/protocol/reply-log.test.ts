/**
 * The sharer's reply log (p2p/protocol/reply-log.ts) and the resume fields
 * of HELLO / WELCOME (p2p/protocol/messages.ts): sequence numbers stamped
 * into replies, kept until acknowledged, replayed after a resume from the
 * client's count; strict decoding of the new fields.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ProtocolError } from '../../base/errors.ts';
import { ReplyLog } from '../../p2p/protocol/reply-log.ts';
import { readHeader } from '../../p2p/protocol/frame.ts';
import { decodeHello, decodeWelcome, encodeHello, encodeOk, encodeWelcome, encodeError, encodeAck } from '../../p2p/protocol/messages.ts';
import { FrameDecoder } from '../../p2p/protocol/decoder.ts';
import { ServerSession } from '../../p2p/protocol/server-session.ts';

/** Byte fields as hex, so Buffer and Uint8Array compare equal. */
const plain = (v: unknown): unknown =>
  v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v && typeof v === 'object' ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)])) : v;

const seqs = (frames: Uint8Array[]) => frames.filter((f) => f.length === 24).map((f) => readHeader(f).offset);

test('replies get consecutive sequence numbers and stay until acknowledged', () => {
  const log = new ReplyLog(8);
  log.append(encodeOk(7));
  log.append(encodeOk(9, new Uint8Array(100)));
  log.append(encodeError(8, 'EINVAL', 'no'));
  const out = log.drain(0);
  assert.equal(seqs(out.filter((f, i) => i === 0 || i === 1 || i === 3)), [1, 2, 3]);
  assert.is(log.unackedCount, 3);
  log.ack(2, 1);
  assert.is(log.unackedCount, 1);
  assert.equal(log.drain(1), [], 'nothing new to send');
  assert.throws(() => log.ack(4, 2), (e: unknown) => e instanceof ProtocolError, 'an ack of a reply never sent');
});

test('detached, the log keeps filling; a resume replays exactly what the client lacks, in order', () => {
  const log = new ReplyLog(8);
  for (const id of [1, 2, 3]) log.append(encodeOk(id));
  log.drain(0);
  log.detach();
  log.append(encodeOk(4));
  assert.equal(log.drain(1), [], 'nothing goes out while detached');
  log.resume(2, 2); // the client got replies 1 and 2
  assert.equal(seqs(log.drain(2)), [3, 4]);
  assert.throws(() => log.resume(9, 3), (e: unknown) => e instanceof ProtocolError);
  for (let id = 5; id <= 12; id++) log.append(encodeOk(id));
  assert.ok(log.overflowing, 'more unacknowledged replies than the window');
});

test('a reply\'s release runs only once the client acknowledged it (ack or resume), in order, never for a broken ack', () => {
  const log = new ReplyLog(8);
  const released: number[] = [];
  for (let i = 1; i <= 5; i++) log.append(encodeOk(i, new Uint8Array(10)), i === 3 ? undefined : () => released.push(i));
  log.drain(0);
  assert.equal(released, [], 'sent is not received');
  log.ack(2, 1);
  assert.equal(released, [1, 2]);
  log.ack(2, 2);
  assert.equal(released, [1, 2], 'an ack repeated releases nothing twice');
  log.detach();
  assert.throws(() => log.ack(9, 3), (e: unknown) => e instanceof ProtocolError);
  assert.equal(released, [1, 2], 'an ack of replies never sent releases nothing');
  log.resume(4, 4);
  assert.equal(released, [1, 2, 4], 'a resume acknowledges what the client has (3 had no release)');
  assert.equal(seqs(log.drain(5)), [5], 'what is not acknowledged is replayed, its buffer still held');
  log.ack(5, 6);
  assert.equal(released, [1, 2, 4, 5]);
});

test('HELLO resume and WELCOME session round-trip and are checked strictly', () => {
  const session = new Uint8Array(16).fill(1);
  const token = new Uint8Array(32).fill(2);
  const body = (frames: Uint8Array[]) => {
    const items = new FrameDecoder({ maxPayload: 0, maxControl: 1 << 14 }).push(Buffer.concat(frames));
    return (items[0] as { frame: { payload: Uint8Array } }).frame.payload;
  };
  const base = { minVersion: 1, maxVersion: 1, limits: { maxFrame: 65536, maxInFlight: 4 }, caps: ['resume'], grant: new Uint8Array(10), agent: 't' };
  const h = decodeHello(body(encodeHello({ ...base, resume: { session, token, received: 41 } })));
  assert.equal(plain(h.resume), plain({ session, token, received: 41 }));
  assert.is(decodeHello(body(encodeHello(base))).resume, undefined);
  assert.throws(() => decodeHello(body(encodeHello({ ...base, resume: { session: new Uint8Array(15), token, received: 0 } }))), (e: unknown) => e instanceof ProtocolError);
  assert.throws(() => decodeHello(body(encodeHello({ ...base, resume: { session, token, received: -1 } }))), (e: unknown) => e instanceof ProtocolError);
  const w = { version: 1, limits: base.limits, caps: ['resume'], manifest: new Uint8Array(4), manifestSig: new Uint8Array(64) };
  const g = decodeWelcome(body(encodeWelcome({ ...w, session: { session, token, resumed: false, received: 0, window: 32, refused: { code: 'EACCES', message: 'no such session' } } })));
  assert.equal(plain(g.session), plain({ session, token, resumed: false, received: 0, window: 32, refused: { code: 'EACCES', message: 'no such session' } }));
  assert.throws(() => decodeWelcome(body(encodeWelcome({ ...w, session: { session, token: new Uint8Array(31), resumed: true, received: 0, window: 32 } }))), (e: unknown) => e instanceof ProtocolError);
});

test('an ACK on a session that is not resumable is a protocol error', () => {
  const s = new ServerSession({ limits: { maxFrame: 65536, maxInFlight: 4 }, caps: ['ping'] });
  const hello = s.receive(Buffer.concat(encodeHello({ minVersion: 1, maxVersion: 1, limits: { maxFrame: 65536, maxInFlight: 4 }, caps: ['ping', 'resume'], grant: new Uint8Array(1), agent: '' })));
  assert.is(hello[0]!.kind, 'hello');
  s.accept((hello[0] as { hello: Parameters<ServerSession['accept']>[0] }).hello, { size: 1 << 20, readOnly: false, manifest: new Uint8Array(1), manifestSig: new Uint8Array(64) });
  const ev = s.receive(Buffer.concat(encodeAck(1)));
  assert.is(ev[0]!.kind, 'close');
});

test.run();
