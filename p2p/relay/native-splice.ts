/**
 * The relay's native circuit forwarding (native/src/splice.cc): whether it
 * is available, and the steps that hand a circuit's two sockets over from
 * Node to the native thread. The relay (server.ts) falls back to its JS
 * forwarding when this says no, or when a socket has no descriptor.
 *
 * QUICMAP_RELAY_SPLICE=js forces the JS path (A/B benchmarks, debugging).
 */
import type { Socket } from 'node:net';
import { loadNative, nativeUnavailableReason, type NativeBinding, type NativeRelaySpliceClosed, type NativeRelaySpliceCounts } from '../../native/index.ts';

type SpliceBinding = Required<Pick<NativeBinding, 'relaySplice' | 'relaySpliceStop' | 'relaySpliceBytes'>>;

let binding: SpliceBinding | null | undefined;
let reason: string | undefined;

/** The binding's splice functions, or undefined (then `nativeSpliceReason()` says why). */
function spliceBinding(): SpliceBinding | undefined {
  if (binding !== undefined) return binding ?? undefined;
  binding = null;
  if (process.env.QUICMAP_RELAY_SPLICE === 'js') {
    reason = 'QUICMAP_RELAY_SPLICE=js';
    return undefined;
  }
  reason = nativeUnavailableReason();
  if (reason) return undefined;
  const n = loadNative();
  if (!n.relaySplice || !n.relaySpliceStop || !n.relaySpliceBytes) {
    reason = 'the native addon predates relaySplice (rebuild it with `node native/build.mjs`)';
    return undefined;
  }
  binding = { relaySplice: n.relaySplice, relaySpliceStop: n.relaySpliceStop, relaySpliceBytes: n.relaySpliceBytes };
  return binding;
}

/** Why circuits are forwarded in JS, or undefined when they are spliced natively. */
export function nativeSpliceReason(): string | undefined {
  spliceBinding();
  return binding ? undefined : reason;
}

/** The part of a TCP socket's libuv handle used here (Node internals: net.Socket#_handle, a TCPWrap). */
interface StreamHandle {
  fd?: unknown;
  reading?: boolean;
  readStop?: () => number;
  readStart?: () => number;
}

function handleOf(s: Socket): StreamHandle | undefined {
  const h = (s as unknown as { _handle?: unknown })._handle;
  return h && typeof h === 'object' ? (h as StreamHandle) : undefined;
}

/** The socket's descriptor, or undefined (no handle, not a file descriptor, or no way to stop its reads). */
export function socketFd(s: Socket): number | undefined {
  const h = handleOf(s);
  if (!h || s.destroyed || typeof h.readStop !== 'function') return undefined;
  const fd = h.fd;
  return typeof fd === 'number' && Number.isInteger(fd) && fd >= 0 ? fd : undefined;
}

/**
 * Stop Node reading from `s` for good and return what it had buffered
 * already. Must run in the same tick as the native splice starts: libuv
 * reads again only from the event loop, and after this nothing asks it to.
 * (pause() is not enough: libuv keeps reading up to the high-water mark.)
 */
export function takeOver(s: Socket): Buffer[] {
  const out: Buffer[] = [];
  // May ask the handle to read again (Readable#_read), which only takes effect in the loop; stopped below.
  for (let c = s.read() as Buffer | null; c !== null; c = s.read() as Buffer | null) out.push(c);
  const h = handleOf(s)!;
  h.readStop!();
  // net.Socket's own flag: it would readStart again only through _read, which Readable no longer calls
  // (its `reading` stays set: no push comes).
  h.reading = false;
  return out;
}

/**
 * After the native splice ended: let Node read the socket again (what
 * arrives is dropped), so it sees the peer's FIN and closes as a socket of
 * the JS path would after endCircuit.
 */
export function handBack(s: Socket): void {
  if (s.destroyed) return;
  const h = handleOf(s);
  // Directly: Readable would not call _read (its `reading` is still set from before the takeover).
  if (h && !h.reading && typeof h.readStart === 'function') {
    h.reading = true;
    h.readStart();
  }
  s.resume();
}

export interface NativeSplice {
  readonly id: number;
  /** Bytes spliced both ways so far (exact, read now). */
  bytes(): number;
  /** End soon; 'closed' (reason 'stop') follows. */
  stop(): void;
}

export type NativeSpliceEvent = { kind: 'progress'; counts: NativeRelaySpliceCounts } | { kind: 'closed'; closed: NativeRelaySpliceClosed };

/** Start forwarding between the descriptors `a` and `b` (of sockets taken over with `takeOver`). */
export function startNativeSplice(
  o: { a: number; b: number; capBytes: number | undefined; headAB: Buffer; headBA: Buffer; name: string; pipeSize?: number },
  onEvent: (e: NativeSpliceEvent) => void,
): NativeSplice {
  const n = spliceBinding();
  if (!n) throw new Error(`native splice unavailable: ${reason}`);
  let last = 0;
  const id = n.relaySplice(
    { a: o.a, b: o.b, capBytes: o.capBytes, headAB: o.headAB, headBA: o.headBA, name: o.name, ...(o.pipeSize ? { pipeSize: o.pipeSize } : {}) },
    (kind, value) => {
      const total = value.bytesAB + value.bytesBA;
      last = total;
      if (kind === 'closed') onEvent({ kind, closed: value as NativeRelaySpliceClosed });
      else onEvent({ kind, counts: value });
    },
  );
  return {
    id,
    bytes: () => {
      const b = n.relaySpliceBytes(id);
      return b ? b[0] + b[1] : last;
    },
    stop: () => void n.relaySpliceStop(id),
  };
}
