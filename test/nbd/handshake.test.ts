/**
 * The fixed-newstyle handshake as a pure state machine: bytes in, bytes out,
 * no sockets. Checked against NetworkBlockDevice/nbd doc/proto.md.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { MAX_OPTION_LENGTH, NbdHandshake, type HandshakeOutcome } from '../../engine/nbd/handshake.ts';
import type { ExportCatalog, ExportInfo } from '../../engine/nbd/export.ts';
import { NbdServer } from '../../engine/nbd/server.ts';
import { BufferStore } from '../helpers/buffer-store.ts';
import { OPTION_REPLY_MAGIC, OPT, REP, goData, optionHeader, requestHeader } from '../helpers/nbd-raw.ts';

const test = suite('nbd/handshake');
const OPT_LIST_META = 9;
const OPT_SET_META = 10;
const REP_META = 4;

function info(name: string, size: number, description = '', flags = 0b1_0110_1101): ExportInfo {
  return { name, description, size, readOnly: false, flags, minBlock: 1, preferredBlock: 4096, maxBlock: 32 << 20 };
}

function catalog(...exports: ExportInfo[]): ExportCatalog {
  const m = new Map(exports.map((e) => [e.name, e]));
  return {
    get: (n) => m.get(n),
    list: () => [...m.values()],
    defaultName: () => (m.size === 1 ? [...m.keys()][0] : m.has('') ? '' : undefined),
  };
}

const DISK = info('disk', 1 << 30, 'the main disk');
const SMALL = info('small', 4096 + 7);
const two = () => catalog(DISK, SMALL);

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0, 0);
  return b;
}

function option(opt: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  return Buffer.concat([optionHeader(opt, data.length), data]);
}

interface Rep {
  option: number;
  type: number;
  data: Buffer;
}

/** Split server output into option replies; throws on anything else. */
function parseReplies(out: Buffer): Rep[] {
  const reps: Rep[] = [];
  let at = 0;
  while (at < out.length) {
    assert.ok(out.length - at >= 20, `truncated option reply at ${at}`);
    assert.is(out.readBigUInt64BE(at), OPTION_REPLY_MAGIC, 'option reply magic');
    const len = out.readUInt32BE(at + 16);
    reps.push({ option: out.readUInt32BE(at + 8), type: out.readUInt32BE(at + 12), data: out.subarray(at + 20, at + 20 + len) });
    at += 20 + len;
  }
  assert.is(at, out.length, 'output ends on a reply boundary');
  return reps;
}

function drive(h: NbdHandshake, ...chunks: Buffer[]): { outcome: HandshakeOutcome; out: Buffer } {
  let outcome: HandshakeOutcome = { kind: 'continue' };
  for (const c of chunks) outcome = h.push(c);
  return { outcome, out: Buffer.concat(h.takeOutput()) };
}

function started(cat = two(), flags = 3): NbdHandshake {
  const h = new NbdHandshake(cat);
  const { outcome, out } = drive(h, u32(flags));
  assert.is(outcome.kind, 'continue');
  assert.is(out.length, 0, 'nothing is sent in reply to client flags');
  return h;
}

function infosOf(reps: Rep[]): Map<number, Buffer> {
  const m = new Map<number, Buffer>();
  for (const r of reps) if (r.type === REP.INFO) m.set(r.data.readUInt16BE(0), r.data.subarray(2));
  return m;
}

test('greeting: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES and nothing else', () => {
  const g = NbdHandshake.greeting();
  assert.is(g.length, 18);
  assert.is(g.subarray(0, 8).toString('latin1'), 'NBDMAGIC');
  assert.is(g.subarray(8, 16).toString('latin1'), 'IHAVEOPT');
  assert.is(g.readUInt16BE(16), 0b11);
});

