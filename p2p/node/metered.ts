/**
 * Byte counters around a Connection or Listener: every stream on it counts
 * what it sends and receives into a `Meter` (per peer, per region — the
 * caller decides what a meter stands for; one connection may feed several).
 * `lastActivity` lets the node tell an idle link (safe to move to another path).
 */
import type { ByteStream, Connection, Listener } from '../../transports/transport.ts';

export interface Meter {
  sent: number;
  received: number;
  /** performance.now() of the last byte either way. */
  lastActivity: number;
}

export function newMeter(): Meter {
  return { sent: 0, received: 0, lastActivity: 0 };
}

function meterStream(s: ByteStream, meters: readonly Meter[]): ByteStream {
  return {
    async read() {
      const b = await s.read();
      if (b) {
        const now = performance.now();
        for (const m of meters) {
          m.received += b.length;
          m.lastActivity = now;
        }
      }
      return b;
    },
    write(data) {
      const n = data instanceof Uint8Array ? data.length : data.reduce((a, x) => a + x.length, 0);
      const now = performance.now();
      for (const m of meters) {
        m.sent += n;
        m.lastActivity = now;
      }
      return s.write(data);
    },
    closeWrite: () => s.closeWrite(),
    reset: (reason) => s.reset(reason),
  };
}

export function meterConnection(c: Connection, meters: readonly Meter[]): Connection {
  return {
    get remotePublicKey() {
      return c.remotePublicKey;
    },
    get remoteAddress() {
      return c.remoteAddress;
    },
    closed: c.closed,
    async openStream() {
      return meterStream(await c.openStream(), meters);
    },
    async acceptStream() {
      const s = await c.acceptStream();
      return s ? meterStream(s, meters) : null;
    },
    close: (reason) => c.close(reason),
  };
}

/** A listener whose connections are metered; `meters(conn)` picks the meters for each. */
export function meterListener(l: Listener, meters: (c: Connection) => readonly Meter[]): Listener {
  return {
    get address() {
      return l.address;
    },
    async accept() {
      const c = await l.accept();
      return c ? meterConnection(c, meters(c)) : null;
    },
    close: () => l.close(),
  };
}
