/** Quotas and refusals through a real relay on loopback: typed on both sides, the relay keeps serving. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { randomBytes } from 'node:crypto';
import { generateIdentity } from '../../crypto/identity.ts';
import { RelayServer } from '../../p2p/relay/server.ts';
import { RelayTransport } from '../../p2p/relay/transport.ts';
import { RelayRefusal } from '../../p2p/relay/messages.ts';
import type { RelayQuotas } from '../../p2p/relay/book.ts';
import { Scope, withTimeout } from '../helpers/env.ts';
import { readAll, serveEcho } from '../transport/conformance.ts';
import type { Listener } from '../../transports/transport.ts';

async function setup(s: Scope, quotas: Partial<RelayQuotas>, listen = '127.0.0.1:0') {
  const relayLog: string[] = [];
  const relayId = await generateIdentity();
  const relay = await RelayServer.start({ identity: relayId, listen, quotas, log: (m) => relayLog.push(m) });
  s.defer(() => relay.close());
  return { relay, relayId, relayLog };
}

async function peer(s: Scope, log: string[]) {
  const id = await generateIdentity();
  const t = new RelayTransport(id, { stepTimeoutMs: 2000, log: (m) => log.push(m) });
  s.defer(() => t.close());
  return { id, t };
}

function serve(l: Listener): void {
  void (async () => {
    for (;;) {
      const c = await l.accept().catch(() => null);
      if (!c) return;
      void serveEcho(c).catch(() => {});
    }
  })();
}

const caseOf = (name: string, ms: number, fn: (s: Scope) => Promise<void>) =>
  test(name, async () => {
    const s = new Scope();
    try {
      await withTimeout(ms, name, fn(s));
    } finally {
      await s.close();
    }
  });

caseOf('a circuit over its byte cap is closed with CIRCUIT_BYTE_LIMIT, logged on the relay and both peers', 20_000, async (s) => {
  const { relay, relayLog } = await setup(s, { circuitBytes: 256 * 1024 });
  const aLog: string[] = [];
  const bLog: string[] = [];
  const a = await peer(s, aLog);
  const b = await peer(s, bLog);
  const l = await a.t.listen(relay.relayAddress);
  serve(l);
  const conn = await b.t.dial(relay.relayAddress, a.id.publicKey);
  // Small traffic passes.
  const st = await conn.openStream();
  await st.write(Buffer.from('hello'));
  await st.closeWrite();
  assert.is((await readAll(st)).toString(), 'hello');
  // 1 MiB echoed cannot fit in 256 KiB.
  const big = await conn.openStream();
  const sending = big.write(randomBytes(1024 * 1024)).then(() => big.closeWrite()).catch((e: Error) => e);
  const got = await readAll(big).catch((e: Error) => e);
  await sending;
  assert.instance(got, Error, 'the transfer was cut');
  await conn.closed;
  await new Promise((r) => setTimeout(r, 200));
  assert.ok(relayLog.some((m) => /CIRCUIT_BYTE_LIMIT/.test(m)), relayLog.join('\n'));
  assert.ok(bLog.some((m) => /circuit \d+ closed by the relay: relay: circuit byte limit/.test(m)), `dialer log: ${bLog.join('\n')}`);
  assert.ok(aLog.some((m) => /circuit byte limit/.test(m)), `listener log: ${aLog.join('\n')}`);
  assert.is(relay.stats.refusals.CIRCUIT_BYTE_LIMIT, 1);
  assert.ok(relay.stats.bytesRelayed > 1024 && relay.stats.bytesRelayed <= 256 * 1024, `counted up to the cap: ${relay.stats.bytesRelayed}`);
  // The relay still carries a new circuit.
  const again = await b.t.dial(relay.relayAddress, a.id.publicKey);
  const st2 = await again.openStream();
  await st2.write(Buffer.from('again'));
  await st2.closeWrite();
  assert.is((await readAll(st2)).toString(), 'again');
});

caseOf('a circuit over its time limit is closed with CIRCUIT_TIME_LIMIT while bytes flow; the relay keeps serving', 20_000, async (s) => {
  const { relay, relayLog } = await setup(s, { circuitDurationMs: 1500 });
  const a = await peer(s, []);
  const bLog: string[] = [];
  const b = await peer(s, bLog);
  serve(await a.t.listen(relay.relayAddress));
  const conn = await b.t.dial(relay.relayAddress, a.id.publicKey);
  const st = await conn.openStream();
  await st.write(Buffer.from('ping'));
  await st.closeWrite();
  assert.is((await readAll(st)).toString(), 'ping');
  // A stream still sending when the limit strikes.
  const long = await conn.openStream();
  const echoed = readAll(long).catch((e: Error) => e);
  const sending = (async () => {
    for (;;) await long.write(randomBytes(64 * 1024));
  })().catch((e: Error) => e);
  await conn.closed;
  assert.instance(await sending, Error, 'the writer was cut');
  await echoed;
  await new Promise((r) => setTimeout(r, 200));
  assert.ok(relayLog.some((m) => /CIRCUIT_TIME_LIMIT/.test(m)), relayLog.join('\n'));
  assert.ok(bLog.some((m) => /time limit/.test(m)), `dialer log: ${bLog.join('\n')}`);
  assert.is(relay.stats.refusals.CIRCUIT_TIME_LIMIT, 1);
  assert.is(relay.stats.circuits, 0);
  const again = await b.t.dial(relay.relayAddress, a.id.publicKey);
  const st2 = await again.openStream();
  await st2.write(Buffer.from('again'));
  await st2.closeWrite();
  assert.is((await readAll(st2)).toString(), 'again');
});

caseOf('reservations beyond the maximum are refused (RESERVATION_REFUSED); a dial to an unreserved peer gets NO_RESERVATION', 20_000, async (s) => {
  const { relay, relayLog } = await setup(s, { maxReservations: 2 });
  const log: string[] = [];
  const peers = await Promise.all([peer(s, log), peer(s, log), peer(s, log)]);
  await peers[0]!.t.listen(relay.relayAddress);
  await peers[1]!.t.listen(relay.relayAddress);
  const refused = await peers[2]!.t.listen(relay.relayAddress).catch((e: Error) => e);
  assert.instance(refused, RelayRefusal);
  assert.is((refused as RelayRefusal).refusal, 'RESERVATION_REFUSED');
  assert.is((refused as RelayRefusal).code, 'EBUSY');
  assert.ok(relayLog.some((m) => /RESERVATION_REFUSED/.test(m)));
  assert.ok(log.some((m) => /reservation refused/.test(m)), log.join('\n'));
  const nobody = await generateIdentity();
  const noRes = await peers[2]!.t.dial(relay.relayAddress, nobody.publicKey).catch((e: Error) => e);
  assert.instance(noRes, RelayRefusal);
  assert.is((noRes as RelayRefusal).refusal, 'NO_RESERVATION');
});

caseOf('too many circuits for one peer: RESOURCE_LIMIT_EXCEEDED', 20_000, async (s) => {
  const { relay } = await setup(s, { maxCircuitsPerPeer: 2 });
  const a = await peer(s, []);
  const b = await peer(s, []);
  serve(await a.t.listen(relay.relayAddress));
  await b.t.dial(relay.relayAddress, a.id.publicKey);
  await b.t.dial(relay.relayAddress, a.id.publicKey);
  const third = await b.t.dial(relay.relayAddress, a.id.publicKey).catch((e: Error) => e);
  assert.instance(third, RelayRefusal);
  assert.is((third as RelayRefusal).refusal, 'RESOURCE_LIMIT_EXCEEDED');
});

caseOf('a relay that is not the one named in the address is refused (EACCES)', 20_000, async (s) => {
  const { relay } = await setup(s, {});
  const impostor = await generateIdentity();
  const a = await peer(s, []);
  const addr = relay.relayAddress.replace(/^[^@]+/, (await import('../../crypto/identity.ts')).base32Encode(impostor.publicKey));
  const e = await a.t.listen(addr).catch((x: Error) => x);
  assert.instance(e, Error);
  assert.is((e as { code?: string }).code, 'EACCES');
});

caseOf('a relay restart is survived: the reservation is made again and new circuits work', 30_000, async (s) => {
  const first = await setup(s, {});
  const address = first.relay.address;
  const a = await peer(s, []);
  const b = await peer(s, []);
  const aLog: string[] = [];
  const aT = new RelayTransport(a.id, { stepTimeoutMs: 2000, log: (m) => aLog.push(m) });
  s.defer(() => aT.close());
  serve(await aT.listen(first.relay.relayAddress));
  await first.relay.close();
  // Same identity and port: the address users hold stays valid.
  const again = await RelayServer.start({ identity: first.relayId, listen: address });
  s.defer(() => again.close());
  for (let i = 0; ; i++) {
    const c = await b.t.dial(again.relayAddress, a.id.publicKey).catch((e: Error) => e);
    if (!(c instanceof Error)) {
      const st = await c.openStream();
      await st.write(Buffer.from('back'));
      await st.closeWrite();
      assert.is((await readAll(st)).toString(), 'back');
      break;
    }
    assert.ok(i < 50, `never recovered: ${c.message}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.ok(aLog.some((m) => /control connection lost; reserving again/.test(m)), aLog.join('\n'));
});

caseOf('a circuit that ends normally delivers every byte forwarded before the end (slow reader)', 60_000, async (s) => {
  const { relay, relayId } = await setup(s, {});
  const { RelayControl, connectSocket } = await import('../../p2p/relay/control-client.ts');
  const { CIRCUIT_MAGIC } = await import('../../p2p/relay/messages.ts');
  const { parseRelayAddress } = await import('../../p2p/relay/address.ts');
  void relayId;
  const addr = parseRelayAddress(relay.relayAddress);
  const a = await generateIdentity();
  const b = await generateIdentity();
  const ca = await RelayControl.open(a, addr, { timeoutMs: 2000, log: () => {} });
  s.defer(() => ca.close());
  const cb = await RelayControl.open(b, addr, { timeoutMs: 2000, log: () => {} });
  s.defer(() => cb.close());
  await ca.reserve(2000);
  const incoming = new Promise<Uint8Array>((resolve) => (ca.onIncoming = (m) => resolve(m.token)));
  const circuit = await cb.connect(a.publicKey, 2000);
  const sa = await connectSocket(addr.address, 2000);
  s.defer(() => void sa.destroy());
  sa.write(Buffer.concat([CIRCUIT_MAGIC, await incoming]));
  sa.pause();
  const sb = await connectSocket(addr.address, 2000);
  s.defer(() => void sb.destroy());
  const payload = randomBytes(8 * 1024 * 1024);
  sb.end(Buffer.concat([CIRCUIT_MAGIC, circuit.token, payload]));
  // The reader starts late: the relay holds the tail while the writer has long finished.
  await new Promise((r) => setTimeout(r, 500));
  const got: Buffer[] = [];
  await new Promise<void>((resolve) => {
    // A slow reader keeps the relay's socket buffers full up to the end.
    sa.on('data', (d: Buffer) => {
      got.push(d);
      sa.pause();
      setTimeout(() => sa.resume(), 2);
    });
    sa.once('close', () => resolve());
    sa.once('end', () => resolve());
    sa.resume();
  });
  const all = Buffer.concat(got);
  assert.is(all.length, payload.length, 'every byte arrived');
  assert.ok(all.equals(payload));
});

test.run();
