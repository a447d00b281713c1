/**
 * The end-to-end secure channel over a socket that is not the peer's own
 * TCP connection: a relay control connection, or a spliced relay circuit.
 * The same handshake (crypto/handshake.ts: SIGMA-I, Ed25519 identities,
 * the initiator checks the responder's key before revealing its own), the
 * same records (transports/secure-link.ts) and multiplexing (transports/mux.ts)
 * as the TCP transport, so a relayed connection has the identities and
 * checks of a direct one and the relay in between sees ciphertext only.
 *
 * The one function the relay uses to secure a byte stream: when the TCP
 * transport moves to node:tls with a `secureDuplex`, this is what changes.
 */
import type { Socket } from 'node:net';
import type { Identity } from '../../crypto/identity.ts';
import { QuicmapError } from '../../base/errors.ts';
import { FINISH_BYTES, HELLO_BYTES, HandshakeInitiator, HandshakeResponder, RESPONSE_BYTES, handshakeReady } from '../../crypto/handshake.ts';
import { MuxSession, type MuxOptions } from '../../transports/mux.ts';
import { SecureLink } from '../../transports/secure-link.ts';
import { SocketReader, readerDeadline } from './socket-reader.ts';

export interface SecureSocketOptions {
  /** The peer's key: required for the initiator, checked by the responder when given. */
  expectedKey?: Uint8Array;
  /** A reader already attached to the socket (bytes it holds are the handshake's). */
  reader?: SocketReader;
  timeoutMs?: number;
  remoteAddress: string;
  mux?: MuxOptions;
  /** Socket send buffer above which writers wait (default 1 MiB). */
  sendHighWater?: number;
}

export async function secureSocket(socket: Socket, identity: Identity, role: 'initiator' | 'responder', o: SecureSocketOptions): Promise<MuxSession> {
  await handshakeReady();
  const reader = o.reader ?? new SocketReader(socket);
  const keys = await readerDeadline(reader, o.timeoutMs ?? 5_000, `handshake with ${o.remoteAddress}`, async () => {
    try {
      if (role === 'initiator') {
        if (!o.expectedKey) throw new QuicmapError('EINVAL', 'an initiator must name the key it expects');
        const hs = new HandshakeInitiator(identity, o.expectedKey);
        socket.write(hs.start());
        const { message, keys } = hs.finish(await reader.read(RESPONSE_BYTES));
        socket.write(message);
        return keys;
      }
      const hs = new HandshakeResponder(identity);
      socket.write(hs.respond(await reader.read(HELLO_BYTES)));
      const keys = hs.finish(await reader.read(FINISH_BYTES));
      if (o.expectedKey && !Buffer.from(keys.remotePublicKey).equals(Buffer.from(o.expectedKey))) {
        throw new QuicmapError('EACCES', 'handshake: peer is not the expected identity');
      }
      return keys;
    } catch (e) {
      reader.detach();
      throw e;
    }
  });
  const leftover = reader.detach();
  const link = new SecureLink(socket, keys, leftover, o.sendHighWater ?? 1024 * 1024);
  return new MuxSession(link, keys.remotePublicKey, o.remoteAddress, role === 'initiator', o.mux ?? {});
}