test('client flags: known ones accepted, any unknown bit closes', () => {
  for (const f of [0, 1, 2, 3]) {
    const h = new NbdHandshake(two());
    assert.is(h.push(u32(f)).kind, 'continue', `flags ${f}`);
  }
  for (const f of [4, 0x80, 1 << 16, 0x80000000, 0xffffffff]) {
    const h = new NbdHandshake(two());
    const o = h.push(u32(f));
    assert.is(o.kind, 'close', `flags 0x${f.toString(16)}`);
    assert.is(h.takeOutput().length, 0);
    // Once closed, it stays closed.
    assert.is(h.push(option(OPT.LIST)).kind, 'close');
  }
});

test('client flags split over several pushes', () => {
  const h = new NbdHandshake(two());
  assert.is(h.push(Buffer.from([0, 0])).kind, 'continue');
  assert.is(h.push(Buffer.from([0])).kind, 'continue');
  assert.is(h.push(Buffer.from([4])).kind, 'close');
});

test('bad option magic closes', () => {
  const h = started();
  const hdr = optionHeader(OPT.LIST, 0);
  hdr[0] ^= 0xff;
  assert.is(h.push(hdr).kind, 'close');
});

test('LIST: one SERVER reply per export (name length, name, description), then ACK', () => {
  const h = started();
  const { outcome, out } = drive(h, option(OPT.LIST));
  assert.is(outcome.kind, 'continue');
  const reps = parseReplies(out);
  assert.equal(reps.map((r) => [r.option, r.type]), [[OPT.LIST, REP.SERVER], [OPT.LIST, REP.SERVER], [OPT.LIST, REP.ACK]]);
  const entries = reps.slice(0, 2).map((r) => {
    const n = r.data.readUInt32BE(0);
    return [r.data.toString('utf8', 4, 4 + n), r.data.toString('utf8', 4 + n)];
  });
  assert.equal(entries, [['disk', 'the main disk'], ['small', '']]);
  assert.is(reps[2]!.data.length, 0);
});

test('LIST with data is ERR_INVALID and the handshake goes on', () => {
  const h = started();
  let r = drive(h, option(OPT.LIST, Buffer.from('x')));
  assert.is(r.outcome.kind, 'continue');
  assert.equal(parseReplies(r.out).map((x) => x.type), [REP.ERR_INVALID]);
  r = drive(h, option(OPT.LIST));
  assert.is(parseReplies(r.out).at(-1)!.type, REP.ACK);
});

test('LIST of an empty catalog is a lone ACK', () => {
  const h = started(catalog());
  assert.equal(parseReplies(drive(h, option(OPT.LIST)).out).map((r) => r.type), [REP.ACK]);
});

test('INFO without info requests: EXPORT and BLOCK_SIZE infos, ACK, stays in negotiation', () => {
  const h = started();
  const { outcome, out } = drive(h, option(OPT.INFO, goData('disk')));
  assert.is(outcome.kind, 'continue');
  const reps = parseReplies(out);
  assert.ok(reps.every((r) => r.option === OPT.INFO));
  assert.is(reps.at(-1)!.type, REP.ACK);
  const infos = infosOf(reps);
  assert.equal([...infos.keys()].sort(), [0, 3], 'no NAME/DESCRIPTION unless asked');
  const exp = infos.get(0)!;
  assert.is(exp.length, 10);
  assert.is(Number(exp.readBigUInt64BE(0)), 1 << 30);
  assert.is(exp.readUInt16BE(8), DISK.flags);
  const bs = infos.get(3)!;
  assert.equal([bs.readUInt32BE(0), bs.readUInt32BE(4), bs.readUInt32BE(8)], [1, 4096, 32 << 20]);
  // INFO does not end negotiation: a LIST still works.
  assert.is(parseReplies(drive(h, option(OPT.LIST)).out).at(-1)!.type, REP.ACK);
});

