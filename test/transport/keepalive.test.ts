/** transports/keepalive.ts on plain numbers: when a quiet connection pings and when a silent peer is dead. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { KeepAlive } from '../../transports/keepalive.ts';

test('ping after keepAliveMs without sending; dead after idleTimeoutMs without receiving', () => {
  const k = new KeepAlive({ keepAliveMs: 1000, idleTimeoutMs: 3000 });
  assert.is(k.nextTimeout(0, 0), 1000);
  assert.is(k.handleTimeout(999, 0, 0), undefined);
  assert.equal(k.handleTimeout(1000, 0, 0), { kind: 'ping' });
  // We keep sending (pings), the peer stays silent.
  assert.is(k.nextTimeout(2500, 0), 3001);
  assert.is(k.handleTimeout(3000, 2500, 0), undefined, 'exactly the limit is still alive');
  assert.equal(k.handleTimeout(3001, 2500, 0), { kind: 'dead', silentMs: 3001 });
  // Traffic both ways: nothing to do, and the next look is a keep-alive period after the last send.
  assert.is(k.handleTimeout(5000, 4500, 4900), undefined);
  assert.is(k.nextTimeout(4500, 4900), 5500);
});

test.run();
