import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ServerSession, type ServerEvent } from '../../p2p/protocol/server-session.ts';
import { ClientSession, type ClientEvent } from '../../p2p/protocol/client-session.ts';
import { encodeRead, encodeWrite, encodeTrim, encodeHello, encodeFlush, encodePing, packCall, callFrame, callBodyLimit, MAX_CONTROL_BODY } from '../../p2p/protocol/messages.ts';
import { FrameType, encodeHeader } from '../../p2p/protocol/frame.ts';
import type { Capability } from '../../p2p/protocol/messages.ts';

const cat = (parts: Uint8Array[]) => Buffer.concat(parts);
const info = (readOnly = false) => ({ size: 1 << 20, readOnly, manifest: new Uint8Array([1]), manifestSig: new Uint8Array(64) });

function handshake(opts: { serverLimits?: { maxFrame: number; maxInFlight: number }; clientLimits?: { maxFrame: number; maxInFlight: number }; readOnly?: boolean; serverCaps?: Capability[]; clientCaps?: string[] } = {}) {
  const server = new ServerSession({ limits: opts.serverLimits ?? { maxFrame: 65536, maxInFlight: 8 }, caps: opts.serverCaps ?? ['trim', 'zero', 'fua', 'ping'] });
  const client = new ClientSession(opts.clientLimits ?? { maxFrame: 1 << 20, maxInFlight: 64 });
  const evs = server.receive(cat(client.hello(new Uint8Array([9, 9]), opts.clientCaps ?? ['trim', 'ping'])));
  assert.is(evs.length, 1);
  const hello = evs[0]!;
  assert.ok(hello.kind === 'hello');
  if (hello.kind !== 'hello') throw new Error();
  assert.equal(Array.from(hello.hello.grant), [9, 9]);
  const welcome = server.accept(hello.hello, info(opts.readOnly));
  const cev = client.receive(cat(welcome));
  assert.is(cev[0]!.kind, 'welcome');
  return { server, client, welcome: cev[0] as Extract<ClientEvent, { kind: 'welcome' }> };
}

test('hello negotiates the minimum of both sides and the common capabilities', () => {
  const { server, client, welcome } = handshake({ serverLimits: { maxFrame: 65536, maxInFlight: 128 }, clientLimits: { maxFrame: 1 << 20, maxInFlight: 16 } });
  assert.equal(server.limits, { maxFrame: 65536, maxInFlight: 16 });
  assert.equal(client.limits, { maxFrame: 65536, maxInFlight: 16 });
  assert.equal(welcome.welcome.caps.sort(), ['ping', 'trim']);
  assert.is(welcome.welcome.version, 1);
});

test('requests become validated store operations; replies match ids', () => {
  const { server, client } = handshake();
  const data = new Uint8Array(100).fill(3);
  const evs = server.receive(cat([...encodeRead(1, 0, 4096), ...encodeWrite(2, 4096, data, true), ...encodeFlush(3)]));
  assert.equal(evs.map((e) => (e.kind === 'request' ? e.request.op : e.kind)), ['read', 'write', 'flush']);
  const w = evs[1]!;
  assert.ok(w.kind === 'request' && w.request.op === 'write' && w.request.fua && w.request.data.length === 100);
  const target = new Uint8Array(4096);
  client.expectRead(1, target);
  const out = client.receive(cat([...server.reply(1, new Uint8Array(4096).fill(5)), ...server.reply(2), ...server.replyError(3, new Error('boom'))]));
  assert.equal(out.map((e) => e.kind), ['ok', 'ok', 'error']);
  assert.is(target[4095], 5, 'read landed in the registered buffer');
  const err = out[2]!;
  assert.ok(err.kind === 'error' && err.code === 'EIO' && err.message === 'boom');
});

test('the server enforces read-only grants, ranges and the negotiated maximum', () => {
  const { server } = handshake({ readOnly: true });
  const evs = server.receive(
    cat([
      ...encodeWrite(1, 0, new Uint8Array(10)),
      ...encodeTrim(2, 0, 4096),
      ...encodeRead(3, (1 << 20) - 10, 20),
      ...encodeRead(4, 0, 65537),
      ...encodeRead(5, 0, 512),
    ]),
  );
  const codes = evs.map((e) => (e.kind === 'send' ? 'err' : e.kind === 'request' ? e.request.op : e.kind));
  assert.equal(codes, ['err', 'err', 'err', 'err', 'read']);
  const client = new ClientSession({ maxFrame: 65536, maxInFlight: 8 });
  client.hello(new Uint8Array(1), []);
  // Re-decode the refusals through a client to read their codes.
  const c2 = handshake({ readOnly: true });
  const out = c2.client.receive(cat(evs.filter((e): e is Extract<ServerEvent, { kind: 'send' }> => e.kind === 'send').flatMap((e) => e.frames)));
  assert.equal(out.map((e) => (e.kind === 'error' ? e.code : e.kind)), ['EPERM', 'EPERM', 'EINVAL', 'EOVERFLOW']);
});

test('a write above the maximum is refused with EOVERFLOW and the session goes on', () => {
  const { server } = handshake();
  const big = encodeWrite(7, 0, new Uint8Array(70_000));
  const evs = server.receive(cat([...big, ...encodeRead(8, 0, 16)]));
  assert.equal(evs.map((e) => e.kind), ['send', 'request']);
  assert.ok(server.isServing);
});