test('GO with NAME and DESCRIPTION requests: all sent, then transmission with the bytes that followed', () => {
  const h = started();
  const trailing = requestHeader(0, 0, 7n, 0n, 512);
  const { outcome, out } = drive(h, Buffer.concat([option(OPT.GO, goData('disk', [1, 2, 3])), trailing]));
  assert.is(outcome.kind, 'transmission');
  if (outcome.kind !== 'transmission') return;
  assert.is(outcome.export.name, 'disk');
  assert.ok(outcome.rest.equals(trailing), 'bytes after GO are handed to transmission');
  const reps = parseReplies(out);
  assert.is(reps.at(-1)!.type, REP.ACK);
  const infos = infosOf(reps);
  assert.is(infos.get(1)!.toString(), 'disk');
  assert.is(infos.get(2)!.toString(), 'the main disk');
  assert.ok(infos.has(0) && infos.has(3));
  // Further bytes are refused: the handshake is over.
  assert.is(h.push(option(OPT.LIST)).kind, 'close');
});

test('GO asking for a DESCRIPTION of an export without one sends no empty DESCRIPTION info', () => {
  const h = started();
  const { outcome, out } = drive(h, option(OPT.GO, goData('small', [2])));
  assert.is(outcome.kind, 'transmission');
  assert.not.ok(infosOf(parseReplies(out)).has(2));
});

test('empty name picks the only export; with several and no "" export it is unknown', () => {
  const one = started(catalog(SMALL));
  const o = drive(one, option(OPT.GO, goData('')));
  assert.is(o.outcome.kind, 'transmission');
  if (o.outcome.kind === 'transmission') assert.is(o.outcome.export.name, 'small');
  const h = started();
  const r = drive(h, option(OPT.GO, goData('')));
  assert.is(r.outcome.kind, 'continue');
  assert.equal(parseReplies(r.out).map((x) => x.type), [REP.ERR_UNKNOWN]);
});

test('unknown export: GO gets ERR_UNKNOWN and may retry; EXPORT_NAME closes without a reply', () => {
  const h = started();
  const r = drive(h, option(OPT.GO, goData('nope')));
  assert.is(r.outcome.kind, 'continue');
  const reps = parseReplies(r.out);
  assert.equal(reps.map((x) => [x.option, x.type]), [[OPT.GO, REP.ERR_UNKNOWN]]);
  assert.ok(reps[0]!.data.toString().includes('nope'), 'error carries a message');
  assert.is(drive(h, option(OPT.GO, goData('small'))).outcome.kind, 'transmission');

  const h2 = started();
  const e = drive(h2, option(OPT.EXPORT_NAME, Buffer.from('nope')));
  assert.is(e.outcome.kind, 'close');
  assert.is(e.out.length, 0);
});

test('EXPORT_NAME: size + flags, with the 124 zero bytes unless NO_ZEROES was negotiated', () => {
  for (const [flags, len] of [[3, 10], [1, 134]] as const) {
    const h = started(two(), flags);
    const { outcome, out } = drive(h, option(OPT.EXPORT_NAME, Buffer.from('small')));
    assert.is(outcome.kind, 'transmission');
    assert.is(out.length, len, `client flags ${flags}`);
    assert.is(Number(out.readBigUInt64BE(0)), 4096 + 7);
    assert.is(out.readUInt16BE(8), SMALL.flags);
    assert.ok(out.subarray(10).every((b) => b === 0));
  }
});

test('INFO/GO with malformed data are ERR_INVALID, not a crash', () => {
  const h = started();
  const bad: Buffer[] = [
    Buffer.alloc(3), // shorter than name length + info count
    (() => { const b = goData('disk'); b.writeUInt32BE(100, 0); return b; })(), // name length past the end
    (() => { const b = goData('disk', [1]); b.writeUInt16BE(5, 8); return b; })(), // info count disagrees with length
    Buffer.concat([goData('disk'), Buffer.from([0])]), // trailing byte
  ];
  for (const d of bad) {
    for (const opt of [OPT.INFO, OPT.GO]) {
      const r = drive(h, option(opt, d));
      assert.is(r.outcome.kind, 'continue');
      assert.equal(parseReplies(r.out).map((x) => [x.option, x.type]), [[opt, REP.ERR_INVALID]]);
    }
  }
  assert.is(drive(h, option(OPT.GO, goData('disk'))).outcome.kind, 'transmission');
});

