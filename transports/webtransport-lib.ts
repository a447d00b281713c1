/**
 * Typed, quiet access to @fails-components/webtransport 1.6.8.
 *
 * - The package's types describe the browser API loosely; we declare the
 *   subset we use, as observed on 1.6.8 (WHATWG streams; `ready`/`closed`
 *   promises; `createBidirectionalStream({ waitUntilAvailable })`).
 * - Loading it starts a dynamic import of its native HTTP/3 part
 *   (`@fails-components/webtransport-transport-http3-quiche`, not installable
 *   here) and, when that fails, prints "http3 loader: Error ..." to **stdout**
 *   and two lines to stderr. stdout is where `quicmap share` prints its
 *   ticket, so those three messages are filtered out while the library
 *   loads; nothing else is touched. `http3Available` says whether the
 *   native part loaded (the HTTP/3 mode for browsers needs it).
 * - Internals we rely on (checked by test/transport/webtransport.test.ts):
 *   a session's `objint.stream.session` is the node:http2 session carrying
 *   it (its `socket` gives the TLS exporter for channel binding, its `ping`
 *   our liveness check), on both the server and the client side; a started
 *   server's `transportInt.serverInt` is its node:http2 server.
 */
import type { Http2SecureServer, Http2Session } from 'node:http2';

export interface WtReader<T> {
  read(): Promise<{ done: true; value?: undefined } | { done: false; value: T }>;
  cancel(reason?: unknown): Promise<void>;
  releaseLock(): void;
}
export interface WtWriter {
  write(chunk: Uint8Array): Promise<void>;
  close(): Promise<void>;
  abort(reason?: unknown): Promise<void>;
  readonly ready: Promise<void>;
  readonly desiredSize: number | null;
}
export interface WtBidiStream {
  readable: { getReader(): WtReader<Uint8Array> };
  writable: { getWriter(): WtWriter };
}
/** A WebTransport session: the client object and the server's session have this shape. */
export interface WtSession {
  readonly ready: Promise<void>;
  readonly closed: Promise<{ closeCode?: number; reason?: string }>;
  readonly incomingBidirectionalStreams: { getReader(): WtReader<WtBidiStream> };
  createBidirectionalStream(opts?: { waitUntilAvailable?: boolean }): Promise<WtBidiStream>;
  close(info?: { closeCode: number; reason: string }): void;
}
export interface WtServer {
  startServer(): void;
  stopServer(): void;
  readonly ready: Promise<void>;
  readonly closed: Promise<void>;
  address(): { port: number; host: string } | null;
  sessionStream(path: string): { getReader(): WtReader<WtSession> };
}
export interface WtServerOptions {
  port: number;
  host: string;
  secret: string;
  cert: string;
  privKey: string;
  initialStreamFlowControlWindow?: number;
  streamFlowControlWindowSizeLimit?: number;
  initialSessionFlowControlWindow?: number;
  sessionFlowControlWindowSizeLimit?: number;
  initialBidirectionalStreams?: number;
  initialUnidirectionalStreams?: number;
}
export interface WtClientOptions {
  forceReliable: boolean;
  /** Normally `{ algorithm: 'sha-256', value }[]`; see webtransport.ts for why we pass a matcher. */
  serverCertificateHashes?: unknown;
  initialStreamFlowControlWindow?: number;
  streamFlowControlWindowSizeLimit?: number;
  initialSessionFlowControlWindow?: number;
  sessionFlowControlWindowSizeLimit?: number;
  initialBidirectionalSendStreams?: number;
}

export interface WtLibrary {
  Http2Server: new (opts: WtServerOptions) => WtServer;
  WebTransport: new (url: string, opts: WtClientOptions) => WtSession;
  http3Available: boolean;
}

const NOISE = [/^http3 loader:/, /^Problem loading http3-quiche transport/, /^Did you install @fails-components\/webtransport-transport-http3-quiche/];

let loading: Promise<WtLibrary> | undefined;

/** Load the library once, with its "no HTTP/3 part" messages filtered out of stdout/stderr. */
export function loadWebTransport(): Promise<WtLibrary> {
  loading ??= (async () => {
    const { log, error } = console;
    const quiet =
      (orig: (...a: unknown[]) => void) =>
      (...a: unknown[]): void => {
        if (typeof a[0] === 'string' && NOISE.some((re) => re.test(a[0] as string))) return;
        orig.apply(console, a);
      };
    console.log = quiet(log);
    console.error = quiet(error);
    try {
      const lib = (await import('@fails-components/webtransport')) as unknown as {
        Http2Server: WtLibrary['Http2Server'];
        WebTransport: WtLibrary['WebTransport'];
        quicheLoaded: Promise<unknown>;
      };
      // quicheLoaded settles (to undefined, whether or not the native part
      // loaded) after the client half logged; the server half logs from the
      // same failed import within the same turn of the loop.
      await lib.quicheLoaded;
      await new Promise((r) => setImmediate(r));
      const http3Available = await import('@fails-components/webtransport-transport-http3-quiche' as string).then(
        () => true,
        () => false,
      );
      return { Http2Server: lib.Http2Server, WebTransport: lib.WebTransport, http3Available };
    } finally {
      console.log = log;
      console.error = error;
    }
  })();
  return loading;
}

