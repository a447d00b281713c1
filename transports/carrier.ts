/**
 * The mux over one stream of another transport: what QuicTransport runs over
 * its QUIC carrier stream, for transports that hand out plain ByteStreams
 * (e.g. Ngtcp2Transport talking to QuicTransport, or a relayed stream whose
 * ends are already authenticated). `remotePublicKey` is the key the
 * underlying connection proved; nothing is checked here.
 */
import type { ByteStream } from './transport.ts';
import { FrameLink, duplexIO } from './frame-link.ts';
import { MuxSession, type MuxOptions } from './mux.ts';
import { byteStreamDuplex } from './secure-channel.ts';
import { QuicmapError } from '../base/errors.ts';

export function muxOverByteStream(
  stream: ByteStream,
  remotePublicKey: Uint8Array,
  remoteAddress: string,
  isDialer: boolean,
  opts: MuxOptions & { sendHighWater?: number } = {},
): MuxSession {
  const { sendHighWater, ...mux } = opts;
  const io = duplexIO(byteStreamDuplex(stream), (e) => (e instanceof QuicmapError ? e : new QuicmapError('EIO', `carrier: ${e.message}`, { cause: e })));
  return new MuxSession(new FrameLink(io, sendHighWater ?? 1024 * 1024), remotePublicKey, remoteAddress, isDialer, mux);
}