test('STARTTLS, EXTENDED_HEADERS and unknown options are ERR_UNSUP; negotiation continues', () => {
  const h = started();
  for (const opt of [OPT.STARTTLS, 11, 4, 12345, 0xffffffff]) {
    const r = drive(h, option(opt));
    assert.is(r.outcome.kind, 'continue', `option ${opt}`);
    assert.equal(parseReplies(r.out).map((x) => [x.option, x.type]), [[opt >>> 0, REP.ERR_UNSUP]], `option ${opt}`);
  }
  const go = drive(h, option(OPT.GO, goData('disk'))).outcome;
  assert.is(go.kind, 'transmission');
  assert.ok(go.kind === 'transmission' && !go.structured && !go.blockStatus, 'simple replies unless negotiated');
});

/** LIST/SET_META_CONTEXT data: export name, then queries. */
function metaData(name: string, queries: string[]): Buffer {
  const parts = [u32(Buffer.byteLength(name)), Buffer.from(name), u32(queries.length)];
  for (const q of queries) parts.push(u32(Buffer.byteLength(q)), Buffer.from(q));
  return Buffer.concat(parts);
}

test('STRUCTURED_REPLY is acknowledged; base:allocation can be listed and selected; GO reports both', () => {
  const h = started();
  // SET before STRUCTURED_REPLY is refused.
  let r = drive(h, option(OPT_SET_META, metaData('disk', ['base:allocation'])));
  assert.equal(parseReplies(r.out).map((x) => x.type), [REP.ERR_INVALID]);
  r = drive(h, option(OPT.STRUCTURED_REPLY, Buffer.from('x')));
  assert.equal(parseReplies(r.out).map((x) => x.type), [REP.ERR_INVALID], 'STRUCTURED_REPLY with data');
  r = drive(h, option(OPT.STRUCTURED_REPLY));
  assert.equal(parseReplies(r.out).map((x) => x.type), [REP.ACK]);
  // LIST with no query lists every context; "base:" matches ours; others do not.
  for (const [queries, listed] of [[[], true], [['base:'], true], [['qemu:dirty-bitmap:x'], false]] as const) {
    const reps = parseReplies(drive(h, option(OPT_LIST_META, metaData('disk', [...queries]))).out);
    assert.equal(reps.map((x) => x.type), listed ? [REP_META, REP.ACK] : [REP.ACK], `list ${queries.join(',')}`);
    if (listed) assert.is(reps[0]!.data.subarray(4).toString(), 'base:allocation');
  }
  assert.equal(parseReplies(drive(h, option(OPT_LIST_META, metaData('nope', []))).out).map((x) => x.type), [REP.ERR_UNKNOWN]);
  assert.equal(parseReplies(drive(h, option(OPT_SET_META, Buffer.from([0, 0, 0, 9]))).out).map((x) => x.type), [REP.ERR_INVALID], 'truncated');
  // SET selects it with a non-zero id; GO on that export reports it.
  const reps = parseReplies(drive(h, option(OPT_SET_META, metaData('disk', ['base:allocation', 'other:thing']))).out);
  assert.equal(reps.map((x) => x.type), [REP_META, REP.ACK]);
  assert.is(reps[0]!.data.readUInt32BE(0), 1);
  const go = drive(h, option(OPT.GO, goData('disk'))).outcome;
  assert.ok(go.kind === 'transmission' && go.structured && go.blockStatus);
});

test('a context selected for one export does not carry over to GO on another', () => {
  const h = started();
  drive(h, option(OPT.STRUCTURED_REPLY));
  drive(h, option(OPT_SET_META, metaData('disk', ['base:allocation'])));
  const go = drive(h, option(OPT.GO, goData('small'))).outcome;
  assert.ok(go.kind === 'transmission' && go.structured && !go.blockStatus);
});