/** The node:http2 server under a started library server (`transportInt.serverInt`), or undefined if the internals changed. */
export function http2ServerOf(server: WtServer): Http2SecureServer | undefined {
  const s = (server as unknown as { transportInt?: { serverInt?: Http2SecureServer } }).transportInt?.serverInt;
  return s && typeof s.on === 'function' ? s : undefined;
}

/** The node:http2 session under a library session (see the header), or undefined if the internals changed. */
export function http2SessionOf(session: WtSession): Http2Session | undefined {
  const s = session as unknown as { objint?: { stream?: { session?: Http2Session } }; sessionint?: { objint?: { stream?: { session?: Http2Session } } } };
  return s.objint?.stream?.session ?? s.sessionint?.objint?.stream?.session;
}

/**
 * Two more library bugs (1.6.8), worked around by patching the library's
 * stream classes once per process (reached through the first stream seen;
 * checked by test/transport/webtransport.test.ts and the conformance suite):
 *
 * 2. A stream's receive side consumes every byte that arrives into its
 *    ReadableStream queue and credits it to the peer's flow-control windows
 *    whether or not the application reads (`HttpWTStream.commitReadBuffer`
 *    asks to stop reading only while a read is pending), so a slow reader
 *    never pushes back and buffers without bound. Patched: stop whenever no
 *    read is waiting and the queue is full; the next read restarts it (the
 *    library's `pull` calls `startReading`). Bytes left in the library's own
 *    per-stream list are not credited, so the sender stalls at the window.
 * 3. A stream that ends normally (FIN sent, FIN received) is never counted
 *    as closed: only RESET_STREAM / STOP_SENDING mark the sending side done
 *    (`Http2WebTransportStream.closeOutgoing`), so the peer's stream credit
 *    (MAX_STREAMS) is never returned and a session can open only
 *    `initialBidirectionalStreams` streams in its whole life. Patched: the
 *    sending side counts as done once the FIN has been written; `onClose`
 *    (which returns the credit) runs at most once per stream.
 */
let patched = false;
interface LibStream {
  commitReadBuffer(args: unknown): { stopReading?: boolean };
  readableController?: { desiredSize: number | null };
  readableclosed?: boolean;
  finaldrain_?: boolean;
  pendingoperationRead?: unknown;
  objint?: NativeStream;
}
interface NativeStream {
  drainWrites(): void;
  closeOutgoing(): void;
  onClose(): void;
  final?: boolean;
  outgochunks?: unknown[];
  outgoingClosed_?: boolean;
  qmClosed?: boolean;
}
export function patchLibraryStreams(session: WtSession): void {
  if (patched) return;
  const s = session as unknown as { streamObjs?: Set<LibStream>; sessionint?: { streamObjs?: Set<LibStream> } };
  const any = (s.streamObjs ?? s.sessionint?.streamObjs)?.values().next().value;
  if (!any?.objint) return;
  const proto = Object.getPrototypeOf(any) as LibStream;
  const nproto = Object.getPrototypeOf(any.objint) as NativeStream;
  const { commitReadBuffer } = proto;
  const { drainWrites, onClose } = nproto;
  if (typeof commitReadBuffer !== 'function' || typeof drainWrites !== 'function' || typeof onClose !== 'function' || typeof nproto.closeOutgoing !== 'function') return;
  proto.commitReadBuffer = function (this: LibStream, args: unknown) {
    const r = commitReadBuffer.call(this, args) ?? {};
    const c = this.readableController;
    if (!this.readableclosed && !this.finaldrain_ && !this.pendingoperationRead && c && c.desiredSize !== null && c.desiredSize <= 0) r.stopReading = true;
    return r;
  };
  nproto.drainWrites = function (this: NativeStream) {
    drainWrites.call(this);
    if (this.final && this.outgochunks?.length === 0 && !this.outgoingClosed_) this.closeOutgoing();
  };
  nproto.onClose = function (this: NativeStream) {
    if (this.qmClosed) return;
    this.qmClosed = true;
    onClose.call(this);
  };
  patched = true;
}
