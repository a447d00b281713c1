/**
 * KeepAlive: a connection's liveness, sans-IO. A side that has sent nothing
 * for `keepAliveMs` sends a PING (so the peer's idle timer does not fire on
 * a quiet but healthy connection); a peer silent for `idleTimeoutMs` is
 * dead. The adapter (mux.ts) passes the times of the last send and receive
 * and wakes this machine at `nextTimeout()`; nothing here reads a clock.
 */
export interface KeepAliveOptions {
  keepAliveMs: number;
  idleTimeoutMs: number;
}

export type KeepAliveAction = { kind: 'ping' } | { kind: 'dead'; silentMs: number };

export class KeepAlive {
  private readonly opts: KeepAliveOptions;

  constructor(opts: KeepAliveOptions) {
    this.opts = opts;
  }

  /** When to look again: the earlier of the keep-alive and the idle deadline. */
  nextTimeout(lastSend: number, lastReceive: number): number {
    return Math.min(lastSend + this.opts.keepAliveMs, lastReceive + this.opts.idleTimeoutMs + 1);
  }

  handleTimeout(now: number, lastSend: number, lastReceive: number): KeepAliveAction | undefined {
    if (now - lastReceive > this.opts.idleTimeoutMs) return { kind: 'dead', silentMs: now - lastReceive };
    if (now - lastSend >= this.opts.keepAliveMs) return { kind: 'ping' };
    return undefined;
  }
}