test('ABORT: ACK, then close', () => {
  const h = started();
  const { outcome, out } = drive(h, option(OPT.ABORT));
  assert.is(outcome.kind, 'close');
  assert.equal(parseReplies(out).map((r) => [r.option, r.type, r.data.length]), [[OPT.ABORT, REP.ACK, 0]]);
});

/** White-box: the bytes the handshake holds (the class keeps them in `buf`). */
function held(h: NbdHandshake): number {
  const b = (h as unknown as { buf?: Buffer }).buf;
  assert.ok(Buffer.isBuffer(b), 'NbdHandshake keeps its input in `buf` (update this test if that changes)');
  return b!.length;
}

test('oversized option: skipped as it streams in (never buffered), ERR_TOO_BIG, handshake continues', () => {
  const h = started();
  const declared = 64 * 1024 * 1024 + 3;
  assert.ok(declared > MAX_OPTION_LENGTH);
  h.push(optionHeader(OPT.GO, declared));
  const chunk = Buffer.alloc(1024 * 1024, 0x41);
  let sent = 0;
  let maxHeld = 0;
  while (sent + chunk.length < declared) {
    assert.is(h.push(chunk).kind, 'continue');
    sent += chunk.length;
    maxHeld = Math.max(maxHeld, held(h));
    assert.is(h.takeOutput().length, 0, 'no reply before the option is fully received');
  }
  assert.is(maxHeld, 0, 'skipped bytes are dropped at once');
  // The last bytes of the option plus a LIST in the same chunk.
  const last = Buffer.concat([Buffer.alloc(declared - sent, 0x41), option(OPT.LIST)]);
  const { outcome, out } = drive(h, last);
  assert.is(outcome.kind, 'continue');
  const reps = parseReplies(out);
  assert.equal(reps[0]!.option, OPT.GO);
  assert.equal(reps[0]!.type, REP.ERR_TOO_BIG);
  assert.equal(reps.slice(1).map((r) => [r.option, r.type]), [[OPT.LIST, REP.SERVER], [OPT.LIST, REP.SERVER], [OPT.LIST, REP.ACK]]);
  assert.is(drive(h, option(OPT.GO, goData('disk'))).outcome.kind, 'transmission');
});

test('an option at exactly MAX_OPTION_LENGTH is buffered and handled normally', () => {
  const h = started();
  const data = Buffer.alloc(MAX_OPTION_LENGTH);
  const r = drive(h, option(777, data));
  assert.equal(parseReplies(r.out).map((x) => x.type), [REP.ERR_UNSUP]);
});

test('an oversized EXPORT_NAME closes (it cannot be answered with an error)', () => {
  const h = started();
  const r = drive(h, optionHeader(OPT.EXPORT_NAME, MAX_OPTION_LENGTH + 1));
  assert.is(r.outcome.kind, 'close');
  assert.is(r.out.length, 0);
});