test('large-call: CALL bodies up to the negotiated frame; a larger one is refused for its id (EOVERFLOW), unbuffered, and the session goes on', () => {
  const caps: Capability[] = ['ping', 'call', 'large-call'];
  const { server, client, welcome } = handshake({ serverLimits: { maxFrame: 65536, maxInFlight: 8 }, serverCaps: caps, clientCaps: caps });
  assert.is(callBodyLimit(client.limits, new Set(welcome.welcome.caps)), 65536);
  const fits = packCall('chunk.put', { data: new Uint8Array(65536 - 100) });
  assert.ok(fits.length > MAX_CONTROL_BODY && fits.length <= 65536);
  const over = packCall('chunk.put', { data: new Uint8Array(65536) });
  const evs = server.receive(cat([...callFrame(1, fits), ...callFrame(2, over), ...encodePing(3)]));
  assert.equal(evs.map((e) => e.kind), ['request', 'send', 'send']);
  const r = evs[0]!;
  assert.ok(r.kind === 'request' && r.request.op === 'call' && r.request.method === 'chunk.put' && r.request.bytes === fits.length, 'the body, with its size for the memory budget');
  const refusal = client.receive(cat((evs[1] as Extract<ServerEvent, { kind: 'send' }>).frames));
  assert.equal(refusal.map((e) => (e.kind === 'error' ? `${e.id} ${e.code}` : e.kind)), ['2 EOVERFLOW']);
  assert.ok(server.isServing);
  // The refused body was skipped as it streamed past, never held whole.
  const s2 = handshake({ serverLimits: { maxFrame: 65536, maxInFlight: 8 }, serverCaps: caps, clientCaps: caps }).server;
  const bytes = cat(callFrame(4, packCall('x', { data: new Uint8Array(1 << 20) })));
  let seen: ServerEvent[] = [];
  for (let at = 0; at < bytes.length; at += 4096) seen = seen.concat(s2.receive(bytes.subarray(at, at + 4096)));
  assert.equal(seen.map((e) => e.kind), ['send']);
});

test('without large-call (one side lacks it) a CALL body is a control body: above 16 KiB the session is dropped', () => {
  const { server, client, welcome } = handshake({ serverCaps: ['ping', 'call'], clientCaps: ['ping', 'call', 'large-call'] });
  assert.is(callBodyLimit(client.limits, new Set(welcome.welcome.caps)), MAX_CONTROL_BODY);
  const evs = server.receive(cat(callFrame(1, packCall('chunk.put', { data: new Uint8Array(20_000) }))));
  assert.equal(evs.map((e) => e.kind), ['close']);
  assert.not.ok(server.isServing);
});

test('requests before WELCOME, duplicate ids and garbage close the session', () => {
  const s1 = new ServerSession({ limits: { maxFrame: 65536, maxInFlight: 8 }, caps: [] });
  const e1 = s1.receive(cat(encodeRead(1, 0, 10)));
  assert.is(e1[0]!.kind, 'close');
  const { server } = handshake();
  const e2 = server.receive(cat([...encodeRead(1, 0, 10), ...encodeRead(1, 0, 10)]));
  assert.equal(e2.map((e) => e.kind), ['request', 'close']);
  const s3 = new ServerSession({ limits: { maxFrame: 65536, maxInFlight: 8 }, caps: [] });
  const e3 = s3.receive(new TextEncoder().encode('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
  assert.is(e3[0]!.kind, 'close');
  assert.equal(s3.receive(new Uint8Array(10)), [], 'closed sessions ignore input');
});

test('version mismatch is refused with a clear message', () => {
  const s = new ServerSession({ limits: { maxFrame: 65536, maxInFlight: 8 }, caps: [] });
  const hello = encodeHello({ minVersion: 7, maxVersion: 9, limits: { maxFrame: 65536, maxInFlight: 4 }, caps: [], grant: new Uint8Array(0), agent: 'future' });
  const evs = s.receive(cat(hello));
  const c = evs[0]!;
  assert.ok(c.kind === 'close' && /no common protocol version/.test(c.error.message));
  const client = new ClientSession({ maxFrame: 65536, maxInFlight: 8 });
  client.hello(new Uint8Array(0), []);
  const out = client.receive(cat(c.kind === 'close' ? c.frames : []));
  assert.ok(out[0]!.kind === 'refused' && out[0].code === 'EPROTO');
});

test('a refusal reaches the client as a typed answer', () => {
  const s = new ServerSession({ limits: { maxFrame: 65536, maxInFlight: 8 }, caps: [] });
  const client = new ClientSession({ maxFrame: 65536, maxInFlight: 8 });
  s.receive(cat(client.hello(new Uint8Array(0), [])));
  const out = client.receive(cat(s.refuse('EACCES', 'no grant presented')));
  assert.equal(out, [{ kind: 'refused', code: 'EACCES', message: 'no grant presented' }]);
});

test('in-flight beyond the negotiated maximum is refused per request', () => {
  const { server } = handshake({ serverLimits: { maxFrame: 65536, maxInFlight: 2 } });
  const evs = server.receive(cat([...encodeRead(1, 0, 1), ...encodeRead(2, 0, 1), ...encodeRead(3, 0, 1)]));
  assert.equal(evs.map((e) => e.kind), ['request', 'request', 'send']);
  server.reply(1, new Uint8Array(1));
  assert.equal(server.receive(cat(encodeRead(4, 0, 1))).map((e) => e.kind), ['request']);
});

test('a client refuses a sharer that sends unasked or oversized data', () => {
  const { client } = handshake({ clientLimits: { maxFrame: 8192, maxInFlight: 4 } });
  const h = encodeHeader({ type: FrameType.OK, flags: 0, status: 0, id: 1, offset: 0, length: 9000, payloadLength: 9000 });
  assert.throws(() => client.receive(h), /above the negotiated/);
});

test.run();
