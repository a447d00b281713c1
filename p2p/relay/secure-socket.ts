/**
 * The end-to-end secure channel over a socket that is not the peer's own
 * TCP connection: a relay control connection, or a spliced relay circuit.
 * The same channel as the TCP transport (transports/secure-channel.ts:
 * TLS 1.3, mutual, Ed25519 identities bound into libp2p-style certificates)
 * and multiplexing (transports/mux.ts), so a relayed connection has the
 * identities and checks of a direct one and the relay in between sees
 * ciphertext only.
 *
 * The one function the relay uses to secure a byte stream.
 */
import { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import type { Identity } from '../../crypto/identity.ts';
import { QuicmapError } from '../../base/errors.ts';
import type { MuxOptions, MuxSession } from '../../transports/mux.ts';
import { secureDuplex } from '../../transports/secure-channel.ts';
import { muxOverChannel } from '../../transports/tcp.ts';
import type { SocketReader } from './socket-reader.ts';

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

/**
 * `socket` with `first` in front of what it will still deliver, as a Duplex
 * that is not a net.Socket (node:tls wrapping a net.Socket reads its native
 * handle and would never see bytes already taken out of it).
 */
function withLeftover(socket: Socket, first: Buffer): Duplex {
  const d: Duplex = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk: Buffer, _enc, cb) {
      socket.write(chunk, cb);
    },
    final(cb) {
      socket.end();
      cb();
    },
    destroy(err, cb) {
      socket.destroy(err ?? undefined);
      cb(err);
    },
  });
  d.push(first);
  socket.on('data', (b: Buffer) => {
    if (!d.push(b)) socket.pause();
  });
  socket.on('end', () => d.push(null));
  socket.on('error', (e) => d.destroy(e));
  socket.on('close', () => d.destroy());
  return d;
}

export async function secureSocket(socket: Socket, identity: Identity, role: 'initiator' | 'responder', o: SecureSocketOptions): Promise<MuxSession> {
  if (role === 'initiator' && !o.expectedKey) throw new QuicmapError('EINVAL', 'an initiator must name the key it expects');
  const leftover = o.reader?.detach() ?? [];
  const pipe: Duplex = leftover.length ? withLeftover(socket, Buffer.concat(leftover)) : socket;
  const ch = await secureDuplex(pipe, identity, o.expectedKey ?? null, role === 'initiator' ? 'client' : 'server', { timeoutMs: o.timeoutMs ?? 5_000 }).catch((e: unknown) => {
    socket.destroy();
    if (e instanceof QuicmapError && e.code === 'EACCES') throw new QuicmapError('EACCES', `handshake with ${o.remoteAddress}: ${e.message}`, { cause: e });
    throw e;
  });
  return muxOverChannel(ch, o.remoteAddress, role === 'initiator', { ...(o.mux ?? {}), ...(o.sendHighWater !== undefined ? { sendHighWater: o.sendHighWater } : {}) });
}