test('a whole session fed one byte at a time gives the same bytes and outcome as fed at once', () => {
  const trailing = requestHeader(1, 0, 9n, 4096n, 3);
  const session = Buffer.concat([
    u32(3),
    option(OPT.STRUCTURED_REPLY),
    option(OPT.LIST),
    option(OPT.INFO, goData('nope', [1])),
    option(OPT.INFO, goData('disk', [2, 1])),
    optionHeader(999, MAX_OPTION_LENGTH + 10),
    Buffer.alloc(MAX_OPTION_LENGTH + 10, 7),
    option(OPT.GO, goData('small', [3, 1, 2])),
    trailing,
    Buffer.from('abc'),
  ]);
  const whole = new NbdHandshake(two());
  const a = drive(whole, session);
  assert.is(a.outcome.kind, 'transmission');

  const bytewise = new NbdHandshake(two());
  const outs: Buffer[] = [];
  let outcome: HandshakeOutcome = { kind: 'continue' };
  let i = 0;
  for (; i < session.length; i++) {
    outcome = bytewise.push(session.subarray(i, i + 1));
    outs.push(...bytewise.takeOutput());
    if (outcome.kind !== 'continue') break;
  }
  assert.is(outcome.kind, 'transmission');
  assert.ok(Buffer.concat(outs).equals(a.out), 'same reply bytes');
  // Byte by byte, transmission starts right after the GO: the rest are the bytes not yet pushed.
  const restBytewise = Buffer.concat([(outcome as { rest: Buffer }).rest, session.subarray(i + 1)]);
  assert.ok(restBytewise.equals((a.outcome as { rest: Buffer }).rest));
  assert.ok(restBytewise.equals(Buffer.concat([trailing, Buffer.from('abc')])));
  const types = parseReplies(a.out).map((r) => r.type);
  assert.equal(types.filter((t) => t === REP.ERR_TOO_BIG).length, 1);
  assert.equal(types.filter((t) => t === REP.ERR_UNKNOWN).length, 1);
});

test('the server derives truthful flags and block sizes from the store', async () => {
  const s = new NbdServer({ maxPayload: 1 << 20 });
  await s.addExport({ name: 'rw', store: new BufferStore(8192, { canTrim: false, fastZero: true, multiConn: false, preferredBlockSize: 65536 }) });
  await s.addExport({ name: 'ro', store: new BufferStore(8192), readOnly: true, description: 'frozen' });
  const h = s.handshake();
  h.push(u32(3));
  h.push(option(OPT.INFO, goData('rw')));
  const rw = infosOf(parseReplies(Buffer.concat(h.takeOutput())));
  const f = rw.get(0)!.readUInt16BE(8);
  assert.ok(f & 1, 'HAS_FLAGS');
  assert.not.ok(f & 2, 'not READ_ONLY');
  assert.ok(f & 4 && f & 8, 'FLUSH and FUA');
  assert.not.ok(f & 32, 'no SEND_TRIM when trim does nothing');
  assert.ok(f & 64, 'WRITE_ZEROES');
  assert.ok(f & 0x800, 'FAST_ZERO');
  assert.not.ok(f & 0x100, 'no MULTI_CONN');
  assert.not.ok(f & 0x80, 'no DF without structured replies');
  const bs = rw.get(3)!;
  assert.equal([bs.readUInt32BE(0), bs.readUInt32BE(4), bs.readUInt32BE(8)], [1, 65536, 1 << 20]);
  h.push(option(OPT.GO, goData('ro', [2])));
  const ro = infosOf(parseReplies(Buffer.concat(h.takeOutput())));
  const g = ro.get(0)!.readUInt16BE(8);
  assert.ok(g & 2, 'READ_ONLY');
  assert.not.ok(g & (32 | 64 | 0x800), 'no write-side commands advertised on a read-only export');
  assert.is(ro.get(2)!.toString(), 'frozen');
});

test('replies are produced only as fast as they are taken: 10 000 LIST options queue at most ~maxOutput', () => {
  const hs = new NbdHandshake(two(), 4096);
  const flood = Buffer.concat([u32(3), ...Array(10_000).fill(option(OPT.LIST))]);
  let outcome = hs.push(flood);
  assert.is(outcome.kind, 'continue');
  assert.ok(hs.waitingForOutput, 'stopped with options left');
  let total = 0;
  let rounds = 0;
  for (;;) {
    const out = Buffer.concat(hs.takeOutput());
    assert.ok(out.length <= 4096 + 200, `one round queued ${out.length} bytes`);
    total += parseReplies(out).filter((r) => r.type === REP.ACK).length;
    if (!hs.waitingForOutput) break;
    outcome = hs.push(Buffer.alloc(0));
    rounds++;
  }
  assert.is(total, 10_000, 'every LIST answered, in bounded rounds');
  assert.ok(rounds > 10);
});

test.run();
